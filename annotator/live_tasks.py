"""Celery side of live propagation (queue ``gpu``): a thin task plus the worker's warm-up and sweeper.

The task gets a job id and hands it to ``services.propagation.run_job``; all state lives on the job row.
``acks_late`` + ``reject_on_worker_lost`` make Celery re-deliver the message when the child process running
it dies; the conditional claim makes any duplicate a no-op; the sweeper catches what no broker can (the
whole worker SIGKILLed with the message already taken off a filesystem queue).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Task, current_app, shared_task
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from annotator.services import heartbeats, propagation

logger = logging.getLogger(__name__)

_sweeper: propagation.Sweeper | None = None


@shared_task(
    bind=True,
    name="annotator.live_tasks.run_propagation",
    queue="gpu",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_propagation(self: Task, job_id: int) -> str:
    worker = f"{self.request.hostname or 'worker'}:{os.getpid()}"
    return propagation.run_job(int(job_id), worker)


def consumes_queue(app: Any, queue: str) -> bool:
    """Whether this worker consumes ``queue`` (unknown: assume it does)."""
    try:
        queues = app.amqp.queues.consume_from or app.amqp.queues
        return queue in queues
    except AttributeError:
        return True


def _consumes_gpu_queue(app: Any) -> bool:
    return consumes_queue(app, "gpu")


@worker_process_init.connect
def _warm_engine_in_child(**_: Any) -> None:
    # Each pool process (the worker itself with the solo pool) loads the model once, before its first job;
    # an `io` worker never runs propagations and must not hold a model.
    if not _consumes_gpu_queue(current_app):
        return
    try:
        propagation.get_engine()
    except Exception:
        logger.exception("could not preload the propagation engine")


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    """Every gpu worker also watches for jobs whose worker died."""
    global _sweeper
    if sender is not None and not _consumes_gpu_queue(sender.app):
        return
    if _sweeper is None:
        _sweeper = propagation.Sweeper(interval=heartbeats.sweep_interval())
        _sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    if _sweeper is not None:
        _sweeper.stop()
