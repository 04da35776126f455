"""Training configuration: one dataclass, paper defaults (Section IV-B), saved in every checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Final

from mona_core.data.slicing import POSTPROCESSING

HEAD_NORMS = ("batch", "layer", "none")
METHODS = ("supervised", "mean_teacher", "cps", "bcp", "pretrain", "finetune", "mona")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("none", "bf16")

LIMITS: Final[dict[str, int | float]] = {
    "iterations": 1_000_000,  # 33 x the paper's 30,000; keeps a job's length and counters within int32
    "batch_size": 512,
    "size": 1024,  # 512 x 1024 x 1024 float32 inputs are 2 GiB already
    "patch": 1024,
    "labelled_batch_size": 512,
    "lr": 10,  # up to 10 stays accepted: a run that diverges is failed by the divergence guard
    "lr_gamma": 1,  # a decay: the learning rate never grows past ``lr``
    "lr_step": 1_000_000,  # as for the three below, a value >= iterations means "only at the end" / "never"
    "val_every": 1_000_000,
    "checkpoint_every": 1_000_000,
    "log_every": 1_000_000,
    "momentum": 1,
    "weight_decay": 1,
    "seed": 2**32 - 1,  # numpy's and torch's seeds both take it; fits every integer column and JSON reader
    "threads": 1024,
    "memory_size": 65_536,  # each memory is a (memory_size, 512) float32 tensor: 128 MiB at the bound
    "local_views": 1024,
    "local_view_size": 1024,
    "num_queries": 8192,
    "num_negatives": 8192,
    "nn_k": 65_536,
    "tau_student": 100,
    "tau_teacher": 100,
    "contrast_tau": 100,
    "consistency_weight": 100,
    "contrast_weight": 100,
    "eqv_weight": 100,
    "unsup_weight": 100,
    "nn_weight": 100,
    "bcp_unlabelled_weight": 100,
    "max_loss": 1e30,
}
"""The highest value each numeric ``TrainConfig`` field accepts (lower bounds: the checks in ``__post_init__``).

