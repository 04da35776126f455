"""The worker's Celery app: the shared task contract (late acks, prefetch 1) plus one job per pool process.

``worker_max_tasks_per_child=1`` recycles a pool process after every job, so GPU memory, torch threads and any
state a job leaves behind go with it. Importing this module registers the tasks and the recovery signals:
``worker_ready`` starts the recovery loop in the main process; ``worker_process_init`` makes a fresh pool process
drop the main process's database connections.
"""

from __future__ import annotations

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from services.common.settings import get_settings
from services.common.tasks import make_celery
from services.worker.recovery import forget_recovery_engine, start_recovery_loop, stop_recovery_loop

app = make_celery(get_settings(), name="mona-worker")
app.conf.update(worker_max_tasks_per_child=1, worker_send_task_events=False)


def _on_worker_ready(**_: object) -> None:
    start_recovery_loop(get_settings())


worker_ready.connect(_on_worker_ready, weak=False)
worker_process_init.connect(forget_recovery_engine, weak=False)
worker_shutdown.connect(stop_recovery_loop, weak=False)

import services.worker.tasks  # noqa: E402, F401  (registers mona.train, mona.evaluate, mona.recover)
