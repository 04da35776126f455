"""The console's pages. The API key is entered once and kept in a session cookie (HttpOnly, SameSite=Strict, no
expiry: it ends with the browser session); every page checks it as the REST API checks ``X-API-Key`` and shows only
what that key's project holds. Pages read through the same queries as the REST routes (``services.api.scope``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from mona_core.io import read_image, read_label
from mona_core.report import save_slice_png
from services.api.deps import SessionDep, SettingsDep, StoreDep
from services.api.routes.datasets import _publics
from services.api.routes.models import _read_upload, _receive
from services.api.routes.reports import report_public, stored_file
from services.api.schemas.common import Page
from services.api.schemas.datasets import CasePublic
from services.api.schemas.jobs import JobPublic
from services.api.schemas.models import ModelPublic
from services.api.scope import get_or_404, paged, visible
from services.api.segmentation import case_id_from, ensure_overlay, segment_upload
from services.common.auth import Principal, find_key
from services.common.models import Case, Dataset, Model, Report, Segmentation, TrainingJob

logger = logging.getLogger(__name__)

COOKIE = "mona_console"
HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)


class SignIn(Exception):
    """No valid key in the session: the page answers with a redirect to the sign-in form."""


def console_principal(request: Request, session: SessionDep) -> Principal:
    key = request.cookies.get(COOKIE)
    row = find_key(session, key) if key else None
    if row is None:
        raise SignIn
    return Principal.of(row)


ConsoleDep = Annotated[Principal, Depends(console_principal)]


def _page(request: Request, name: str, principal: Principal | None, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"principal": principal, **context})


@router.get("/login", name="ui_login_form")
def login_form(request: Request) -> HTMLResponse:
    return _page(request, "login.html", None)


@router.post("/login", name="ui_login")
def login(request: Request, session: SessionDep, api_key: Annotated[str, Form()]) -> Response:
    if find_key(session, api_key) is None:
        response = _page(request, "login.html", None, error="expected a valid API key, got an unknown or revoked one")
        response.status_code = status.HTTP_403_FORBIDDEN
        return response
    target = RedirectResponse(request.url_for("ui_index").path, status_code=status.HTTP_303_SEE_OTHER)
    secure = request.url.scheme == "https"
    target.set_cookie(COOKIE, api_key, httponly=True, samesite="strict", secure=secure, path="/ui")
    return target


@router.post("/logout", name="ui_logout")
def logout(request: Request) -> Response:
    target = RedirectResponse(request.url_for("ui_login_form").path, status_code=status.HTTP_303_SEE_OTHER)
    target.delete_cookie(COOKIE, path="/ui")
    return target


@router.get("/", name="ui_index")
def index(request: Request, session: SessionDep, principal: ConsoleDep) -> HTMLResponse:
    datasets_query = visible(select(Dataset), Dataset, principal).where(Dataset.deleted_at.is_(None))
    rows, total = paged(session, datasets_query.order_by(Dataset.created_at.desc()), 100, 0)
    datasets = Page(items=_publics(session, rows), total=total, limit=100, offset=0)
    job_rows, job_total = paged(
        session, visible(select(TrainingJob), TrainingJob, principal).order_by(TrainingJob.created_at.desc()), 50, 0
    )
    jobs = Page(items=[JobPublic.model_validate(row) for row in job_rows], total=job_total, limit=50, offset=0)
    model_rows, model_total = paged(
        session, visible(select(Model), Model, principal).order_by(Model.created_at.desc()), 50, 0
    )
    models = Page(items=[ModelPublic.model_validate(row) for row in model_rows], total=model_total, limit=50, offset=0)
    return _page(request, "index.html", principal, datasets=datasets, jobs=jobs, models=models)


@router.get("/datasets/{dataset_id}", name="ui_dataset")
def dataset_page(dataset_id: str, request: Request, session: SessionDep, principal: ConsoleDep) -> HTMLResponse:
    dataset = get_or_404(session, principal, Dataset, dataset_id, "dataset")
    query = select(Case).where(Case.dataset_id == dataset.id).order_by(Case.case_id)
    rows, total = paged(session, query, 1000, 0)
    cases = Page(items=[CasePublic.model_validate(row) for row in rows], total=total, limit=1000, offset=0)
    return _page(request, "dataset.html", principal, dataset=_publics(session, [dataset])[0], cases=cases)


@router.get("/jobs/{job_id}", name="ui_job")
def job_page(job_id: str, request: Request, session: SessionDep, principal: ConsoleDep) -> HTMLResponse:
    job = get_or_404(session, principal, TrainingJob, job_id, "job")
    study = str((job.result or {}).get("markdown", "")) if job.kind == "study" else ""
    return _page(request, "job.html", principal, job=JobPublic.model_validate(job), study=study)


@router.get("/jobs/{job_id}/state.json", name="ui_job_json")
def job_json(job_id: str, session: SessionDep, principal: ConsoleDep) -> JobPublic:
    return JobPublic.model_validate(get_or_404(session, principal, TrainingJob, job_id, "job"))


@router.get("/jobs/{job_id}/loss_curve.png", name="ui_job_loss_curve")
def job_loss_curve(job_id: str, session: SessionDep, store: StoreDep, principal: ConsoleDep) -> Response:
    job = get_or_404(session, principal, TrainingJob, job_id, "job")
    path = store.run_dir(job.id) / "loss_curve.png"
    if not path.is_file():
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/jobs/{job_id}/study.png", name="ui_job_study_png")
def job_study_png(job_id: str, session: SessionDep, store: StoreDep, principal: ConsoleDep) -> FileResponse:
    job = get_or_404(session, principal, TrainingJob, job_id, "job")
    key = (job.result or {}).get("figure_key")
    if not isinstance(key, str):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "expected a finished study, got none")
    return FileResponse(stored_file(store, key, "study plot"), media_type="image/png")


@router.get("/models/{model_id}", name="ui_model")
def model_page(model_id: str, request: Request, session: SessionDep, principal: ConsoleDep) -> HTMLResponse:
    model = get_or_404(session, principal, Model, model_id, "model")
    return _page(request, "model.html", principal, model=ModelPublic.model_validate(model))


@router.post("/models/{model_id}/segment", name="ui_segment")
def segment_page(
    model_id: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    principal: ConsoleDep,
    image: Annotated[UploadFile, File()],
    label: Annotated[UploadFile | None, File()] = None,
) -> HTMLResponse:
    """The upload form's target: segment the scan (and score it against the label) as ``/v1/.../segment`` does."""
    model = get_or_404(session, principal, Model, model_id, "model")
    label = label if label is not None and label.filename else None
    image_upload, label_upload = _receive(store, settings, image, label)
    try:
        with store.staging_dir() as folder:
            scan = _read_upload(store, settings, image_upload, folder)
            uploads = (image_upload, label_upload)
            case_id = case_id_from(image.filename)
            row = segment_upload(session, store, model, uploads, case_id, settings, volume=scan.volume, keep_scan=True)
    finally:
        store.discard(image_upload.path, *([label_upload.path] if label_upload is not None else []))
    session.commit()
    report = _report(request, session, row)
    return _page(request, "segmented.html", principal, row=row, report=report)


