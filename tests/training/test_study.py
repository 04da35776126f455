"""The label-efficiency study: every (ratio, method) cell trained under one budget, scored, and reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mona_core.cli import main
from mona_core.data.dataset import load_dataset
from mona_core.training.config import StudyConfig, TrainConfig
from mona_core.training.study import run_study

TINY = TrainConfig(iterations=2, size=32, batch_size=4, val_every=2, checkpoint_every=2, log_every=1, device="cpu")


def test_study_reports_every_cell(phantom_dataset: Path, tmp_path: Path) -> None:
    study = StudyConfig(methods=("supervised", "mean_teacher"), ratios=(0.25, 0.8), base=TINY)
    report = run_study(study, load_dataset(phantom_dataset), tmp_path / "study")
    assert report is not None
    cells = [(c["ratio"], c["method"], len(c["labelled_patients"])) for c in report["cells"]]
    assert cells == [
        (0.25, "supervised", 1),
        (0.25, "mean_teacher", 1),
        (0.8, "supervised", 4),
        (0.8, "mean_teacher", 4),
    ]
    for cell in report["cells"]:
        assert set(cell["per_class"]) == {"RV", "Myo", "LV"} and cell["best"]["step"] == 2
        best, last = cell["scores"]["best_val"], cell["scores"]["last_val"]
        assert (best["checkpoint"], best["split"], last["checkpoint"], last["split"]) == (
            "best.pt",
            "val",
            "last.pt",
            "val",
        )
        assert best["mean"] == cell["mean"] and last["step"] == 2
    saved = json.loads((tmp_path / "study" / "study.json").read_text())
    assert saved["cells"] == json.loads(json.dumps(report["cells"]))
    markdown = (tmp_path / "study" / "study.md").read_text()
    assert markdown.count("\n") == 4 + 4 and "| 0.25 (1 pt) | supervised |" in markdown
    assert "selected and scored on the validation split" in markdown
    assert (tmp_path / "study" / "study.png").read_bytes()[:4] == b"\x89PNG"


def test_study_config_is_validated() -> None:
    with pytest.raises(ValueError, match="expected methods among"):
        StudyConfig(methods=("pretrain",))
    with pytest.raises(ValueError, match="expected labelled ratios"):
        StudyConfig(ratios=(0.0,))


def test_study_from_the_command_line(phantom_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["study", "--data", str(phantom_dataset), "--methods", "supervised", "--ratios", "0.5"]
    args += ["--iterations", "2", "--size", "32", "--batch-size", "2", "--val-every", "2", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    assert "| 0.5 (2 pt) | supervised |" in capsys.readouterr().out


def test_study_request_round_trip() -> None:
    study = StudyConfig.from_request({"methods": ["supervised"], "ratios": [0.1], "iterations": 7, "size": 64})
    assert study.base.iterations == 7 and study.base.size == 64 and study.total_iterations == 7
    assert StudyConfig.from_dict(study.to_dict()) == study
    with pytest.raises(ValueError, match="unknown"):
        StudyConfig.from_request({"methods": ["supervised"], "k1": 3})


def test_a_dataset_with_a_test_split_gets_test_scores(phantom_dataset: Path, tmp_path: Path) -> None:
    """Selected on val, scored on the held-out test patients: the figure users should quote."""
    root = tmp_path / "with_test"
    shutil.copytree(phantom_dataset, root)
    splits = json.loads((root / "splits.json").read_text())
    moved = [case for case in splits["train"] if case.startswith("patient004")]
    splits = {**splits, "train": [c for c in splits["train"] if c not in moved], "test": moved}
    (root / "splits.json").write_text(json.dumps(splits))
    study = StudyConfig(methods=("supervised",), ratios=(0.5,), base=TINY)
    report = run_study(study, load_dataset(root), tmp_path / "study")
    assert report is not None
    test = report["cells"][0]["scores"]["best_test"]
    assert (test["checkpoint"], test["split"]) == ("best.pt", "test") and test["mean"]["dice"] is not None
    assert len(test["cases"]) == len(moved)
    last_row = (tmp_path / "study" / "study.md").read_text().splitlines()[-1]
    assert last_row.split("|")[-2].strip() != "n/a"  # the test column is filled
