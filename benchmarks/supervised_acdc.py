"""Benchmark: UNet-L, Mean Teacher, MONA ... on real ACDC under one declared protocol; inference speed.

Protocol (declared; the paper's is a long GPU job): 3 labelled training patients (chosen by patient, seed 0); the
other 67 training patients are unlabelled (used by the semi-supervised methods, ignored by UNet-L); 128x128 slices
on CPU (``--size``); batch 6 (semi-supervised: 3 labelled + 3 unlabelled); SGD with the paper's defaults; the same
iteration budget for every method; model selection on the 10 validation patients every ``--val-every`` iterations;
the selected checkpoint is exported to ONNX and scored on the same validation split through the torch-free inference
path (DSC and ASD per class; the ACDC headers say 1 x 1 x 1, so ASD is in voxels). Also: per-slice inference latency
at 256x256 for ONNX Runtime vs PyTorch (batch 1, median), and one whole ACDC volume end to end.

    .venv/bin/python benchmarks/supervised_acdc.py [--methods supervised,mean_teacher,mona] [--iterations 1500]

A method is a ``--method`` name, optionally with config overrides joined by ``+``: ``mona+rampup_fraction=0`` is
MONA with its unsupervised terms at full weight from the first step; ``finetune`` alone is MONA's fine-tuning from
scratch (no GLCon). ``--jobs N`` trains N methods at once in separate processes (a GPU has room for several).

For a machine that cannot read the NIfTI files (no SimpleITK, or the dataset must travel): ``--pack FILE`` writes
the exact training slices and validation volumes of this protocol to one xz file (intensities already min-max
normalised per volume, stored as 8 bits: a quantisation step of 1/255), and ``--packed FILE`` trains and scores
from it.

An existing finished run under ``--out`` is reused (its training time is then not re-measured: delete the folder
for a fresh measurement).
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mona_core.data.dataset import load_dataset
from mona_core.data.slicing import image_to_slices
from mona_core.data.splits import select_labelled
from mona_core.export.onnx_export import export_checkpoint
from mona_core.inference.evaluate import ASD_UNIT
from mona_core.inference.segmenter import Segmenter
from mona_core.io import read_image, write_mask
from mona_core.metrics import MetricAccumulator, evaluate_case
from mona_core.models import UNetConfig, build_model
from mona_core.training.checkpoint import checkpoint_for_export, load_checkpoint
from mona_core.training.config import TrainConfig
from mona_core.training.progress import ProgressEvent
from mona_core.training.slices import SliceBank, ValCase
from mona_core.training.trainer import TrainingData, read_training_data, train_on

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
    if args.packed:
        return unpack(args.packed)
    index = load_dataset(args.data)
    selection = select_labelled(index.patients("train"), n_patients=args.labelled_patients, seed=0)
    return read_training_data(index, selection, args.size)


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``mona+rampup_fraction=0+pretrain_fraction=0.25`` → ("mona", {"rampup_fraction": 0.0, ...})."""
    method, *pairs = spec.split("+")
    types = {f.name: f.type for f in fields(TrainConfig)}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            raise ValueError(f"expected a TrainConfig field in {spec!r}, got {key!r}")
        kind = str(types[key])
        overrides[key] = value == "true" if "bool" in kind else float(value) if "float" in kind else int(value)
    return method, overrides


def score(model_dir: Path, data: TrainingData, device: str) -> dict[str, Any]:
    """The exported model, through onnxruntime, on the whole validation volumes: DSC and ASD per class."""
    segmenter = Segmenter(model_dir, device=device)
    accumulator = MetricAccumulator(data.classes, unit=ASD_UNIT)
    for case in data.val_cases:
        mask = segmenter.segment_array(case.image)
        accumulator.add(evaluate_case(mask, case.label, data.classes, case.spacing_zyx, case_id=case.case_id))
    report = accumulator.aggregate()
    return {**report, "providers": segmenter.providers}