These protect the service (time, memory, database integers), they are not advice on hyperparameters. Every float
field must also be finite. ``STUDY_MAX_ITERATIONS`` bounds a study's total.
"""
STUDY_MAX_ITERATIONS: Final = 10_000_000
"""A study's ``total_iterations`` (methods x ratios x iterations): ten maximal jobs."""
STUDY_MAX_CELLS: Final = 64
"""A study's ``methods x ratios`` cells (6 methods x 10 ratios fit)."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run.

    Defaults are the paper's: SGD lr 0.01, momentum 0.9, weight decay 1e-4, batch 6, lr / 10 every 2,500
    iterations, 256x256 slices, EMA momentum 0.99. ``iterations`` defaults to 30,000 (the SSL4MIS-family schedule).
    ``patch`` (default None: whole slices) trains on a random ``patch`` x ``patch`` window of each sampled slice
    (after its weak augmentation; a labelled slice's label is cut with it), while validation, export and
    inference see whole ``size`` x ``size`` slices: the network learns at the scale of ``size`` for the compute of
    ``patch`` (see docs/METHOD.md). ``postprocess`` (``mona_core.data.slicing.POSTPROCESSING``; default "none")
    is applied to every predicted volume: by validation (so the best-on-val checkpoint is chosen as it will be
    used), and by the exported model, whose manifest carries it; "largest_component" keeps each class's largest
    connected component.

    MONA (Section III / IV-B): GLCon pre-training (``pretrain``: instance discrimination with temperatures 0.1 /
    0.01 against a memory of 36 mined views, global on the bottleneck and local on 64x64 views of the logits),
    anatomical contrastive reconstruction fine-tuning (``finetune``: L_sup + 0.01 L_contrast + 1.0 L_eqv + 1.0
    L_unsup + 1.0 L_nn, with 256 queries, 512 negatives, confidence threshold 0.97, temperature 0.5, K = 5
    neighbours), and ``mona`` = both, chained (``pretrain_fraction`` of the iterations pre-train: the paper's 100
    of 300 epochs). ``tailness`` / ``consistency`` / ``diversity`` switch the three fine-tuning terms (Table III).
    ``strong_labelled`` gives fine-tuning's student the strong augmentation of its labelled slices too (contrast,
    brightness, CutMix, deformation on top of the sampled batch, labels moved with the image); off, the student sees
    them as sampled (see docs/METHOD.md for the measurement).
    ``head_norm`` is the normalisation in the global projection head and predictor (the paper does not say; with
    BatchNorm over 3 unlabelled slices each embedding depends on its batch companions).

    Semi-supervised methods split each batch into ``labelled_batch_size`` labelled slices (default: half) and the
    rest unlabelled; the supervised method uses labelled slices only. Unsupervised weights (Mean Teacher, CPS,
    and MONA fine-tuning's λ1-λ4) ramp up with a sigmoid over the first ``rampup_fraction`` of the (stage's)
    iterations; ``rampup_fraction=0`` applies them at full weight from the first step.

    BCP (``bcp``, Bai et al., CVPR 2023): the first ``bcp_pretrain_fraction`` of the iterations are supervised
    copy-paste between labelled slices, then bidirectional copy-paste of a labelled and an unlabelled slice with an EMA
    teacher's pseudo-labels; the pasted box has sides ``bcp_mask_ratio`` (β = 2/3) of the slice's, and pixels from
    unlabelled slices weigh ``bcp_unlabelled_weight`` (α = 0.5) in the loss. It needs an unlabelled slice per batch.

    Speed knobs (``mona_core.training.performance``; all off by default; none changes the method or the saved model):
    ``channels_last`` puts the networks and each batch's images in NHWC memory format; ``amp="bf16"`` runs
    the loss step under bfloat16 autocast on the run's device (weights, gradients and the optimiser stay
    float32); ``fused_optimizer`` uses SGD(fused=True) where torch supports it for the device (else a logged
    note and the ordinary SGD); ``threads`` sets torch's intra-op CPU threads (process-wide) when given.
    ``data_on_device`` holds the slice bank as tensors on the run's device and samples and weak-augments batches
    there (``sample_batch_on_device``) instead of on the host and copying them over. Both paths draw from the same
    distribution (a quarter turn and flip, or a small rotation: ``augment.weak_augment`` on the host,
    ``gpu_augment.sampler_augment_batch`` on the device) with different generators, so runs with and without it
    differ draw by draw, not in kind.

    Bounds: every numeric field has the upper bound in ``LIMITS`` (service protection, not advice) and every float
    must be finite. ``max_loss``: a step whose loss (or any loss part) is above it, or not finite, stops the run
    with ``TrainingDiverged`` (``mona_core.training.divergence``); 1e6 is far above any sane loss of these methods.
    """

    method: str = "supervised"
    iterations: int = 30_000
    batch_size: int = 6
    size: int = 256
    patch: int | None = None
    postprocess: str = "none"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int = 2_500
    lr_gamma: float = 0.1
    val_every: int = 200
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    augment: bool = True
    labelled_batch_size: int | None = None
    ema_decay: float = 0.99
    consistency_weight: float = 0.1
    rampup_fraction: float = 0.4
    tau_student: float = 0.1
    tau_teacher: float = 0.01
    memory_size: int = 36
    local_views: int = 36
    local_view_size: int = 64
    contrast_weight: float = 0.01
    eqv_weight: float = 1.0
    unsup_weight: float = 1.0
    nn_weight: float = 1.0
    num_queries: int = 256
    num_negatives: int = 512
    hard_threshold: float = 0.97
    contrast_tau: float = 0.5
    nn_k: int = 5
    head_norm: str = "batch"
    tailness: bool = True
    consistency: bool = True
    diversity: bool = True
    strong_labelled: bool = False
    channels_last: bool = False
    amp: str = "none"
    fused_optimizer: bool = False
    threads: int | None = None
    data_on_device: bool = False
    pretrain_fraction: float = 1.0 / 3.0
    init_from: str | None = None
    bcp_pretrain_fraction: float = 0.25
    bcp_unlabelled_weight: float = 0.5
    bcp_mask_ratio: float = 2.0 / 3.0
    max_loss: float = 1e6

    def __post_init__(self) -> None:
        checks = {
            "method": (self.method in METHODS, f"one of {METHODS}"),
            "device": (self.device in DEVICES, f"one of {DEVICES}"),
            "iterations": (self.iterations > 0, "> 0"),
            "batch_size": (self.batch_size > 0, "> 0"),
            "size": (self.size >= 16 and self.size % 16 == 0, "a multiple of 16, at least 16"),
            "patch": (
                self.patch is None or (16 <= self.patch <= self.size and self.patch % 16 == 0),
                f"None or a multiple of 16 in 16..size ({self.size})",
            ),
            "lr": (self.lr > 0, "> 0"),
            "lr_step": (self.lr_step > 0, "> 0"),
            "val_every": (self.val_every > 0, "> 0"),
            "checkpoint_every": (self.checkpoint_every > 0, "> 0"),
            "log_every": (self.log_every > 0, "> 0"),
            "labelled_batch_size": (
                self.labelled_batch_size is None or 0 < self.labelled_batch_size <= self.batch_size,
                f"None or in 1..batch_size ({self.batch_size})",
            ),
            "ema_decay": (0.0 <= self.ema_decay < 1.0, "in [0, 1)"),
            "consistency_weight": (self.consistency_weight >= 0.0, ">= 0"),
            "rampup_fraction": (0.0 <= self.rampup_fraction <= 1.0, "in [0, 1]"),
            "tau_student": (self.tau_student > 0, "> 0"),
            "tau_teacher": (self.tau_teacher > 0, "> 0"),
            "contrast_tau": (self.contrast_tau > 0, "> 0"),
            "memory_size": (self.memory_size >= self.nn_k >= 1, f">= nn_k ({self.nn_k}) >= 1"),
            "local_views": (self.local_views >= 1, ">= 1"),
            "local_view_size": (self.local_view_size >= 8, ">= 8"),
            "num_queries": (self.num_queries >= 1, ">= 1"),
            "num_negatives": (self.num_negatives >= 1, ">= 1"),
            "hard_threshold": (0.0 < self.hard_threshold <= 1.0, "in (0, 1]"),
            "head_norm": (self.head_norm in HEAD_NORMS, f"one of {HEAD_NORMS}"),
            "postprocess": (self.postprocess in POSTPROCESSING, f"one of {POSTPROCESSING}"),
            "amp": (self.amp in AMP_MODES, f"one of {AMP_MODES}"),
            "threads": (self.threads is None or self.threads >= 1, "None or >= 1"),
            "pretrain_fraction": (0.0 < self.pretrain_fraction < 1.0, "in (0, 1)"),
            "loss weights": (
                min(self.contrast_weight, self.eqv_weight, self.unsup_weight, self.nn_weight) >= 0.0,
                "all >= 0",
            ),
            "bcp_pretrain_fraction": (0.0 <= self.bcp_pretrain_fraction < 1.0, "in [0, 1)"),
            "bcp_unlabelled_weight": (self.bcp_unlabelled_weight >= 0.0, ">= 0"),
            "bcp_mask_ratio": (0.0 < self.bcp_mask_ratio < 1.0, "in (0, 1)"),
            "max_loss": (self.max_loss > 0.0, "> 0"),
            "seed": (self.seed >= 0, ">= 0"),
            "momentum": (self.momentum >= 0.0, ">= 0"),
            "weight_decay": (self.weight_decay >= 0.0, ">= 0"),
            "lr_gamma": (self.lr_gamma >= 0.0, ">= 0"),
            **out_of_limits(self),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                got = getattr(self, name, None) if name != "loss weights" else self._weights()
                raise ValueError(f"expected {name} {expected}, got {got!r}")
        unlabelled = self.batch_size - self.labelled_per_batch
        if self.method in ("pretrain", "finetune", "mona") and unlabelled < 2:
            raise ValueError(
                f"expected at least 2 unlabelled slices per batch for {self.method} (BatchNorm in the heads), "
                f"got {unlabelled} (batch_size {self.batch_size}, labelled {self.labelled_per_batch})"
            )
        if self.method == "bcp" and unlabelled < 1:
            raise ValueError(
                f"expected at least 1 unlabelled slice per batch for bcp (bidirectional copy-paste), got 0 "
                f"(batch_size {self.batch_size}, labelled {self.labelled_per_batch})"
            )

    def _weights(self) -> tuple[float, float, float, float]:
        return (self.contrast_weight, self.eqv_weight, self.unsup_weight, self.nn_weight)

    @property
    def labelled_per_batch(self) -> int:
        """Labelled slices per batch: all of it for the supervised method, else ``labelled_batch_size`` or half."""
        if self.method == "supervised":
            return self.batch_size
        return self.labelled_batch_size or max(1, self.batch_size // 2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"expected training options among {sorted(known)}, got unknown {unknown}")
        return cls(**data)

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def out_of_limits(config: TrainConfig) -> dict[str, tuple[bool, str]]:
    """The fields of ``config`` above their ``LIMITS`` bound or not finite, as failed ``__post_init__`` checks.

    Only failures are returned: appended to the checks, such an entry replaces the field's own (passing) check.
    """
    failed: dict[str, tuple[bool, str]] = {}
    for item in fields(config):
        value, limit = getattr(config, item.name), LIMITS.get(item.name)
        if isinstance(value, float) and not math.isfinite(value):
            failed[item.name] = (False, "a finite number")
        elif isinstance(value, int | float) and not isinstance(value, bool) and limit is not None and value > limit:
            failed[item.name] = (False, f"<= {limit}")
    return failed


@dataclass(frozen=True)
class StudyConfig:
    """Which methods at which labelled ratios, and the budget (``base``) they all share."""

    methods: tuple[str, ...] = ("supervised", "mean_teacher", "mona")
    ratios: tuple[float, ...] = (0.01, 0.05, 0.10)
    base: TrainConfig = field(default_factory=TrainConfig)
    split_seed: int = 0

    def __post_init__(self) -> None:
        allowed = [m for m in METHODS if m != "pretrain"]  # finetune here: MONA fine-tuning from random weights
        if not self.methods or any(m not in allowed for m in self.methods):
            raise ValueError(f"expected methods among {allowed}, got {list(self.methods)}")
        if not self.ratios or not all(0.0 < r <= 1.0 for r in self.ratios):
            raise ValueError(f"expected labelled ratios in (0, 1], got {list(self.ratios)}")
        self._check_bounds()

    def _check_bounds(self) -> None:
        """The service's bounds on a study: its split seed, its number of cells and its total iterations."""
        if not 0 <= self.split_seed <= LIMITS["seed"]:
            raise ValueError(f"expected split_seed in 0..{LIMITS['seed']}, got {self.split_seed}")
        cells = len(self.methods) * len(self.ratios)
        if cells > STUDY_MAX_CELLS:
            raise ValueError(f"expected at most {STUDY_MAX_CELLS} study cells (methods x ratios), got {cells}")
        if self.total_iterations > STUDY_MAX_ITERATIONS:
            raise ValueError(
                f"expected total_iterations (methods x ratios x iterations) <= {STUDY_MAX_ITERATIONS}, "
                f"got {self.total_iterations} ({len(self.methods)} x {len(self.ratios)} x {self.base.iterations})"
            )

    @classmethod
    def from_request(cls, config: dict[str, Any]) -> StudyConfig:
        """``{"methods", "ratios", "split_seed", **TrainConfig fields}`` as a REST job's ``config`` gives it."""
        rest = {k: v for k, v in config.items() if k not in ("methods", "ratios", "split_seed")}
        defaults = cls()
        return cls(
            methods=tuple(config.get("methods", defaults.methods)),
            ratios=tuple(float(r) for r in config.get("ratios", defaults.ratios)),
            base=TrainConfig.from_dict(rest),
            split_seed=int(config.get("split_seed", 0)),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        return cls(
            methods=tuple(data["methods"]),
            ratios=tuple(float(r) for r in data["ratios"]),
            base=TrainConfig.from_dict(data["base"]),
            split_seed=int(data["split_seed"]),
        )

    @property
    def total_iterations(self) -> int:
        return len(self.methods) * len(self.ratios) * self.base.iterations

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods),
            "ratios": list(self.ratios),
            "base": self.base.to_dict(),
            "split_seed": self.split_seed,
        }
