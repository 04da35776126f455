"""Segment one uploaded scan in the API process (ONNX Runtime, no torch) and record the mask, report and overlay.

A model's ``model.onnx`` + ``manifest.json`` live in the content-addressed store under their hashes; ``Segmenter``
wants a model directory, so ``materialise_model_dir`` links both into ``<store>/models/<model id>/`` once
(an atomic rename, so concurrent requests never see half a directory). ``Segmenter`` re-checks the ONNX sha256
against the manifest when it loads. Loaded segmenters are kept in a small LRU: building an onnxruntime session
costs far more than a request, and ``InferenceSession.run`` is thread-safe, so one session serves every request.

Under load, runs of the model take turns (``inference_slot``: ``MONA_INFERENCE_SLOTS``, one by default): each run
already uses every core, so concurrent runs only oversubscribe the CPU and each holds its own activations.

A segmentation made with a label keeps its scan and label, and its overlay PNG is drawn on the first request for
it (``ensure_overlay``), not while the client waits for the mask: most clients never look at it, and drawing took
about a fifth of a labelled request.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from sqlalchemy import select
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
    write_volume,
)
from mona_core.metrics import MetricAccumulator, evaluate_case, spacing_zyx_from_xyz
from mona_core.report import save_overlay_png
from services.api.errors import PayloadTooLarge
from services.common.models import JobStatus, Model, Report, ReportEntry, Segmentation, new_id, utcnow
from services.common.settings import Settings
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

_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK: Final = threading.Lock()


@contextmanager
def inference_slot(slots: int) -> Iterator[None]:
    """Hold one of ``slots`` places for running a model in this process (waiting for one to free)."""
    with _SLOTS_LOCK:
        semaphore = _SLOTS.setdefault(slots, threading.BoundedSemaphore(slots))
    started = time.perf_counter()
    with semaphore:
        waited = time.perf_counter() - started
        if waited > 1.0:
            logger.info("waited %.1f s for one of %d inference slots", waited, slots)
        yield


def segment_upload(
    session: Session,
    store: ArtifactStore,
    model: Model,
    uploads: tuple[Upload, Upload | None],
    case_id: str,
    settings: Settings,
    volume: Volume | None = None,
    keep_scan: bool = False,
) -> Segmentation:
    """Validate, segment, store the mask and insert a ``Segmentation`` row (flushed, not committed).

    With a label, also a ``Report`` (source "segmentation") with its entries; the scan and label are kept for the
    overlay, which ``ensure_overlay`` draws when first asked for. ``keep_scan`` keeps the scan without a label too
    (the console's slice viewer). The staging files of ``uploads`` may be moved into the store.
    """
    image, label = uploads
    max_voxels = settings.max_voxels
    volume = volume if volume is not None else read_image(image.path, max_voxels=max_voxels)
    truth = read_label(label.path, volume.geometry, len(model.classes), max_voxels) if label is not None else None
    segmenter = SEGMENTERS.get(materialise_model_dir(store, model).resolve())
    with inference_slot(settings.inference_slots):
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
    if truth is not None or keep_scan:
        _keep_inputs(store, row, (image, label), volume)
    if truth is not None:
        row.report_id = _record_report(session, model, (volume, mask, truth), case_id).id
    session.flush()
    logger.info("segmented %s with model %s in %.2f s", row.id, model.id, seconds)
    return row


def _keep_inputs(
    store: ArtifactStore, row: Segmentation, uploads: tuple[Upload, Upload | None], volume: Volume
) -> None:
    """Move the scan (a single file as it came, a DICOM series as NIfTI) and the label into the store."""
    image, label = uploads
    if image.path.name.endswith(SERIES_ZIP):
        row.viewer_image_key = store.put(write_volume(volume, store.staging_file(".nii.gz")), ".nii.gz").key
    else:
        row.viewer_image_key = store.put(image.path, nifti_suffix(image.path.name)).key
    if label is not None:
        row.viewer_label_key = store.put(label.path, nifti_suffix(label.path.name)).key


def _record_report(session: Session, model: Model, volumes: tuple[Volume, Volume, Volume], case_id: str) -> Report:
    """DSC/ASD of ``mask`` against ``truth`` as a finished report; its overlay is to be drawn (``None``)."""
    image, mask, truth = volumes
    classes = [str(name) for name in model.classes]
    spacing = spacing_zyx_from_xyz(image.geometry.spacing)
    case = evaluate_case(mask.array, truth.array, classes, spacing, case_id=case_id)
    accumulator = MetricAccumulator(classes, unit=ASD_UNIT)
    accumulator.add(case)
    report = Report(
        id=new_id(),
        source="segmentation",
        model_id=model.id,
        project=model.project,
        status=JobStatus.SUCCEEDED.value,
        progress=1.0,
        unit=ASD_UNIT,
        summary=accumulator.aggregate(),
        overlays={case_id: None},
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


def has_overlay(row: Segmentation) -> bool:
    """Whether ``row`` has an overlay, drawn or to be drawn (it was made with a label)."""
    return row.overlay_key is not None or (row.viewer_label_key is not None and row.viewer_image_key is not None)


def ensure_overlay(session: Session, store: ArtifactStore, row: Segmentation) -> str | None:
    """The store key of ``row``'s overlay PNG, drawing it (and committing its key) on the first request; ``None``
    when the segmentation was made without a label. Two requests racing draw the same bytes, so the same key."""
    if row.overlay_key is not None or not has_overlay(row):
        return row.overlay_key
    assert row.viewer_image_key is not None and row.viewer_label_key is not None
    model = session.get_one(Model, row.model_id)
    report = session.get(Report, row.report_id) if row.report_id is not None else None
    case_id = next(iter(report.overlays or {}), "case") if report is not None else "case"
    classes = [str(name) for name in model.classes]
    image = read_image(store.path(row.viewer_image_key))
    mask = read_label(store.path(row.mask_key))
    truth = read_label(store.path(row.viewer_label_key), image.geometry, len(classes))
    png = save_overlay_png(
        image.array, mask.array, store.staging_file(".png"), label=truth.array, class_names=classes, title=case_id
    )
    row.overlay_key = store.put(png, ".png").key
    if report is not None:
        report.overlays = {case_id: row.overlay_key}
    session.commit()
    logger.info("drew the overlay of segmentation %s", row.id)
    return row.overlay_key


def report_overlay(session: Session, store: ArtifactStore, report: Report, case_id: str) -> str | None:
    """The overlay key of one case of ``report``; a segmentation's report draws its overlay on first request."""
    overlays = report.overlays or {}
    if case_id not in overlays:
        return None
    key = overlays[case_id]
    if key is None and report.source == "segmentation":
        row = session.scalars(select(Segmentation).where(Segmentation.report_id == report.id)).first()
        return ensure_overlay(session, store, row) if row is not None else None
    return key if isinstance(key, str) else None
