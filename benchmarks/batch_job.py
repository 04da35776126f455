"""Batch segmentation throughput through the service's job path: ACDC cases uploaded over REST, one batch job
(``POST /v1/models/{id}/segmentations``) run by the worker's runner in this process, scans per second.

Embedded settings (SQLite in a temporary folder); the model is an exported model directory (ONNX + manifest).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch_job.py \\
        --model bench-output/cpu-protocol/finetune/seed-0/model_best --split val
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from mona_core.export.manifest import MANIFEST_FILE, MODEL_FILE
from services.api.main import create_app
from services.common.db import session_scope
from services.common.migrate import upgrade_head
from services.common.models import Model, TrainingJob, new_id
from services.common.settings import Settings
from services.common.storage import ArtifactStore
from services.worker.evaluation import run_evaluation

ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc"
KEY = "batch-benchmark-key"


def _register(settings: Settings, model_dir: Path, dataset_id: str) -> str:
    store = ArtifactStore(settings.artifact_root)
    onnx, manifest = store.copy_in(model_dir / MODEL_FILE, ".onnx"), store.copy_in(model_dir / MANIFEST_FILE, ".json")
    meta = json.loads((model_dir / MANIFEST_FILE).read_text())
    job_id, model_id = new_id(), new_id()
    with session_scope(settings.sqlalchemy_url) as session:
        session.add(TrainingJob(id=job_id, kind="finetune", dataset_id=dataset_id, config={}, status="succeeded"))
        session.flush()
        session.add(
            Model(
                id=model_id,
                job_id=job_id,
                onnx_key=onnx.key,
                manifest_key=manifest.key,
                onnx_sha256=onnx.sha256,
                classes=meta["classes"],
                preset=meta["preset"],
                size=meta["size"],
                metrics={},
            )
        )
    return model_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=ACDC)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    splits = json.loads((args.data / "splits.json").read_text())
    case_ids = list(splits[args.split])
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(MONA_DATA_DIR=Path(folder), MONA_API_KEY=KEY)  # type: ignore[call-arg]
        upgrade_head(settings.sqlalchemy_url)
        with TestClient(create_app(settings), headers={"X-API-Key": KEY}) as api:
            classes = json.loads((args.model / MANIFEST_FILE).read_text())["classes"]
            dataset = api.post("/v1/datasets", json={"name": "acdc", "classes": classes}).json()["id"]
            for case_id in case_ids:
                image = args.data / "imagesTr" / f"{case_id}_0000.nii.gz"
                label = args.data / "labelsTr" / f"{case_id}.nii.gz"
                files = {"image": (image.name, image.read_bytes()), "label": (label.name, label.read_bytes())}
                response = api.post(f"/v1/datasets/{dataset}/cases", files=files, data={"split": args.split})
                response.raise_for_status()
            model_id = _register(settings, args.model, dataset)
            batch = api.post(f"/v1/models/{model_id}/segmentations", json={"dataset_id": dataset, "split": args.split})
            batch.raise_for_status()
            started = time.perf_counter()
            status = run_evaluation(settings, batch.json()["id"])
            seconds = time.perf_counter() - started
            result = api.get(f"/v1/segmentations/{batch.json()['id']}").json()
    mean = result["summary"].get("mean", {})
    print(f"batch job on {len(case_ids)} ACDC {args.split} volumes with {args.model}: {status} in {seconds:.1f} s")
    print(f"  {len(case_ids) / seconds:.2f} scans/s (masks stored, DSC/ASD and an overlay per labelled case)")
    print(f"  mean DSC {100 * (mean.get('dice') or 0):.2f} %, mean ASD {mean.get('asd')} (scored on {args.split})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
