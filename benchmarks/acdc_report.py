"""The ACDC benchmark's reporting (see ``acdc.py``): the protocol in words, scoring of a checkpoint through the
exported ONNX model, aggregation over seeds (mean ± sd), the markdown tables and ``results.json``/``results.md``."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from acdc_protocol import (
    BATCH_SIZE,
    CHECKPOINTS,
    EPOCH_DEFINITION,
    EPOCH_LABELLED_PER_BATCH,
    PAPER_EPOCHS,
    PATIENT_SELECTION_SEED,
    PROTOCOLS,
    Plan,
    device_name,
    run_folder,
)

from mona_core.data.slicing import image_to_slices
from mona_core.export.onnx_export import export_checkpoint
from mona_core.inference.evaluate import ASD_UNIT
from mona_core.inference.segmenter import Segmenter
from mona_core.metrics import MetricAccumulator, evaluate_case
from mona_core.training.checkpoint import load_checkpoint
from mona_core.training.trainer import TrainingData

# --- the protocol in words ----------------------------------------------------------------------------------------


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


# --- scoring ----------------------------------------------------------------------------------------------------------


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


def num_str(value: float | None, scale: float, digits: int) -> str:
    return "n/a" if value is None else f"{scale * value:.{digits}f}"


def cell(stat: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± sd``; sd "–" with one value; ``(n=k)`` when some seeds had no value (e.g. an empty prediction)."""
    if stat["mean"] is None:
        return "n/a"
    sd = "–" if stat["sd"] is None else num_str(stat["sd"], scale, digits)
    missing = f" (n={stat['n']})" if stat["n"] < stat["of"] else ""
    return f"{num_str(stat['mean'], scale, digits)} ± {sd}{missing}"


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
            f"| {r['spec']} | {r['seed']} | {best['step']} | {num_str(best['mean']['dice'], 100, 1)} | "
            f"{num_str(best['mean']['asd'], 1, 2)} | {last['step']} | {num_str(last['mean']['dice'], 100, 1)} | "
            f"{num_str(last['mean']['asd'], 1, 2)} | {num_str(r['train_wall_s'], 1, 0)} | "
            f"{num_str(r['iterations_per_s'], 1, 2)} | {note} |"
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
