"""The ACDC benchmark's protocol (see ``acdc.py``): constants, data loading and ``--pack``/``--packed``, the survey
of the data, the iteration and epoch arithmetic of a ``Plan``."""

from __future__ import annotations

import argparse
import io
import json
import lzma
import math
import os
import platform
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from mona_core.data.dataset import load_dataset, patient_of
from mona_core.data.splits import select_labelled
from mona_core.inference.evaluate import ASD_UNIT
from mona_core.io import read_image
from mona_core.training.checkpoint import BEST, LAST
from mona_core.training.config import TrainConfig
from mona_core.training.slices import SliceBank, ValCase
from mona_core.training.trainer import TrainingData, mona_stages, read_training_data, resolve_device

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


def run_folder(out: Path, spec: str, seed: int) -> Path:
    return out / spec.replace("=", "-") / f"seed-{seed}"
