"""The main job through REST, as a user would run it: phantoms → dataset upload → training job → model → segment a
held-out scan with its label → report, mask, overlay and loss curve saved locally, through the Python client
(``mona_client``). Runs against any MONA API (``mona serve --demo`` starts an embedded one first).
"""

from __future__ import annotations

import json
import sys
import tarfile
import time
from pathlib import Path

from mona_client import Client, JobFailed
from mona_core.cli.console import format_report
from mona_core.data.phantoms import PHANTOM_CLASSES, write_phantom_case, write_phantom_dataset

DEMO_CONFIG = {"iterations": 400, "size": 64, "val_every": 100, "checkpoint_every": 100}


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


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


def run_rest_demo(base_url: str, api_key: str, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    archive, image, label = _phantom_archive(out)
    with Client(base_url, api_key, timeout=300) as mona:
        dataset = mona.create_dataset("phantoms", list(PHANTOM_CLASSES))
        added = mona.upload_archive(dataset["id"], archive)
        _say(f"1/4 dataset {dataset['id']}: {added['cases_added']} cases uploaded")
        job = mona.create_job("supervised", dataset["id"], DEMO_CONFIG, labelled_patients=3)
        _say(f"2/4 job {job['id']} queued (3 labelled patients, {DEMO_CONFIG['iterations']} iterations)")
        try:
            job = mona.wait(job["id"])
        except JobFailed as failed:
            _say(f"job {failed.job['status']}: {failed.job['error']}")
            return 1
        _say(f"3/4 model {job['model_id']} (best val DSC {job['best_val_dice']:.3f})")
        result = mona.segment(job["model_id"], image, label, out=out / "mask.nii.gz")
        mona.download(result["overlay_url"], out / "overlay.png")
        mona.loss_curve(job["id"], out / "loss_curve.png")
        report = mona.report(result["report_id"])
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _say("4/4 report on the held-out scan:\n" + format_report({**report["summary"], "cases": report["cases"]}))
    _say(f"mask:    {out / 'mask.nii.gz'} (on the scan's grid)\noverlay: {out / 'overlay.png'}")
    _say(f"loss curve: {out / 'loss_curve.png'}\nreport:  {out / 'report.json'}")
    _say(f"REST demo finished in {time.monotonic() - started:.0f} s")
    return 0
