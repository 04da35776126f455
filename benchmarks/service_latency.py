"""Benchmark the REST service: segment latency on one ACDC volume, submit → first progress, and concurrency.

Starts the service (``mona api`` in its own process, as deployed, + one real worker process) with the current
environment's settings — the embedded default (SQLite + filesystem broker), or Postgres + Redis when ``DATABASE_URL``
and ``BROKER_URL`` are set — trains a small model through a job (phantoms, 256x256 slices, a few iterations:
latency, not accuracy, is measured), then times ``POST /v1/models/{id}/segment`` on one ACDC validation volume:
sequential requests, then ``--concurrency`` at once (with ``--with-label``: mask + report, and then each client
fetches its overlay, timed on its own). The API process's resident memory is read from ``/proc`` before and after
the concurrent burst, with its peak (``VmHWM``).

    .venv/bin/python benchmarks/service_latency.py [--requests 30] [--concurrency 16] [--with-label]
    MONA_INFERENCE_SLOTS=2 .venv/bin/python benchmarks/service_latency.py ...   # the API's settings come from env
    DATABASE_URL=postgresql+psycopg://... BROKER_URL=redis://... .venv/bin/python benchmarks/service_latency.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from services.common.migrate import upgrade_head
from services.common.settings import Settings
from services.embedded import free_port, running_worker
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


def _segment_once(
    base: str, key: str, model_id: str, volume: bytes, label: bytes | None = None
) -> tuple[float, int, float | None]:
    """One segment request: (seconds, status, seconds to fetch its overlay afterwards or None)."""
    start = time.perf_counter()
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=300) as client:
        files = {"image": ("scan.nii.gz", volume, "application/gzip")}
        if label is not None:
            files["label"] = ("label.nii.gz", label, "application/gzip")
        response = client.post(f"/v1/models/{model_id}/segment", files=files, headers={"Accept": "application/json"})
        seconds = time.perf_counter() - start
        overlay_s = None
        if response.status_code == 200 and response.json()["overlay_url"]:
            fetched = time.perf_counter()
            overlay = client.get(response.json()["overlay_url"])
            overlay_s = time.perf_counter() - fetched if overlay.status_code == 200 else None
    return seconds, response.status_code, overlay_s


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _memory_mb(pid: int) -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: round(int(fields[name].split()[0]) / 1024, 1) for name in ("VmRSS", "VmHWM")}


@contextmanager
def _api_process(settings: Settings, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``mona api`` as its own process with ``settings`` in its environment, until the block ends."""
    env = {
        **os.environ,
        "MONA_DATA_DIR": str(settings.data_dir),
        "MONA_API_KEY": settings.api_key or "",
        "BROKER_URL": settings.broker_url,
        "MONA_LOG_LEVEL": "WARNING",
    }
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    command = [
        sys.executable,
        "-c",
        "from mona_core.cli import main; raise SystemExit(main())",
        "api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"expected the API to start on port {port}; see {log}")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure(settings: Settings, requests: int, concurrency: int, with_label: bool = False) -> dict[str, Any]:
    upgrade_head(settings.sqlalchemy_url)
    port = free_port("127.0.0.1")
    base, key = f"http://127.0.0.1:{port}", settings.api_key or ""
    case = sorted((ACDC / "imagesTr").glob("patient0*_frame01_0000.nii.gz"))[0]
    volume = case.read_bytes()
    truth = (ACDC / "labelsTr" / case.name.replace("_0000", "")).read_bytes() if with_label else None
    with running_worker(settings), _api_process(settings, port, settings.data_dir / "api.log") as api:
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=300) as client:
            model_id, first_progress = _train_model(client, settings.data_dir / "bench")
        _segment_once(base, key, model_id, volume)  # warm the session cache
        sequential = [_segment_once(base, key, model_id, volume) for _ in range(requests)]
        memory_before = _memory_mb(api.pid)
        with ThreadPoolExecutor(concurrency) as pool:
            parallel = list(pool.map(lambda _: _segment_once(base, key, model_id, volume, truth), range(concurrency)))
        memory_after = _memory_mb(api.pid)
    latencies = [seconds for seconds, _, _ in sequential]
    overlays = [overlay for _, _, overlay in parallel if overlay is not None]
    return {
        "backend": {"database": settings.sqlalchemy_url.split(":")[0], "broker": settings.broker_url.split(":")[0]},
        "api": {"process": "mona api (1 uvicorn worker)", "inference_slots": settings.inference_slots},
        "volume": case.name,
        "submit_to_first_progress_s": round(first_progress, 2),
        "segment_latency_s": {
            "p50": round(statistics.median(latencies), 3),
            "p95": round(_percentile(latencies, 0.95), 3),
        },
        "concurrent": {
            "requests": concurrency,
            "with_label (mask + report)": with_label,
            "errors": sum(status != 200 for _, status, _ in parallel),
            "p50_s": round(statistics.median(seconds for seconds, _, _ in parallel), 2),
            "p95_s": round(_percentile([seconds for seconds, _, _ in parallel], 0.95), 2),
            "wall_max_s": round(max(seconds for seconds, _, _ in parallel), 2),
            "overlay_fetch_after_p50_s": round(statistics.median(overlays), 2) if overlays else None,
            "overlay_fetch_after_p95_s": round(_percentile(overlays, 0.95), 2) if overlays else None,
        },
        "api_memory_mb": {
            "rss_before_burst": memory_before["VmRSS"],
            "rss_after_burst": memory_after["VmRSS"],
            "peak": memory_after["VmHWM"],
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
        # the rest (DATABASE_URL, BROKER_URL, MONA_INFERENCE_SLOTS) from the environment
        print(json.dumps(measure(settings, args.requests, args.concurrency, args.with_label), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
