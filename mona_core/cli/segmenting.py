"""``mona segment``: one scan, or a folder of scans, to masks on the input grid (image files or DICOM SEG).

INPUT is a NIfTI / MHA / NRRD file, a folder whose own files hold one DICOM series, or else a batch folder (scan files
and sub-folders each holding one DICOM series). Usage errors (a bad flag combination, an unreadable single scan) exit
2 through ``mona_core.cli.main``; in a batch a bad scan is reported and skipped, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mona_core.cli.console import emit
from mona_core.data.slicing import POSTPROCESSING
from mona_core.inference.batch import MASK_SUFFIX, SEG_SUFFIX, BatchItem, Segmented, segment_folder, segment_scan
from mona_core.io import IMAGE_SUFFIXES, find_scans, holds_dicom_series, image_suffix, strip_image_suffix


def add_segment(sub: Any) -> None:
    p = sub.add_parser(
        "segment",
        help="segment a scan (NIfTI, MHA, NRRD, DICOM series folder) or a folder of scans; masks on the input grid",
    )
    p.add_argument("--model", required=True, type=Path, help="model directory (model.onnx + manifest.json)")
    p.add_argument("input", type=Path, help="a scan file, a folder holding one DICOM series, or a folder of scans")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=Path,
        help="the mask file (format by extension, .nii.gz if none is recognised), or the output folder of a batch",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--overlay", type=Path, help="also write an overlay PNG here (a batch: a folder of <name>.png)")
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="write a DICOM SEG object (.dcm) referencing each DICOM input series instead of an image file",
    )
    p.add_argument("--series-uid", help="the series to segment when a DICOM folder holds several")
    p.add_argument("--postprocess", choices=POSTPROCESSING, help="instead of the model manifest's post-processing")
    p.set_defaults(handler=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    if args.input.is_dir() and not holds_dicom_series(args.input):
        return _run_batch(args)
    return _run_single(args)


def single_output(output: Path, source: Path, dicom_seg: bool) -> Path:
    """Where one scan's mask goes: ``output`` itself when its extension says the format, else with ``.nii.gz``
    (``.dcm`` for a SEG) appended; inside ``output`` as ``<scan name>.nii.gz`` when it is an existing folder."""
    suffix = SEG_SUFFIX if dicom_seg else MASK_SUFFIX
    if output.is_dir():
        return output / f"{strip_image_suffix(source) if source.is_file() else source.name}{suffix}"
    if dicom_seg:
        return output if output.name.lower().endswith(SEG_SUFFIX) else output.with_name(output.name + SEG_SUFFIX)
    return output if image_suffix(output) else output.with_name(output.name + MASK_SUFFIX)


def _run_single(args: argparse.Namespace) -> int:
    from mona_core.inference.segmenter import Segmenter

    if args.dicom_seg and not args.input.is_dir():
        raise ValueError(
            f"expected a folder holding a DICOM series for --dicom-seg (a SEG object references its source "
            f"series), got the file {args.input.name}"
        )
    output = single_output(args.output, args.input, args.dicom_seg)
    segmenter = Segmenter(args.model, device=args.device, postprocess=args.postprocess)
    result = segment_scan(segmenter, args.input, output, dicom_seg=args.dicom_seg, series_uid=args.series_uid)
    geometry, timings = result.mask.geometry, result.timings
    emit(
        f"{'DICOM SEG' if args.dicom_seg else 'mask'} written to {result.output} (size {geometry.size}, spacing "
        f"{geometry.spacing}; read {timings.read:.2f} s, segment {timings.segment:.2f} s, "
        f"write {timings.write:.2f} s)"
    )
    if args.overlay:
        _overlay(result, args.overlay, segmenter.manifest.classes)
        emit(f"overlay written to {args.overlay}")
    return 0


def _overlay(result: Segmented, path: Path, classes: tuple[str, ...]) -> None:
    from mona_core.report import save_overlay_png

    save_overlay_png(result.image.array, result.mask.array, path, class_names=classes)


def _check_batch(args: argparse.Namespace) -> int:
    """Usage errors of a batch, before the model is loaded; returns the number of scans."""
    if args.series_uid is not None:
        raise ValueError(
            f"expected a folder holding one DICOM series for --series-uid, got the batch folder {args.input}"
        )
    if args.output.exists() and not args.output.is_dir():
        raise ValueError(f"expected an output folder for a folder of scans, got the file {args.output}")
    scans = find_scans(args.input, exclude=[args.output])
    if not scans:
        raise ValueError(
            f"expected scans in {args.input} ({', '.join(IMAGE_SUFFIXES)} files or DICOM series folders), got none"
        )
    if args.dicom_seg and not any(scan.is_folder for scan in scans):
        raise ValueError(f"expected DICOM series folders for --dicom-seg, got only image files in {args.input}")
    return len(scans)


def _run_batch(args: argparse.Namespace) -> int:
    from mona_core.inference.segmenter import Segmenter

    total = _check_batch(args)
    segmenter = Segmenter(args.model, device=args.device, postprocess=args.postprocess)
    bar = tqdm(total=total, desc="segment", unit="scan", dynamic_ncols=True, file=sys.stderr)

    def on_item(item: BatchItem, number: int, count: int) -> None:
        bar.total = count
        bar.update(1)
        if not item.ok:
            bar.write(f"mona segment: skipped {item.source.name}: {item.error}", file=sys.stderr)

    def on_segmented(name: str, result: Segmented) -> None:
        if args.overlay:
            _overlay(result, args.overlay / f"{name}.png", segmenter.manifest.classes)

    started = time.perf_counter()
    try:
        items = segment_folder(
            segmenter, args.input, args.output, dicom_seg=args.dicom_seg, on_item=on_item, on_segmented=on_segmented
        )
    finally:
        bar.close()
    elapsed = max(time.perf_counter() - started, 1e-9)
    done = [item for item in items if item.ok]
    emit(
        f"{len(done)} of {len(items)} scans segmented into {args.output} in {elapsed:.1f} s "
        f"({len(done) / elapsed:.2f} scans/s)"
    )
    failed = [item for item in items if not item.ok]
    if failed:
        emit(f"{len(failed)} failed: {', '.join(item.source.name for item in failed)}")
        return 1
    return 0
