"""The one place that publishes WebSocket events (docs/ARCHITECTURE.md, "WebSocket").

Every event goes to the case's group ``case_<id>`` and is sent only after the surrounding database
transaction commits (outside a transaction, ``on_commit`` runs at once), so a browser never hears about a
job, slice or revision that a rollback then erased. Events are hints; the database stays the truth, and a
reconnecting browser gets the whole picture from the consumer's ``state`` message.

The channel-layer message is ``{"type": "case.event", "event": {...}}``; the consumer forwards ``event``
verbatim to the browser as JSON.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

CONSUMER_HANDLER = "case.event"


def case_group(case_id: int) -> str:
    return f"case_{case_id}"


def _group_send(group: str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, {"type": CONSUMER_HANDLER, "event": event})
    except Exception:
        # A lost hint must never undo committed work: the state message on reconnect repairs it.
        logger.exception("could not publish %s to %s", event.get("type"), group)


def send_case_event(case_id: int, event_type: str, payload: dict[str, Any]) -> None:
    """Publish ``{"type": event_type, **payload}`` to the case's group once the transaction commits."""
    # The JSON round trip both proves the payload is serialisable and freezes it: later changes to the
    # objects it was built from cannot leak into an event sent after commit.
    event = json.loads(json.dumps({"type": event_type, "case": case_id, **payload}))
    group = case_group(case_id)
    transaction.on_commit(lambda: _group_send(group, event))


# Typed helpers, one per event of the contract -------------------------------------------------------------


def job_queued(case_id: int, job: dict[str, Any]) -> None:
    send_case_event(case_id, "job.queued", {"job": job})


def job_started(case_id: int, job: dict[str, Any]) -> None:
    send_case_event(case_id, "job.started", {"job": job})


def slice_done(case_id: int, payload: dict[str, Any]) -> None:
    """``payload``: ``{job, label, z, rle, shape, direction, done, done_up, done_down, total?}``."""
    send_case_event(case_id, "slice", payload)


def job_done(case_id: int, job: dict[str, Any], revision: int) -> None:
    send_case_event(case_id, "job.done", {"job": job, "revision": revision})


def job_failed(case_id: int, job: dict[str, Any], error: str) -> None:
    send_case_event(case_id, "job.failed", {"job": job, "error": error})


def job_cancelled(case_id: int, job: dict[str, Any]) -> None:
    send_case_event(case_id, "job.cancelled", {"job": job})


def job_retrying(case_id: int, job: dict[str, Any], reason: str) -> None:
    """A job whose worker was lost is queued again for another worker (the browser drops its slices)."""
    send_case_event(case_id, "job.retrying", {"job": job, "reason": reason})


def revision_changed(case_id: int, current_revision: int | None) -> None:
    send_case_event(case_id, "revision", {"current_revision": current_revision})


def case_status_changed(case: Any) -> None:
    """``case.status`` ``{case, status}`` after a workflow transition."""
    send_case_event(case.pk, "case.status", {"status": case.status})
