"""``mona study``: labelled ratios × methods on one dataset under one budget → study.json, study.md, study.png."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mona_core.cli.console import TrainingBar, emit


def add_study(sub: Any) -> None:
    p = sub.add_parser("study", help="label-efficiency study: methods x labelled ratios, one budget, one report")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--methods", default="supervised,mean_teacher,mona", help="comma-separated methods")
    p.add_argument("--ratios", default="0.01,0.05,0.1", help="comma-separated labelled ratios (of training patients)")
    p.add_argument("--iterations", type=int, help="iterations of every cell (the shared budget)")
    p.add_argument("--size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--val-every", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--preset", choices=["mri", "ct"])
    p.add_argument("--out", required=True, type=Path, help="study directory (re-running resumes it)")
    p.set_defaults(handler=run_study_command)


def run_study_command(args: argparse.Namespace) -> int:
    from mona_core.data.dataset import load_dataset
    from mona_core.training.config import StudyConfig, TrainConfig
    from mona_core.training.study import run_study

    base = TrainConfig().with_overrides(
        iterations=args.iterations,
        size=args.size,
        batch_size=args.batch_size,
        val_every=args.val_every,
        device=args.device,
    )
    study = StudyConfig(
        methods=tuple(m.strip() for m in args.methods.split(",")),
        ratios=tuple(float(r) for r in args.ratios.split(",")),
        base=base,
    )
    index = load_dataset(args.data, preset=args.preset)
    cells = len(study.methods) * len(study.ratios)
    emit(f"study on {index.name}: {cells} cells of {base.iterations} iterations each; results in {args.out}")
    with TrainingBar(cells * base.iterations, desc="study") as bar:
        report = run_study(study, index, args.out, progress=bar.update)
    assert report is not None
    emit(report["markdown"])
    emit(f"report: {args.out / 'study.json'}, {args.out / 'study.md'}, plot: {args.out / 'study.png'}")
    return 0
