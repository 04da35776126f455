"""Models and segmentations: list and download exported models, segment an uploaded scan, fetch its outputs.

Segmentation runs in the API process with ONNX Runtime (``services.api.segmentation``; no torch). The mask
comes back on exactly the input's grid; with a label, a DSC/ASD report and an overlay PNG are recorded too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile, status
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from mona_core.io import DicomSeries, NiftiError, Scan, read_label, read_scan, write_dicom_seg
from services.api.deletions import DELETE_RESPONSES, finish_deletion
from services.api.deps import PrincipalDep, SessionDep, SettingsDep, StoreDep
from services.api.routes.batches import batch_or_none, batch_public
from services.api.routes.reports import api_path, report_public, stored_file
from services.api.schemas.common import GeometryPublic, Page, error_responses
from services.api.schemas.models import BatchPublic, ModelPublic, SegmentationPublic
from services.api.scope import get_or_404, paged, visible
from services.api.segmentation import (
    SEGMENTERS,
    SERIES_ZIP,
    Upload,
    case_id_from,
    ensure_overlay,
    has_overlay,
    receive_upload,
    segment_upload,
)
from services.common import deletion
from services.common.archives import ArchiveError, ArchiveLimits, extract_series_zip
from services.common.ingest import client_message
from services.common.models import Model, Report, Segmentation
from services.common.settings import Settings
from services.common.storage import ArtifactStore

logger = logging.getLogger(__name__)

router = APIRouter(tags=["models"])
segmentations = APIRouter(tags=["segmentations"])

MASK_MEDIA_TYPE = "application/gzip"
DICOM_MEDIA_TYPE = "application/dicom"
_FILE_RESPONSE: dict[str, Any] = {"content": {"application/octet-stream": {}}}


@router.get("/models", response_model=Page[ModelPublic])
def list_models(
    session: SessionDep,
    principal: PrincipalDep,
    project: Annotated[str | None, Query(description="admin keys: only this project's models")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[ModelPublic]:
    """The exported models this key sees, newest first."""
    query = select(Model).order_by(Model.created_at.desc(), Model.id.desc())
    query = visible(query, Model, principal, project)
    rows, total = paged(session, query, limit, offset)
    return Page(items=[ModelPublic.model_validate(row) for row in rows], total=total, limit=limit, offset=offset)


@router.get("/models/{model_id}", response_model=ModelPublic)
def get_model(model_id: str, session: SessionDep, principal: PrincipalDep) -> ModelPublic:
    return ModelPublic.model_validate(get_or_404(session, principal, Model, model_id, "model"))


@router.get("/models/{model_id}/onnx", response_class=FileResponse, responses={200: _FILE_RESPONSE})
def get_model_onnx(model_id: str, session: SessionDep, store: StoreDep, principal: PrincipalDep) -> FileResponse:
    """The ONNX graph; its sha256 is ``onnx_sha256`` (and is pinned in the manifest)."""
    model = get_or_404(session, principal, Model, model_id, "model")
    path = stored_file(store, model.onnx_key, "ONNX file")
    return FileResponse(path, media_type="application/octet-stream", filename="model.onnx")


@router.get(
    "/models/{model_id}/manifest", response_class=FileResponse, responses={200: {"content": {"application/json": {}}}}
)
def get_model_manifest(model_id: str, session: SessionDep, store: StoreDep, principal: PrincipalDep) -> FileResponse:
    """The manifest (preset, size, classes, tensor names, parity, source): what inference needs besides the graph."""
    model = get_or_404(session, principal, Model, model_id, "model")
    return FileResponse(stored_file(store, model.manifest_key, "manifest"), media_type="application/json")


def _receive(
    store: ArtifactStore, settings: Settings, image: UploadFile, label: UploadFile | None
) -> tuple[Upload, Upload | None]:
    """Both uploads in staging files (413 past the size cap); nothing is left behind on failure."""
    received = receive_upload(store, image.file, image.filename, settings.max_upload_bytes, series_zip=True)
    try:
        if label is None:
            return received, None
        return received, receive_upload(store, label.file, label.filename, settings.max_upload_bytes)
    except BaseException:
        store.discard(received.path)
        raise


@contextmanager
def _client_named(names: dict[Path, str]) -> Iterator[None]:
    """A ``NiftiError`` names the client's files, never the staging paths they were received into."""
    try:
        yield
    except NiftiError as exc:
        raise type(exc)(client_message(str(exc), names)) from exc


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "").lower()


