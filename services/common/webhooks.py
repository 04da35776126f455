"""Job-finished webhooks: a job with a ``callback_url`` is announced there when it ends (succeeded, failed or
cancelled), so clients need not poll.

The POST's body is JSON ``{"event": "job.finished", "job": {id, kind, status, stage, error, model_id, project,
dataset_id, iteration, total_iterations, best_val_dice, finished_at}}``; its header ``X-Mona-Signature`` is
``sha256=<hex HMAC-SHA256 of the raw body, keyed with MONA_WEBHOOK_SECRET>`` and ``X-Mona-Event`` names the event,
so the receiver can check the sender (compare the digests in constant time). A delivery that fails (a connection
error, a timeout, a 5xx or 429) is retried after 1, 2, 4 and 8 s; the outcome is written to the job's log. A
4xx other than 429 is final (the receiver refused it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import httpx

from services.common.db import session_scope
from services.common.jobs import append_log
from services.common.models import TrainingJob
from services.common.settings import Settings

logger = logging.getLogger(__name__)

EVENT: Final = "job.finished"
SIGNATURE_HEADER: Final = "X-Mona-Signature"
PAUSES_S: Final = (1.0, 2.0, 4.0, 8.0)
TIMEOUT_S: Final = 10.0


def sign(secret: str, body: bytes) -> str:
    """The ``X-Mona-Signature`` value of ``body``: ``sha256=<hex HMAC>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _payload(job: TrainingJob) -> dict[str, Any]:
    fields = ("id", "kind", "status", "stage", "error", "model_id", "project", "dataset_id", "iteration")
    payload: dict[str, Any] = {name: getattr(job, name) for name in fields}
    payload.update(
        total_iterations=job.total_iterations,
        best_val_dice=job.best_val_dice,
        finished_at=job.finished_at.isoformat() if job.finished_at else None,
    )
    return {"event": EVENT, "job": payload}


def notify_job_finished(
    settings: Settings, job_id: str, sleep: Callable[[float], None] = time.sleep, pauses: tuple[float, ...] = PAUSES_S
) -> bool | None:
    """Deliver the job's webhook if it has a ``callback_url``; True delivered, False given up, None nothing to do."""
    with session_scope(settings.sqlalchemy_url) as session:
        job = session.get(TrainingJob, job_id)
        if job is None or not job.callback_url:
            return None
        url, payload = job.callback_url, _payload(job)
    if not settings.webhook_secret:
        _log(settings, job_id, "webhook not sent: MONA_WEBHOOK_SECRET is not set", "WARNING")
        return False
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(settings.webhook_secret, body),
        "X-Mona-Event": EVENT,
    }
    outcome = "no attempt"
    for attempt, pause in enumerate([*pauses, None], start=1):
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=TIMEOUT_S)
        except httpx.HTTPError as exc:
            outcome = f"{type(exc).__name__}"
        else:
            if response.is_success:
                _log(
                    settings, job_id, f"webhook delivered to {_shown(url)} (HTTP {response.status_code}, try {attempt})"
                )
                return True
            outcome = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break
        if pause is not None:
            sleep(pause)
    _log(settings, job_id, f"webhook to {_shown(url)} failed after {attempt} tries (last: {outcome})", "WARNING")
    return False


def _shown(url: str) -> str:
    """The URL without query or credentials (a token in the query stays out of the logs)."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(query=None, userinfo=b""))


def _log(settings: Settings, job_id: str, message: str, level: str = "INFO") -> None:
    logger.log(logging.getLevelName(level), "job %s: %s", job_id, message)
    with session_scope(settings.sqlalchemy_url) as session:
        append_log(session, job_id, message, level)
