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
import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Final

import torch
from acdc_protocol import (
    CHECKPOINTS,
    CPU_ITERATIONS,
    PROTOCOLS,
    VALIDATIONS_PER_RUN,
    Plan,
    device_name,
    load_data,
    make_plan,
    pack,
    run_folder,
    survey_data,
    survey_folder,
)
from acdc_report import describe, num_str, score_checkpoint, write_results

from mona_core.training.checkpoint import LAST, load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.progress import ProgressEvent
from mona_core.training.trainer import TrainingData, train_on

DEFAULT_DATA: Final = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"


# --- one run ------------------------------------------------------------------------------------------------------


def _steps_done(config: TrainConfig, run_dir: Path) -> int:
    """Iterations already in ``run_dir``'s last checkpoints (both stages for mona): what a resume skips."""

    def step_of(directory: Path) -> int:
        path = directory / "checkpoints" / LAST
        return int(load_checkpoint(path)["step"]) if path.is_file() else 0

    return step_of(run_dir) + (step_of(run_dir / "pretrain") if config.method == "mona" else 0)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as JSON gives it back, without the device (a run may be re-scored on another machine) and with the
    fields a run saved before they existed filled with their defaults (what that run did)."""
    defaults = json.loads(json.dumps(TrainConfig().to_dict()))
    saved = json.loads(json.dumps(config))
    return {k: saved.get(k, default) for k, default in defaults.items() if k != "device"}


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
        f"{num_str(best, 100, 1)} (step {scores['best']['step']}), last {num_str(last, 100, 1)}",
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