def _mask_response(store: ArtifactStore, row: Segmentation) -> FileResponse:
    headers = {"X-Segmentation-Id": row.id}
    if row.report_id is not None:
        headers["X-Report-Id"] = row.report_id
    path = stored_file(store, row.mask_key, "mask")
    return FileResponse(path, media_type=MASK_MEDIA_TYPE, filename="mask.nii.gz", headers=headers)


def _segmentation_public(request: Request, session: Session, row: Segmentation) -> SegmentationPublic:
    report = session.get(Report, row.report_id) if row.report_id is not None else None
    overlay = api_path(request, "segmentation_overlay", segmentation_id=row.id) if has_overlay(row) else None
    return SegmentationPublic(
        id=row.id,
        model_id=row.model_id,
        project=row.project,
        mask_url=api_path(request, "segmentation_mask", segmentation_id=row.id),
        overlay_url=overlay,
        report_id=row.report_id,
        report=report_public(request, session, report) if report is not None else None,
        geometry=GeometryPublic.model_validate(row.geometry),
        seconds=row.seconds,
    )


@router.post(
    "/models/{model_id}/segment",
    response_model=None,
    responses={
        200: {"content": {MASK_MEDIA_TYPE: {}, DICOM_MEDIA_TYPE: {}, "application/json": {}}},
        **error_responses(400, 413),
    },
)
def segment(
    model_id: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    image: Annotated[
        UploadFile, File(description="the scan: .nii, .nii.gz, .mha, .nrrd, or a .zip of one DICOM series")
    ],
    label: Annotated[UploadFile | None, File(description="optional label map on the scan's grid")] = None,
    answer: Annotated[
        Literal["nifti", "dicom-seg"],
        Query(alias="format", description="dicom-seg (a DICOM input only): a DICOM Segmentation object instead"),
    ] = "nifti",
) -> Response:
    """Segment one scan: the mask (``mask.nii.gz``, on the input's grid; for a DICOM series the grid SimpleITK's
    series reader builds) or, with ``Accept: application/json``, a JSON summary; ``?format=dicom-seg`` answers a
    DICOM SEG referencing the uploaded series. With a label, a DSC/ASD report and an overlay are recorded."""
    model = get_or_404(session, principal, Model, model_id, "model")
    image_upload, label_upload = _receive(store, settings, image, label)
    names = {image_upload.path: image.filename or ""}
    if label_upload is not None and label is not None:
        names[label_upload.path] = label.filename or ""
    try:
        with _client_named(names), store.staging_dir() as folder:
            scan = _read_upload(store, settings, image_upload, folder)
            if answer == "dicom-seg" and scan.series is None:
                raise NiftiError(f"expected a .zip of a DICOM series for format=dicom-seg, got {image.filename!r}")
            uploads = (image_upload, label_upload)
            case_id = case_id_from(image.filename)
            row = segment_upload(session, store, model, uploads, case_id, settings, volume=scan.volume)
            seg = (
                _dicom_seg(store, model, row, scan.series)
                if scan.series is not None and answer == "dicom-seg"
                else None
            )
    finally:
        store.discard(image_upload.path, *([label_upload.path] if label_upload is not None else []))
    session.commit()
    if seg is not None:
        headers = {"X-Segmentation-Id": row.id}
        background = BackgroundTask(store.discard, seg)
        return FileResponse(
            seg, media_type=DICOM_MEDIA_TYPE, filename="seg.dcm", headers=headers, background=background
        )
    if _wants_json(request):
        return JSONResponse(_segmentation_public(request, session, row).model_dump(mode="json"))
    return _mask_response(store, row)


