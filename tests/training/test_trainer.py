"""Supervised training on phantoms: reproducible, resumable, stoppable, and blind to unlabelled patients' labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mona_core.cli.exporting import export_run
from mona_core.data.dataset import load_dataset
from mona_core.data.splits import select_labelled
from mona_core.training.checkpoint import load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.progress import ProgressEvent
from mona_core.training.trainer import resolve_device, train
from tests.training.test_mona import SMALL

TINY = TrainConfig(iterations=6, size=32, batch_size=2, val_every=3, checkpoint_every=3, log_every=1, device="cpu")


def _weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]  # type: ignore[no-any-return]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_run_writes_checkpoints_history_and_progress(phantom_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset(phantom_dataset)
    selection = select_labelled(index.patients("train"), n_patients=2, eligible=index.fully_labelled_patients("train"))
    events: list[ProgressEvent] = []
    result = train(TINY, index, selection, tmp_path / "run", progress=events.append)
    assert result.steps == 6 and not result.stopped
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[-1].fraction == 1.0 and events[-1].eta_s == pytest.approx(0.0)
    assert events[2].val_dice is not None and 0.0 <= events[2].val_dice <= 1.0
    assert result.best is not None and result.best["step"] in (3, 6)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["step"] == 6 and saved["data"] == {
        "classes": list(index.classes),
        "preset": "mri",
        "size": 32,
    }
    assert TrainConfig.from_dict(saved["train_config"]) == TINY
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"loss", "loss_ce", "loss_dice", "lr"} <= set(rows[0])
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    run_info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_info["selection"]["labelled"] == list(selection.labelled)


def test_same_seed_same_weights(phantom_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset(phantom_dataset)
    selection = select_labelled(index.patients("train"), n_patients=2, eligible=index.fully_labelled_patients("train"))
    config = TINY.with_overrides(iterations=3, val_every=100)
    train(config, index, selection, tmp_path / "a")
    train(config, index, selection, tmp_path / "b")
    train(config.with_overrides(seed=1), index, selection, tmp_path / "c")
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert not _same(_weights(tmp_path / "a"), _weights(tmp_path / "c"))


def test_stop_then_resume_equals_an_uninterrupted_run(phantom_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset(phantom_dataset)
    selection = select_labelled(index.patients("train"), n_patients=2, eligible=index.fully_labelled_patients("train"))
    config = TINY.with_overrides(val_every=100, checkpoint_every=100)
    train(config, index, selection, tmp_path / "straight")
    steps = iter(range(100))
    stopped = train(config, index, selection, tmp_path / "resumed", should_stop=lambda: next(steps) >= 4)
    assert stopped.stopped and stopped.steps == 4
    resumed = train(config, index, selection, tmp_path / "resumed")
    assert resumed.steps == 6 and not resumed.stopped
    assert _same(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))


def test_unlabelled_patients_labels_are_never_opened(phantom_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(phantom_dataset, data)
    index = load_dataset(data)
    selection = select_labelled(index.patients("train"), n_patients=1, eligible=index.fully_labelled_patients("train"))
    for case in index.cases_in("train"):
        if case.patient_id in selection.unlabelled and case.label is not None:
            case.label.write_bytes(b"not a NIfTI file at all")  # reading it would raise
    result = train(TINY.with_overrides(iterations=2), index, selection, tmp_path / "run")
    assert result.steps == 2


def test_cuda_request_without_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="expected a CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["supervised", "mean_teacher", "cps", "bcp", "mona"])
def test_cuda_training_step(method: str, phantom_dataset: Path, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    index = load_dataset(phantom_dataset)
    selection = select_labelled(index.patients("train"), n_patients=2, eligible=index.fully_labelled_patients("train"))
    config = SMALL.with_overrides(device="cuda", method=method)  # MONA-sized heads and banks for 32x32 slices
    result = train(config, index, selection, tmp_path / "run")
    assert result.steps == SMALL.iterations and result.best is not None
    weights = _weights(tmp_path / "run")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values() if tensor.is_floating_point())
    exported = export_run(tmp_path / "run", tmp_path / "model")  # a CUDA-trained run exports and passes parity
    assert exported.manifest.parity["max_abs_diff_random"] < 1e-4