def train_and_score(args: argparse.Namespace, spec: str, out: Path, data: TrainingData | None = None) -> dict[str, Any]:
    if data is None:
        data = load_data(args)
    torch.set_num_threads(args.threads)
    method, overrides = parse_method(spec)
    config = TrainConfig(
        method=method,
        iterations=args.iterations,
        size=int(data.bank.images.shape[-1]),
        batch_size=6,
        val_every=args.val_every,
        checkpoint_every=args.val_every,
        log_every=50,
        device=args.device,
        seed=0,
    ).with_overrides(**overrides)
    started = time.monotonic()

    def show(event: ProgressEvent) -> None:
        if event.val_dice is not None:
            print(
                f"[{spec}] {event.stage} step {event.step}/{event.total} val DSC {event.val_dice:.3f} "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )

    result = train_on(config, data, out / "run", progress=show)  # an existing finished run is reused as it is
    train_s = time.monotonic() - started
    model_dir = out / "model"
    if not model_dir.is_dir():
        checkpoint = load_checkpoint(checkpoint_for_export(out / "run"))
        real = image_to_slices(data.val_cases[0].image, data.preset, config.size)[:8]
        export_checkpoint(checkpoint, model_dir, real_inputs=real)
    report = score(model_dir, data, "cpu")
    return {
        "protocol": {"labelled_patients": data.description["selection"]["labelled"], **config.to_dict()},
        "train_wall_s": round(train_s, 1),
        "best": result.best,
        "val": {
            "per_class": {k: {"dice": v["dice"], "asd": v["asd"]} for k, v in report["per_class"].items()},
            "mean": report["mean"],
            "unit": report["unit"],
        },
        "model_dir": str(model_dir),
    }


def _run_one(args: argparse.Namespace, spec: str, data: TrainingData | None = None) -> dict[str, Any]:
    return train_and_score(args, spec, args.out / spec.replace("=", "-"), data)


def train_all(args: argparse.Namespace, specs: list[str]) -> dict[str, Any]:
    """Every method under the same protocol, one after the other or ``--jobs`` at a time in separate processes."""
    results: dict[str, Any] = {}
    if args.jobs <= 1:
        data = load_data(args)
        for spec in specs:
            results[spec] = _run_one(args, spec, data)
            print(json.dumps({spec: results[spec]}, indent=2), flush=True)
        return results
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {spec: pool.submit(_run_one, args, spec) for spec in specs}
        for spec, future in futures.items():
            results[spec] = future.result()
            print(json.dumps({spec: results[spec]}, indent=2), flush=True)
    return results


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
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads per training process")
    parser.add_argument("--jobs", type=int, default=1, help="methods trained at once, each in its own process")
    parser.add_argument("--pack", type=Path, help="write the protocol's data to this file and stop")
    parser.add_argument("--packed", type=Path, help="train and score from a file written by --pack")
    parser.add_argument("--out", type=Path, default=Path("bench-output/acdc"))
    args = parser.parse_args()
    if not args.packed and not args.data.is_dir():
        print(f"ACDC not found at {args.data}; nothing to benchmark")
        return 0
    if args.pack:
        pack(load_data(args), args.pack)
        print(f"wrote {args.pack} ({args.pack.stat().st_size / 1e6:.1f} MB)")
        return 0
    torch.set_num_threads(args.threads)
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} torch threads"
    specs = args.methods.split(",")
    results: dict[str, Any] = {"machine": machine, "jobs": args.jobs, "methods": train_all(args, specs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results["methods"]), flush=True)
    if not args.packed:
        model_dir = Path(results["methods"][specs[0]]["model_dir"])
        results["inference"] = inference_speed(args.out / specs[0] / "run", model_dir, args.data, args.repeats)
        print(json.dumps(results["inference"], indent=2))
    results["peak_rss_mb"] = round(peak_rss_mb(), 0)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


def _cell(value: float | None, scale: float, digits: int) -> str:
    return "n/a" if value is None else f"{scale * value:.{digits}f}"


def table(methods: dict[str, Any]) -> str:
    """A Table-I-style markdown table: DSC (%) and ASD per class and their means, one row per method."""
    classes = list(next(iter(methods.values()))["val"]["per_class"])
    head = "| method | " + " | ".join(f"{c} DSC | {c} ASD" for c in classes) + " | mean DSC | mean ASD | train s |"
    rows = [head, "|" + "---|" * (2 * len(classes) + 4)]
    for name, result in methods.items():
        cells = [f"{_cell(v['dice'], 100, 1)} | {_cell(v['asd'], 1, 2)}" for v in result["val"]["per_class"].values()]
        mean = result["val"]["mean"]
        rows.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {_cell(mean['dice'], 100, 1)} | {_cell(mean['asd'], 1, 2)} | {result['train_wall_s']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