def _read_upload(store: ArtifactStore, settings: Settings, upload: Upload, folder: Path) -> Scan:
    """The uploaded scan: a file by its suffix, or the DICOM series of a zip (unpacked safely into ``folder``)."""
    if upload.path.name.endswith(SERIES_ZIP):
        limits = ArchiveLimits(max_total_bytes=settings.max_archive_bytes, max_member_bytes=settings.max_upload_bytes)
        try:
            extract_series_zip(upload.path, folder, limits)
        except ArchiveError as exc:
            raise NiftiError(str(exc)) from exc
        return read_scan(folder, max_voxels=settings.max_voxels)
    return read_scan(upload.path, max_voxels=settings.max_voxels)


def _dicom_seg(store: ArtifactStore, model: Model, row: Segmentation, series: DicomSeries) -> Path:
    """A DICOM SEG of the stored mask, referencing ``series`` (written while its files are still unpacked)."""
    mask = read_label(store.path(row.mask_key))
    target = store.staging_file(".dcm")
    try:
        return write_dicom_seg(mask.array, series, [str(name) for name in model.classes], target)
    except BaseException:
        store.discard(target)
        raise


@segmentations.get("/segmentations/{segmentation_id}", response_model=SegmentationPublic | BatchPublic)
def get_segmentation(
    segmentation_id: str, request: Request, session: SessionDep, principal: PrincipalDep
) -> SegmentationPublic | BatchPublic:
    """One segmented scan, or a batch (``kind`` batch: status, progress, its cases)."""
    batch = batch_or_none(session, principal, segmentation_id)
    if batch is not None:
        return batch_public(request, session, batch)
    row = get_or_404(session, principal, Segmentation, segmentation_id, "segmentation")
    return _segmentation_public(request, session, row)


@segmentations.get(
    "/segmentations/{segmentation_id}/mask",
    name="segmentation_mask",
    response_class=FileResponse,
    responses={200: {"content": {MASK_MEDIA_TYPE: {}}}},
)
def get_segmentation_mask(
    segmentation_id: str, session: SessionDep, store: StoreDep, principal: PrincipalDep
) -> FileResponse:
    return _mask_response(store, get_or_404(session, principal, Segmentation, segmentation_id, "segmentation"))


@segmentations.get(
    "/segmentations/{segmentation_id}/overlay",
    name="segmentation_overlay",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}},
)
def get_segmentation_overlay(
    segmentation_id: str, session: SessionDep, store: StoreDep, principal: PrincipalDep
) -> FileResponse:
    """The overlay PNG (image, prediction and label outlines, error map, per-slice DSC); only segmentations made with
    a label have one. It is drawn on the first request (the segment call does not wait for it), then kept."""
    row = get_or_404(session, principal, Segmentation, segmentation_id, "segmentation")
    key = ensure_overlay(session, store, row)
    if key is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"expected a segmentation made with a label, got {row.id} without one"
        )
    return FileResponse(stored_file(store, key, "overlay"), media_type="image/png")


@router.delete(
    "/models/{model_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=DELETE_RESPONSES,
)
def delete_model(
    model_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    """Delete a model: its ONNX file and manifest, its segmentations (masks, overlays) and its reports. 409 while an
    evaluation of it is unfinished."""
    model = get_or_404(session, principal, Model, model_id, "model")
    model_dir = (store.root / "models" / model.id).resolve()
    response = finish_deletion(
        session, store, settings, f"model {model.id}", lambda: deletion.delete_model(session, store, model)
    )
    SEGMENTERS.forget(model_dir)
    return response


@segmentations.delete(
    "/segmentations/{segmentation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=DELETE_RESPONSES,
)
def delete_segmentation(
    segmentation_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep, principal: PrincipalDep
) -> Response:
    """Delete a segmentation: its mask, its overlay and the report made with its label; a batch: every case's mask
    and overlay and its report (409 while it runs)."""
    batch = batch_or_none(session, principal, segmentation_id)
    if batch is not None:
        what = f"batch segmentation {batch.id}"
        return finish_deletion(session, store, settings, what, lambda: deletion.delete_report(session, batch))
    row = get_or_404(session, principal, Segmentation, segmentation_id, "segmentation")
    what = f"segmentation {row.id}"
    return finish_deletion(session, store, settings, what, lambda: deletion.delete_segmentation(session, row))


router.include_router(segmentations)
