"""Task contracts between the API and the workers: names, queues, arguments (ids only) and the Celery config.

The API sends tasks by name with this light app; it never imports the worker's task code (or torch).
"""

from __future__ import annotations

from typing import Any, Final

from celery import Celery

from services.common.settings import Settings

TRAIN_TASK: Final = "mona.train"
EVALUATE_TASK: Final = "mona.evaluate"
RECOVER_TASK: Final = "mona.recover"
QUEUE_GPU: Final = "gpu"
QUEUE_CPU: Final = "cpu"
REDIS_PRIORITY_SEP: Final = "\x06\x16"
REDIS_PRIORITIES: Final = (3, 6, 9)
"""Kombu's Redis transport keeps priority ``p > 0`` messages of queue ``q`` under ``q + SEP + p``."""
ROUTES: Final = {TRAIN_TASK: QUEUE_GPU, EVALUATE_TASK: QUEUE_GPU, RECOVER_TASK: QUEUE_CPU}


def make_celery(settings: Settings, name: str = "mona") -> Celery:
    """A Celery app configured for long GPU jobs: late acks, prefetch 1, a visibility timeout above any job."""
    app = Celery(name, broker=settings.broker_url)
    transport_options: dict[str, object] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.embedded_broker:
        folder = settings.broker_folder.resolve()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_routes={name: {"queue": queue} for name, queue in ROUTES.items()},
        task_default_queue=QUEUE_CPU,
        worker_hijack_root_logger=False,
        broker_heartbeat=0,
    )
    return app


def send_train(app: Celery, job_id: str) -> None:
    app.send_task(TRAIN_TASK, args=[job_id])


def send_evaluate(app: Celery, report_id: str, queue: str | None = None) -> None:
    """An evaluation or a batch segmentation (the worker reads which from the report); ``queue`` None: gpu."""
    app.send_task(EVALUATE_TASK, args=[report_id], queue=queue or ROUTES[EVALUATE_TASK])


def messages_on_broker(app: Celery, settings: Settings) -> str | None:
    """The raw text of every job message waiting on the broker or delivered but not acknowledged, or None when
    this transport cannot be read. A message's headers carry its arguments (``argsrepr``), so a job id found in
    the text means the job's message still exists."""
    if settings.embedded_broker:
        folder = settings.broker_folder / "queue"
        return "\n".join(path.read_text(errors="replace") for path in sorted(folder.glob("*")) if path.is_file())
    if not settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    with app.connection_for_write() as connection:
        return _redis_messages(connection.default_channel)


def _redis_messages(channel: Any) -> str:
    client = channel.client
    keys = [f"{queue}{REDIS_PRIORITY_SEP}{p}" for queue in (QUEUE_GPU, QUEUE_CPU) for p in REDIS_PRIORITIES]
    with client.pipeline(transaction=True) as pipe:
        for key in [QUEUE_GPU, QUEUE_CPU, *keys]:
            pipe.lrange(key, 0, -1)
        pipe.hvals(getattr(channel, "unacked_key", "unacked"))
        found = pipe.execute()
    raw = [item for items in found for item in items]
    return "\n".join(item.decode(errors="replace") if isinstance(item, bytes) else str(item) for item in raw)
