"""Segment one uploaded scan in the API process (ONNX Runtime, no torch) and record the mask, report and overlay.

A model's ``model.onnx`` + ``manifest.json`` live in the content-addressed store under their hashes; ``Segmenter``
wants a model directory, so ``materialise_model_dir`` links both into ``<store>/models/<model id>/`` once
(an atomic rename, so concurrent requests never see half a directory). ``Segmenter`` re-checks the ONNX sha256
against the manifest when it loads. Loaded segmenters are kept in a small LRU: building an onnxruntime session
costs far more than a request, and ``InferenceSession.run`` is thread-safe, so one session serves every request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from sqlalchemy.orm import Session

from mona_core.export.manifest import MANIFEST_FILE, MODEL_FILE
from mona_core.inference.evaluate import ASD_UNIT
from mona_core.inference.segmenter import Segmenter
from mona_core.io import (
    IMAGE_SUFFIXES,
    NiftiError,
    Volume,
    image_suffix,
    read_image,
    read_label,
    strip_image_suffix,
    write_mask,
)
from mona_core.metrics import MetricAccumulator, evaluate_case, spacing_zyx_from_xyz
from mona_core.report import save_overlay_png
from services.api.errors import PayloadTooLarge
from services.common.models import JobStatus, Model, Report, ReportEntry, Segmentation, new_id, utcnow
from services.common.storage import ArtifactStore, StorageError

logger = logging.getLogger(__name__)

CACHE_SIZE: Final = 4
_CHUNK: Final = 1 << 20
_ID: Final = re.compile(r"^[0-9a-f]{32}$")
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Upload:
    """An upload received into a staging file of the store, with the sha256 and size of its bytes."""

    path: Path
    sha256: str
    size: int


SERIES_ZIP: Final = ".zip"


def nifti_suffix(filename: str | None, series_zip: bool = False) -> str:
    """The suffix of an uploaded scan's file name (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``; with ``series_zip``
    also ``.zip``, a DICOM series): the store only accepts known suffixes."""
    suffix = image_suffix(filename or "")
    if suffix is not None:
        return suffix
    if series_zip and (filename or "").lower().endswith(SERIES_ZIP):
        return SERIES_ZIP
    accepted = [*IMAGE_SUFFIXES, *([SERIES_ZIP + " (a DICOM series)"] if series_zip else [])]
    raise NiftiError(f"expected a {', '.join(accepted)} file, got {filename!r}")


def case_id_from(filename: str | None) -> str:
    """A display id for an uploaded scan: its file name without folders or suffix, unsafe characters as ``_``."""
    name = re.split(r"[\\/]", filename or "")[-1]
    if name.lower().endswith(SERIES_ZIP):
        name = name[: -len(SERIES_ZIP)]
    return _UNSAFE.sub("_", strip_image_suffix(name)).strip("._")[:100] or "case"


def receive_upload(
    store: ArtifactStore, stream: BinaryIO, filename: str | None, limit: int, series_zip: bool = False
) -> Upload:
    """Copy ``stream`` into a staging file, hashing it; PayloadTooLarge (413) past ``limit`` bytes."""
    target = store.staging_file(nifti_suffix(filename, series_zip))
    digest, size = hashlib.sha256(), 0
    try:
        with target.open("wb") as sink:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"expected an upload of at most {limit} bytes, got more ({filename})")
                digest.update(chunk)
                sink.write(chunk)
    except BaseException:
        store.discard(target)
        raise
    return Upload(path=target, sha256=digest.hexdigest(), size=size)


def materialise_model_dir(store: ArtifactStore, model: Model) -> Path:
    """``<store>/models/<model id>/`` with ``model.onnx`` and ``manifest.json`` (hard links into the store)."""
    if not _ID.match(model.id):
        raise StorageError(f"expected a 32-character hex model id, got {model.id!r}")
    target = store.root / "models" / model.id
    if (target / MANIFEST_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with store.staging_dir() as staging:
        _link_or_copy(store.path(model.onnx_key), staging / MODEL_FILE)
        _link_or_copy(store.path(model.manifest_key), staging / MANIFEST_FILE)
        try:
            staging.rename(target)
        except OSError:
            if not (target / MANIFEST_FILE).is_file():  # not a concurrent request that won the race
                raise
    logger.info("materialised model %s at %s", model.id, target)
    return target


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class SegmenterCache:
    """Least-recently-used ``Segmenter`` objects keyed by model directory, at most ``max_size`` of them."""

    def __init__(self, max_size: int = CACHE_SIZE, device: str = "auto") -> None:
        if max_size < 1:
            raise ValueError(f"expected a cache size >= 1, got {max_size}")
        self.max_size, self.device = max_size, device
        self._items: OrderedDict[Path, Segmenter] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, model_dir: Path) -> Segmenter:
        """The cached segmenter of ``model_dir``, loading it (outside the lock) on a miss."""
        with self._lock:
            found = self._items.get(model_dir)
            if found is not None:
                self._items.move_to_end(model_dir)
                return found
        loaded = Segmenter(model_dir, device=self.device)
        with self._lock:
            kept = self._items.setdefault(model_dir, loaded)
            self._items.move_to_end(model_dir)
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)
        return kept

    def forget(self, model_dir: Path) -> None:
        """Drop the segmenter of ``model_dir`` (its model was deleted)."""
        with self._lock:
            self._items.pop(model_dir, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


SEGMENTERS: Final = SegmenterCache()


def segment_upload(
    session: Session,
    store: ArtifactStore,
    model: Model,
    uploads: tuple[Upload, Upload | None],
    case_id: str,
    max_voxels: int,
    volume: Volume | None = None,
) -> Segmentation:
    """Validate, segment, store the mask and insert a ``Segmentation`` row (flushed, not committed).

    With a label, also a ``Report`` (source "segmentation") with its entries and an overlay PNG.
    """
    image, label = uploads
    volume = volume if volume is not None else read_image(image.path, max_voxels=max_voxels)
    truth = read_label(label.path, volume.geometry, len(model.classes), max_voxels) if label is not None else None
    segmenter = SEGMENTERS.get(materialise_model_dir(store, model).resolve())
    started = time.perf_counter()
    mask = segmenter.segment(volume)
    seconds = time.perf_counter() - started
    staging = store.staging_file(".nii.gz")
    mask_key = store.put(write_mask(mask.array, mask.geometry, staging), ".nii.gz").key
    row = Segmentation(
        id=new_id(),
        model_id=model.id,
        project=model.project,
        input_sha256=image.sha256,
        mask_key=mask_key,
        geometry=volume.geometry.to_dict(),
        seconds=seconds,
    )
    session.add(row)
    if truth is not None:
        report = _record_report(session, store, model, (volume, mask, truth), case_id)
        row.report_id, row.overlay_key = report.id, (report.overlays or {})[case_id]
    session.flush()
    logger.info("segmented %s with model %s in %.2f s", row.id, model.id, seconds)
    return row


def _record_report(
    session: Session, store: ArtifactStore, model: Model, volumes: tuple[Volume, Volume, Volume], case_id: str
) -> Report:
    """DSC/ASD of ``mask`` against ``truth`` as a finished report, with an overlay PNG in the store."""
    image, mask, truth = volumes
    classes = [str(name) for name in model.classes]
    spacing = spacing_zyx_from_xyz(image.geometry.spacing)
    case = evaluate_case(mask.array, truth.array, classes, spacing, case_id=case_id)
    accumulator = MetricAccumulator(classes, unit=ASD_UNIT)
    accumulator.add(case)
    png = save_overlay_png(
        image.array, mask.array, store.staging_file(".png"), label=truth.array, class_names=classes, title=case_id
    )
    overlay_key = store.put(png, ".png").key
    report = Report(
        id=new_id(),
        source="segmentation",
        model_id=model.id,
        project=model.project,
        status=JobStatus.SUCCEEDED.value,
        progress=1.0,
        unit=ASD_UNIT,
        summary=accumulator.aggregate(),
        overlays={case_id: overlay_key},
        finished_at=utcnow(),
    )
    session.add(report)
    session.flush()
    session.add_all(
        ReportEntry(
            report_id=report.id, case_id=case_id, class_name=name, dice=m.dice, asd=m.asd, status=m.status.value
        )
        for name, m in case.classes.items()
    )
    return report
