"""Heartbeats and stale-job sweeps shared by propagation, import and export jobs.

A worker running a job refreshes the row's ``heartbeat_at`` from a side thread (``Heartbeat``), independent
of how long one step of the job takes. ``sweep_stale`` finds running rows whose heartbeat is older than
``stale_seconds()`` (the worker was killed, the machine went away) and, with a conditional update so that two
sweepers never act twice on one row, puts them back in the queue once or fails them the second time.
``PeriodicSweeper`` runs a sweep every few seconds inside a worker process; job-status reads sweep too, so a
dead worker shows even when no worker is alive.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections, connection, models, transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 2
"""A job whose worker is lost is retried once; the second loss fails it."""

Row = TypeVar("Row", bound=models.Model)


def _setting(name: str, default: float) -> float:
    """A tunable from Django settings, else from the environment (workers and tests set it there)."""
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(name, default)
    return float(value)


def heartbeat_seconds() -> float:
    return _setting("PROPLABEL_JOB_HEARTBEAT_SECONDS", 1.0)


def stale_seconds() -> float:
    """A running job whose heartbeat is older than this has lost its worker."""
    return _setting("PROPLABEL_JOB_STALE_SECONDS", 20.0)


def stale_before(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(seconds=stale_seconds())


class Heartbeat(threading.Thread):
    """Calls ``beat()`` every ``heartbeat_seconds()`` until ``stop()``; subclasses say what a beat writes."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._stop_event = threading.Event()

    def beat(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            while not self._stop_event.wait(heartbeat_seconds()):
                self.beat()
        except Exception:
            logger.exception("heartbeat %s failed", self.name)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)


class RowHeartbeat(Heartbeat):
    """Refreshes ``heartbeat_at`` of the rows of ``rows`` (e.g. one job while it is still running)."""

    def __init__(self, rows: models.QuerySet[Any], name: str) -> None:
        super().__init__(name)
        self.rows = rows

    def beat(self) -> None:
        self.rows.update(heartbeat_at=timezone.now())


def start_row_heartbeat(rows: models.QuerySet[Any], name: str) -> RowHeartbeat | None:
    """Start a ``RowHeartbeat``, unless this thread's connection is inside a transaction: another connection
    could not see (or, on SQLite, even write) the row then, e.g. a job run eagerly inside a request or test.
    The claim wrote the first heartbeat; callers may also beat inline with their progress."""
    if transaction.get_connection().in_atomic_block:
        return None
    heartbeat = RowHeartbeat(rows, name)
    heartbeat.start()
    return heartbeat


@dataclass
class Swept:
    retried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def sweep_stale(
    model: type[Row],
    *,
    running: str,
    requeue: Callable[[Row], dict[str, Any]],
    fail: Callable[[Row], dict[str, Any]],
    after_requeue: Callable[[Row], None] | None = None,
    after_fail: Callable[[Row], None] | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> Swept:
    """Requeue (attempts < ``max_attempts``) or fail the ``running`` rows of ``model`` whose heartbeat is stale.

    ``requeue(row)`` / ``fail(row)`` return the fields to write; each write is conditional on the row still
    being running with the heartbeat that was read, so a worker that beats again, or another sweeper, wins.
    ``after_requeue`` / ``after_fail`` run in the same transaction with the refreshed row (e.g. to send an
    event on commit or queue a message).
    """
    swept = Swept()
    for row in model._default_manager.filter(status=running, heartbeat_at__lt=stale_before()):
        retry = row.attempts < max_attempts  # type: ignore[attr-defined]
        with transaction.atomic():
            updated = model._default_manager.filter(
                pk=row.pk,
                status=running,
                heartbeat_at=row.heartbeat_at,  # type: ignore[attr-defined]
            ).update(**(requeue(row) if retry else fail(row)))
            if not updated:
                continue
            row.refresh_from_db()
            callback = after_requeue if retry else after_fail
            if callback is not None:
                callback(row)
        (swept.retried if retry else swept.failed).append(row.pk)
    return swept


class PeriodicSweeper(threading.Thread):
    """Runs ``sweep`` every ``interval`` seconds in a worker process; logs what it did."""

    def __init__(self, name: str, sweep: Callable[[], dict[str, list[int]]], interval: float) -> None:
        super().__init__(name=name, daemon=True)
        self.sweep = sweep
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                close_old_connections()
                swept = self.sweep()
                if any(swept.values()):
                    logger.warning("%s: %s", self.name, swept)
            except Exception:
                logger.exception("%s failed", self.name)

    def stop(self) -> None:
        self._stop_event.set()


def sweep_interval() -> float:
    return max(0.5, stale_seconds() / 4)
