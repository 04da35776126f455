"""Dataset discovery: which cases exist, which are labelled, which patient each belongs to, and the splits.

Two on-disk layouts are understood:

- nnU-Net raw: ``imagesTr/<case>_0000.nii.gz``, optional ``labelsTr/<case>.nii.gz``, ``dataset.json`` and an
  optional ``splits.json``.
- a plain folder of pairs: ``<case>.nii.gz`` next to ``<case>_label.nii.gz`` / ``<case>_seg.nii.gz`` /
  ``<case>_gt.nii.gz`` (ACDC's naming), or
  ``images/`` + ``labels/`` subfolders holding identically named files.

Only names and JSON files are read here (no voxels), except when a plain folder's classes must be discovered
from its label maps. Splits are always made by patient so that two frames of one patient never straddle train
and val.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from mona_core.data.presets import PRESETS
from mona_core.data.splits import fully_labelled_patients, split_by_patient
from mona_core.io.formats import is_image_name, strip_image_suffix
from mona_core.io.nifti import read_label

logger = logging.getLogger(__name__)

CHANNEL_SUFFIX = "_0000"
LABEL_SUFFIXES = ("_label", "_seg", "_gt")
REQUIRED_SPLITS = ("train", "val")


class DatasetError(ValueError):
    """A dataset folder does not follow a supported layout; the message says what was expected and found."""


@dataclass(frozen=True)
class CaseRecord:
    """One volume of a dataset: its image file, its label file (``None`` when unlabelled) and its patient."""

    case_id: str
    patient_id: str
    image: Path
    label: Path | None

    @property
    def labelled(self) -> bool:
        return self.label is not None


@dataclass(frozen=True)
class DatasetIndex:
    """Everything known about a dataset without reading voxels: classes, preset, cases and splits.

    ``classes[i]`` is the name of label value ``i``; ``classes[0]`` is always ``"background"``.
    ``splits`` maps a split name to case ids and always holds ``"train"`` and ``"val"``.
    """

    root: Path
    name: str
    classes: tuple[str, ...]
    preset: str
    cases: tuple[CaseRecord, ...]
    splits: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        if len(self.classes) < 2 or self.classes[0] != "background":
            raise DatasetError(f"expected classes ('background', ...) of 2+ names, got {self.classes}")
        if self.preset not in PRESETS:
            raise DatasetError(f"expected a preset in {PRESETS}, got {self.preset!r}")
        if len(self._by_id) != len(self.cases):
            raise DatasetError(f"expected unique case ids, got {len(self.cases)} cases, {len(self._by_id)} ids")
        if any(name not in self.splits for name in REQUIRED_SPLITS):
            raise DatasetError(f"expected splits {REQUIRED_SPLITS}, got {sorted(self.splits)}")
        _check_known_ids(self.splits, set(self._by_id))

    @cached_property
    def _by_id(self) -> dict[str, CaseRecord]:
        return {record.case_id: record for record in self.cases}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def case(self, case_id: str) -> CaseRecord:
        """The record of ``case_id``; an unknown id raises ``DatasetError``."""
        record = self._by_id.get(case_id)
        if record is None:
            raise DatasetError(f"expected a case id of dataset {self.name!r}, got {case_id!r}")
        return record

    def cases_in(self, split: str) -> list[CaseRecord]:
        """The records of one split, in the split's order."""
        if split not in self.splits:
            raise DatasetError(f"expected a split in {sorted(self.splits)}, got {split!r}")
        return [self._by_id[case_id] for case_id in self.splits[split]]

    def _records(self, split: str | None) -> Sequence[CaseRecord]:
        return self.cases if split is None else self.cases_in(split)

    def patients(self, split: str | None = None) -> list[str]:
        """Sorted unique patient ids of one split (all cases when ``split`` is None)."""
        return sorted({record.patient_id for record in self._records(split)})

    def fully_labelled_patients(self, split: str | None = None) -> list[str]:
        """Sorted patients whose every case is labelled: the ones eligible to be a labelled patient."""
        return fully_labelled_patients(self._records(split))

    def to_dict(self) -> dict[str, object]:
        """A JSON-able summary: classes, preset and case / patient / labelled counts overall and per split."""
        return {
            "name": self.name,
            "root": str(self.root),
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "preset": self.preset,
            **_counts(self.cases),
            "splits": {name: _counts(self.cases_in(name)) for name in self.splits},
        }


def _counts(records: Sequence[CaseRecord]) -> dict[str, int]:
    return {
        "cases": len(records),
        "patients": len({record.patient_id for record in records}),
        "labelled_cases": sum(1 for record in records if record.labelled),
    }


