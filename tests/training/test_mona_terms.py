"""Each MONA term trains what it claims, at the level where it runs: the method's step, the gradients that reach
the named parameters, the EMA teacher, the checkpoint that is exported, and a resumed run.

These tests are written to fail for specific mistakes (each test names the one it guards against): a loss detached
at its call site, negatives drawn without the class-relation graph, labelled pixels left out of the contrast,
equivariance between two different views, a best checkpoint that is not the best, no EMA update, eq. 5 with no
effect, a teacher whose output depends on dropout or on its batch companions, GLCon views that do not align, and a
resume that forgets the method's generator or memory banks.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

import mona_core.training.methods.mona as mona_module
import mona_core.training.trainer as trainer_module
from mona_core.cli.exporting import export_run
from mona_core.data.dataset import load_dataset
from mona_core.data.gpu_augment import RandomAffineTransform, StrongAugmentConfig
from mona_core.data.splits import select_labelled
from mona_core.losses import anatomical_contrast_loss
from mona_core.models import UNetConfig, build_model
from mona_core.models.heads import sample_pixels
from mona_core.training.checkpoint import load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.methods import Batch, build_method
from mona_core.training.methods.base import set_train_modes
from mona_core.training.methods.mona import AnatomicalContrastiveReconstruction, GLCon
from mona_core.training.trainer import train
from tests.training.test_mona import SMALL, _batch

CPU = torch.device("cpu")
FULL_WEIGHT = SMALL.with_overrides(method="finetune", rampup_fraction=0.0)


def _finetune(**overrides: Any) -> AnatomicalContrastiveReconstruction:
    method = build_method(FULL_WEIGHT.with_overrides(**overrides), UNetConfig(), CPU)
    assert isinstance(method, AnatomicalContrastiveReconstruction)
    set_train_modes(method.modules())
    return method


def _grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _norm(grads: list[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


# --- the total loss is L_sup + sum of lambda * term, and every term reaches the student ----------------------------


def test_every_finetune_term_sends_a_gradient_and_the_total_is_their_weighted_sum() -> None:
    """Guards: L_unsup (or any term) detached, at its call site or in the sum."""
    method = _finetune()
    method.step(_batch(), 0)  # fills the neighbour bank
    parts = method.step(_batch(1), 1)
    params = [p for p in method.trainable() if p.requires_grad]
    weights = {"loss_unsup": 1.0, "loss_contrast": 0.01, "loss_eqv": 1.0, "loss_nn": 1.0}
    term_grads = {name: _grads(parts[name], params) for name in weights}
    for name, grads in term_grads.items():
        assert _norm(grads) > 1e-6, f"{name} sends no gradient to the student"
    expected = _grads(parts["loss_ce"] * 0.5 + parts["loss_dice"] * 0.5, params)
    for name, weight in weights.items():
        expected = [e + weight * g for e, g in zip(expected, term_grads[name], strict=True)]
    total = _grads(parts["loss"], params)
    assert _norm([t - e for t, e in zip(total, expected, strict=True)]) <= 1e-4 * _norm(expected)


def test_the_neighbour_term_trains_the_predictor_projection_and_encoder() -> None:
    """Guards: the nearest-neighbour loss detached at its call site (the reference code's bug, at step level)."""
    method = _finetune(tailness=False, consistency=False, unsup_weight=0.0)
    method.step(_batch(), 0)
    parts = method.step(_batch(1), 1)
    for name, module in {
        "predictor": method.heads.predictor,
        "projection": method.heads.projection,
        "encoder": method.model.down,
    }.items():
        assert _norm(_grads(parts["loss_nn"], list(module.parameters()))) > 1e-6, name


def test_labelled_pixels_take_part_in_the_contrast() -> None:
    """Guards: the contrast computed on the unlabelled (pseudo-labelled) pixels only."""
    method = _finetune()
    method.model.eval()  # no batch statistics: a labelled image can only reach the loss through its own pixels
    batch = _batch()
    images = batch.images.clone().requires_grad_(True)
    parts = method.step(Batch(images, batch.labels, batch.unlabelled), 0)
    (grad,) = torch.autograd.grad(parts["loss_contrast"], images)
    assert grad.abs().sum().item() > 0.0


class _IdentityTransform(RandomAffineTransform):
    """T = identity, and no intensity change: then eq. 6 on the same x is exactly zero for a deterministic F."""

    @classmethod
    def sample(cls, batch: int, generator: torch.Generator, *args: Any, **kwargs: Any) -> RandomAffineTransform:
        return cls(torch.zeros(batch), torch.ones(batch), torch.zeros(batch, 2))

    @staticmethod
    def intensity(images: torch.Tensor, generator: torch.Generator, *args: Any, **kwargs: Any) -> torch.Tensor:
        return images


def test_equivariance_compares_the_same_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards: eq. 6 between two differently augmented views (the reference code's bug), at step level."""
    monkeypatch.setattr(mona_module, "RandomAffineTransform", _IdentityTransform)
    method = _finetune(tailness=False, diversity=False)
    method.model.eval()
    parts = method.step(_batch(), 0)
    assert parts["loss_eqv"].item() <= 1e-9
    monkeypatch.setattr(mona_module, "RandomAffineTransform", RandomAffineTransform)
    assert method.step(_batch(), 0)["loss_eqv"].item() > 1e-7  # a real T: the term is alive


# --- eq. 4-5: which pixels and which negatives -------------------------------------------------------------------


def test_hard_queries_are_chosen_among_all_pixels_of_a_class() -> None:
    """Guards: eq. 5 as a no-op (a uniform draw, then "hard first" among the few pixels already drawn)."""
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 8:24, 8:24] = 1
    confidence = torch.full((1, 32, 32), 0.99)
    confidence[0, 8:24, 8] = 0.5  # 16 hard pixels of class 1 out of 256
    fused = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32)
    generator = torch.Generator().manual_seed(0)
    sample = sample_pixels(fused, labels, confidence, 16, generator, hard_threshold=0.97)
    hard = sample.labels == 1
    assert torch.all(sample.confidence[hard] == 0.5) and int(hard.sum()) == 16
    uniform = sample_pixels(fused, labels, confidence, 16, torch.Generator().manual_seed(0))
    assert (uniform.confidence[uniform.labels == 1] == 0.5).sum() < 8


