"""ACDC benchmark: several methods x several training seeds under one declared protocol, scored honestly.

    .venv/bin/python benchmarks/acdc.py --protocol paper|cpu [--seeds N] [--methods supervised,mean_teacher,...]
        [--device auto|cpu|cuda] [--jobs N] [--threads N] [--out DIR] [--data DIR | --packed FILE] [--dry-run]

Both protocols: 3 labelled training patients chosen by patient with selection seed 0 (fixed: the seed of a run
varies the training, i.e. ``TrainConfig.seed``: weight initialisation, batch sampling, augmentation), the other 67
training patients unlabelled (used by the semi-supervised methods, ignored by ``supervised``); batch 6 (3 labelled
+ 3 unlabelled; ``supervised`` takes 6 labelled slices); SGD lr 0.01, momentum 0.9, weight decay 1e-4, lr / 10
every 2,500 iterations of a stage (the ``TrainConfig`` defaults); validation (mean foreground DSC on the whole
volumes of the 10 validation patients) every ``--val-every`` iterations, by default about 10 times per run.

- ``paper``: 256x256 slices; ``mona`` = 100 GLCon epochs + 200 fine-tuning epochs, every other method the same
  total (300 epochs). An EPOCH here is one pass over the LABELLED training slices at 3 labelled slices per batch,
  i.e. ceil(n_labelled_slices / 3) iterations. The paper does not say how it counts epochs; an epoch over the
  unlabelled slices of the 67 other patients would be ~27x longer (the dry run prints the exact ratio).
- ``cpu``: 128x128 slices and a declared fixed budget of ``--iterations`` (default 3,000) for every method
  (``mona``: the first third GLCon), chosen to take about 30 minutes per run on 2 CPU cores; the measured wall time
  is printed so the declaration can be checked.

Every run (one method, one seed) is scored twice, each checkpoint exported to ONNX and run through the torch-free
inference path (``Segmenter``) on the validation patients' whole volumes (DSC per class and mean; ASD per class and
mean, in voxels since the ACDC headers say 1 x 1 x 1):

- ``best``: the best-on-validation checkpoint, SELECTED AND SCORED ON VAL (optimistic: the same volumes pick it);
- ``last``: the last checkpoint, scored on val (no selection).

Per method: mean ± sample sd over the seeds (one seed: sd "–"), train wall time and iterations/s. Written to
``--out``: ``results.json`` (every run, the aggregates, the protocol) and ``results.md`` (one table per checkpoint
kind), rewritten after every finished run; the markdown is printed at the end.

A method is a ``TrainConfig.method`` name, optionally with config overrides joined by ``+``:
``mona+rampup_fraction=0``; ``finetune`` alone is MONA's fine-tuning from scratch (no GLCon). ``--jobs N`` trains
N runs at once in separate processes (a GPU has room for several; wall times are then measured under sharing).

Resume: a run whose ``result.json`` exists under ``--out/<method>/seed-<k>`` is reused as it is (it must have the
same config); a run interrupted in training resumes from its last checkpoint (its wall time then covers the
resumed part only, and says so). Delete a run's folder for a fresh measurement.

Without SimpleITK or the NIfTI files: ``--pack FILE`` writes the protocol's training slices and validation volumes
(per-volume min-max normalised, stored as 8 bits: a quantisation step of 1/255) to one xz file; ``--packed FILE``
trains and scores from it (pack at the protocol's slice size).
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from mona_core.data.dataset import load_dataset, patient_of
from mona_core.data.slicing import image_to_slices
from mona_core.data.splits import select_labelled
from mona_core.export.onnx_export import export_checkpoint
from mona_core.inference.evaluate import ASD_UNIT
from mona_core.inference.segmenter import Segmenter
from mona_core.io import read_image
from mona_core.metrics import MetricAccumulator, evaluate_case
from mona_core.training.checkpoint import BEST, LAST, load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.progress import ProgressEvent
from mona_core.training.slices import SliceBank, ValCase
from mona_core.training.trainer import TrainingData, mona_stages, read_training_data, resolve_device, train_on

DEFAULT_DATA: Final = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"
BATCH_SIZE: Final = 6
EPOCH_LABELLED_PER_BATCH: Final = 3
PAPER_EPOCHS: Final = {"pretrain": 100, "finetune": 200}
CPU_ITERATIONS: Final = 3_000
PATIENT_SELECTION_SEED: Final = 0
VALIDATIONS_PER_RUN: Final = 10
EPOCH_DEFINITION: Final = (
    "one pass over the LABELLED training slices at 3 labelled slices per batch: "
    "ceil(n_labelled_slices / 3) iterations (the paper does not say how it counts epochs)"
)
CHECKPOINTS: Final = {
    "best": (BEST, "best-on-validation checkpoint: selected and scored on val (optimistic)"),
    "last": (LAST, "last checkpoint, scored on val"),
}


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    size: int
    seeds: int
    summary: str


PROTOCOLS: Final = {
    "paper": ProtocolSpec(
        "paper", 256, 3, "the paper's schedule: mona = 100 GLCon + 200 fine-tuning epochs, others 300 epochs"
    ),
    "cpu": ProtocolSpec(
        "cpu", 128, 2, "a declared fixed iteration budget for every method, about 30 minutes per run on 2 CPU cores"
    ),
}


# --- data -------------------------------------------------------------------------------------------------------


def _to_u8(array: np.ndarray) -> np.ndarray:
    return np.asarray(np.round(np.clip(array, 0.0, 1.0) * 255.0), dtype=np.uint8)


def pack(data: TrainingData, path: Path) -> None:
    """The protocol's training slices and validation volumes, 8-bit, in one xz file (see the module doc)."""
    if data.preset != "mri":
        raise ValueError(f"expected the mri preset (per-volume min-max) for an 8-bit pack, got {data.preset!r}")
    arrays: dict[str, np.ndarray] = {
        "images": _to_u8(data.bank.images),
        "labels": data.bank.labels,
        "unlabelled": _to_u8(data.bank.unlabelled),
    }
    val_meta: list[dict[str, Any]] = []
    meta = {"classes": data.classes, "preset": data.preset, "description": data.description, "val": val_meta}
    for number, case in enumerate(data.val_cases):
        low, high = float(case.image.min()), float(case.image.max())
        arrays[f"val_image_{number}"] = _to_u8((case.image - low) / max(high - low, 1e-12))
        arrays[f"val_label_{number}"] = case.label
        val_meta.append({"case_id": case.case_id, "spacing_zyx": case.spacing_zyx})
    buffer = io.BytesIO()
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lzma.compress(buffer.getvalue(), preset=6))


