"""Benchmark the REST service: segment latency on one ACDC volume, submit → first progress, and concurrency.

Starts the service (API under uvicorn + one real worker process) with the current environment's settings — the
embedded default (SQLite + filesystem broker), or Postgres + Redis when ``DATABASE_URL`` and ``BROKER_URL`` are set
— trains a small model through a job (phantoms, 256x256 slices, a few iterations: latency, not accuracy, is
measured), then times ``POST /v1/models/{id}/segment`` on one ACDC validation volume.

    .venv/bin/python benchmarks/service_latency.py [--requests 30] [--concurrency 16] [--with-label]
    DATABASE_URL=postgresql+psycopg://... BROKER_URL=redis://... .venv/bin/python benchmarks/service_latency.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from services.common.migrate import upgrade_head
from services.common.settings import Settings
from services.embedded import free_port, running_api, running_worker
from services.rest_demo import _phantom_archive

ACDC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc"
JOB_CONFIG = {"iterations": 20, "size": 256, "batch_size": 2, "val_every": 20, "checkpoint_every": 20, "log_every": 1}


def _check(response: httpx.Response) -> Any:
    if response.is_error:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}: {response.text}"
        )
    return response.json()


def _train_model(client: httpx.Client, work: Path) -> tuple[str, float]:
    """A model via a real job; returns its id and the seconds from submit to the first progress report."""
    archive, _, _ = _phantom_archive(work)
    body = {"name": "bench", "preset": "mri", "classes": ["background", "RV", "Myo", "LV"]}
    dataset = _check(client.post("/v1/datasets", json=body))
    with archive.open("rb") as stream:
        _check(client.post(f"/v1/datasets/{dataset['id']}/archive", files={"archive": (archive.name, stream)}))
    job_body = {"kind": "supervised", "dataset_id": dataset["id"], "labelled_patients": 2, "config": JOB_CONFIG}
    submitted = time.perf_counter()
    job = _check(client.post("/v1/jobs", json=job_body))
    first_progress = None
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        if first_progress is None and job["iteration"] > 0:
            first_progress = time.perf_counter() - submitted
        time.sleep(0.2)
        job = _check(client.get(f"/v1/jobs/{job['id']}"))
    if job["status"] != "succeeded":
        raise RuntimeError(f"benchmark job {job['status']}: {job['error']}")
    return job["model_id"], first_progress if first_progress is not None else time.perf_counter() - submitted


def _segment_once(base: str, key: str, model_id: str, volume: bytes, label: bytes | None = None) -> tuple[float, int]:
    start = time.perf_counter()
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=300) as client:
        files = {"image": ("scan.nii.gz", volume, "application/gzip")}
        if label is not None:
            files["label"] = ("label.nii.gz", label, "application/gzip")
        response = client.post(f"/v1/models/{model_id}/segment", files=files)
    return time.perf_counter() - start, response.status_code


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(settings: Settings, requests: int, concurrency: int, with_label: bool = False) -> dict[str, Any]:
    upgrade_head(settings.sqlalchemy_url)
    port = free_port("127.0.0.1")
    base, key = f"http://127.0.0.1:{port}", settings.api_key or ""
    case = sorted((ACDC / "imagesTr").glob("patient0*_frame01_0000.nii.gz"))[0]
    volume = case.read_bytes()
    truth = (ACDC / "labelsTr" / case.name.replace("_0000", "")).read_bytes() if with_label else None
    with running_worker(settings), running_api(settings, "127.0.0.1", port):
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=300) as client:
            model_id, first_progress = _train_model(client, settings.data_dir / "bench")
        _segment_once(base, key, model_id, volume)  # warm the session cache
        sequential = [_segment_once(base, key, model_id, volume) for _ in range(requests)]
        with ThreadPoolExecutor(concurrency) as pool:
            parallel = list(pool.map(lambda _: _segment_once(base, key, model_id, volume, truth), range(concurrency)))
    latencies = [seconds for seconds, _ in sequential]
    return {
        "backend": {"database": settings.sqlalchemy_url.split(":")[0], "broker": settings.broker_url.split(":")[0]},
        "volume": case.name,
        "submit_to_first_progress_s": round(first_progress, 2),
        "segment_latency_s": {
            "p50": round(statistics.median(latencies), 3),
            "p95": round(_percentile(latencies, 0.95), 3),
        },
        "concurrent": {
            "requests": concurrency,
            "with_label (mask + report + overlay)": with_label,
            "errors": sum(status != 200 for _, status in parallel),
            "p50_s": round(statistics.median(seconds for seconds, _ in parallel), 2),
            "p95_s": round(_percentile([seconds for seconds, _ in parallel], 0.95), 2),
            "wall_max_s": round(max(seconds for seconds, _ in parallel), 2),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--with-label", action="store_true", help="concurrent requests send the label too")
    args = parser.parse_args()
    if not ACDC.is_dir():
        print(f"ACDC not found at {ACDC}; nothing to benchmark")
        return 0
    with tempfile.TemporaryDirectory(prefix="mona-bench-") as folder:
        settings = Settings(MONA_DATA_DIR=Path(folder), MONA_API_KEY="bench-key")  # type: ignore[call-arg]
        print(json.dumps(measure(settings, args.requests, args.concurrency, args.with_label), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
