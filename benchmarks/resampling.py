"""Benchmark: how a prediction returns to the input grid, scored on a dataset split (ACDC validation by default).

The network sees square slices of ``manifest.size``; the input grid is larger (ACDC: 154-512 pixels in-plane). Three
ways back, each through ``Segmenter(resample=...)`` and ``mona_core.inference.evaluate.evaluate_model``, so the
scoring (per-class 3D DSC and ASD, explicit empty cases) is the product's own:

- ``labels`` (the former behaviour): argmax at network size, labels resized with nearest neighbour;
- ``probabilities`` (the default now): softmax at network size, resized linearly, argmax on the input grid;
- ``logits``: raw logits resized linearly, argmax on the input grid (nnU-Net v2's choice).

Prints DSC (%) and ASD per class and their means over classes for each way, the change against ``labels``, and the
number of cases whose mean DSC rose / fell; ``--json`` also writes everything (with every case) to a file.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/resampling.py \
        --model bench-output/cpu-protocol/finetune/seed-0/model_best --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from mona_core.data.dataset import load_dataset
from mona_core.data.slicing import RESAMPLING
from mona_core.inference.evaluate import evaluate_model
from mona_core.inference.segmenter import Segmenter

ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="exported model directory (model.onnx + manifest.json)")
    p.add_argument("--data", type=Path, default=ACDC, help=f"nnU-Net raw dataset with splits.json (default {ACDC})")
    p.add_argument("--split", default="val")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--modes", default="labels,probabilities,logits", help=f"comma-separated subset of {RESAMPLING}")
    p.add_argument("--json", type=Path, help="also write the reports here")
    return p.parse_args()


def score(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    segmenter = Segmenter(args.model, device="cpu", threads=args.threads, resample=mode)
    index = load_dataset(args.data, preset=segmenter.manifest.preset)
    started = time.perf_counter()
    report = evaluate_model(segmenter, index, args.split)
    report["seconds"] = time.perf_counter() - started
    return report


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table(reports: dict[str, dict[str, Any]]) -> str:
    """One markdown row per way: DSC (%) and ASD per class, their means, and the change against ``labels``."""
    classes = list(next(iter(reports.values()))["per_class"])
    head = [f"{c} DSC" for c in classes] + ["mean DSC"] + [f"{c} ASD" for c in classes] + ["mean ASD", "s"]
    lines = ["| resampling | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for mode, report in reports.items():
        per_class, mean = report["per_class"], report["mean"]
        cells = [_pct(per_class[c]["dice"]) for c in classes] + [_pct(mean["dice"])]
        cells += [_num(per_class[c]["asd"]) for c in classes] + [_num(mean["asd"]), f"{report['seconds']:.1f}"]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _case_means(report: dict[str, Any]) -> dict[str, float]:
    """Each case's mean DSC over the classes it has (both-empty classes left out)."""
    means = {}
    for case in report["cases"]:
        dices = [c["dice"] for c in case["classes"].values() if c["dice"] is not None and c["status"] != "both_empty"]
        means[case["case_id"]] = sum(dices) / len(dices) if dices else 0.0
    return means


def changes(reports: dict[str, dict[str, Any]]) -> list[str]:
    if "labels" not in reports:
        return []
    base, base_cases = reports["labels"]["mean"], _case_means(reports["labels"])
    lines = []
    for mode, report in reports.items():
        if mode == "labels":
            continue
        cases = _case_means(report)
        up = sum(cases[c] > base_cases[c] + 1e-9 for c in cases)
        down = sum(cases[c] < base_cases[c] - 1e-9 for c in cases)
        lines.append(
            f"{mode} vs labels: mean DSC {100 * (report['mean']['dice'] - base['dice']):+.2f} points, mean ASD "
            f"{report['mean']['asd'] - base['asd']:+.3f}; case mean DSC up in {up}, down in {down} of {len(cases)}"
        )
    return lines


def main() -> None:
    args = parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    reports = {mode: score(args, mode) for mode in modes}
    first = next(iter(reports.values()))
    manifest = Segmenter(args.model, device="cpu").manifest
    print(
        f"model {args.model.resolve()} (onnx sha256 {manifest.onnx_sha256[:16]}, {manifest.size}x{manifest.size}, "
        f"checkpoint step {manifest.source.get('checkpoint_step')}); data {args.data} split {args.split!r} "
        f"({len(first['cases'])} volumes); onnxruntime CPU, {args.threads} thread(s)"
    )
    print(f"DSC in %, ASD unit: {first['unit']}; means over classes as mona_core.metrics aggregates them\n")
    print(table(reports))
    print("\n" + "\n".join(changes(reports)))
    if args.json is not None:
        args.json.write_text(json.dumps({"model": str(args.model), "split": args.split, "reports": reports}, indent=2))


if __name__ == "__main__":
    main()