def patient_of(case_id: str, pattern: str | None = None) -> str:
    """The patient a case belongs to.

    By default the part before ``"_frame"`` (``patient012_frame01`` -> ``patient012``), or the whole id when
    it has no ``"_frame"``. ``pattern`` is a regex applied with ``re.match`` whose named group ``patient`` (or
    else its first group) is the patient id.
    """
    if pattern is None:
        head, sep, _ = case_id.partition("_frame")
        return head if sep and head else case_id
    try:
        match = re.match(pattern, case_id)
    except re.error as exc:
        raise DatasetError(f"expected a valid patient regex, got {pattern!r} ({exc})") from exc
    if match is None:
        raise DatasetError(f"expected case id {case_id!r} to match {pattern!r}, got no match")
    named = match.groupdict()
    patient = named.get("patient") if "patient" in named else (match.group(1) if match.re.groups else None)
    if not patient:
        raise DatasetError(
            f"expected {pattern!r} to capture a non-empty patient id in one group, got {patient!r} for {case_id!r}"
        )
    return patient


def load_dataset(root: str | Path, preset: str | None = None, patient_pattern: str | None = None) -> DatasetIndex:
    """Index a dataset folder: nnU-Net raw when it holds ``dataset.json``, else a plain folder of pairs."""
    folder = _existing_dir(root)
    if (folder / "dataset.json").is_file():
        return load_nnunet_raw(folder, preset=preset, patient_pattern=patient_pattern)
    return load_folder_pairs(folder, preset=preset, patient_pattern=patient_pattern)


def load_nnunet_raw(root: str | Path, preset: str | None = None, patient_pattern: str | None = None) -> DatasetIndex:
    """Index an nnU-Net raw dataset: ``imagesTr``, ``labelsTr``, ``dataset.json``, ``splits.json``."""
    folder = _existing_dir(root)
    meta = _read_json(folder / "dataset.json")
    if not isinstance(meta, dict):
        raise DatasetError(f"expected dataset.json to hold an object, got {type(meta).__name__}")
    images = _channel_zero_images(folder / "imagesTr")
    labels = _nifti_by_case(folder / "labelsTr") if (folder / "labelsTr").is_dir() else {}
    cases = _records(images, labels, patient_pattern)
    return DatasetIndex(
        root=folder,
        name=str(meta.get("name", folder.name)),
        classes=_classes_from_labels(meta.get("labels")),
        preset=_resolve_preset(preset, meta),
        cases=cases,
        splits=_load_or_make_splits(folder / "splits.json", cases),
    )


def load_folder_pairs(
    root: str | Path,
    preset: str | None = None,
    patient_pattern: str | None = None,
    classes: Sequence[str] | None = None,
) -> DatasetIndex:
    """Index a plain folder of image / label pairs.

    Without ``classes`` the label maps are read once and the classes become ``("background", "class1", ...)``
    up to the largest label value found.
    """
    folder = _existing_dir(root)
    if (folder / "images").is_dir():
        images = _nifti_by_case(folder / "images")
        labels = _nifti_by_case(folder / "labels") if (folder / "labels").is_dir() else {}
    else:
        images, labels = _flat_pairs(folder)
    cases = _records(images, labels, patient_pattern)
    names = tuple(classes) if classes is not None else _classes_from_label_files(sorted(labels.values()))
    return DatasetIndex(
        root=folder,
        name=folder.name,
        classes=names,
        preset=_resolve_preset(preset, {}),
        cases=cases,
        splits=_load_or_make_splits(folder / "splits.json", cases),
    )


def _existing_dir(root: str | Path) -> Path:
    folder = Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise DatasetError(f"expected a dataset folder, got no folder at {folder}")
    return folder


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"expected valid JSON in {path.name}, got an unreadable file ({exc})") from exc


