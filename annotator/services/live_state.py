"""The slices a running job has streamed so far, kept so a (re)connecting browser can catch up.

The worker appends one JSON line per slice to ``live/job_<id>.jsonl`` in media storage (shared by the web
tier and the workers in both modes) right before it publishes the ``slice`` event; the consumer's
``state`` message reads them back. One writer per job (the worker that claimed it), appends of a single
``write`` call, and a reader that skips a torn last line make a lock unnecessary. The file is removed when
the job ends: the saved revision is then the truth.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from annotator.services import storage

logger = logging.getLogger(__name__)

LIVE_DIR = "live"


def slices_path(job_id: int) -> Path:
    return storage.local_path(f"{LIVE_DIR}/job_{job_id}.jsonl")


def reset(job_id: int) -> None:
    """Start an empty log (a retried job streams its slices again from the start)."""
    path = slices_path(job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")


def append_slice(job_id: int, record: dict[str, Any]) -> None:
    """Append one slice record ``{z, rle, direction, ...}``."""
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with slices_path(job_id).open("a", encoding="utf-8") as handle:
        handle.write(line)


def read_slices(job_id: int) -> list[dict[str, Any]]:
    """The slices streamed so far in streaming order; the latest record wins when a z repeats."""
    path = slices_path(job_id)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    latest: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            # The worker may be in the middle of appending this line.
            continue
        latest.pop(int(record["z"]), None)
        latest[int(record["z"])] = record
    return list(latest.values())


def discard(job_id: int) -> None:
    try:
        slices_path(job_id).unlink()
    except FileNotFoundError:
        pass
    except OSError:
        logger.warning("could not remove the slice log of job %s", job_id, exc_info=True)
