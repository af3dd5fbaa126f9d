"""Celery tasks: thin adapters that receive ids and call services. Job rows hold all state."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

from annotator import live_tasks  # also registers the gpu-queue propagation task with Celery
from annotator.export_tasks import run_export  # noqa: F401  (registers the export task with workers)
from annotator.services import exports, heartbeats, imports

_io_sweeper: heartbeats.PeriodicSweeper | None = None


@shared_task(name="annotator.tasks.run_import", ignore_result=True)
def run_import(job_id: int) -> None:
    imports.run_import_job(job_id)


def sweep_stale_io_jobs() -> dict[str, list[int]]:
    """Imports and exports whose worker died: queued once more, or failed with the reason."""
    swept_imports = imports.sweep_stale_imports()
    swept_exports = exports.sweep_stale_exports()
    return {
        "imports_retried": swept_imports["retried"],
        "imports_failed": swept_imports["failed"],
        "exports_retried": swept_exports["retried"],
        "exports_failed": swept_exports["failed"],
    }


@worker_ready.connect
def _start_io_sweeper(sender: Any = None, **_: Any) -> None:
    """Every io worker also watches for imports and exports whose worker died."""
    global _io_sweeper
    if sender is not None and not live_tasks.consumes_queue(sender.app, "io"):
        return
    if _io_sweeper is None:
        _io_sweeper = heartbeats.PeriodicSweeper(
            "io-sweeper", sweep_stale_io_jobs, heartbeats.sweep_interval()
        )
        _io_sweeper.start()


@worker_shutdown.connect
def _stop_io_sweeper(**_: Any) -> None:
    if _io_sweeper is not None:
        _io_sweeper.stop()
