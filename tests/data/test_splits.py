"""Labelled subsets chosen by patient, and the train / val split by patient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mona_core.data.dataset import CaseRecord, load_dataset
from mona_core.data.splits import (
    LabelledSelection,
    fully_labelled_patients,
    partition_cases,
    patients_for_ratio,
    select_labelled,
    split_by_patient,
)

PATIENTS = [f"patient{p:03d}" for p in range(1, 71)]


def _records(patients: int, unlabelled: tuple[str, ...] = ()) -> list[CaseRecord]:
    records = []
    for p in range(1, patients + 1):
        for f in (1, 2):
            case_id = f"patient{p:03d}_frame{f:02d}"
            label = None if case_id in unlabelled else Path(f"{case_id}.nii.gz")
            records.append(CaseRecord(case_id, f"patient{p:03d}", Path(f"{case_id}_0000.nii.gz"), label))
    return records


@pytest.mark.parametrize(("ratio", "expected"), [(0.01, 1), (0.05, 3), (0.1, 7), (0.2, 14), (1.0, 70)])
def test_patients_for_ratio_matches_the_literature(ratio: float, expected: int) -> None:
    assert patients_for_ratio(70, ratio) == expected


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_patients_for_ratio_rejects_bad_ratios(ratio: float) -> None:
    with pytest.raises(ValueError, match="expected a label ratio in"):
        patients_for_ratio(70, ratio)


def test_selection_is_reproducible_and_seed_dependent() -> None:
    first = select_labelled(PATIENTS, ratio=0.1, seed=3)
    assert first == select_labelled(list(reversed(PATIENTS)), ratio=0.1, seed=3)
    assert len(first.labelled) == 7 and list(first.labelled) == sorted(first.labelled)
    others = {select_labelled(PATIENTS, ratio=0.1, seed=seed).labelled for seed in range(4, 8)}
    assert first.labelled not in others and len(others) == 4


def test_selection_partitions_the_training_patients() -> None:
    selection = select_labelled(PATIENTS, n_patients=5, seed=1)
    assert set(selection.labelled) | set(selection.unlabelled) == set(PATIENTS)
    assert not set(selection.labelled) & set(selection.unlabelled)
    assert selection.request == {"patients": 5, "ratio": None}


def test_selection_never_picks_an_ineligible_patient() -> None:
    eligible = PATIENTS[::7]  # 10 patients
    for seed in range(20):
        selection = select_labelled(PATIENTS, ratio=0.1, seed=seed, eligible=eligible)
        assert len(selection.labelled) == 7  # the ratio counts all 70 training patients
        assert set(selection.labelled) <= set(eligible)


def test_no_request_labels_every_eligible_patient() -> None:
    selection = select_labelled(PATIENTS, eligible=PATIENTS[:60])
    assert selection.labelled == tuple(PATIENTS[:60]) and selection.unlabelled == tuple(PATIENTS[60:])


def test_bad_requests_say_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"expected at most 10 .*got a request for 14"):
        select_labelled(PATIENTS, ratio=0.2, eligible=PATIENTS[:10])
    with pytest.raises(ValueError, match="got both"):
        select_labelled(PATIENTS, n_patients=3, ratio=0.1)
    with pytest.raises(ValueError, match="at least 1 labelled patient"):
        select_labelled(PATIENTS, n_patients=0)
    with pytest.raises(ValueError, match="among the training patients"):
        select_labelled(PATIENTS[:5], n_patients=1, eligible=["stranger"])


def test_selection_round_trips_through_json() -> None:
    selection = select_labelled(PATIENTS, ratio=0.05, seed=11)
    restored = LabelledSelection.from_dict(json.loads(json.dumps(selection.to_dict())))
    assert restored == selection
    with pytest.raises(ValueError, match="expected 'labelled'"):
        LabelledSelection.from_dict({"seed": 0})


def test_partition_cases_follows_the_selected_patients() -> None:
    records = _records(4, unlabelled=("patient004_frame02",))
    train_patients = ["patient001", "patient002", "patient004"]
    eligible = fully_labelled_patients(r for r in records if r.patient_id in train_patients)
    assert eligible == ["patient001", "patient002"]
    selection = select_labelled(train_patients, n_patients=1, seed=0, eligible=eligible)
    labelled, unlabelled = partition_cases(records, selection)
    assert {r.patient_id for r in labelled} == set(selection.labelled)
    assert len(labelled) == 2 and len(unlabelled) == 4
    assert all(r.patient_id != "patient003" for r in labelled + unlabelled)


def test_split_by_patient_keeps_frames_together() -> None:
    records = _records(20)
    splits = split_by_patient(records)
    assert splits == split_by_patient(records)
    val_patients = {case_id.split("_frame")[0] for case_id in splits["val"]}
    train_patients = {case_id.split("_frame")[0] for case_id in splits["train"]}
    assert len(val_patients) == 4 and not val_patients & train_patients
    assert split_by_patient(records, seed=1) != splits


@pytest.mark.acdc
def test_acdc_label_ratios_in_patients(acdc_root: Path) -> None:
    index = load_dataset(acdc_root)
    train = index.patients("train")
    for ratio, expected in ((0.01, 1), (0.05, 3), (0.1, 7)):
        selection = select_labelled(train, ratio=ratio, seed=0, eligible=index.fully_labelled_patients("train"))
        assert len(selection.labelled) == expected and len(selection.unlabelled) == 70 - expected
        assert set(selection.labelled) <= set(train)