def test_the_confidence_threshold_changes_the_tailness_term() -> None:
    """Guards: eq. 5 with no effect in training (delta changed nothing the method learned from)."""
    losses = []
    for threshold in (0.97, 0.26):  # at initialisation confidences sit near 1/4 classes: 0.26 splits them
        torch.manual_seed(0)
        method = _finetune(consistency=False, diversity=False, hard_threshold=threshold)
        losses.append(method.step(_batch(), 0)["loss_contrast"].item())
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)


def _expected_contrast(shares: np.ndarray, cos: np.ndarray, tau: float, negatives: int) -> float:
    """Mean over classes of -log(e^{1/tau} / (e^{1/tau} + sum_v n_v e^{cos[c, v]/tau})) with n_v = shares * N."""
    total = 0.0
    for c in range(len(cos)):
        others = [v for v in range(len(cos)) if v != c]
        negative = sum(shares[c, v] * negatives * math.exp(cos[c, v] / tau) for v in others)
        total += -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + negative))
    return total / len(cos)


def test_negatives_follow_the_class_relation_graph() -> None:
    """Guards: negatives drawn uniformly across classes instead of from softmax_v(G[c, v])."""
    angle = math.acos(0.9)
    directions = torch.tensor([[1.0, 0.0], [math.cos(angle), math.sin(angle)], [-1.0, 0.0]])
    reps = directions.repeat_interleave(64, dim=0)  # every pixel of a class sits on its class mean
    labels = torch.arange(3).repeat_interleave(64)
    loss = anatomical_contrast_loss(
        reps, labels, torch.full((192,), 0.5), num_queries=64, num_negatives=4096, tau=0.5,
        generator=torch.Generator().manual_seed(0),
    ).item()  # fmt: skip
    cos = (directions @ directions.T).numpy()
    graph = np.where(np.eye(3, dtype=bool), -np.inf, cos)
    softmax = np.exp(graph) / np.exp(graph).sum(axis=1, keepdims=True)
    uniform = np.where(np.eye(3, dtype=bool), 0.0, 0.5)
    assert loss == pytest.approx(_expected_contrast(softmax, cos, 0.5, 4096), rel=0.01)
    assert abs(loss - _expected_contrast(uniform, cos, 0.5, 4096)) > 0.05


