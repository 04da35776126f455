"""Task contracts between the API and the workers: names, queues, arguments (ids only) and the Celery config.

The API sends tasks by name with this light app; it never imports the worker's task code (or torch).
"""

from __future__ import annotations

from typing import Final

from celery import Celery

from services.common.settings import Settings

TRAIN_TASK: Final = "mona.train"
EVALUATE_TASK: Final = "mona.evaluate"
RECOVER_TASK: Final = "mona.recover"
QUEUE_GPU: Final = "gpu"
QUEUE_CPU: Final = "cpu"
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


def send_evaluate(app: Celery, report_id: str) -> None:
    app.send_task(EVALUATE_TASK, args=[report_id])
