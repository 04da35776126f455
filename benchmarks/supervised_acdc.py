"""Inference speed on ACDC, after one ``acdc.py`` run: per-slice latency at 256x256 for ONNX Runtime vs PyTorch
(batch 1, median of ``--repeats``), and one whole ACDC volume end to end (read, segment, write).

The training and scoring are ``benchmarks/acdc.py``'s (see its doc for the protocols); this wrapper runs it with
one seed of the ``cpu`` protocol for ``supervised`` unless told otherwise, then times the first run's
best-on-validation model. Every option except ``--repeats`` is passed to ``acdc.py``:

    .venv/bin/python benchmarks/supervised_acdc.py [--repeats 20] [acdc.py options, e.g. --iterations 1500]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import acdc
import numpy as np
import torch

from mona_core.data.dataset import load_dataset
from mona_core.export.onnx_export import export_checkpoint
from mona_core.inference.segmenter import Segmenter
from mona_core.io import read_image, write_mask
from mona_core.models import UNetConfig, build_model
from mona_core.training.checkpoint import checkpoint_for_export, load_checkpoint

DEFAULTS = ("--protocol", "cpu", "--seeds", "1", "--methods", "supervised")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


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
        "volume": {"case": case.case_id, "size_xyz": list(image.geometry.size), "seconds": round(volume_s, 2)},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    own, rest = parser.parse_known_args(argv)
    args = acdc.parse_args([*DEFAULTS, *rest])
    if not args.packed and not args.data.is_dir():
        print(f"ACDC not found at {args.data}; nothing to benchmark")
        return 0
    results = acdc.run(args)
    if results is None or args.packed:  # --pack, --dry-run; a packed run has no NIfTI volume to time
        return 0
    first = results["records"][0]
    run_dir = Path(first["run_dir"])
    speed = inference_speed(run_dir, Path(first["scores"]["best"]["model_dir"]), args.data, own.repeats)
    speed["peak_rss_mb"] = round(peak_rss_mb(), 0)
    print(json.dumps(speed, indent=2))
    (args.out / "inference_speed.json").write_text(json.dumps(speed, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
