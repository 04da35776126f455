"""Models and segmentations: list and download exported models, segment an uploaded scan, fetch its outputs.

Segmentation runs in the API process with ONNX Runtime (``services.api.segmentation``; no torch). The mask
comes back on exactly the input's grid; with a label, a DSC/ASD report and an overlay PNG are recorded too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Query, Request, UploadFile, status
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from mona_core.io import NiftiError
from services.api.deletions import DELETE_RESPONSES, finish_deletion
from services.api.deps import PrincipalDep, SessionDep, SettingsDep, StoreDep
from services.api.routes.batches import batch_or_none, batch_public
from services.api.routes.reports import api_path, report_public, stored_file
from services.api.schemas.common import Page, error_responses
from services.api.schemas.models import BatchPublic, ModelPublic, SegmentationPublic
from services.api.scope import get_or_404, paged, visible
from services.api.segmentation import SEGMENTERS, Upload, case_id_from, receive_upload, segment_upload
from services.common import deletion
from services.common.ingest import client_message
from services.common.models import Model, Report, Segmentation
from services.common.settings import Settings
from services.common.storage import ArtifactStore

logger = logging.getLogger(__name__)

router = APIRouter(tags=["models"])
segmentations = APIRouter(tags=["segmentations"])

MASK_MEDIA_TYPE = "application/gzip"
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
    received = receive_upload(store, image.file, image.filename, settings.max_upload_bytes)
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
    overlay = api_path(request, "segmentation_overlay", segmentation_id=row.id) if row.overlay_key else None
    return SegmentationPublic(
        id=row.id,
        model_id=row.model_id,
        project=row.project,
        mask_url=api_path(request, "segmentation_mask", segmentation_id=row.id),
        overlay_url=overlay,
        report_id=row.report_id,
        report=report_public(request, session, report) if report is not None else None,
        geometry=row.geometry,
        seconds=row.seconds,
    )


@router.post(
    "/models/{model_id}/segment",
    response_model=None,
    responses={200: {"content": {MASK_MEDIA_TYPE: {}, "application/json": {}}}, **error_responses(400, 413)},
)
def segment(
    model_id: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    image: Annotated[UploadFile, File(description="the scan, .nii or .nii.gz")],
    label: Annotated[UploadFile | None, File(description="optional label map on the scan's grid")] = None,
) -> Response:
    """Segment one scan: the mask (``mask.nii.gz``, on the input's grid) or, with ``Accept: application/json``,
    a JSON summary. With a label, a DSC/ASD report and an overlay are recorded (``X-Report-Id``)."""
    model = get_or_404(session, principal, Model, model_id, "model")
    image_upload, label_upload = _receive(store, settings, image, label)
    names = {image_upload.path: image.filename or ""}
    if label_upload is not None and label is not None:
        names[label_upload.path] = label.filename or ""
    try:
        with _client_named(names):
            uploads = (image_upload, label_upload)
            row = segment_upload(session, store, model, uploads, case_id_from(image.filename), settings.max_voxels)
    finally:
        store.discard(image_upload.path, *([label_upload.path] if label_upload is not None else []))
    session.commit()
    if _wants_json(request):
        return JSONResponse(_segmentation_public(request, session, row).model_dump(mode="json"))
    return _mask_response(store, row)


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
    """The overlay PNG (image, prediction and label); only segmentations made with a label have one."""
    row = get_or_404(session, principal, Segmentation, segmentation_id, "segmentation")
    if row.overlay_key is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"expected a segmentation made with a label, got {row.id} without one"
        )
    return FileResponse(stored_file(store, row.overlay_key, "overlay"), media_type="image/png")


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
