"""A Python client of the MONA service's REST API (httpx): sync ``Client`` and async ``AsyncClient``.

    from mona_client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as mona:
        dataset = mona.create_dataset("ACDC", ["background", "RV", "Myo", "LV"])
        mona.upload_archive(dataset["id"], "acdc.tar.gz")
        job = mona.create_job("mona", dataset["id"], labelled_patients=3, config={"iterations": 2000})
        job = mona.wait(job["id"])                      # a progress bar; raises JobFailed unless it succeeded
        mona.segment(job["model_id"], "scan.nii.gz", out="mask.nii.gz")

Every error answer raises ``ApiError`` (its ``status`` and the service's ``detail``); a 503 (database or broker
down) and a lost connection are retried with a growing pause before they do. The client speaks only HTTP: it
imports nothing of the service.
"""

from mona_client.client import (
    TERMINAL,
    ApiError,
    AsyncClient,
    Client,
    JobFailed,
    Page,
)

__all__ = ["TERMINAL", "ApiError", "AsyncClient", "Client", "JobFailed", "Page"]
