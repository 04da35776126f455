"""Uploads of broken, complex or badly spaced NIfTI files: a 422 whose message names the client's file, never the
staging path it was received into (datasets and segmentation); and a cancelled job logs the step it reached."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.common.settings import Settings
from services.worker.training import run_training_job
from tests.services import test_models_api
from tests.services.test_datasets_api import create_dataset, upload
from tests.services.test_models_api import Registered
from tests.services.test_worker import log_lines, make_dataset, make_job

exported, model = test_models_api.exported, test_models_api.model  # fixtures: a registered ONNX model


def _nifti(path: Path, dtype: type, pixdim: tuple[float, float, float]) -> bytes:
    image = nib.Nifti1Image(np.ones((8, 8, 3), dtype), None)  # type: ignore[no-untyped-call]
    image.header["pixdim"][1:4] = pixdim
    nib.save(image, path)
    return path.read_bytes()


def _bad_files(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """Client file name -> (bytes, a word the message must contain)."""
    return {
        "Scan 01 (corrupt).nii.gz": (b"\x1f\x8b" + b"not really gzip" * 20, "broken"),
        "complex_scan.nii.gz": (_nifti(tmp_path / "c.nii.gz", np.complex64, (1.0, 1.0, 1.0)), "complex"),
        "flat_scan.nii.gz": (_nifti(tmp_path / "z.nii.gz", np.float32, (1.0, 0.0, 1.0)), "pixdim"),
        "nan_scan.nii": (gzip.decompress(_nifti(tmp_path / "n.nii.gz", np.float32, (np.nan, 1.0, 1.0))), "pixdim"),
    }


def _check(detail: str, name: str, word: str) -> None:
    assert detail.startswith("expected") and word in detail and name in detail, detail
    assert "tmp" not in detail and "/" not in detail.replace(f"{name}", ""), detail


def test_dataset_upload_errors_name_the_client_file(api: TestClient, tmp_path: Path) -> None:
    dataset_id = create_dataset(api)
    for name, (payload, word) in _bad_files(tmp_path).items():
        response = upload(api, dataset_id, payload, name=name)
        assert response.status_code == 422, response.text
        _check(response.json()["detail"], name, word)


def test_segment_errors_name_the_client_file(api: TestClient, model: Registered, tmp_path: Path) -> None:
    for name, (payload, word) in _bad_files(tmp_path).items():
        files = {"image": (name, payload, "application/gzip")}
        response = api.post(f"/v1/models/{model.model_id}/segment", files=files)
        assert response.status_code == 422, response.text
        _check(response.json()["detail"], name, word)


def test_a_cancelled_job_logs_the_step_it_reached(
    service_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset_id = make_dataset(service_settings, tmp_path, patients=2, frames=1)
    job_id = make_job(service_settings, dataset_id, cancel_requested=True)
    with caplog.at_level(logging.INFO, logger="services.worker.training"):
        assert run_training_job(service_settings, job_id) == "cancelled"
    assert f"training job {job_id} cancelled at step 0" in caplog.text
    assert ("INFO", "cancelled at step 0") in log_lines(service_settings, job_id)
