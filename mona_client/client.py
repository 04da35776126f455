"""The clients: one method per route, retries on 503 and lost connections, uploads from paths, ``wait`` for jobs."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")
RETRIED_STATUS = 503
Body = dict[str, Any]
Item = TypeVar("Item")


class ApiError(Exception):
    """An error answer of the service: ``status`` and its ``detail`` (what was expected, what came)."""

    def __init__(self, status: int, detail: Any, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {detail}")
        self.status, self.detail, self.method, self.path = status, detail, method, path


class JobFailed(Exception):
    """``wait`` saw the job end ``failed`` or ``cancelled``; ``job`` is its last state."""

    def __init__(self, job: Body) -> None:
        super().__init__(f"job {job.get('id')} ended {job.get('status')}: {job.get('error')}")
        self.job = job


class Page(Generic[Item]):
    """One page of a list: ``items`` and the ``total`` the service counts."""

    def __init__(self, body: Body) -> None:
        self.items: list[Item] = list(body["items"])
        self.total, self.limit, self.offset = int(body["total"]), int(body["limit"]), int(body["offset"])

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    raise ApiError(response.status_code, detail, response.request.method, response.request.url.path)


def _json(response: httpx.Response) -> Any:
    _raise_for(response)
    return response.json() if response.content else None


def _pauses(retries: int, backoff: float) -> list[float]:
    return [backoff * 2**attempt for attempt in range(retries)]


@contextmanager
def _files(fields: Mapping[str, str | Path | None]) -> Iterator[dict[str, tuple[str, IO[bytes]]]]:
    """Open the given paths for a multipart upload (named by their file names) and close them afterwards."""
    opened: dict[str, tuple[str, IO[bytes]]] = {}
    try:
        for name, value in fields.items():
            if value is not None:
                path = Path(value)
                opened[name] = (path.name, path.open("rb"))
        yield opened
    finally:
        for _, handle in opened.values():
            handle.close()


def _job_body(
    kind: str,
    dataset_id: str,
    config: Mapping[str, Any] | None,
    labelled_patients: int | None,
    labelled_ratio: float | None,
    device: str,
    from_job_id: str | None,
) -> Body:
    body: Body = {"kind": kind, "dataset_id": dataset_id, "config": dict(config or {}), "device": device}
    for name, value in (
        ("labelled_patients", labelled_patients),
        ("labelled_ratio", labelled_ratio),
        ("from_job_id", from_job_id),
    ):
        if value is not None:
            body[name] = value
    return body


class Client:
    """The synchronous client. ``retries`` (default 4) re-sends a request answered 503 or cut off, after 0.5, 1,
    2, 4 s; uploads are re-sent from their files."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key, "Accept": "application/json"}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)
        self._pauses = _pauses(retries, backoff)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, open_files: Callable[[], Any] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send, retrying on 503 and on a lost connection; ``open_files`` re-opens the upload for each try."""
        for pause in [*self._pauses, None]:
            try:
                if open_files is None:
                    response = self._http.request(method, path, **kwargs)
                else:
                    with open_files() as files:
                        response = self._http.request(method, path, files=files, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                if pause is None:
                    raise
                time.sleep(pause)
                continue
            if response.status_code != RETRIED_STATUS or pause is None:
                return response
            time.sleep(pause)
        raise AssertionError("unreachable")

    def _get(self, path: str, **params: Any) -> Any:
        return _json(self.request("GET", path, params={k: v for k, v in params.items() if v is not None}))

    # --- the caller and datasets ------------------------------------------------------------------------------

    def me(self) -> Body:
        body: Body = self._get("/v1/me")
        return body

    def create_dataset(self, name: str, classes: list[str], preset: str = "mri", project: str | None = None) -> Body:
        body: Body = {"name": name, "classes": classes, "preset": preset}
        if project is not None:
            body["project"] = project
        created: Body = _json(self.request("POST", "/v1/datasets", json=body))
        return created

    def datasets(self, limit: int = 100, offset: int = 0, project: str | None = None) -> Page[Body]:
        return Page(self._get("/v1/datasets", limit=limit, offset=offset, project=project))

    def dataset(self, dataset_id: str) -> Body:
        body: Body = self._get(f"/v1/datasets/{dataset_id}")
        return body

    def cases(self, dataset_id: str, split: str | None = None, limit: int = 1000, offset: int = 0) -> Page[Body]:
        return Page(self._get(f"/v1/datasets/{dataset_id}/cases", split=split, limit=limit, offset=offset))

    def upload_case(
        self,
        dataset_id: str,
        image: str | Path,
        label: str | Path | None = None,
        case_id: str | None = None,
        patient_id: str | None = None,
        split: str = "train",
    ) -> Body:
        """One scan (and its label): ``.nii`` / ``.nii.gz``."""
        data = {k: v for k, v in {"case_id": case_id, "patient_id": patient_id, "split": split}.items() if v}
        response = self.request(
            "POST",
            f"/v1/datasets/{dataset_id}/cases",
            open_files=lambda: _files({"image": image, "label": label}),
            data=data,
        )
        body: Body = _json(response)
        return body

    def upload_archive(self, dataset_id: str, archive: str | Path) -> Body:
        """An nnU-Net raw dataset as ``.zip`` / ``.tar.gz`` (``imagesTr``, ``labelsTr``, ``imagesTs``)."""
        response = self.request(
            "POST", f"/v1/datasets/{dataset_id}/archive", open_files=lambda: _files({"archive": archive})
        )
        body: Body = _json(response)
        return body

    # --- jobs -----------------------------------------------------------------------------------------------------

    def create_job(
        self,
        kind: str,
        dataset_id: str,
        config: Mapping[str, Any] | None = None,
        labelled_patients: int | None = None,
        labelled_ratio: float | None = None,
        device: str = "auto",
        from_job_id: str | None = None,
    ) -> Body:
        body = _job_body(kind, dataset_id, config, labelled_patients, labelled_ratio, device, from_job_id)
        created: Body = _json(self.request("POST", "/v1/jobs", json=body))
        return created

    def job(self, job_id: str) -> Body:
        body: Body = self._get(f"/v1/jobs/{job_id}")
        return body

    def jobs(self, status: str | None = None, limit: int = 100, offset: int = 0) -> Page[Body]:
        return Page(self._get("/v1/jobs", status=status, limit=limit, offset=offset))

    def cancel(self, job_id: str) -> Body:
        body: Body = _json(self.request("POST", f"/v1/jobs/{job_id}/cancel"))
        return body

    def metrics(self, job_id: str) -> list[Body]:
        history: list[Body] = self._get(f"/v1/jobs/{job_id}/metrics")["history"]
        return history

    def logs(self, job_id: str) -> list[Body]:
        """The job's log lines (``at``, ``level``, ``message``), oldest first."""
        lines: list[Body] = self._get(f"/v1/jobs/{job_id}/logs")["lines"]
        return lines

    def loss_curve(self, job_id: str, out: str | Path) -> Path:
        return self.download(f"/v1/jobs/{job_id}/loss_curve.png", out)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0, progress: bool = True) -> Body:
        """Poll the job until it ends; a progress bar (stage, iteration, ETA) on stderr unless ``progress`` is
        False. Returns the succeeded job; raises ``JobFailed`` when it failed or was cancelled, ``TimeoutError``
        after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with _Progress(progress, f"job {job_id[:8]}") as bar:
            while True:
                job = self.job(job_id)
                bar.show(job)
                if job["status"] in TERMINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
                time.sleep(poll)
        if job["status"] != "succeeded":
            raise JobFailed(job)
        return job

    # --- models, segmentations, reports -------------------------------------------------------------------------

    def models(self, limit: int = 100, offset: int = 0) -> Page[Body]:
        return Page(self._get("/v1/models", limit=limit, offset=offset))

    def model(self, model_id: str) -> Body:
        body: Body = self._get(f"/v1/models/{model_id}")
        return body

    def segment(
        self, model_id: str, image: str | Path, label: str | Path | None = None, out: str | Path | None = None
    ) -> Body:
        """Segment one scan; the summary (segmentation id, mask URL, report with a label). With ``out``, the mask
        is also saved there (on the scan's grid)."""
        response = self.request(
            "POST", f"/v1/models/{model_id}/segment", open_files=lambda: _files({"image": image, "label": label})
        )
        summary: Body = _json(response)
        if out is not None:
            self.download(summary["mask_url"], out)
        return summary

    def segment_batch(
        self,
        model_id: str,
        dataset_id: str,
        split: str | None = None,
        case_ids: list[str] | None = None,
        queue: str = "cpu",
    ) -> Body:
        body: Body = {"dataset_id": dataset_id, "queue": queue}
        body.update({"split": split} if split is not None else {"case_ids": case_ids})
        created: Body = _json(self.request("POST", f"/v1/models/{model_id}/segmentations", json=body))
        return created

    def segmentation(self, segmentation_id: str) -> Body:
        body: Body = self._get(f"/v1/segmentations/{segmentation_id}")
        return body

    def wait_segmentation(self, segmentation_id: str, timeout: float | None = None, poll: float = 1.0) -> Body:
        """Poll a batch segmentation until it ends (``JobFailed`` unless it succeeded)."""
        return self._wait_until_ended(self.segmentation, "segmentation", segmentation_id, timeout, poll)

    def _wait_until_ended(
        self, fetch: Callable[[str], Body], kind: str, resource_id: str, timeout: float | None, poll: float
    ) -> Body:
        """Poll ``fetch(resource_id)`` until its status is terminal; ``kind`` names it in the timeout's message."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            body = fetch(resource_id)
            if body.get("status", "succeeded") in TERMINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{kind} {resource_id} still {body['status']} after {timeout:.0f} s")
            time.sleep(poll)
        if body.get("status", "succeeded") != "succeeded":
            raise JobFailed(body)
        return body

    def download_masks(self, segmentation_id: str, out: str | Path) -> Path:
        return self.download(f"/v1/segmentations/{segmentation_id}/masks.zip", out)

    def evaluate(self, model_id: str, dataset_id: str, split: str = "val") -> Body:
        body = {"dataset_id": dataset_id, "split": split}
        created: Body = _json(self.request("POST", f"/v1/models/{model_id}/evaluations", json=body))
        return created

    def report(self, report_id: str) -> Body:
        body: Body = self._get(f"/v1/reports/{report_id}")
        return body

    def wait_report(self, report_id: str, timeout: float | None = None, poll: float = 1.0) -> Body:
        """Poll an evaluation's report until it ends (``JobFailed`` unless it succeeded)."""
        return self._wait_until_ended(self.report, "report", report_id, timeout, poll)

    def delete(self, kind: str, resource_id: str) -> None:
        """``kind``: datasets, jobs, models, reports or segmentations."""
        _raise_for(self.request("DELETE", f"/v1/{kind}/{resource_id}"))

    def download(self, path: str, out: str | Path) -> Path:
        """Save what a GET of ``path`` answers (a mask, an overlay, a plot: the ``*_url`` fields) to ``out``."""
        response = self.request("GET", path, headers={"Accept": "*/*"})
        _raise_for(response)
        target = Path(out)
        target.write_bytes(response.content)
        return target


class AsyncClient:
    """The asynchronous client (``async with AsyncClient(...) as mona: await mona.job(...)``): the JSON routes,
    ``wait``, with the same retries."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key, "Accept": "application/json"}
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, transport=transport)
        self._pauses = _pauses(retries, backoff)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for pause in [*self._pauses, None]:
            try:
                response = await self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                if pause is None:
                    raise
                await asyncio.sleep(pause)
                continue
            if response.status_code != RETRIED_STATUS or pause is None:
                return response
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def get(self, path: str, **params: Any) -> Any:
        """Any JSON route (``await mona.get("/v1/datasets", limit=10)``)."""
        return _json(await self.request("GET", path, params={k: v for k, v in params.items() if v is not None}))

    async def me(self) -> Body:
        body: Body = await self.get("/v1/me")
        return body

    async def create_job(
        self,
        kind: str,
        dataset_id: str,
        config: Mapping[str, Any] | None = None,
        labelled_patients: int | None = None,
        labelled_ratio: float | None = None,
        device: str = "auto",
        from_job_id: str | None = None,
    ) -> Body:
        body = _job_body(kind, dataset_id, config, labelled_patients, labelled_ratio, device, from_job_id)
        created: Body = _json(await self.request("POST", "/v1/jobs", json=body))
        return created

    async def job(self, job_id: str) -> Body:
        body: Body = await self.get(f"/v1/jobs/{job_id}")
        return body

    async def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0) -> Body:
        """Like ``Client.wait``, without a progress bar."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job["status"] in TERMINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
            await asyncio.sleep(poll)
        if job["status"] != "succeeded":
            raise JobFailed(job)
        return job


class _Progress:
    """A tqdm bar of a job's progress (percent, stage, iteration, best val DSC, ETA), or nothing."""

    def __init__(self, enabled: bool, description: str) -> None:
        self.enabled, self.description = enabled, description
        self.bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=self.description, unit="%", file=sys.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def show(self, job: Body) -> None:
        if self.bar is None:
            return
        self.bar.n = round(100 * float(job.get("progress") or 0.0))
        eta = job.get("eta_s")
        self.bar.set_postfix(
            stage=job.get("stage"),
            it=job.get("iteration"),
            best_val_dsc=job.get("best_val_dice"),
            eta=f"{eta:.0f}s" if eta else "-",
            refresh=False,
        )
        self.bar.refresh()