# --- teachers ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pretrain", "finetune", "mean_teacher"])
def test_the_teacher_is_an_ema_of_the_student_after_each_step(name: str) -> None:
    """Guards: no EMA update of the teacher (networks and heads)."""
    method: Any = build_method(FULL_WEIGHT.with_overrides(method=name), UNetConfig(), CPU)
    set_train_modes(method.modules())
    pairs = [(method.teacher, method.model)]
    if hasattr(method, "teacher_heads"):
        pairs.append((method.teacher_heads, method.heads))
    before = [[p.clone() for p in teacher.parameters()] for teacher, _ in pairs]
    optimizer = torch.optim.SGD(method.trainable(), lr=0.1)
    method.step(_batch(), 0)["loss"].backward()
    optimizer.step()
    method.after_step(0)
    decay = FULL_WEIGHT.ema_decay
    for (teacher, student), old in zip(pairs, before, strict=True):
        moved = False
        for t, s, o in zip(teacher.parameters(), student.parameters(), old, strict=True):
            assert torch.allclose(t, decay * o + (1 - decay) * s, atol=1e-6)
            moved = moved or not torch.equal(t, o)
        assert moved


def test_teacher_outputs_depend_on_the_input_alone() -> None:
    """Guards: a teacher in train mode (dropout, batch statistics of its companions)."""
    method = _finetune()
    x = _batch().unlabelled
    with torch.no_grad():
        first = method.teacher(x)
        again = method.teacher(x)
        with_others = method.teacher(torch.cat([x, torch.rand(3, 1, 32, 32)]))[: len(x)]
        embedding = method.teacher_heads.projection(method.teacher.forward_features(x).bottleneck)
        embedding_with_others = method.teacher_heads.projection(
            method.teacher.forward_features(torch.cat([x, x.flip(0)])).bottleneck
        )[: len(x)]
    assert torch.equal(first, again)
    assert torch.allclose(first, with_others, atol=1e-5)
    assert torch.allclose(embedding, embedding_with_others, atol=1e-5)
    assert method.model.training and not method.teacher.training and not method.teacher_heads.training