def unpack(path: Path) -> TrainingData:
    with np.load(io.BytesIO(lzma.decompress(path.read_bytes()))) as packed:
        meta = json.loads(str(packed["meta"]))
        bank = SliceBank(
            images=packed["images"].astype(np.float32) / 255.0,
            labels=packed["labels"],
            unlabelled=packed["unlabelled"].astype(np.float32) / 255.0,
        )
        val = [
            ValCase(
                case["case_id"],
                packed[f"val_image_{number}"].astype(np.float32) / 255.0,
                packed[f"val_label_{number}"],
                tuple(case["spacing_zyx"]),
            )
            for number, case in enumerate(meta["val"])
        ]
    description = {**meta["description"], "packed_from": str(path)}
    return TrainingData(bank, val, tuple(meta["classes"]), meta["preset"], description)


def load_data(args: argparse.Namespace) -> TrainingData:
    """The protocol's data in memory: from ``--packed``, else read from ``--data`` at ``--size``."""
    if args.packed:
        data = unpack(args.packed)
        got = int(data.bank.images.shape[-1])
        if got != args.size:
            raise ValueError(
                f"expected {args.size}x{args.size} slices in {args.packed}, got {got}: "
                f"pack at --size {args.size} or pass --size {got}"
            )
        return data
    index = load_dataset(args.data)
    selection = select_labelled(index.patients("train"), n_patients=args.labelled_patients, seed=PATIENT_SELECTION_SEED)
    return read_training_data(index, selection, args.size)


@dataclass(frozen=True)
class Survey:
    """What the iteration arithmetic and the captions need to know about the data."""

    n_labelled_slices: int
    n_unlabelled_slices: int
    labelled_patients: tuple[str, ...]
    n_unlabelled_patients: int
    val_volumes: int
    val_patients: int
    classes: tuple[str, ...]
    source: str


def survey_data(data: TrainingData, source: str) -> Survey:
    selection = data.description.get("selection", {})
    return Survey(
        n_labelled_slices=data.bank.num_labelled,
        n_unlabelled_slices=int(data.bank.unlabelled.shape[0]),
        labelled_patients=tuple(selection.get("labelled", ())),
        n_unlabelled_patients=len(selection.get("unlabelled", ())),
        val_volumes=len(data.val_cases),
        val_patients=len({patient_of(case.case_id) for case in data.val_cases}),
        classes=data.classes,
        source=source,
    )