@router.get("/segmentations/{segmentation_id}/slices/{z}.png", name="ui_segmentation_slice")
def segmentation_slice(
    segmentation_id: str, z: int, session: SessionDep, store: StoreDep, principal: ConsoleDep
) -> FileResponse:
    """One slice of a console segmentation: prediction and label outlines, error map, the slice's DSC."""
    row = get_or_404(session, principal, Segmentation, segmentation_id, "segmentation")
    if row.viewer_image_key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"expected a segmentation made in the console, got {row.id}")
    model = session.get_one(Model, row.model_id)
    image = read_image(store.path(row.viewer_image_key))
    mask = read_label(store.path(row.mask_key))
    label = read_label(store.path(row.viewer_label_key)) if row.viewer_label_key else None
    target = store.staging_file(".png")
    try:
        save_slice_png(
            image.array,
            mask.array,
            z,
            target,
            label=label.array if label is not None else None,
            class_names=[str(name) for name in model.classes],
        )
    except ValueError as exc:
        store.discard(target)
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return FileResponse(target, media_type="image/png", background=BackgroundTask(store.discard, target))


def _report(request: Request, session: Session, row: Segmentation) -> Any:
    report = session.get(Report, row.report_id) if row.report_id is not None else None
    return report_public(request, session, report) if report is not None else None


@router.get("/segmentations/{segmentation_id}/mask", name="ui_segmentation_mask")
def segmentation_mask(
    segmentation_id: str, session: SessionDep, store: StoreDep, principal: ConsoleDep
) -> FileResponse:
    row = get_or_404(session, principal, Segmentation, segmentation_id, "segmentation")
    return FileResponse(stored_file(store, row.mask_key, "mask"), media_type="application/gzip", filename="mask.nii.gz")


@router.get("/segmentations/{segmentation_id}/overlay.png", name="ui_segmentation_overlay")
def segmentation_overlay(
    segmentation_id: str, session: SessionDep, store: StoreDep, principal: ConsoleDep
) -> FileResponse:
    row = get_or_404(session, principal, Segmentation, segmentation_id, "segmentation")
    key = ensure_overlay(session, store, row)
    if key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "expected a segmentation made with a label, got none")
    return FileResponse(stored_file(store, key, "overlay"), media_type="image/png")


def install_console(app: Any) -> None:
    """Mount the console: its pages, its static files, and the redirect to sign in."""
    from fastapi.staticfiles import StaticFiles

    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.include_router(router)

    async def to_sign_in(request: Request, exc: Exception) -> Response:
        del exc
        return RedirectResponse(request.url_for("ui_login_form").path, status_code=status.HTTP_303_SEE_OTHER)

    app.add_exception_handler(SignIn, to_sign_in)
