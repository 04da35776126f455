"""Per-class DSC / ASD: hand-computed values, spacing order, the four statuses and the aggregation rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from mona_core.metrics import (
    RULE_TEXT,
    CaseMetrics,
    ClassMetrics,
    MetricAccumulator,
    Status,
    asd_unit,
    evaluate_case,
    evaluate_volumes,
    spacing_zyx_from_xyz,
)

NAMES = ("background", "A")
REPO = Path(__file__).resolve().parents[2]


def _plates(axis: int, shape: tuple[int, int, int] = (5, 5, 5)) -> tuple[np.ndarray, np.ndarray]:
    """Two one-voxel-thick plates perpendicular to ``axis``, at index 1 and 2: every surface voxel of one is
    exactly one step along ``axis`` from the other, so ASD is that step's spacing."""
    pred = np.zeros(shape, dtype=np.uint8)
    label = np.zeros(shape, dtype=np.uint8)
    index: list[slice | int] = [slice(1, 4)] * 3
    index[axis] = 1
    pred[tuple(index)] = 1
    index[axis] = 2
    label[tuple(index)] = 1
    return pred, label


def _scipy_assd(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Independent ASD: surface voxels (mask minus its 6-connected erosion), both directions pooled."""
    structure = generate_binary_structure(3, 1)
    border_a = a & ~binary_erosion(a, structure)
    border_b = b & ~binary_erosion(b, structure)
    a_to_b = distance_transform_edt(~border_b, sampling=spacing)[border_a]
    b_to_a = distance_transform_edt(~border_a, sampling=spacing)[border_b]
    return float(np.concatenate([a_to_b, b_to_a]).mean())


def test_dice_by_hand() -> None:
    pred = np.zeros((1, 1, 6), dtype=np.uint8)
    label = np.zeros((1, 1, 6), dtype=np.uint8)
    pred[0, 0, 0:4] = 1
    label[0, 0, 2:6] = 1  # 2 of 4 voxels overlap: 2 * 2 / (4 + 4)
    assert evaluate_case(pred, label, NAMES).classes["A"].dice == pytest.approx(0.5)
    label[0, 0, 4:6] = 0  # label is 2 voxels, both inside pred: 2 * 2 / (4 + 2)
    assert evaluate_case(pred, label, NAMES).classes["A"].dice == pytest.approx(2 / 3)


def test_identical_masks_have_asd_zero_and_dice_one() -> None:
    mask = np.zeros((4, 6, 6), dtype=np.uint8)
    mask[1:3, 2:5, 1:4] = 1
    result = evaluate_case(mask, mask, NAMES, spacing_zyx=(5.0, 1.0, 1.0)).classes["A"]
    assert result == ClassMetrics(dice=1.0, asd=0.0, status=Status.OK)


def test_plates_one_step_apart_have_asd_equal_to_the_spacing() -> None:
    pred, label = _plates(axis=2)
    assert evaluate_case(pred, label, NAMES).classes["A"].asd == pytest.approx(1.0)
    wide_x = evaluate_case(pred, label, NAMES, spacing_zyx=(1.0, 1.0, 2.0))
    assert wide_x.classes["A"].asd == pytest.approx(2.0)


def test_cube_shifted_along_x_matches_scipy() -> None:
    pred = np.zeros((8, 8, 9), dtype=np.uint8)
    pred[2:6, 2:6, 2:6] = 1
    label = np.roll(pred, 1, axis=2)
    result = evaluate_case(pred, label, NAMES).classes["A"]
    expected = _scipy_assd(pred.astype(bool), label.astype(bool), (1.0, 1.0, 1.0))
    assert result.asd == pytest.approx(expected, abs=1e-9)
    assert 0.0 < expected < 1.0
    assert result.dice == pytest.approx(2 * 48 / 128)  # 4x4x3 overlap of two 4x4x4 cubes


def test_anisotropic_spacing_is_in_numpy_axis_order() -> None:
    pred, label = _plates(axis=0)  # shifted along z
    iso = evaluate_case(pred, label, NAMES, spacing_zyx=(1.0, 1.0, 1.0)).classes["A"].asd
    aniso = evaluate_case(pred, label, NAMES, spacing_zyx=(5.0, 1.0, 1.0)).classes["A"].asd
    assert iso == pytest.approx(1.0)
    assert aniso == pytest.approx(5.0)
    # SimpleITK order (x, y, z) = (1, 1, 5) must be reversed first; passing it unreversed is wrong.
    assert spacing_zyx_from_xyz((1.0, 1.0, 5.0)) == (5.0, 1.0, 1.0)
    wrong = evaluate_case(pred, label, NAMES, spacing_zyx=(1.0, 1.0, 5.0)).classes["A"].asd
    assert wrong == pytest.approx(1.0)


def test_anisotropic_cube_matches_scipy() -> None:
    pred = np.zeros((6, 8, 8), dtype=np.uint8)
    pred[1:4, 2:6, 2:6] = 1
    label = np.roll(pred, 1, axis=0)
    spacing = (5.0, 1.5, 1.5)
    result = evaluate_case(pred, label, NAMES, spacing_zyx=spacing).classes["A"].asd
    assert result == pytest.approx(_scipy_assd(pred.astype(bool), label.astype(bool), spacing), abs=1e-9)


def test_four_statuses() -> None:
    names = ("background", "ok", "missed", "hallucinated", "absent")
    pred = np.zeros((1, 4, 4), dtype=np.uint8)
    label = np.zeros((1, 4, 4), dtype=np.uint8)
    pred[0, 0, :2] = 1
    label[0, 0, :2] = 1
    label[0, 1, :2] = 2
    pred[0, 2, :2] = 3
    classes = evaluate_case(pred, label, names, case_id="c1").classes
    assert list(classes) == ["ok", "missed", "hallucinated", "absent"]
    assert classes["ok"] == ClassMetrics(1.0, 0.0, Status.OK)
    assert classes["missed"] == ClassMetrics(0.0, None, Status.PRED_EMPTY)
    assert classes["hallucinated"] == ClassMetrics(0.0, None, Status.LABEL_EMPTY)
    assert classes["absent"] == ClassMetrics(None, None, Status.BOTH_EMPTY)


OK, BOTH, PRED_EMPTY, LABEL_EMPTY = Status.OK, Status.BOTH_EMPTY, Status.PRED_EMPTY, Status.LABEL_EMPTY


def _case(case_id: str, a: ClassMetrics, b: ClassMetrics) -> CaseMetrics:
    return CaseMetrics(case_id=case_id, classes={"A": a, "B": b})


def test_aggregation_rule_by_hand() -> None:
    acc = MetricAccumulator(("background", "A", "B"), unit="voxels")
    acc.add(_case("1", ClassMetrics(0.8, 2.0, OK), ClassMetrics(0.9, 1.0, OK)))
    acc.add(_case("2", ClassMetrics(0.6, 4.0, OK), ClassMetrics(0.0, None, LABEL_EMPTY)))
    acc.add(_case("3", ClassMetrics(None, None, BOTH), ClassMetrics(0.0, None, PRED_EMPTY)))
    out = acc.aggregate()
    a, b = out["per_class"]["A"], out["per_class"]["B"]
    # A: both-empty case 3 excluded -> DSC (0.8 + 0.6) / 2, ASD (2 + 4) / 2
    assert (a["dice"], a["asd"], a["n_dice"], a["n_asd"]) == (pytest.approx(0.7), pytest.approx(3.0), 2, 2)
    assert a["status_counts"] == {"ok": 2, "both_empty": 1, "prediction_empty": 0, "label_empty": 0}
    # B: hallucinated and missed count 0 in DSC -> 0.9 / 3; ASD only from the ok case
    assert (b["dice"], b["asd"], b["n_dice"], b["n_asd"]) == (pytest.approx(0.3), pytest.approx(1.0), 3, 1)
    assert b["status_counts"] == {"ok": 1, "both_empty": 0, "prediction_empty": 1, "label_empty": 1}
    assert out["mean"] == {"dice": pytest.approx(0.5), "asd": pytest.approx(2.0)}
    assert out["unit"] == "voxels"
    assert out["rule"] == RULE_TEXT
    assert [c["case_id"] for c in out["cases"]] == ["1", "2", "3"]
    assert out["cases"][2]["classes"]["A"] == {"dice": None, "asd": None, "status": "both_empty"}
    json.dumps(out)


def test_mean_over_classes_skips_classes_without_a_value() -> None:
    acc = MetricAccumulator(("background", "A", "B"))
    acc.add(_case("1", ClassMetrics(0.4, 3.0, OK), ClassMetrics(None, None, BOTH)))
    acc.add(_case("2", ClassMetrics(0.0, None, PRED_EMPTY), ClassMetrics(None, None, BOTH)))
    out = acc.aggregate()
    assert out["per_class"]["B"]["dice"] is None and out["per_class"]["B"]["asd"] is None
    assert out["mean"] == {"dice": pytest.approx(0.2), "asd": pytest.approx(3.0)}
    assert len(acc) == 2
    acc.reset()
    assert acc.aggregate()["mean"] == {"dice": None, "asd": None}


def test_evaluate_volumes_end_to_end() -> None:
    pred, label = _plates(axis=0)
    out = evaluate_volumes(pred, label, NAMES, spacing_zyx=(5.0, 1.0, 1.0))
    assert out["unit"] == "mm"
    assert out["mean"] == {"dice": 0.0, "asd": pytest.approx(5.0)}
    assert evaluate_volumes(pred, label, NAMES)["unit"] == "voxels"
    json.dumps(out)


def test_units() -> None:
    assert asd_unit((1.0, 1.0, 1.0)) == "mm"
    assert asd_unit(None) == "voxels"


def test_bad_inputs_say_expected_and_got() -> None:
    a = np.zeros((2, 3, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"expected prediction and label of the same shape, got"):
        evaluate_case(a, np.zeros((2, 3, 5), dtype=np.uint8), NAMES)
    with pytest.raises(ValueError, match="integer class-index prediction array, got dtype float32"):
        evaluate_case(a.astype(np.float32), a, NAMES)
    with pytest.raises(ValueError, match="expected 3 spacing values"):
        evaluate_case(a, a, NAMES, spacing_zyx=(1.0, 1.0))
    with pytest.raises(ValueError, match="expected positive spacing"):
        evaluate_case(a, a, NAMES, spacing_zyx=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="expected classes"):
        MetricAccumulator(("background", "B")).add(evaluate_case(a, a, NAMES))


def test_metrics_and_report_do_not_import_torch_or_pyplot() -> None:
    code = (
        "import mona_core.metrics, mona_core.report; import sys; "
        "assert 'torch' not in sys.modules; assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_dice_only_mode_skips_surface_distances() -> None:
    pred = np.zeros((2, 4, 4), dtype=np.uint8)
    label = np.zeros((2, 4, 4), dtype=np.uint8)
    pred[0, :2, :2] = 1
    label[0, :2, :] = 1
    metrics = evaluate_case(pred, label, ["background", "a"], with_asd=False).classes["a"]
    assert metrics.status == "ok"
    assert metrics.dice == pytest.approx(2 * 4 / (4 + 8))
    assert metrics.asd is None


@pytest.mark.parametrize("seed", range(6))
def test_cropping_to_the_union_changes_neither_dsc_nor_asd(seed: int) -> None:
    from medpy.metric.binary import assd, dc

    from mona_core.metrics.segmentation import crop_to_union

    rng = np.random.default_rng(seed)
    shape = (6, 40, 48)
    first, second = np.zeros(shape, bool), np.zeros(shape, bool)
    for mask in (first, second):
        z, y, x = rng.integers(0, 3), rng.integers(0, 30), rng.integers(0, 38)  # blobs may touch the array's edge
        mask[z : z + rng.integers(1, 4), y : y + rng.integers(2, 11), x : x + rng.integers(2, 11)] = True
    cropped = crop_to_union(first, second)
    assert cropped[0].size < first.size
    spacing = (7.0, 1.25, 1.5)
    assert dc(*cropped) == dc(first, second)
    assert assd(*cropped, voxelspacing=spacing) == pytest.approx(assd(first, second, voxelspacing=spacing), abs=1e-12)