def survey_folder(args: argparse.Namespace) -> Survey:
    """The counts ``build_slice_bank`` would give, from the slice counts of the training volumes (no resizing)."""
    index = load_dataset(args.data)
    selection = select_labelled(index.patients("train"), n_patients=args.labelled_patients, seed=PATIENT_SELECTION_SEED)
    labelled, n_labelled, n_unlabelled = set(selection.labelled), 0, 0
    for case in index.cases_in("train"):
        depth = int(read_image(case.image).array.shape[0])
        if case.patient_id in labelled and case.label is not None:
            n_labelled += depth
        elif case.patient_id not in labelled:
            n_unlabelled += depth
    val = [case for case in index.cases_in("val") if case.label is not None]
    return Survey(
        n_labelled_slices=n_labelled,
        n_unlabelled_slices=n_unlabelled,
        labelled_patients=tuple(selection.labelled),
        n_unlabelled_patients=len(selection.unlabelled),
        val_volumes=len(val),
        val_patients=len({case.patient_id for case in val}),
        classes=tuple(index.classes),
        source=str(Path(args.data).resolve()),
    )


# --- protocol -----------------------------------------------------------------------------------------------------


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``mona+rampup_fraction=0+head_norm=layer`` → ("mona", {"rampup_fraction": 0.0, "head_norm": "layer"})."""
    method, *pairs = spec.split("+")
    types = {f.name: f.type for f in fields(TrainConfig)}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            raise ValueError(f"expected a TrainConfig field in {spec!r}, got {key!r}")
        overrides[key] = _typed(str(types[key]), value)
    return method, overrides


def _typed(kind: str, value: str) -> Any:
    """A ``+key=value`` override as its field's type (``kind``: the annotation, e.g. "int | None")."""
    if "bool" in kind:
        return value == "true"
    if "float" in kind:
        return float(value)
    if "int" in kind:
        return int(value)
    return value


