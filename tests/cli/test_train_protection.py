"""``mona train`` protects runs: a flag contradicting an existing --out is refused (nothing touched), a resume uses the
run's own settings, --force starts over, Ctrl-C saves last.pt and exits 130 without a traceback; --version, the
warning of a fully labelled run, and ACDC-style ``_gt`` label names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mona_core.cli import main
from mona_core.data.dataset import load_dataset
from mona_core.data.phantoms import write_phantom_case

REPO = Path(__file__).resolve().parents[2]
TINY = ["--size", "32", "--batch-size", "2", "--val-every", "2", "--device", "cpu"]


def _train(phantom_dataset: Path, run: Path, *extra: str) -> int:
    return main(["train", "--data", str(phantom_dataset), "--out", str(run), *extra])


def test_a_contradicting_flag_is_refused_and_a_resume_keeps_the_run_settings(
    phantom_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert _train(phantom_dataset, run, "--labelled-patients", "2", "--iterations", "4", *TINY) == 0
    request = json.loads((run / "request.json").read_text())
    assert request["config"]["iterations"] == 4 and request["labelled_patients"] == 2
    last = run / "checkpoints" / "last.pt"
    stamp = last.stat().st_mtime_ns
    capsys.readouterr()

    assert _train(phantom_dataset, run, "--iterations", "8", "--method", "mean_teacher") == 2
    error = capsys.readouterr().err
    assert "--iterations 8 (the run has 4)" in error and "--method mean_teacher (the run has supervised)" in error
    assert "--force" in error and last.stat().st_mtime_ns == stamp, "a refused run is not touched"

    assert _train(phantom_dataset, run) == 0, "no flags: resume with the run's own settings"
    out = capsys.readouterr().out
    assert "2 labelled patients" in out and "done: 4 iterations" in out

    assert _train(phantom_dataset, run, "--force", "--iterations", "6", "--labelled-patients", "1", *TINY) == 0
    assert json.loads((run / "request.json").read_text())["config"]["iterations"] == 6
    assert "done: 6 iterations" in capsys.readouterr().out


def test_without_a_labelled_subset_it_warns(
    phantom_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train(phantom_dataset, tmp_path / "run", "--iterations", "2", *TINY) == 0
    assert "warning: no --labelled-patients / --labelled-ratio" in capsys.readouterr().out


def test_ctrl_c_saves_the_checkpoint_and_exits_130(phantom_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "mona_core", "train", "--data", str(phantom_dataset), "--out", str(run)]
    command += ["--labelled-patients", "2", "--iterations", "100000", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "request.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # into the training loop
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "run the same command to resume" in out
    assert (run / "checkpoints" / "last.pt").is_file()


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "mona_core", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("mona ")


def test_acdc_gt_pairs_are_labelled_cases(tmp_path: Path) -> None:
    write_phantom_case(
        tmp_path / "patient001_frame01.nii.gz", tmp_path / "patient001_frame01_gt.nii.gz", 1, (2, 16, 16)
    )
    write_phantom_case(
        tmp_path / "patient002_frame01.nii.gz", tmp_path / "patient002_frame01_gt.nii.gz", 2, (2, 16, 16)
    )
    index = load_dataset(tmp_path)
    assert sorted(case.case_id for case in index.cases if case.label is not None) == [
        "patient001_frame01",
        "patient002_frame01",
    ]
