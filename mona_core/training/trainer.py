"""The training loop shared by every method: sampling, SGD with the paper's step decay, validation on whole volumes
with best-on-validation model selection, checkpoints, progress and cooperative stop. What a step computes is the
method's business (``mona_core.training.methods``): supervised (UNET-L / UNET-F), Mean Teacher, CPS, ...

A run directory holds ``run.json`` (what was asked), ``checkpoints/last.pt`` and ``checkpoints/best.pt``,
``metrics.jsonl`` (one row per logged step) and ``loss_curve.png``. Calling ``train`` again on the same directory
resumes from ``last.pt`` with the saved RNG states, so a resumed run continues where it left off.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mona_core.data.dataset import DatasetIndex
from mona_core.data.splits import LabelledSelection
from mona_core.models import UNetConfig
from mona_core.report import save_loss_curve_png
from mona_core.training.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.divergence import check_losses, check_weights, weights_due
from mona_core.training.methods import Method, build_method
from mona_core.training.methods.base import Batch, load_generator_state, set_train_modes
from mona_core.training.performance import apply_memory_format, apply_threads, build_optimizer, method_step
from mona_core.training.progress import ProgressEvent, ProgressFn, StopFn, ignore_progress, never_stop
from mona_core.training.schedule import step_decay_lr
from mona_core.training.slices import (
    DeviceSlices,
    SliceBank,
    ValCase,
    build_slice_bank,
    load_val_cases,
    random_windows,
    sample_batch,
    sample_batch_on_device,
)
from mona_core.training.validation import validate

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """Everything that changes while training; saved in ``last.pt``."""

    method: Method
    optimizer: torch.optim.SGD
    rng: np.random.Generator
    step: int = 0
    best: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    device_slices: DeviceSlices | None = None
    augment_generator: torch.Generator | None = None


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    steps: int
    best: dict[str, Any] | None
    stopped: bool


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for ``cuda`` without a GPU is an error, not a silent fallback."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("expected a CUDA device for --device cuda, got none (use --device auto or cpu)")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass(frozen=True)
class TrainingData:
    """What a run trains and validates on, already in memory: the slice bank, whole validation volumes, the label
    names and intensity preset, and a JSON description of where they came from (written to ``run.json``)."""

    bank: SliceBank
    val_cases: list[ValCase]
    classes: tuple[str, ...]
    preset: str
    description: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_training_data(index: DatasetIndex, selection: LabelledSelection, size: int) -> TrainingData:
    """Read the training slices (labels of the selected patients only) and the validation volumes of ``index``."""
    description = {
        "data_root": str(index.root.resolve()),
        "dataset": index.to_dict(),
        "selection": selection.to_dict(),
    }
    bank = build_slice_bank(index, selection, size)
    return TrainingData(bank, load_val_cases(index), tuple(index.classes), index.preset, description)


def train(
    config: TrainConfig,
    index: DatasetIndex,
    selection: LabelledSelection,
    run_dir: str | Path,
    progress: ProgressFn = ignore_progress,
    should_stop: StopFn = never_stop,
) -> TrainResult:
    """Train (or resume) ``config.method`` in ``run_dir`` on ``index``; returns once done or stopped."""
    return train_on(config, read_training_data(index, selection, config.size), run_dir, progress, should_stop)


def train_on(
    config: TrainConfig,
    data: TrainingData,
    run_dir: str | Path,
    progress: ProgressFn = ignore_progress,
    should_stop: StopFn = never_stop,
) -> TrainResult:
    """Train (or resume) ``config.method`` in ``run_dir`` on data already in memory.

    ``mona`` chains two stages as one run: GLCon pre-training in ``run_dir/pretrain``, then fine-tuning from its
    last checkpoint in ``run_dir`` itself (so export and resume see an ordinary run directory).
    """
    run_dir = Path(run_dir)
    if data.bank.images.shape[-1] != config.size:
        raise ValueError(f"expected slices of {config.size}x{config.size}, got {data.bank.images.shape[-2:]}")
    context = _Context(data, resolve_device(config.device), should_stop)
    if config.method != "mona":
        return _train_stage(config, context, run_dir, progress)
    pretrain, finetune = mona_stages(config, run_dir)
    first = _train_stage(pretrain, context, run_dir / "pretrain", _offset(progress, 0, config.iterations))
    if first.stopped:
        return TrainResult(run_dir, first.steps, first.best, stopped=True)
    second = _train_stage(finetune, context, run_dir, _offset(progress, pretrain.iterations, config.iterations))
    return replace(second, steps=pretrain.iterations + second.steps)


def mona_stages(config: TrainConfig, run_dir: Path) -> tuple[TrainConfig, TrainConfig]:
    """The stage configs of a ``mona`` run: ``pretrain_fraction`` of the iterations pre-train, the rest fine-tune."""
    steps = min(config.iterations - 1, max(1, round(config.pretrain_fraction * config.iterations)))
    pretrain = replace(config, method="pretrain", iterations=steps)
    init = str(run_dir / "pretrain" / "checkpoints" / LAST)
    return pretrain, replace(config, method="finetune", iterations=config.iterations - steps, init_from=init)


def _offset(progress: ProgressFn, done_before: int, total: int) -> ProgressFn:
    """Report a stage's events on the whole run's scale (step and ETA), keeping the stage's name."""

    def report(event: ProgressEvent) -> None:
        left = total - (done_before + event.step)
        stage_left = max(1, event.total - event.step)
        eta = None if event.eta_s is None else event.eta_s * left / stage_left
        progress(replace(event, step=done_before + event.step, total=total, eta_s=eta))

    return report