@dataclass(frozen=True)
class Plan:
    """The declared protocol, resolved against the data: every run's config follows from it."""

    protocol: str
    size: int
    specs: tuple[str, ...]
    seeds: tuple[int, ...]
    iterations: int
    val_every: int
    device: str
    survey: Survey

    @property
    def iterations_per_epoch(self) -> int:
        return math.ceil(self.survey.n_labelled_slices / EPOCH_LABELLED_PER_BATCH)

    def config(self, spec: str, seed: int) -> TrainConfig:
        method, overrides = parse_method(spec)
        pretrain_fraction = PAPER_EPOCHS["pretrain"] / sum(PAPER_EPOCHS.values())
        return TrainConfig(
            method=method,
            iterations=self.iterations,
            size=self.size,
            batch_size=BATCH_SIZE,
            val_every=self.val_every,
            checkpoint_every=self.val_every,
            log_every=50,
            device=self.device,
            seed=seed,
            pretrain_fraction=pretrain_fraction,
        ).with_overrides(**overrides)

    def stages(self, spec: str) -> list[dict[str, Any]]:
        """Each stage of a run of ``spec``: its method, iterations, epochs and lr steps (the lr restarts per stage)."""
        config = self.config(spec, 0)
        parts = list(mona_stages(config, Path("run"))) if config.method == "mona" else [config]
        return [
            {
                "stage": part.method,
                "iterations": part.iterations,
                "epochs": round(part.iterations / self.iterations_per_epoch, 2),
                "labelled_per_batch": part.labelled_per_batch,
                "validations": math.ceil(part.iterations / part.val_every),
                "lr_steps": [
                    {"from": start, "lr": part.lr * part.lr_gamma ** (start // part.lr_step)}
                    for start in range(0, part.iterations, part.lr_step)
                ],
            }
            for part in parts
        ]

    def runs(self) -> list[tuple[str, int]]:
        """Seed-major: after the first round every method has one finished seed."""
        return [(spec, seed) for seed in self.seeds for spec in self.specs]

    def to_dict(self, args: argparse.Namespace) -> dict[str, Any]:
        base = self.config(self.specs[0], 0)
        survey = self.survey
        epochs: dict[str, Any] | None = None
        if self.protocol == "paper":
            epochs = {"mona": dict(PAPER_EPOCHS), "other methods": sum(PAPER_EPOCHS.values())}
        return {
            "name": self.protocol,
            "summary": PROTOCOLS[self.protocol].summary,
            "dataset": "ACDC",
            "data_source": survey.source,
            "split": {
                "labelled_patients": list(survey.labelled_patients),
                "patient_selection_seed": PATIENT_SELECTION_SEED,
                "unlabelled_patients": survey.n_unlabelled_patients,
                "val_patients": survey.val_patients,
                "val_volumes": survey.val_volumes,
            },
            "size": self.size,
            "batch": {
                "size": BATCH_SIZE,
                "semi_supervised": f"{base.labelled_per_batch} labelled + {BATCH_SIZE - base.labelled_per_batch} "
                "unlabelled",
                "supervised": f"{BATCH_SIZE} labelled",
            },
            "optimizer": {
                "name": "SGD",
                "lr": base.lr,
                "momentum": base.momentum,
                "weight_decay": base.weight_decay,
                "lr_decay": f"x{base.lr_gamma} every {base.lr_step} iterations of a stage",
            },
            "epoch_definition": EPOCH_DEFINITION,
            "n_labelled_slices": survey.n_labelled_slices,
            "n_unlabelled_slices": survey.n_unlabelled_slices,
            "iterations_per_epoch": self.iterations_per_epoch,
            "unlabelled_epoch_over_labelled_epoch": round(survey.n_unlabelled_slices / survey.n_labelled_slices, 1),
            "epochs": epochs,
            "iterations_per_run": self.iterations,
            "stages": {spec: self.stages(spec) for spec in self.specs},
            "val_every": self.val_every,
            "checkpoint_every": self.val_every,
            "seeds": list(self.seeds),
            "seed_varies": "TrainConfig.seed (init, sampling, augmentation); the labelled patients stay fixed",
            "methods": list(self.specs),
            "runs": len(self.runs()),
            "scoring": "each checkpoint exported to ONNX, run through mona_core.inference.segmenter.Segmenter "
            f"(onnxruntime) on the {survey.val_volumes} whole validation volumes; DSC per class, ASD in {ASD_UNIT}",
            "checkpoints": {kind: caption for kind, (_, caption) in CHECKPOINTS.items()},
            "device": device_name(self.device, args.threads),
            "torch_version": str(torch.__version__),
            "jobs": args.jobs,
            "threads_per_run": args.threads,
            "wall_time": "train_on's wall time, incl. validation and checkpoints; with --jobs > 1 runs share the "
            "machine",
        }


def make_plan(args: argparse.Namespace, survey: Survey) -> Plan:
    iterations_per_epoch = math.ceil(survey.n_labelled_slices / EPOCH_LABELLED_PER_BATCH)
    if args.protocol == "paper":
        iterations = sum(PAPER_EPOCHS.values()) * iterations_per_epoch
    else:
        iterations = args.iterations or CPU_ITERATIONS
    val_every = args.val_every or max(1, math.ceil(iterations / VALIDATIONS_PER_RUN))
    specs = tuple(spec.strip() for spec in args.methods.split(",") if spec.strip())
    plan = Plan(args.protocol, args.size, specs, tuple(range(args.seeds)), iterations, val_every, args.device, survey)
    for spec in specs:
        plan.config(spec, 0)  # an unknown method or override fails here, before any training
    if args.protocol == "paper":
        _check_paper_stages(plan)
    return plan


def _check_paper_stages(plan: Plan) -> None:
    """The paper protocol's mona must split exactly into 100 + 200 epochs (unless a spec overrides the fraction)."""
    for spec in plan.specs:
        stages = plan.stages(spec)
        if len(stages) == 2 and "pretrain_fraction" not in spec:
            expected = [epochs * plan.iterations_per_epoch for epochs in PAPER_EPOCHS.values()]
            got = [stage["iterations"] for stage in stages]
            if got != expected:
                raise ValueError(f"expected mona stages of {expected} iterations, got {got}")


def device_name(device: str, threads: int) -> str:
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return f"{torch.cuda.get_device_name(resolved)} (CUDA)"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"CPU: {model}, {os.cpu_count()} logical cores, {threads} torch threads per run"


def describe(plan: Plan, args: argparse.Namespace, show_runs: bool = True) -> str:
    """The protocol in words and numbers: what ``--dry-run`` prints (with the runs' folders and states) and
    ``results.md`` starts with."""
    survey, e = plan.survey, plan.iterations_per_epoch
    lines = [
        f"protocol {plan.protocol}: {PROTOCOLS[plan.protocol].summary}",
        f"data: {survey.source}",
        f"labelled patients: {', '.join(survey.labelled_patients)} (selection seed {PATIENT_SELECTION_SEED}); "
        f"{survey.n_unlabelled_patients} unlabelled; validation: {survey.val_patients} patients, "
        f"{survey.val_volumes} volumes",
        f"slices: {survey.n_labelled_slices} labelled, {survey.n_unlabelled_slices} unlabelled; size "
        f"{plan.size}x{plan.size}",
        f"epoch = {EPOCH_DEFINITION} = ceil({survey.n_labelled_slices} / {EPOCH_LABELLED_PER_BATCH}) = {e} "
        f"iterations (an epoch over the unlabelled slices would be "
        f"{survey.n_unlabelled_slices / survey.n_labelled_slices:.1f}x longer)",
        f"batch {BATCH_SIZE}: semi-supervised 3 labelled + 3 unlabelled, supervised 6 labelled",
        f"iterations per run: {plan.iterations:,} (= {round(plan.iterations / e, 2):g} epochs) for every method; "
        f"validation and checkpoint every {plan.val_every} iterations of a stage",
    ]
    for spec in plan.specs:
        parts = []
        for stage in plan.stages(spec):
            lrs = ", ".join(f"{step['lr']:g} from {step['from']}" for step in stage["lr_steps"])
            parts.append(
                f"{stage['stage']} {stage['iterations']:,} it = {stage['epochs']:g} epochs "
                f"({stage['labelled_per_batch']} labelled/batch; {stage['validations']} validations; lr {lrs})"
            )
        lines.append(f"  {spec}: " + " + ".join(parts))
    runs = plan.runs()
    lines.append(
        f"seeds: {', '.join(map(str, plan.seeds))} (TrainConfig.seed); {len(runs)} runs, {args.jobs} at a time, "
        f"{args.threads} threads each; device {device_name(plan.device, args.threads)}; torch {torch.__version__}"
    )
    for spec, seed in runs if show_runs else []:
        folder = run_folder(args.out, spec, seed)
        state = (
            "finished, reused"
            if (folder / "result.json").is_file()
            else "has checkpoints, resumes"
            if folder.is_dir()
            else "new"
        )
        lines.append(f"  run {spec} seed {seed}: {folder} ({state})")
    return "\n".join(lines)


# --- one run ------------------------------------------------------------------------------------------------------


def run_folder(out: Path, spec: str, seed: int) -> Path:
    return out / spec.replace("=", "-") / f"seed-{seed}"


def score(model_dir: Path, data: TrainingData, threads: int) -> dict[str, Any]:
    """The exported model, through onnxruntime, on the whole validation volumes: DSC and ASD per class."""
    segmenter = Segmenter(model_dir, device="cpu", threads=threads)
    accumulator = MetricAccumulator(data.classes, unit=ASD_UNIT)
    for case in data.val_cases:
        mask = segmenter.segment_array(case.image)
        accumulator.add(evaluate_case(mask, case.label, data.classes, case.spacing_zyx, case_id=case.case_id))
    report = accumulator.aggregate()
    return {**report, "providers": segmenter.providers}


def score_checkpoint(checkpoint_path: Path, model_dir: Path, data: TrainingData, threads: int) -> dict[str, Any]:
    """Export exactly ``checkpoint_path`` (not whatever ``checkpoint_for_export`` prefers) and score it."""
    checkpoint = load_checkpoint(checkpoint_path)
    if model_dir.exists():  # a leftover of an interrupted scoring: export again from the checkpoint
        shutil.rmtree(model_dir)
    real = image_to_slices(data.val_cases[0].image, data.preset, int(checkpoint["data"]["size"]))[:8]
    export = export_checkpoint(checkpoint, model_dir, real_inputs=real)
    report = score(model_dir, data, threads)
    best = checkpoint.get("best") or {}
    return {
        "checkpoint": str(checkpoint_path),
        "step": int(checkpoint["step"]),
        "training_val_dice_of_best": best.get("val_dice"),
        "model_dir": str(model_dir),
        "parity_max_abs_diff": export.manifest.parity["max_abs_diff_random"],
        "per_class": {
            name: {key: value[key] for key in ("dice", "asd", "n_dice", "n_asd")}
            for name, value in report["per_class"].items()
        },
        "mean": report["mean"],
        "unit": report["unit"],
        "providers": report["providers"],
    }


def _steps_done(config: TrainConfig, run_dir: Path) -> int:
    """Iterations already in ``run_dir``'s last checkpoints (both stages for mona): what a resume skips."""

    def step_of(directory: Path) -> int:
        path = directory / "checkpoints" / LAST
        return int(load_checkpoint(path)["step"]) if path.is_file() else 0

    return step_of(run_dir) + (step_of(run_dir / "pretrain") if config.method == "mona" else 0)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as JSON gives it back, without the device (a run may be re-scored on another machine)."""
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k != "device"}


def run_one(
    plan: Plan, spec: str, seed: int, data: TrainingData, threads: int, out: Path, machine: str
) -> dict[str, Any]:
    """Train (or resume, or reuse) one (method, seed) run and score its best and last checkpoints; ``machine``
    (device, runs at once) is recorded with the wall time it qualifies."""
    torch.set_num_threads(threads)
    config = plan.config(spec, seed)
    folder = run_folder(out, spec, seed)
    record_path = folder / "result.json"
    if record_path.is_file():
        record: dict[str, Any] = json.loads(record_path.read_text())
        if _comparable(record["config"]) != _comparable(config.to_dict()):
            raise ValueError(f"expected {folder} to hold a run of this protocol, got another config: delete it")
        print(f"[{spec} seed {seed}] reusing the finished run in {folder}", flush=True)
        return {**record, "reused": True}
    if data.bank.num_labelled != plan.survey.n_labelled_slices:
        raise ValueError(
            f"expected {plan.survey.n_labelled_slices} labelled slices, got {data.bank.num_labelled} in the data"
        )
    run_dir = folder / "run"
    done_before = _steps_done(config, run_dir)
    started = time.monotonic()

    def show(event: ProgressEvent) -> None:
        if event.val_dice is not None:
            print(
                f"[{spec} seed {seed}] {event.stage} step {event.step}/{event.total} val DSC {event.val_dice:.3f} "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )

    result = train_on(config, data, run_dir, progress=show)
    train_s = time.monotonic() - started
    if result.stopped:
        raise RuntimeError(f"expected {spec} seed {seed} to finish, got a stop at step {result.steps}")
    timed = config.iterations - done_before
    scores = {
        kind: score_checkpoint(run_dir / "checkpoints" / name, folder / f"model_{kind}", data, threads)
        for kind, (name, _) in CHECKPOINTS.items()
    }
    record = {
        "spec": spec,
        "method": config.method,
        "seed": seed,
        "config": config.to_dict(),
        "run_dir": str(run_dir),
        "stages": plan.stages(spec),
        "machine": machine,
        "train_wall_s": round(train_s, 1) if timed else None,
        "iterations_timed": timed,
        "iterations_per_s": round(timed / train_s, 3) if timed else None,
        "resumed_from_step": done_before or None,
        "best_during_training": result.best,
        "scores": scores,
    }
    partial = folder / ".result.json.partial"
    partial.write_text(json.dumps(record, indent=2))
    partial.replace(record_path)
    best, last = scores["best"]["mean"]["dice"], scores["last"]["mean"]["dice"]
    print(
        f"[{spec} seed {seed}] done in {train_s:.0f} s ({record['iterations_per_s']} it/s); mean DSC best "
        f"{_num(best, 100, 1)} (step {scores['best']['step']}), last {_num(last, 100, 1)}",
        flush=True,
    )
    return {**record, "reused": False}


_WORKER_DATA: TrainingData | None = None


def _init_worker(args: argparse.Namespace) -> None:
    global _WORKER_DATA
    torch.set_num_threads(args.threads)
    _WORKER_DATA = load_data(args)


def _run_in_worker(plan: Plan, spec: str, seed: int, threads: int, out: Path, machine: str) -> dict[str, Any]:
    if _WORKER_DATA is None:
        raise RuntimeError("expected the worker's data to be loaded by its initializer, got none")
    return run_one(plan, spec, seed, _WORKER_DATA, threads, out, machine)


# --- aggregation and tables ---------------------------------------------------------------------------------------


def mean_sd(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample sd of the values present (None where fewer than 2); ``n`` present of ``of``."""
    present = [float(v) for v in values if v is not None]
    return {
        "mean": statistics.fmean(present) if present else None,
        "sd": statistics.stdev(present) if len(present) >= 2 else None,
        "n": len(present),
        "of": len(values),
    }


def aggregate(records: Sequence[dict[str, Any]], specs: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Per method over its seeds: mean ± sd of each class's DSC and ASD and of their means, best and last."""
    result: dict[str, Any] = {}
    for spec in specs:
        runs = sorted((r for r in records if r["spec"] == spec), key=lambda r: int(r["seed"]))
        if not runs:
            continue
        entry: dict[str, Any] = {
            "seeds": [r["seed"] for r in runs],
            "train_wall_s": mean_sd([None if r.get("resumed_from_step") else r["train_wall_s"] for r in runs]),
            "iterations_per_s": mean_sd([r["iterations_per_s"] for r in runs]),
        }
        for kind in CHECKPOINTS:
            scores = [r["scores"][kind] for r in runs]
            entry[kind] = {
                "per_class": {
                    name: {
                        metric: mean_sd([s["per_class"][name][metric] for s in scores]) for metric in ("dice", "asd")
                    }
                    for name in classes[1:]
                },
                "mean": {metric: mean_sd([s["mean"][metric] for s in scores]) for metric in ("dice", "asd")},
                "step": mean_sd([s["step"] for s in scores]),
            }
        result[spec] = entry
    return result


def _num(value: float | None, scale: float, digits: int) -> str:
    return "n/a" if value is None else f"{scale * value:.{digits}f}"


def cell(stat: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± sd``; sd "–" with one value; ``(n=k)`` when some seeds had no value (e.g. an empty prediction)."""
    if stat["mean"] is None:
        return "n/a"
    sd = "–" if stat["sd"] is None else _num(stat["sd"], scale, digits)
    missing = f" (n={stat['n']})" if stat["n"] < stat["of"] else ""
    return f"{_num(stat['mean'], scale, digits)} ± {sd}{missing}"


def caption(plan: Plan, kind: str, done: int) -> str:
    survey, e = plan.survey, plan.iterations_per_epoch
    schedule = (
        f"{plan.iterations:,} iterations per run = 300 epochs of {e} iterations (epoch: {EPOCH_DEFINITION}); "
        f"mona = {PAPER_EPOCHS['pretrain']} GLCon + {PAPER_EPOCHS['finetune']} fine-tuning epochs"
        if plan.protocol == "paper"
        else f"a fixed budget of {plan.iterations:,} iterations per run for every method (mona: the first third "
        "GLCon), declared to take about 30 minutes per run on 2 CPU cores: see the measured train s"
    )
    runs = len(plan.runs())
    progress = "" if done == runs else f" PARTIAL: {done} of {runs} runs finished."
    return (
        f"ACDC, protocol `{plan.protocol}`: {len(survey.labelled_patients)} labelled training patients "
        f"({', '.join(survey.labelled_patients)}; selection seed {PATIENT_SELECTION_SEED}), "
        f"{survey.n_unlabelled_patients} unlabelled; {plan.size}x{plan.size}; batch {BATCH_SIZE} (3 labelled + 3 "
        f"unlabelled; supervised 6 labelled); SGD lr 0.01, momentum 0.9, wd 1e-4, lr / 10 every 2,500 iterations of "
        f"a stage; {schedule}; validation every {plan.val_every} iterations. Scored on the validation split "
        f"({survey.val_patients} patients, {survey.val_volumes} whole volumes) through the exported ONNX model: "
        f"DSC in %, ASD in voxels; mean ± sample sd over training seeds {', '.join(map(str, plan.seeds))}. "
        f"Checkpoint: **{CHECKPOINTS[kind][1]}**. train s: wall time of training incl. validation, over the runs "
        f"trained without interruption; it/s = iterations / wall time of the iterations trained in one go.{progress}"
    )


def table(plan: Plan, aggregates: dict[str, Any], kind: str, done: int) -> str:
    classes = plan.survey.classes[1:]
    head = (
        "| method | seeds | "
        + " | ".join(f"{c} DSC" for c in classes)
        + " | mean DSC | "
        + " | ".join(f"{c} ASD" for c in classes)
        + " | mean ASD | train s | it/s |"
    )
    rows = [f"Table: {caption(plan, kind, done)}", "", head, "|" + "---|" * (2 * len(classes) + 6)]
    for spec, entry in aggregates.items():
        scores = entry[kind]
        dice = [cell(scores["per_class"][c]["dice"], 100, 1) for c in classes]
        asd = [cell(scores["per_class"][c]["asd"], 1, 2) for c in classes]
        rows.append(
            f"| {spec} | {len(entry['seeds'])} | "
            + " | ".join([*dice, cell(scores["mean"]["dice"], 100, 1), *asd, cell(scores["mean"]["asd"], 1, 2)])
            + f" | {cell(entry['train_wall_s'], 1, 0)} | {cell(entry['iterations_per_s'], 1, 2)} |"
        )
    return "\n".join(rows)


def runs_table(records: Sequence[dict[str, Any]]) -> str:
    rows = [
        "| method | seed | best step | best mean DSC | best mean ASD | last step | last mean DSC | last mean ASD "
        "| train s | it/s | note |",
        "|" + "---|" * 11,
    ]
    for r in sorted(records, key=lambda r: (r["spec"], int(r["seed"]))):
        best, last = r["scores"]["best"], r["scores"]["last"]
        note = f"resumed from step {r['resumed_from_step']}" if r.get("resumed_from_step") else ""
        rows.append(
            f"| {r['spec']} | {r['seed']} | {best['step']} | {_num(best['mean']['dice'], 100, 1)} | "
            f"{_num(best['mean']['asd'], 1, 2)} | {last['step']} | {_num(last['mean']['dice'], 100, 1)} | "
            f"{_num(last['mean']['asd'], 1, 2)} | {_num(r['train_wall_s'], 1, 0)} | "
            f"{_num(r['iterations_per_s'], 1, 2)} | {note} |"
        )
    return "\n".join(rows)


def markdown(plan: Plan, args: argparse.Namespace, records: Sequence[dict[str, Any]]) -> str:
    aggregates = aggregate(records, plan.specs, plan.survey.classes)
    parts = [f"# ACDC benchmark, protocol `{plan.protocol}`", "", "```", describe(plan, args, show_runs=False), "```"]
    for kind in CHECKPOINTS:
        parts += ["", f"## {CHECKPOINTS[kind][1]}", "", table(plan, aggregates, kind, len(records))]
    parts += ["", "## Every run", "", runs_table(records), ""]
    return "\n".join(parts)


def write_results(plan: Plan, args: argparse.Namespace, records: Sequence[dict[str, Any]]) -> str:
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "protocol": plan.to_dict(args),
        "aggregates": aggregate(records, plan.specs, plan.survey.classes),
        "runs": sorted(records, key=lambda r: (int(r["seed"]), plan.specs.index(r["spec"]))),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    text = markdown(plan, args, records)
    (args.out / "results.md").write_text(text)
    return text


# --- driver -------------------------------------------------------------------------------------------------------


def train_all(plan: Plan, args: argparse.Namespace, data: TrainingData | None) -> list[dict[str, Any]]:
    """Every run, one after the other or ``--jobs`` at a time in separate processes; results after each."""
    records: list[dict[str, Any]] = []
    runs = plan.runs()
    machine = f"{device_name(plan.device, args.threads)}; {min(args.jobs, len(runs))} run(s) at once"
    if args.jobs <= 1:
        if data is None:
            data = load_data(args)
        for spec, seed in runs:
            records.append(run_one(plan, spec, seed, data, args.threads, args.out, machine))
            write_results(plan, args, records)
        return records
    workers = min(args.jobs, len(runs))
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(args,)
    ) as pool:
        futures: list[Future[dict[str, Any]]] = [
            pool.submit(_run_in_worker, plan, spec, seed, args.threads, args.out, machine) for spec, seed in runs
        ]
        for future in as_completed(futures):
            records.append(future.result())
            write_results(plan, args, records)
    return records


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    parser.add_argument("--seeds", type=int, help="training seeds 0..N-1 (default: 3 for paper, 2 for cpu)")
    parser.add_argument("--methods", default="supervised,mean_teacher,finetune,mona", help="comma list of specs")
    parser.add_argument("--iterations", type=int, help=f"cpu protocol: iterations per run (default {CPU_ITERATIONS})")
    parser.add_argument("--size", type=int, help="slice size (default: 256 for paper, 128 for cpu)")
    parser.add_argument("--val-every", type=int, help=f"default: about {VALIDATIONS_PER_RUN} validations per run")
    parser.add_argument("--labelled-patients", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch (and onnxruntime) threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--packed", type=Path, help="train and score from a file written by --pack")
    parser.add_argument("--pack", type=Path, help="write the protocol's data to this file and stop")
    parser.add_argument("--out", type=Path, help="default: bench-output/acdc-<protocol>")
    parser.add_argument("--dry-run", action="store_true", help="print the protocol and the runs; train nothing")
    args = parser.parse_args(argv)
    protocol = PROTOCOLS[args.protocol]
    if args.protocol == "paper" and args.iterations is not None:
        parser.error("the paper protocol is defined in epochs; --iterations is for --protocol cpu")
    args.seeds = protocol.seeds if args.seeds is None else args.seeds
    args.size = args.size or protocol.size
    args.out = args.out or Path(f"bench-output/acdc-{args.protocol}")
    for name in ("seeds", "jobs", "threads", "labelled_patients"):
        if getattr(args, name) < 1:
            parser.error(f"expected --{name.replace('_', '-')} >= 1, got {getattr(args, name)}")
    for name in ("iterations", "val_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"expected --{name.replace('_', '-')} >= 1, got {value}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """The benchmark for parsed arguments; None for ``--pack`` and ``--dry-run``, else the results."""
    if args.pack:
        pack(load_data(args), args.pack)
        print(f"wrote {args.pack} ({args.pack.stat().st_size / 1e6:.1f} MB)")
        return None
    data: TrainingData | None = None
    if args.packed or (args.jobs <= 1 and not args.dry_run):
        data = load_data(args)
        survey = survey_data(data, str(Path(args.packed).resolve()) if args.packed else str(args.data.resolve()))
    else:
        survey = survey_folder(args)
    plan = make_plan(args, survey)
    if args.dry_run:
        print(describe(plan, args))
        return None
    torch.set_num_threads(args.threads)
    if args.jobs > 1:
        data = None  # each worker process loads its own copy
    records = train_all(plan, args, data)
    text = write_results(plan, args, records)
    print(text, flush=True)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return {"plan": plan, "records": records}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.packed and not args.data.is_dir():
        print(f"ACDC not found at {args.data}; nothing to benchmark")
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
