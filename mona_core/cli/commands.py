"""``mona train | export | evaluate``: thin wrappers that parse flags and call the library (segment: ``segmenting``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mona_core.cli.console import TrainingBar, emit, format_report
from mona_core.data.dataset import DatasetIndex, load_dataset
from mona_core.data.slicing import POSTPROCESSING
from mona_core.data.splits import LabelledSelection, select_labelled
from mona_core.training.config import METHODS, TrainConfig


def add_train(sub: Any) -> None:
    defaults = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a segmentation model on a dataset folder",
        description="Train (or resume) a run. An existing --out is resumed with the settings it started with; a "
        "flag that differs from them is refused (--force starts over). Ctrl-C or SIGTERM saves checkpoints/last.pt "
        "and exits 130; run the same command again to resume.",
    )
    p.add_argument("--data", required=True, type=Path, help="nnU-Net raw folder or a folder of image/label pairs")
    p.add_argument("--method", choices=list(METHODS), help="training method (default: supervised)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--labelled-patients", type=int, help="number of training patients whose labels are used")
    group.add_argument(
        "--labelled-ratio", type=float, help="fraction of training patients labelled, e.g. 0.05 (default: all)"
    )
    p.add_argument("--split-seed", type=int, help="seed choosing the labelled patients (default: 0)")
    p.add_argument("--iterations", type=int, help=f"training iterations (default: {defaults.iterations})")
    p.add_argument("--size", type=int, help=f"square training slice size (default: {defaults.size})")
    p.add_argument(
        "--patch", type=int, help="train on random PATCH x PATCH windows of the slices (default: whole slices)"
    )
    p.add_argument(
        "--postprocess",
        choices=POSTPROCESSING,
        help="applied to each predicted volume in validation and by the exported model (default: none)",
    )
    p.add_argument("--batch-size", type=int, help=f"slices per step (default: {defaults.batch_size})")
    p.add_argument("--val-every", type=int, help=f"validate every N iterations (default: {defaults.val_every})")
    p.add_argument(
        "--seed", type=int, help=f"training seed: weights, sampling, augmentation (default: {defaults.seed})"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help=f"(default: {defaults.device})")
    p.add_argument("--preset", choices=["mri", "ct"], help="intensity preset (default: from dataset.json, else mri)")
    p.add_argument("--patient-pattern", help="regex with one group extracting the patient id from a case id")
    p.add_argument("--init-from", type=Path, help="checkpoint to start from (finetune: a pretrain run's last.pt)")
    p.add_argument("--out", required=True, type=Path, help="run directory (an existing one is resumed)")
    p.add_argument("--force", action="store_true", help="delete an existing --out and start over")
    p.set_defaults(handler=run_train)


def add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="export a run's best checkpoint to ONNX + manifest.json")
    p.add_argument("run_dir", type=Path, help="a run directory of mona train (its best-on-val checkpoint is exported)")
    p.add_argument("--out", type=Path, help="model directory (default: RUN_DIR/model)")
    p.add_argument(
        "--postprocess",
        choices=POSTPROCESSING,
        help="what the model does to each mask, kept in its manifest (default: the run's TrainConfig.postprocess)",
    )
    p.set_defaults(handler=run_export)


def add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="DSC/ASD of a mask against a label, or of a model on a dataset split")
    p.add_argument("--pred", type=Path, help="a predicted mask (with --label)")
    p.add_argument("--label", type=Path, help="the reference label on the same grid (with --pred)")
    p.add_argument("--model", type=Path, help="an exported model directory (with --data)")
    p.add_argument("--data", type=Path, help="a dataset folder whose --split cases are scored (with --model)")
    p.add_argument("--split", default="val", help="split of --data to score (default: val)")
    p.add_argument("--classes", help="comma-separated class names for --pred/--label (default from label values)")
    p.add_argument("--out", type=Path, help="also write the JSON report (and masks/overlays for --model) here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    p.add_argument("--postprocess", choices=POSTPROCESSING, help="with --model: instead of the manifest's")
    p.set_defaults(handler=run_evaluate)


def selection_for(index: DatasetIndex, args: argparse.Namespace, run_dir: Path) -> LabelledSelection:
    """A resumed run keeps the patients it started with; a new run chooses them by patient, seeded."""
    run_file = run_dir / "run.json"
    if run_file.is_file():
        return LabelledSelection.from_dict(json.loads(run_file.read_text())["selection"])
    return select_labelled(
        index.patients("train"),
        n_patients=args.labelled_patients,
        ratio=args.labelled_ratio,
        seed=args.split_seed,
        eligible=index.fully_labelled_patients("train"),
    )


def run_train(args: argparse.Namespace) -> int:
    from mona_core.cli.runs import STOPPED_EXIT, StopOnSignals, resolve_request
    from mona_core.training.trainer import train

    request = resolve_request(args)
    index = load_dataset(request.data, preset=request.preset, patient_pattern=request.patient_pattern)
    selection = selection_for(index, request.selection_args(), args.out)
    config = request.config
    if config.method == "finetune" and config.init_from is None:
        emit("no --init-from: MONA fine-tuning starts from random weights (no GLCon pre-training)")
    if request.labelled_patients is None and request.labelled_ratio is None:
        emit(
            f"warning: no --labelled-patients / --labelled-ratio: every one of the {len(selection.labelled)} "
            "patients with labels is labelled (a fully supervised run, not a few-label one)"
        )
    request.save(args.out)
    emit(
        f"training {config.method} on {index.name}: {len(selection.labelled)} labelled patients "
        f"({', '.join(selection.labelled)}), {len(selection.unlabelled)} unlabelled; run dir {args.out}"
    )
    with StopOnSignals() as stop, TrainingBar(config.iterations) as bar:
        result = train(config, index, selection, args.out, progress=bar.update, should_stop=stop.requested)
    if result.stopped:
        emit(f"stopped at iteration {result.steps}: checkpoints/last.pt saved; run the same command to resume")
        return STOPPED_EXIT
    emit(f"done: {result.steps} iterations, best {result.best}; checkpoints in {args.out / 'checkpoints'}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from mona_core.cli.exporting import export_run

    result = export_run(args.run_dir, args.out or args.run_dir / "model", args.postprocess)
    parity = result.manifest.parity
    emit(
        f"exported {result.model_dir} (ONNX opset {result.manifest.opset}; parity max |diff| "
        f"{parity.get('max_abs_diff_random')} random, {parity.get('max_abs_diff_real')} real)"
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from mona_core.cli.scoring import evaluate_files, evaluate_model_dir

    if args.model is not None and args.data is not None:
        report = evaluate_model_dir(args.model, args.data, args.split, args.out, args.device, args.postprocess)
    elif args.pred is not None and args.label is not None:
        report = evaluate_files(args.pred, args.label, args.classes)
    else:
        raise ValueError("expected --pred and --label, or --model and --data, got neither pair")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2))
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else format_report(report))
    return 0