@dataclass(frozen=True)
class _Context:
    """What every stage of one run shares: the data (read once), the device and the stop check."""

    data: TrainingData
    device: torch.device
    should_stop: StopFn


def _train_stage(config: TrainConfig, context: _Context, run_dir: Path, progress: ProgressFn) -> TrainResult:
    torch.manual_seed(config.seed)
    state = _new_state(config, context.data.num_classes, context.device)
    hold_on_device(state, config, context.data.bank, context.device)
    _resume_or_start(state, config, context.data, run_dir)
    return _loop(state, config, context.data, run_dir, context.device, progress, context.should_stop)


def _new_state(config: TrainConfig, num_classes: int, device: torch.device) -> RunState:
    apply_threads(config)
    method = build_method(config, UNetConfig(num_classes=num_classes), device)
    apply_memory_format(method, config)  # before the optimiser: it holds the (restrided) parameters
    optimizer = build_optimizer(method.trainable(), config)
    return RunState(method=method, optimizer=optimizer, rng=np.random.default_rng(config.seed))


def hold_on_device(state: RunState, config: TrainConfig, bank: SliceBank, device: torch.device) -> None:
    """With ``data_on_device``: the slice bank moves to ``device`` once, with its own seeded augmentation generator."""
    if config.data_on_device:
        state.device_slices = DeviceSlices.from_bank(bank, device)
        state.augment_generator = torch.Generator(device=device).manual_seed(config.seed)


def _resume_or_start(state: RunState, config: TrainConfig, data: TrainingData, run_dir: Path) -> None:
    last = run_dir / "checkpoints" / LAST
    if last.is_file():
        saved = load_checkpoint(last)
        for name, module in state.method.modules().items():
            module.load_state_dict(saved["modules"][name])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.step, state.best, state.history = saved["step"], saved["best"], saved["history"]
        _restore_rng(state, saved)
        logger.info("resuming %s from step %d", run_dir, state.step)
        return
    if config.init_from:
        _initialise_from(state, Path(config.init_from))
    run_dir.mkdir(parents=True, exist_ok=True)
    run_info = {"method": config.method, **data.description, "config": config.to_dict()}
    (run_dir / "run.json").write_text(json.dumps(run_info, indent=2))


def _rng_states(state: RunState) -> dict[str, Any]:
    """Every random stream a step draws from: numpy (sampling), torch CPU and CUDA (dropout, noise), and the method's
    own generator and memory banks, so a resumed run continues exactly as an uninterrupted one."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "numpy": state.rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "method": state.method.extra_state(),
        "augment": None if state.augment_generator is None else state.augment_generator.get_state(),
    }


def _restore_rng(state: RunState, saved: dict[str, Any]) -> None:
    rng = saved["rng"]
    state.rng.bit_generator.state = rng["numpy"]
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "method" in rng:
        state.method.load_extra_state(rng["method"])
    if state.augment_generator is not None and rng.get("augment") is not None:
        load_generator_state(state.augment_generator, rng["augment"])


def _initialise_from(state: RunState, path: Path) -> None:
    """Start from another run's weights (fine-tuning from GLCon): modules saved under the same name are loaded; a
    teacher missing from the source starts as a copy of the source's model."""
    saved = load_checkpoint(path)
    sources = {"model": saved["model"], **saved.get("modules", {})}
    for name, module in state.method.modules().items():
        source = sources.get(name, sources["model"] if name == "teacher" else None)
        if source is not None:
            module.load_state_dict(source)
    logger.info("initialised %s from %s (%s)", state.method.name, path, sorted(set(sources)))


