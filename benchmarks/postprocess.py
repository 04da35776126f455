"""Benchmark: what post-processing (``mona_core.data.slicing.POSTPROCESSING``) does to exported models' scores.

Each model directory (one per training seed, say) is scored on a dataset split twice through the product's own
path (``Segmenter(postprocess=...)`` and ``mona_core.inference.evaluate.evaluate_model``): its masks as predicted,
and with each class reduced to its largest connected component. Prints DSC (%) and ASD per class for every model
and the mean ± sample sd over the models, so the choice is made on figures over several seeds. Choosing the
post-processing on the split it is scored on is a selection on that split: say so next to the figure.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/postprocess.py --threads 1 \
        --models "bench-output/cpu-patch/finetune+patch-128+channels_last-true/seed-*/model_last"
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path
from typing import Any

from mona_core.data.dataset import load_dataset
from mona_core.data.slicing import POSTPROCESSING
from mona_core.inference.evaluate import evaluate_model
from mona_core.inference.segmenter import Segmenter

ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="a glob of exported model directories (model.onnx + manifest)")
    p.add_argument("--data", type=Path, default=ACDC, help=f"nnU-Net raw dataset with splits.json (default {ACDC})")
    p.add_argument("--split", default="val")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--json", type=Path, help="also write every report here")
    return p.parse_args()


def score(model: Path, data: Path, split: str, postprocess: str, threads: int) -> dict[str, Any]:
    segmenter = Segmenter(model, device="cpu", threads=threads, postprocess=postprocess)
    return evaluate_model(segmenter, load_dataset(data, preset=segmenter.manifest.preset), split)


def _cells(values: list[float | None], percent: bool) -> list[str]:
    """DSC fractions as percentages with one decimal, ASD with two; None as n/a."""
    return ["n/a" if v is None else f"{100.0 * v:.1f}" if percent else f"{v:.2f}" for v in values]


def _summary(reports: list[dict[str, Any]], classes: list[str]) -> list[str]:
    """Mean ± sample sd over models of each class's DSC and ASD and of their means."""

    def spread(values: list[float | None], percent: bool) -> str:
        if any(v is None for v in values):
            return "n/a"
        scale = 100.0 if percent else 1.0
        mean = scale * statistics.fmean(v for v in values if v is not None)
        sd = scale * statistics.stdev(v for v in values if v is not None) if len(values) > 1 else 0.0
        return f"{mean:.1f} ± {sd:.1f}" if percent else f"{mean:.2f} ± {sd:.2f}"

    return [spread(values, percent) for values, percent in _columns(reports, classes)]


def _columns(reports: list[dict[str, Any]], classes: list[str]) -> list[tuple[list[float | None], bool]]:
    """The table's columns over ``reports``: DSC per class and mean, then ASD per class and mean (is-DSC flags)."""
    dsc = [[r["per_class"][c]["dice"] for r in reports] for c in classes] + [[r["mean"]["dice"] for r in reports]]
    asd = [[r["per_class"][c]["asd"] for r in reports] for c in classes] + [[r["mean"]["asd"] for r in reports]]
    return [(column, True) for column in dsc] + [(column, False) for column in asd]


def main() -> None:
    args = parse_args()
    models = sorted(Path(p) for p in glob.glob(args.models))
    if not models:
        raise SystemExit(f"no model directory matches {args.models!r}")
    reports = {
        way: [score(model, args.data, args.split, way, args.threads) for model in models] for way in POSTPROCESSING
    }
    classes = list(reports["none"][0]["per_class"])
    head = [f"{c} DSC" for c in classes] + ["mean DSC"] + [f"{c} ASD" for c in classes] + ["mean ASD"]
    print(f"split {args.split!r} of {args.data} ({len(reports['none'][0]['cases'])} volumes); DSC in %, ASD in "
          f"{reports['none'][0]['unit']}; onnxruntime CPU, {args.threads} thread(s)\n")  # fmt: skip
    print("| post-processing | model | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 2) + "|")
    for way, per_model in reports.items():
        for model, report in zip(models, per_model, strict=True):
            cells = [_cells(values, percent)[0] for values, percent in _columns([report], classes)]
            print(f"| {way} | {model.parent.name}/{model.name} | " + " | ".join(cells) + " |")
        print(f"| {way} | mean ± sd over {len(models)} | " + " | ".join(_summary(per_model, classes)) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({"models": [str(m) for m in models], "reports": reports}, indent=2))


if __name__ == "__main__":
    main()
