"""The main job through REST, as a user would run it: phantoms → dataset upload → training job → model → segment a
held-out scan with its label → report, mask and overlay saved locally. Runs against any MONA API (``mona serve
--demo`` starts an embedded one first).
"""

from __future__ import annotations

import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from mona_core.cli.console import format_report
from mona_core.data.phantoms import PHANTOM_CLASSES, write_phantom_case, write_phantom_dataset

TERMINAL = ("succeeded", "failed", "cancelled")
DEMO_CONFIG = {"iterations": 400, "size": 64, "val_every": 100, "checkpoint_every": 100}


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _check(response: httpx.Response) -> Any:
    if response.is_error:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}: {response.text}"
        )
    return response.json()


def _phantom_archive(folder: Path) -> tuple[Path, Path, Path]:
    """A phantom dataset packed as an nnU-Net raw .tar.gz, plus a held-out scan and its label."""
    data = write_phantom_dataset(folder / "phantoms", n_patients=10, frames=2, seed=0, val_patients=2)
    archive = folder / "phantoms.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(data.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(data)))
    image, label = folder / "heldout_scan.nii.gz", folder / "heldout_label.nii.gz"
    write_phantom_case(image, label, seed=10_000)
    return archive, image, label


def _wait_for_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    with tqdm(total=100, desc="training job", unit="%", file=sys.stderr) as bar:
        while True:
            job: dict[str, Any] = _check(client.get(f"/v1/jobs/{job_id}"))
            bar.n = round(100 * job["progress"])
            bar.set_postfix(stage=job["stage"], it=job["iteration"], best_val_dsc=job["best_val_dice"], refresh=False)
            bar.refresh()
            if job["status"] in TERMINAL:
                return job
            time.sleep(1.0)


def _segment(client: httpx.Client, model_id: str, image: Path, label: Path, out: Path) -> dict[str, Any]:
    with image.open("rb") as scan, label.open("rb") as truth:
        files = {"image": (image.name, scan, "application/gzip"), "label": (label.name, truth, "application/gzip")}
        headers = {"Accept": "application/json"}
        result: dict[str, Any] = _check(client.post(f"/v1/models/{model_id}/segment", files=files, headers=headers))
    (out / "mask.nii.gz").write_bytes(client.get(result["mask_url"]).raise_for_status().content)
    if result.get("overlay_url"):
        (out / "overlay.png").write_bytes(client.get(result["overlay_url"]).raise_for_status().content)
    return result


def run_rest_demo(base_url: str, api_key: str, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    archive, image, label = _phantom_archive(out)
    with httpx.Client(base_url=base_url, headers={"X-API-Key": api_key}, timeout=300) as client:
        dataset = _check(
            client.post("/v1/datasets", json={"name": "phantoms", "preset": "mri", "classes": list(PHANTOM_CLASSES)})
        )
        with archive.open("rb") as stream:
            files = {"archive": (archive.name, stream, "application/gzip")}
            added = _check(client.post(f"/v1/datasets/{dataset['id']}/archive", files=files))
        _say(f"1/4 dataset {dataset['id']}: {added['cases_added']} cases uploaded")
        body = {"kind": "supervised", "dataset_id": dataset["id"], "labelled_patients": 3, "config": DEMO_CONFIG}
        job = _check(client.post("/v1/jobs", json=body))
        _say(f"2/4 job {job['id']} queued (3 labelled patients, {DEMO_CONFIG['iterations']} iterations)")
        job = _wait_for_job(client, job["id"])
        if job["status"] != "succeeded":
            _say(f"job {job['status']}: {job['error']}")
            return 1
        _say(f"3/4 model {job['model_id']} (best val DSC {job['best_val_dice']:.3f})")
        result = _segment(client, job["model_id"], image, label, out)
        report = _check(client.get(f"/v1/reports/{result['report_id']}"))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _say("4/4 report on the held-out scan:\n" + format_report({**report["summary"], "cases": report["cases"]}))
    _say(f"mask:    {out / 'mask.nii.gz'} (on the scan's grid)\noverlay: {out / 'overlay.png'}")
    _say(f"report:  {out / 'report.json'}\nREST demo finished in {time.monotonic() - started:.0f} s")
    return 0