def _nifti_by_case(folder: Path) -> dict[str, Path]:
    """``<name>`` -> path for each visible image file (NIfTI, MHA, NRRD) of ``folder``; one name in two formats
    fails."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not is_image_name(path.name):
            continue
        key = strip_image_suffix(path.name)
        if key in found:
            raise DatasetError(f"expected one file per case, got {found[key].name} and {path.name}")
        found[key] = path
    return found


def _channel_zero_images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"expected an imagesTr folder in {folder.parent}, got none")
    images: dict[str, Path] = {}
    for key, path in _nifti_by_case(folder).items():
        if re.search(r"_\d{4}$", key) is None:
            raise DatasetError(f"expected image names <case>_0000.nii.gz in imagesTr, got {path.name}")
        if not key.endswith(CHANNEL_SUFFIX):
            raise DatasetError(f"expected single-channel images (<case>_0000 only), got {path.name}")
        images[key[: -len(CHANNEL_SUFFIX)]] = path
    return images


def _flat_pairs(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for key, path in _nifti_by_case(folder).items():
        suffix = next((s for s in LABEL_SUFFIXES if key.endswith(s) and len(key) > len(s)), None)
        if suffix is None:
            images[key] = path
            continue
        case_id = key[: -len(suffix)]
        if case_id in labels:
            raise DatasetError(f"expected one label per case, got {labels[case_id].name} and {path.name}")
        labels[case_id] = path
    return images, labels


def _records(
    images: Mapping[str, Path], labels: Mapping[str, Path], patient_pattern: str | None
) -> tuple[CaseRecord, ...]:
    if not images:
        raise DatasetError("expected at least one image, got none")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DatasetError(f"expected an image for every label, got labels without images: {orphans[:5]}")
    return tuple(
        CaseRecord(case_id, patient_of(case_id, patient_pattern), images[case_id], labels.get(case_id))
        for case_id in sorted(images)
    )


def _classes_from_labels(labels: object) -> tuple[str, ...]:
    """dataset.json ``labels`` ({"background": 0, "RV": 1, ...}) -> names ordered by value 0..C-1."""
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"expected dataset.json 'labels' as a name -> value object, got {labels!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        raise DatasetError(f"expected integer label values in dataset.json, got {labels}")
    by_value = {int(value): str(name) for name, value in labels.items()}
    if sorted(by_value) != list(range(len(labels))) or len(labels) < 2:
        raise DatasetError(f"expected label values 0..C-1 (C >= 2, no gaps or repeats), got {sorted(labels.values())}")
    names = [by_value[value] for value in range(len(labels))]
    if names[0] != "background":
        logger.info("label value 0 is named %r in dataset.json; calling it 'background'", names[0])
    return ("background", *names[1:])


def _classes_from_label_files(paths: Sequence[Path]) -> tuple[str, ...]:
    if not paths:
        raise DatasetError("expected label files to derive the classes from, got none (pass classes=...)")
    highest = max(int(read_label(path).array.max()) for path in paths)
    if highest < 1:
        raise DatasetError("expected at least one foreground label value, got only background (pass classes=...)")
    return ("background", *(f"class{value}" for value in range(1, highest + 1)))


def _resolve_preset(preset: str | None, meta: Mapping[str, Any]) -> str:
    if preset is not None:
        if preset not in PRESETS:
            raise DatasetError(f"expected a preset in {PRESETS}, got {preset!r}")
        return preset
    channels = meta.get("channel_names", meta.get("modality", {}))
    values = [str(v) for v in channels.values()] if isinstance(channels, dict) else []
    is_ct = any("CT" in v or re.search(r"(?<![a-z])ct(?![a-z])", v, re.IGNORECASE) for v in values)
    return "ct" if is_ct else "mri"


def _load_or_make_splits(path: Path, cases: Sequence[CaseRecord]) -> dict[str, tuple[str, ...]]:
    if not path.is_file():
        return split_by_patient(cases)
    splits = _parse_splits(_read_json(path))
    _check_known_ids(splits, {record.case_id for record in cases})
    overlap = sorted(set(splits["train"]) & set(splits["val"]))
    if overlap:
        raise DatasetError(f"expected disjoint train and val splits, got {len(overlap)} shared: {overlap[:5]}")
    listed = set().union(*splits.values())
    unlisted = [record.case_id for record in cases if record.case_id not in listed]
    if unlisted:
        logger.warning("%d case(s) are in no split of %s, e.g. %s", len(unlisted), path.name, unlisted[:3])
    return splits


def _parse_splits(data: object) -> dict[str, tuple[str, ...]]:
    """splits.json: a {"train": [...], "val": [...], ...} object, or nnU-Net's list of folds (uses fold 0)."""
    if isinstance(data, list):
        if not data:
            raise DatasetError("expected at least one fold in splits.json, got an empty list")
        data = data[0]
    if not isinstance(data, dict) or any(name not in data for name in REQUIRED_SPLITS):
        raise DatasetError(f"expected splits.json with 'train' and 'val' lists, got {type(data).__name__}")
    splits: dict[str, tuple[str, ...]] = {}
    for name, ids in data.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DatasetError(f"expected split {name!r} to be a list of case ids, got {type(ids).__name__}")
        splits[str(name)] = tuple(ids)
    return splits


def _check_known_ids(splits: Mapping[str, Sequence[str]], known: set[str]) -> None:
    for name, ids in splits.items():
        unknown = sorted(set(ids) - known)
        if unknown:
            raise DatasetError(f"expected split {name!r} to list known case ids, got unknown ids {unknown[:5]}")
