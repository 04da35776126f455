"""``mona train`` protects its run directories: what a run was started with is kept in ``RUN_DIR/request.json``, a
resumed run uses exactly that, and a flag that contradicts it is refused (``--force`` starts over). Ctrl-C and
SIGTERM stop training at the next step with ``checkpoints/last.pt`` written (exit 130), instead of a traceback."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from mona_core.training.config import TrainConfig

REQUEST_FILE = "request.json"
RUN_FILE = "run.json"
STOPPED_EXIT = 130
"""Exit status of a run stopped by Ctrl-C / SIGTERM (128 + SIGINT, as shells report it)."""

_CONFIG_FLAGS = {
    "method": "--method",
    "iterations": "--iterations",
    "size": "--size",
    "patch": "--patch",
    "postprocess": "--postprocess",
    "batch_size": "--batch-size",
    "val_every": "--val-every",
    "seed": "--seed",
    "device": "--device",
    "init_from": "--init-from",
}
_RUN_FLAGS = {
    "labelled_patients": "--labelled-patients",
    "labelled_ratio": "--labelled-ratio",
    "split_seed": "--split-seed",
    "preset": "--preset",
    "patient_pattern": "--patient-pattern",
}


@dataclass(frozen=True)
class TrainRequest:
    """Everything a run was started with: the data folder, the training config and how patients are chosen."""

    data: Path
    config: TrainConfig
    labelled_patients: int | None = None
    labelled_ratio: float | None = None
    split_seed: int = 0
    preset: str | None = None
    patient_pattern: str | None = None
    resumed: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": str(self.data),
            "config": self.config.to_dict(),
            **{name: getattr(self, name) for name in _RUN_FLAGS},
        }

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> TrainRequest:
        return cls(
            data=Path(body["data"]),
            config=TrainConfig.from_dict(body["config"]),
            labelled_patients=body.get("labelled_patients"),
            labelled_ratio=body.get("labelled_ratio"),
            split_seed=int(body.get("split_seed") or 0),
            preset=body.get("preset"),
            patient_pattern=body.get("patient_pattern"),
            resumed=True,
        )

    def selection_args(self) -> argparse.Namespace:
        return argparse.Namespace(
            labelled_patients=self.labelled_patients, labelled_ratio=self.labelled_ratio, split_seed=self.split_seed
        )

    def save(self, run_dir: Path) -> None:
        """Write ``request.json`` for a new run (a resumed one keeps its own)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        target = run_dir / REQUEST_FILE
        if not target.is_file():
            target.write_text(json.dumps(self.to_dict(), indent=2))


def _given_config(args: argparse.Namespace) -> dict[str, Any]:
    given = {name: getattr(args, name) for name in _CONFIG_FLAGS if getattr(args, name, None) is not None}
    if "init_from" in given:
        given["init_from"] = str(given["init_from"])
    return given


def _new_request(args: argparse.Namespace) -> TrainRequest:
    config = TrainConfig().with_overrides(**_given_config(args))
    split_seed = getattr(args, "split_seed", None)
    return TrainRequest(
        data=args.data.resolve(),
        config=config,
        labelled_patients=getattr(args, "labelled_patients", None),
        labelled_ratio=getattr(args, "labelled_ratio", None),
        split_seed=split_seed if split_seed is not None else 0,
        preset=getattr(args, "preset", None),
        patient_pattern=getattr(args, "patient_pattern", None),
    )


def _stored(run_dir: Path) -> TrainRequest | None:
    """The request a run directory was started with: ``request.json``, or for an older run its ``run.json``."""
    if (run_dir / REQUEST_FILE).is_file():
        return TrainRequest.from_dict(json.loads((run_dir / REQUEST_FILE).read_text()))
    if (run_dir / RUN_FILE).is_file():
        run = json.loads((run_dir / RUN_FILE).read_text())
        data = Path(run.get("data_root", ""))
        return TrainRequest(data=data, config=TrainConfig.from_dict(run["config"]), resumed=True)
    return None


def _is_run_dir(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in (REQUEST_FILE, RUN_FILE, "checkpoints"))


def differences(stored: TrainRequest, args: argparse.Namespace) -> list[str]:
    """The flags given on the command line that contradict what the run was started with."""
    found = []
    for name, given in _given_config(args).items():
        kept = getattr(stored.config, name)
        if given != kept:
            found.append(f"{_CONFIG_FLAGS[name]} {given} (the run has {kept})")
    for name, flag in _RUN_FLAGS.items():
        given = getattr(args, name, None)
        if given is not None and given != getattr(stored, name):
            found.append(f"{flag} {given} (the run has {getattr(stored, name)})")
    if str(stored.data) and args.data.resolve() != stored.data.resolve():
        found.append(f"--data {args.data} (the run has {stored.data})")
    return found


def resolve_request(args: argparse.Namespace) -> TrainRequest:
    """The request to train with: a new run's from the flags; an existing run's own, unless a flag contradicts it
    (``ValueError`` naming each difference) or ``--force`` deletes the run directory first."""
    run_dir: Path = args.out
    stored = _stored(run_dir)
    if getattr(args, "force", False) and run_dir.exists():
        if not _is_run_dir(run_dir):
            raise ValueError(f"expected --force on a run directory (run.json, checkpoints/), got {run_dir}")
        shutil.rmtree(run_dir)
        return _new_request(args)
    if stored is None:
        return _new_request(args)
    found = differences(stored, args)
    if found:
        raise ValueError(
            f"expected the settings {run_dir} was started with, got {'; '.join(found)}. Resume without those flags, "
            "pass --force to delete the run and start over, or choose another --out"
        )
    return replace(stored, resumed=True)


class StopOnSignals:
    """SIGINT / SIGTERM ask training to stop at the next step (it saves ``last.pt``); a second Ctrl-C interrupts at
    once. The previous handlers come back on exit."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.stop

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop = True

    def __enter__(self) -> StopOnSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