def test_the_trainer_keeps_teachers_in_eval_mode(
    phantom_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards: the training loop switching every module (teachers too) to train mode."""
    built: list[Any] = []
    real_build = trainer_module.build_method

    def keep(*args: Any) -> Any:
        built.append(real_build(*args))
        return built[-1]

    monkeypatch.setattr(trainer_module, "build_method", keep)
    modes: list[tuple[bool, bool]] = []
    index = load_dataset(phantom_dataset)
    selection = select_labelled(index.patients("train"), n_patients=1, eligible=index.fully_labelled_patients("train"))
    config = SMALL.with_overrides(method="finetune", iterations=2, val_every=1)
    train(config, index, selection, tmp_path / "run", progress=lambda _: modes.append(_modes(built[-1])))
    assert modes == [(True, False), (True, False)]


def _modes(method: Any) -> tuple[bool, bool]:
    return bool(method.model.training), bool(method.teacher.training or method.teacher_heads.training)


def test_glcon_student_and_teacher_views_show_the_same_anatomy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards: GLCon's student view with CutMix or a deformation (then same-location crops do not match)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = mona_module.strong_from_weak

    def record(images: torch.Tensor, labels: Any, generator: torch.Generator, config: Any = None) -> Any:
        out = real(images, labels, generator, config)
        seen.append((images, out[0]))
        return out

    monkeypatch.setattr(mona_module, "strong_from_weak", record)
    method = build_method(SMALL.with_overrides(method="pretrain"), UNetConfig(), CPU)
    assert isinstance(method, GLCon)
    method.step(_batch(), 0)
    (teacher_view, student_view), = seen  # fmt: skip
    for t, s in zip(teacher_view, student_view, strict=True):
        inside = (s > 1e-4) & (s < 1 - 1e-4)  # unclamped pixels: s = a * t + b exactly, one (a, b) per slice
        design = torch.stack([t[inside], torch.ones_like(t[inside])], dim=1)
        solution = torch.linalg.lstsq(design, s[inside][:, None]).solution
        assert (design @ solution - s[inside][:, None]).abs().max().item() < 1e-4


def test_the_glcon_student_augmentation_moves_no_pixel() -> None:
    labels = torch.randint(0, 4, (3, 32, 32))
    images = torch.rand(3, 1, 32, 32)
    moved = mona_module.strong_from_weak(images, labels, torch.Generator().manual_seed(0), StrongAugmentConfig())
    kept = mona_module.strong_from_weak(
        images, labels, torch.Generator().manual_seed(0), mona_module.GLCON_STUDENT_AUGMENT
    )
    assert moved[1] is not None and kept[1] is not None
    assert not torch.equal(moved[1], labels) and torch.equal(kept[1], labels)


# --- model selection, export and resume ----------------------------------------------------------------------------


def test_best_checkpoint_is_the_best_validated_step_and_export_uses_it(
    phantom_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards: best.pt always the latest, saved with other weights, or export preferring last.pt."""
    scores = iter([0.2, 0.9, 0.4])
    monkeypatch.setattr(
        trainer_module, "validate", lambda *args, **kwargs: {"mean": {"dice": next(scores)}, "cases": []}
    )
    index = load_dataset(phantom_dataset)
    selection = select_labelled(index.patients("train"), n_patients=1, eligible=index.fully_labelled_patients("train"))
    config = SMALL.with_overrides(method="supervised", batch_size=2, iterations=6, val_every=2, checkpoint_every=2)
    train(config, index, selection, tmp_path / "run")
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert best["step"] == 4 and best["best"] == {"step": 4, "val_dice": 0.9}
    monkeypatch.setattr(trainer_module, "validate", lambda *args, **kwargs: {"mean": {"dice": 0.5}, "cases": []})
    train(config.with_overrides(iterations=4), index, selection, tmp_path / "to_step_4")
    at_four = load_checkpoint(tmp_path / "to_step_4" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(best["model"][k], at_four[k]) for k in at_four)
    assert not all(torch.equal(last["model"][k], at_four[k]) for k in at_four)
    export_run(tmp_path / "run", tmp_path / "model")
    session = ort.InferenceSession(str(tmp_path / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    outputs = {}
    for name, weights in (("best", best["model"]), ("last", last["model"])):
        model = build_model(UNetConfig(num_classes=len(index.classes)))
        model.load_state_dict(weights)
        with torch.no_grad():
            outputs[name] = model.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(onnx_out - outputs["best"]).max() < 1e-4 < np.abs(onnx_out - outputs["last"]).max()
    assert json.loads((tmp_path / "model" / "manifest.json").read_text())["source"]["checkpoint_step"] == 4


def straight_and_resumed(config: TrainConfig, dataset: Path, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``last.pt`` of a run trained in one go and of the same run stopped after 2 steps and resumed; asserts that
    every module's weights are identical."""
    index = load_dataset(dataset)
    selection = select_labelled(index.patients("train"), n_patients=1, eligible=index.fully_labelled_patients("train"))
    train(config, index, selection, tmp_path / "straight")
    calls = itertools.count()
    assert train(config, index, selection, tmp_path / "resumed", should_stop=lambda: next(calls) >= 2).stopped
    train(config, index, selection, tmp_path / "resumed")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for name, weights in straight["modules"].items():
        assert all(torch.equal(weights[k], resumed["modules"][name][k]) for k in weights), name
    return straight, resumed


@pytest.mark.parametrize("method", ["finetune", "pretrain"])
def test_a_resumed_run_continues_exactly_as_an_uninterrupted_one(
    method: str, phantom_dataset: Path, tmp_path: Path
) -> None:
    """Guards: resume without the method's generator or memory banks (or any other random stream)."""
    config = SMALL.with_overrides(method=method, val_every=100, checkpoint_every=100)
    straight, resumed = straight_and_resumed(config, phantom_dataset, tmp_path)
    for key, bank in straight["rng"]["method"].items():
        if isinstance(bank, dict):
            assert torch.equal(bank["storage"], resumed["rng"]["method"][key]["storage"]), key


def test_both_glcon_instance_terms_train_the_student() -> None:
    """Guards: a GLCon instance term detached, or dropped from the total (it would then train nothing)."""
    torch.manual_seed(0)
    method = build_method(SMALL.with_overrides(method="pretrain", rampup_fraction=0.0), UNetConfig(), CPU)
    assert isinstance(method, GLCon)
    set_train_modes(method.modules())
    optimizer = torch.optim.SGD(method.trainable(), lr=0.01, momentum=0.9)
    for step in range(3):  # the memories fill, the teacher takes the student's statistics
        optimizer.zero_grad()
        method.step(_batch(step), step)["loss"].backward()
        optimizer.step()
        method.after_step(step)
    parts = method.step(_batch(3), 3)
    encoder = list(method.model.down.parameters())
    for term, head in (
        ("loss_inst_global", method.heads.predictor),
        ("loss_inst_local", method.heads.local_projection),
    ):
        assert parts[term].item() > 1e-4, term
        assert _norm(_grads(parts[term], list(head.parameters()))) > 0.0, term
        assert _norm(_grads(parts[term], encoder)) > 0.0, term
    params = [p for p in method.trainable() if p.requires_grad]  # and the total is L_sup + both terms (ramp 1)
    expected = _grads(parts["loss_ce"] * 0.5 + parts["loss_dice"] * 0.5, params)
    for term in ("loss_inst_global", "loss_inst_local"):
        expected = [e + g for e, g in zip(expected, _grads(parts[term], params), strict=True)]
    total = _grads(parts["loss"], params)
    assert _norm([t - e for t, e in zip(total, expected, strict=True)]) <= 1e-5 * _norm(expected)


@pytest.mark.parametrize("strong", [False, True])
def test_strong_labelled_gives_the_student_moved_labelled_slices_with_their_moved_labels(
    strong: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards: ``strong_labelled`` doing nothing, or moving the labelled images but scoring them on the old labels."""
    method = _finetune(strong_labelled=strong)
    batch = _batch()
    calls: list[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]]] = []
    real_strong = mona_module.strong_from_weak

    def spy_strong(images: torch.Tensor, labels: torch.Tensor | None, *args: Any) -> Any:
        out = real_strong(images, labels, *args)
        calls.append((images, out))
        return out

    scored: list[torch.Tensor] = []
    real_supervised = mona_module.supervised_loss

    def spy_supervised(logits: torch.Tensor, labels: torch.Tensor) -> Any:
        scored.append(labels)
        return real_supervised(logits, labels)

    inputs: list[torch.Tensor] = []
    real_forward = method.model.forward_features

    def spy_forward(images: torch.Tensor) -> Any:
        inputs.append(images)
        return real_forward(images)

    monkeypatch.setattr(mona_module, "strong_from_weak", spy_strong)
    monkeypatch.setattr(mona_module, "supervised_loss", spy_supervised)
    monkeypatch.setattr(method.model, "forward_features", spy_forward)
    method.step(batch, 0)
    n_l = len(batch.images)
    if not strong:
        assert len(calls) == 1  # the unlabelled student view only
        assert torch.equal(inputs[0][:n_l], batch.images) and torch.equal(scored[0], batch.labels)
        return
    assert len(calls) == 2
    moved_images, moved_labels = next(out for images, out in calls if images is batch.images)
    assert not torch.equal(moved_images, batch.images)
    assert torch.equal(inputs[0][:n_l], moved_images) and moved_labels is not None
    assert torch.equal(scored[0], moved_labels)
