"""Benchmark: ``mona segment`` throughput on folders of real scans, and the cost of each step for one DICOM series.

1. A batch folder of ``--scans`` ACDC validation volumes (NIfTI, linked into a temporary folder) through the real
   CLI (``mona_core.cli.main``, progress bar and all): scans/s as the CLI reports it.
2. The same volumes written as DICOM series (``write_dicom_series``, one sub-folder each) through the CLI with
   ``--dicom-seg``: scans/s, reading every slice file and writing one SEG object per series.
3. One ACDC-sized DICOM series (the largest of those volumes): the median over ``--repeats`` of the time to read it
   (``read_dicom_series``), segment it (``Segmenter.segment``) and write its SEG (``write_dicom_seg``), and the same
   three steps for its NIfTI file and a NIfTI mask, for comparison.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/segment_throughput.py \
        --model bench-output/cpu-protocol/finetune/seed-0/model_best --scans 10
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mona_core.cli import main as mona
from mona_core.data.dataset import load_dataset
from mona_core.inference.segmenter import Segmenter
from mona_core.io import read_dicom_series, read_image, write_dicom_seg, write_dicom_series, write_mask

ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="exported model directory")
    p.add_argument("--data", type=Path, default=ACDC)
    p.add_argument("--split", default="val")
    p.add_argument("--scans", type=int, default=10, help="how many volumes of the split go into the batch folders")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args()


def run_cli(args: list[str]) -> tuple[int, float, str]:
    """``mona ARGS`` in this process; exit code, wall seconds and what it printed on stdout."""
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = mona(args)
    return code, time.perf_counter() - started, out.getvalue()


def median_time(step: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``step`` over ``repeats`` calls, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = step()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def one_series(model: Path, image: Path, work: Path, repeats: int) -> dict[str, float]:
    """Read / segment / write times of one volume as a DICOM series + SEG and as NIfTI + NIfTI mask."""
    segmenter = Segmenter(model, device="cpu")
    volume = read_image(image)
    figures = {"voxels": float(volume.array.size), "slices": float(volume.array.shape[0])}
    figures["write_series_s"], _ = median_time(lambda: write_dicom_series(volume, work / "one"), 1)
    figures["read_series_s"], series = median_time(lambda: read_dicom_series(work / "one"), repeats)
    figures["segment_s"], mask = median_time(lambda: segmenter.segment(series.volume), repeats)
    classes = segmenter.manifest.classes
    figures["write_seg_s"], _ = median_time(
        lambda: write_dicom_seg(mask.array, series, classes, work / "seg.dcm"), repeats
    )
    figures["read_nifti_s"], _ = median_time(lambda: read_image(image), repeats)
    figures["write_nifti_mask_s"], _ = median_time(
        lambda: write_mask(mask.array, mask.geometry, work / "mask.nii.gz"), repeats
    )
    figures["seg_bytes"] = float((work / "seg.dcm").stat().st_size)
    return figures


def main() -> None:
    args = parse_args()
    cases = [c for c in load_dataset(args.data).cases_in(args.split)][: args.scans]
    figures: dict[str, Any] = {"model": str(args.model), "scans": len(cases), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="mona-throughput-") as tmp:
        work = Path(tmp)
        (work / "nifti").mkdir()
        for case in cases:
            (work / "nifti" / case.image.name).symlink_to(case.image.resolve())
        code, seconds, out = run_cli(
            ["segment", "--model", str(args.model), str(work / "nifti"), "-o", str(work / "m")]
        )
        figures["nifti_batch"] = {"exit": code, "seconds": seconds, "scans_per_s": len(cases) / seconds, "cli": out}
        for case in cases:
            write_dicom_series(read_image(case.image), work / "dicom" / case.case_id)
        command = ["segment", "--model", str(args.model), str(work / "dicom"), "-o", str(work / "s"), "--dicom-seg"]
        code, seconds, out = run_cli(command)
        figures["dicom_batch"] = {"exit": code, "seconds": seconds, "scans_per_s": len(cases) / seconds, "cli": out}
        largest = max(cases, key=lambda c: c.image.stat().st_size)
        figures["one_series"] = {"case": largest.case_id, **one_series(args.model, largest.image, work, args.repeats)}
    report(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


def report(figures: dict[str, Any]) -> None:
    print(f"model {figures['model']}; {figures['scans']} scans; {figures['cpus']} CPU(s), onnxruntime default threads")
    for key, what in (("nifti_batch", "NIfTI folder"), ("dicom_batch", "DICOM series folders, --dicom-seg")):
        batch = figures[key]
        print(f"{what}: exit {batch['exit']}, {batch['seconds']:.1f} s wall, {batch['scans_per_s']:.2f} scans/s")
        print("  cli: " + batch["cli"].strip().replace("\n", "\n  cli: "))
    one = figures["one_series"]
    print(
        f"one DICOM series ({one['case']}, {int(one['slices'])} slices, {int(one['voxels'])} voxels), median s: "
        f"write series {one['write_series_s']:.3f} (once), read series {one['read_series_s']:.3f}, "
        f"segment {one['segment_s']:.3f}, write SEG {one['write_seg_s']:.3f} ({one['seg_bytes'] / 1024:.0f} KiB); "
        f"NIfTI: read {one['read_nifti_s']:.3f}, write mask {one['write_nifti_mask_s']:.3f}"
    )


if __name__ == "__main__":
    main()
