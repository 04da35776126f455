"""MONA under the shared trainer: GLCon pre-training, anatomical contrastive reconstruction fine-tuning, and the
chained ``mona`` run (pre-train, then fine-tune from its last checkpoint), with the Table III switches."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from mona_core.data.dataset import DatasetIndex, load_dataset
from mona_core.data.splits import LabelledSelection, select_labelled
from mona_core.models import UNetConfig
from mona_core.training.checkpoint import checkpoint_for_export, load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.methods import Batch, build_method
from mona_core.training.methods.mona import GLCon
from mona_core.training.progress import ProgressEvent
from mona_core.training.trainer import train

SMALL = TrainConfig(
    iterations=4,
    size=32,
    batch_size=4,
    val_every=2,
    checkpoint_every=2,
    log_every=1,
    device="cpu",
    local_views=4,
    local_view_size=16,
    num_queries=16,
    num_negatives=32,
    memory_size=8,
)


def _data(phantom_dataset: Path) -> tuple[DatasetIndex, LabelledSelection]:
    index = load_dataset(phantom_dataset)
    eligible = index.fully_labelled_patients("train")
    return index, select_labelled(index.patients("train"), n_patients=1, eligible=eligible)


def _batch(seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, 8:24, 8:24], labels[:, 12:20, 12:20] = 1, 3
    images = labels[:, None].float() / 3 + 0.05 * torch.rand(2, 1, 32, 32, generator=generator)
    return Batch(images, labels, torch.rand(2, 1, 32, 32, generator=generator))


def test_glcon_fills_its_memory_and_trains_only_the_student() -> None:
    method = build_method(SMALL.with_overrides(method="pretrain"), UNetConfig(), torch.device("cpu"))
    assert isinstance(method, GLCon)
    first = method.step(_batch(), 0)
    assert first["loss_inst_global"].item() == 0.0  # no mined views yet
    assert len(method.global_memory) == 2 and len(method.local_memory) == SMALL.local_views
    method.after_step(0)  # as the trainer does: the eval-mode teacher takes the student's BatchNorm statistics
    second = method.step(_batch(1), 1)
    for term in ("loss_inst_global", "loss_inst_local"):  # KL >= 0; at initialisation it can round to 0
        assert second[term].requires_grad and second[term].item() > -1e-6
    ramp = math.exp(-5.0 * (1.0 - 1 / round(0.4 * SMALL.iterations)) ** 2)
    instance = second["loss_inst_global"] + second["loss_inst_local"]
    expected = second["loss_ce"] * 0.5 + second["loss_dice"] * 0.5 + ramp * instance
    assert second["rampup"].item() == pytest.approx(ramp)
    assert second["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    second["loss"].backward()  # type: ignore[no-untyped-call]
    assert method.heads.predictor.mlp[0].weight.grad is not None
    assert all(p.grad is None for p in method.teacher_heads.parameters())


@pytest.mark.parametrize(
    ("switches", "active"),
    [
        ({}, {"loss_contrast", "loss_eqv", "loss_nn"}),
        ({"tailness": False, "consistency": False, "diversity": False}, set()),
    ],
)
def test_finetune_terms_follow_the_switches(switches: dict[str, bool], active: set[str]) -> None:
    method = build_method(SMALL.with_overrides(method="finetune", **switches), UNetConfig(), torch.device("cpu"))
    method.step(_batch(), 0)  # fills the neighbour bank
    parts = method.step(_batch(1), 1)
    for name in ("loss_contrast", "loss_eqv", "loss_nn"):
        assert (parts[name].item() != 0.0) == (name in active), name
    ramp = math.exp(-5.0 * (1.0 - 1 / round(0.4 * SMALL.iterations)) ** 2)  # step 1 of a 2-step ramp
    assert parts["rampup"].item() == pytest.approx(ramp)
    unsupervised = parts["loss_unsup"] + 0.01 * parts["loss_contrast"] + parts["loss_eqv"] + parts["loss_nn"]
    expected = parts["loss_ce"] * 0.5 + parts["loss_dice"] * 0.5 + ramp * unsupervised
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_finetune_ramps_the_unsupervised_terms_up_to_the_paper_weights() -> None:
    config = SMALL.with_overrides(method="finetune", iterations=10, rampup_fraction=0.5)
    method = build_method(config, UNetConfig(), torch.device("cpu"))
    ramps = [method.step(_batch(step), step)["rampup"].item() for step in (0, 2, 5, 9)]
    assert ramps[0] == pytest.approx(math.exp(-5.0)) and ramps[0] < ramps[1] < ramps[2] == 1.0 == ramps[3]
    literal = build_method(config.with_overrides(rampup_fraction=0.0), UNetConfig(), torch.device("cpu"))
    literal.step(_batch(), 0)
    parts = literal.step(_batch(1), 1)
    unsupervised = parts["loss_unsup"] + 0.01 * parts["loss_contrast"] + parts["loss_eqv"] + parts["loss_nn"]
    expected = parts["loss_ce"] * 0.5 + parts["loss_dice"] * 0.5 + unsupervised
    assert parts["rampup"].item() == 1.0
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_mona_chains_pretraining_into_finetuning(phantom_dataset: Path, tmp_path: Path) -> None:
    index, selection = _data(phantom_dataset)
    events: list[ProgressEvent] = []
    config = SMALL.with_overrides(method="mona", iterations=6)
    result = train(config, index, selection, tmp_path / "run", progress=events.append)
    assert result.steps == 6 and not result.stopped
    assert [e.stage for e in events] == ["pretrain"] * 2 + ["finetune"] * 4
    assert [e.step for e in events] == list(range(1, 7)) and {e.total for e in events} == {6}
    pretrain = load_checkpoint(tmp_path / "run" / "pretrain" / "checkpoints" / "last.pt")
    finetune = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert pretrain["method"] == "pretrain" and finetune["method"] == "finetune"
    assert finetune["train_config"]["init_from"].endswith("pretrain/checkpoints/last.pt")
    assert set(finetune["modules"]) == {"model", "heads", "teacher", "teacher_heads"}
    assert checkpoint_for_export(tmp_path / "run").parent == tmp_path / "run" / "checkpoints"


def test_finetuning_starts_from_the_pretrained_weights(phantom_dataset: Path, tmp_path: Path) -> None:
    index, selection = _data(phantom_dataset)
    train(SMALL.with_overrides(method="pretrain", iterations=2), index, selection, tmp_path / "pre")
    init = tmp_path / "pre" / "checkpoints" / "last.pt"
    stop_at_once = train(
        SMALL.with_overrides(method="finetune", init_from=str(init)),
        index,
        selection,
        tmp_path / "fine",
        should_stop=lambda: True,
    )
    assert stop_at_once.stopped and stop_at_once.steps == 0
    source, started = load_checkpoint(init)["modules"], load_checkpoint(tmp_path / "fine" / "checkpoints" / "last.pt")
    for name in ("model", "heads", "teacher"):
        assert all(torch.equal(source[name][k], started["modules"][name][k]) for k in source[name]), name


def test_a_stopped_mona_run_resumes_to_the_end(phantom_dataset: Path, tmp_path: Path) -> None:
    index, selection = _data(phantom_dataset)
    config = SMALL.with_overrides(method="mona", iterations=6)
    calls = itertools.count()
    stopped = train(config, index, selection, tmp_path / "run", should_stop=lambda: next(calls) >= 1)
    assert stopped.stopped
    finished = train(config, index, selection, tmp_path / "run")
    assert finished.steps == 6 and not finished.stopped
