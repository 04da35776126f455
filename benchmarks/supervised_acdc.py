"""Benchmark: UNet-L, Mean Teacher, MONA ... on real ACDC under one declared reduced CPU protocol; inference speed.

Protocol (declared; the paper's is a GPU job): 3 labelled training patients (chosen by patient, seed 0); the other
67 training patients are unlabelled (used by the semi-supervised methods, ignored by UNet-L); 128x128 slices;
batch 6 (semi-supervised: 3 labelled + 3 unlabelled); SGD with the paper's defaults; the same iteration budget;
model selection on the 10 validation patients every ``--val-every`` iterations; the selected checkpoint is exported
to ONNX and scored on the same validation split through the torch-free inference path (DSC and ASD per class; the
ACDC headers say 1 x 1 x 1, so ASD is in voxels). Also: per-slice inference latency at 256x256 for ONNX Runtime vs
PyTorch (batch 1, median), and one whole ACDC volume end to end (read → segment → write).

    .venv/bin/python benchmarks/supervised_acdc.py [--methods supervised,mean_teacher,mona] [--iterations 1500]

An existing finished run under ``--out`` is reused (its training time is then not re-measured: delete the folder
for a fresh measurement).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mona_core.cli.exporting import export_run
from mona_core.data.dataset import load_dataset
from mona_core.data.splits import select_labelled
from mona_core.export.onnx_export import export_checkpoint
from mona_core.inference.evaluate import evaluate_model
from mona_core.inference.segmenter import Segmenter
from mona_core.io import read_image, write_mask
from mona_core.models import UNetConfig, build_model
from mona_core.training.checkpoint import checkpoint_for_export, load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.trainer import train

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_ms(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def train_and_score(args: argparse.Namespace, method: str, out: Path) -> dict[str, Any]:
    index = load_dataset(args.data)
    selection = select_labelled(index.patients("train"), n_patients=args.labelled_patients, seed=0)
    config = TrainConfig(
        method=method,
        iterations=args.iterations,
        size=args.size,
        batch_size=6,
        val_every=args.val_every,
        checkpoint_every=args.val_every,
        device="cpu",
        seed=0,
    )
    started = time.monotonic()
    result = train(config, index, selection, out / "run")  # an existing finished run is reused as it is
    train_s = time.monotonic() - started
    model_dir = out / "model"
    if not model_dir.is_dir():
        export_run(out / "run", model_dir)
    report = evaluate_model(Segmenter(model_dir, device="cpu"), index, "val")
    return {
        "protocol": {"labelled_patients": list(selection.labelled), **config.to_dict()},
        "train_wall_s": round(train_s, 1),
        "best": result.best,
        "val": {
            "per_class": {k: {"dice": v["dice"], "asd": v["asd"]} for k, v in report["per_class"].items()},
            "mean": report["mean"],
            "unit": report["unit"],
        },
        "model_dir": str(model_dir),
    }


def export_at_256(run_dir: Path, out_dir: Path) -> Path:
    """The trained weights exported for 256x256 input (the UNet is fully convolutional): the paper's slice size."""
    if not out_dir.is_dir():
        checkpoint = load_checkpoint(checkpoint_for_export(run_dir))
        checkpoint["data"] = {**checkpoint["data"], "size": 256}
        export_checkpoint(checkpoint, out_dir)
    return out_dir


def inference_speed(run_dir: Path, model_dir: Path, data: Path, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(2)
    segmenter_256 = Segmenter(export_at_256(run_dir, model_dir.parent / "model_256"), device="cpu")
    slice_256 = np.random.default_rng(0).random((1, 1, 256, 256), dtype=np.float32)
    model = build_model(UNetConfig(num_classes=len(segmenter_256.manifest.classes)))
    model.load_state_dict(load_checkpoint(checkpoint_for_export(run_dir))["model"])
    model.eval()
    tensor = torch.from_numpy(slice_256)

    def torch_once() -> None:
        with torch.inference_mode():
            model(tensor)

    ort_ms = median_ms(lambda: segmenter_256.predict_slices(slice_256), repeats)
    torch_ms = median_ms(torch_once, repeats)
    segmenter = Segmenter(model_dir, device="cpu")
    case = load_dataset(data).cases_in("val")[0]
    start = time.perf_counter()
    image = read_image(case.image)
    mask = segmenter.segment(image)
    write_mask(mask.array, mask.geometry, model_dir.parent / "volume_mask.nii.gz")
    volume_s = time.perf_counter() - start
    return {
        "slice_256_ms": {"onnxruntime": round(ort_ms, 1), "pytorch": round(torch_ms, 1)},
        "volume": {
            "case": case.case_id,
            "size_xyz": list(image.geometry.size),
            "seconds": round(volume_s, 2),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--labelled-patients", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--methods", default="supervised")
    parser.add_argument("--out", type=Path, default=Path("bench-output/acdc"))
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"ACDC not found at {args.data}; nothing to benchmark")
        return 0
    torch.set_num_threads(2)
    results: dict[str, Any] = {"machine": f"{torch.get_num_threads()} torch threads, CPU", "methods": {}}
    for method in args.methods.split(","):
        results["methods"][method] = train_and_score(args, method, args.out / method)
        print(json.dumps({method: results["methods"][method]}, indent=2), flush=True)
    first = args.methods.split(",")[0]
    model_dir = Path(results["methods"][first]["model_dir"])
    results["inference"] = inference_speed(args.out / first / "run", model_dir, args.data, args.repeats)
    results["peak_rss_mb"] = round(peak_rss_mb(), 0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results["methods"]))
    print(json.dumps(results["inference"], indent=2))
    return 0


def table(methods: dict[str, Any]) -> str:
    """A Table-I-style markdown table: DSC (%) and ASD per class and their means, one row per method."""
    classes = list(next(iter(methods.values()))["val"]["per_class"])
    head = "| method | " + " | ".join(f"{c} DSC | {c} ASD" for c in classes) + " | mean DSC | mean ASD | train s |"
    rows = [head, "|" + "---|" * (2 * len(classes) + 4)]
    for name, result in methods.items():
        cells = [f"{100 * v['dice']:.1f} | {v['asd']:.2f}" for v in result["val"]["per_class"].values()]
        mean = result["val"]["mean"]
        rows.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {100 * mean['dice']:.1f} | {mean['asd']:.2f} | {result['train_wall_s']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
