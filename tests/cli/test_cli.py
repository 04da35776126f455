"""The ``mona`` command line end to end on phantoms: train → export → segment → evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mona_core.cli import main
from mona_core.data.dataset import load_dataset
from mona_core.io import read_image, read_label


@pytest.fixture(scope="module")
def trained_run(phantom_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    args = ["train", "--data", str(phantom_dataset), "--method", "supervised", "--labelled-patients", "2"]
    args += ["--iterations", "4", "--size", "32", "--batch-size", "2", "--val-every", "2", "--device", "cpu"]
    assert main([*args, "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def model_dir(trained_run: Path) -> Path:
    assert main(["export", str(trained_run)]) == 0
    return trained_run / "model"


def test_train_records_the_patient_selection(trained_run: Path) -> None:
    info = json.loads((trained_run / "run.json").read_text())
    assert len(info["selection"]["labelled"]) == 2
    assert info["config"]["iterations"] == 4 and info["config"]["size"] == 32


def test_export_writes_the_model_directory(model_dir: Path) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert sorted(p.name for p in model_dir.iterdir()) == ["manifest.json", "model.onnx"]
    assert manifest["opset"] == 17 and manifest["size"] == 32 and manifest["parity"]["max_abs_diff_real"] is not None


def test_segment_keeps_the_input_grid(model_dir: Path, phantom_dataset: Path, tmp_path: Path) -> None:
    case = load_dataset(phantom_dataset).cases_in("val")[0]
    out = tmp_path / "mask.nii.gz"
    assert (
        main(
            [
                "segment",
                "--model",
                str(model_dir),
                str(case.image),
                "-o",
                str(out),
                "--overlay",
                str(tmp_path / "o.png"),
            ]
        )
        == 0
    )
    image, mask = read_image(case.image), read_label(out)
    # NIfTI stores the direction as a float32 quaternion: a re-encoded direction may move by ~1e-8.
    assert (mask.geometry.size, mask.geometry.spacing, mask.geometry.origin) == (
        image.geometry.size,
        image.geometry.spacing,
        image.geometry.origin,
    )
    assert mask.geometry.matches(image.geometry, tolerance=1e-6)
    assert (tmp_path / "o.png").is_file()


def test_evaluate_pred_against_label(
    model_dir: Path, phantom_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = load_dataset(phantom_dataset).cases_in("val")[0]
    assert case.label is not None
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(case.label),
                "--label",
                str(case.label),
                "--classes",
                "background,RV,Myo,LV",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["mean"]["dice"] == pytest.approx(1.0) and report["mean"]["asd"] == pytest.approx(0.0)
    assert set(report["per_class"]) == {"RV", "Myo", "LV"}


def test_evaluate_model_on_split(
    model_dir: Path, phantom_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    args = ["evaluate", "--model", str(model_dir), "--data", str(phantom_dataset), "--split", "val", "--json"]
    assert main([*args, "--out", str(tmp_path / "report")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "val" and len(report["cases"]) == 2
    for case in report["cases"]:
        assert set(case["classes"]) == {"RV", "Myo", "LV"}
        assert all(
            c["status"] in {"ok", "both_empty", "prediction_empty", "label_empty"} for c in case["classes"].values()
        )
    assert (tmp_path / "report" / "report.json").is_file()
    assert len(list((tmp_path / "report" / "overlays").glob("*.png"))) == 2


def test_bad_input_is_a_clear_error_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "scan.nii.gz").write_bytes(b"garbage")
    code = main(["evaluate", "--pred", str(tmp_path / "scan.nii.gz"), "--label", str(tmp_path / "scan.nii.gz")])
    assert code == 2
    assert "expected" in capsys.readouterr().err


def test_missing_dataset_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    assert "expected" in capsys.readouterr().err


def test_finetune_without_a_checkpoint_starts_from_random_weights(
    phantom_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", str(phantom_dataset), "--method", "finetune", "--iterations", "2", "--size", "32"]
    args += ["--batch-size", "4", "--val-every", "2", "--device", "cpu", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert "MONA fine-tuning starts from random weights" in capsys.readouterr().out
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


def test_patch_and_postprocess_flags_reach_the_run_and_the_exported_manifest(
    phantom_dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(phantom_dataset), "--labelled-patients", "2", "--iterations", "2", "--size", "32"]
    args += ["--patch", "16", "--postprocess", "largest_component", "--val-every", "2", "--device", "cpu"]
    assert main([*args, "--out", str(run)]) == 0
    config = json.loads((run / "run.json").read_text())["config"]
    assert config["patch"] == 16 and config["postprocess"] == "largest_component"
    assert main(["export", str(run)]) == 0
    assert json.loads((run / "model" / "manifest.json").read_text())["postprocess"] == "largest_component"
    assert main(["export", str(run), "--out", str(tmp_path / "plain"), "--postprocess", "none"]) == 0
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["postprocess"] == "none"