def _loop(
    state: RunState,
    config: TrainConfig,
    data: TrainingData,
    run_dir: Path,
    device: torch.device,
    progress: ProgressFn,
    should_stop: StopFn,
) -> TrainResult:
    set_train_modes(state.method.modules())
    started, first_step = time.monotonic(), state.step
    while state.step < config.iterations:
        if should_stop():
            _save(state, config, data, run_dir, LAST)
            return TrainResult(run_dir, state.step, state.best, stopped=True)
        losses, lr = _train_step(state, config, data.bank, device)
        state.step += 1
        val_dice = _maybe_validate(state, config, data, run_dir, device)
        if state.step % config.log_every == 0 or val_dice is not None or state.step == config.iterations:
            row = {"step": float(state.step), "lr": lr, **losses}
            state.history.append(row if val_dice is None else {**row, "val_dice": val_dice})
            elapsed = time.monotonic() - started
            eta = elapsed / (state.step - first_step) * (config.iterations - state.step)
            best_dice = state.best["val_dice"] if state.best else None
            progress(
                ProgressEvent(
                    _stage(config), state.step, config.iterations, losses, lr, val_dice, best_dice, elapsed, eta
                )
            )
        if state.step % config.checkpoint_every == 0 or state.step == config.iterations:
            _save(state, config, data, run_dir, LAST)
    _finish(state, run_dir)
    return TrainResult(run_dir, state.step, state.best, stopped=False)


def _stage(config: TrainConfig) -> str:
    return config.method if config.method in ("pretrain", "finetune") else "train"


def _train_step(
    state: RunState, config: TrainConfig, bank: SliceBank, device: torch.device
) -> tuple[dict[str, float], float]:
    """One SGD step of the method on a sampled batch; returns the loss parts and the learning rate used.

    Raises ``TrainingDiverged`` on a non-finite or exploding loss, or on non-finite weights (checked on the steps
    that validate or save), so a diverged run fails instead of saving and publishing a broken model.
    """
    lr = step_decay_lr(state.step, config.lr, config.lr_step, config.lr_gamma)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    batch = _sample(state, config, bank, device)
    parts = method_step(state.method, batch, state.step, config, device)  # speed knobs: memory format, autocast
    state.optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()  # type: ignore[no-untyped-call]
    state.optimizer.step()
    state.method.after_step(state.step)
    losses = {name: float(value.detach()) for name, value in parts.items()}
    check_losses(losses, state.step + 1, lr, config.max_loss)
    if weights_due(state.step + 1, config):
        check_weights(state.method.modules(), state.step + 1, lr)
    return losses, lr


def _sample(state: RunState, config: TrainConfig, bank: SliceBank, device: torch.device) -> Batch:
    """A batch on ``device``: from the bank held there (``data_on_device``, batched torch augmentation), else
    sampled and weak-augmented slice by slice on the host and copied over; then cut to ``patch`` windows."""
    augment_unlabelled = config.augment and not state.method.augments_unlabelled
    labelled, size = config.labelled_per_batch, config.batch_size
    if state.device_slices is None:
        batch = sample_batch(bank, labelled, size, state.rng, config.augment, augment_unlabelled).to(device)
    else:
        generator = state.augment_generator if config.augment else None
        batch = sample_batch_on_device(state.device_slices, labelled, size, state.rng, generator, augment_unlabelled)
    return batch if config.patch is None else random_windows(batch, config.patch, state.rng)


def _maybe_validate(
    state: RunState, config: TrainConfig, data: TrainingData, run_dir: Path, device: torch.device
) -> float | None:
    """Every ``val_every`` steps (and at the end): mean foreground DSC on whole volumes; keep the best."""
    due = state.step % config.val_every == 0 or state.step == config.iterations
    if not due or not data.val_cases:
        return None
    model, postprocess = state.method.eval_model(), config.postprocess
    report = validate(model, data.val_cases, data.classes, data.preset, config.size, device, postprocess=postprocess)
    dice = report["mean"]["dice"]
    val_dice = float(dice) if dice is not None else 0.0
    if state.best is None or val_dice > state.best["val_dice"]:
        state.best = {"step": state.step, "val_dice": val_dice}
        _save(state, config, data, run_dir, BEST)
    return val_dice


def _save(state: RunState, config: TrainConfig, data: TrainingData, run_dir: Path, name: str) -> None:
    payload: dict[str, Any] = {
        "step": state.step,
        "method": state.method.name,
        "model_config": state.method.eval_model().config.to_dict(),
        "model": state.method.eval_model().state_dict(),
        "train_config": config.to_dict(),
        "data": {"classes": list(data.classes), "preset": data.preset, "size": config.size},
        "best": state.best,
    }
    if name == LAST:
        payload["modules"] = {key: module.state_dict() for key, module in state.method.modules().items()}
        payload["optimizer"] = state.optimizer.state_dict()
        payload["history"] = state.history
        payload["rng"] = _rng_states(state)
        _write_history(state.history, run_dir)
    save_checkpoint(payload, run_dir / "checkpoints" / name)


def _write_history(history: list[dict[str, float]], run_dir: Path) -> None:
    partial = run_dir / ".metrics.jsonl.partial"
    partial.write_text("".join(json.dumps(row) + "\n" for row in history))
    partial.replace(run_dir / "metrics.jsonl")


def _finish(state: RunState, run_dir: Path) -> None:
    if state.history:
        save_loss_curve_png(state.history, run_dir / "loss_curve.png", title=f"{state.method.name} training")
    logger.info("training done at step %d; best %s", state.step, state.best)
