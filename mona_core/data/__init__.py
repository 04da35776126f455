"""Data stage of mona_core: datasets, patient splits, labelled subsets, phantoms, presets and slicing."""

from mona_core.data.dataset import (
    CaseRecord,
    DatasetError,
    DatasetIndex,
    load_dataset,
    load_folder_pairs,
    load_nnunet_raw,
    patient_of,
)
from mona_core.data.phantoms import PHANTOM_CLASSES, make_phantom, write_phantom_case, write_phantom_dataset
from mona_core.data.presets import CT_WINDOW, PRESETS, normalize
from mona_core.data.slicing import (
    PredictFn,
    image_to_slices,
    label_to_slices,
    predict_volume,
    resize_slices,
)
from mona_core.data.splits import (
    LabelledSelection,
    fully_labelled_patients,
    partition_cases,
    patients_for_ratio,
    select_labelled,
    split_by_patient,
)

__all__ = [
    "CT_WINDOW",
    "PHANTOM_CLASSES",
    "PRESETS",
    "CaseRecord",
    "DatasetError",
    "DatasetIndex",
    "LabelledSelection",
    "PredictFn",
    "fully_labelled_patients",
    "image_to_slices",
    "label_to_slices",
    "load_dataset",
    "load_folder_pairs",
    "load_nnunet_raw",
    "make_phantom",
    "normalize",
    "partition_cases",
    "patient_of",
    "patients_for_ratio",
    "predict_volume",
    "resize_slices",
    "select_labelled",
    "split_by_patient",
    "write_phantom_case",
    "write_phantom_dataset",
]
