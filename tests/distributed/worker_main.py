"""``python -m tests.distributed.worker_main <celery worker args>``: a real Celery worker for the tests.

It is exactly ``celery -A backend worker ...`` except that, when ``PROPLABEL_TEST_SLICE_DELAY`` is a positive
number of seconds, every slice the engine streams is held that long. The classical engine finishes a whole
object in well under a second, too fast to SIGKILL a worker in the middle of a job; the delay gives the
test a window without changing what the worker computes or publishes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any


class _SlowEngine:
    """Forwards to the real engine; its streaming calls sleep ``delay`` seconds before each slice."""

    def __init__(self, engine: Any, delay: float) -> None:
        self._engine = engine
        self._delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def _slowed(self, steps: Iterator[Any]) -> Iterator[Any]:
        for step in steps:
            time.sleep(self._delay)
            yield step

    def propagate(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._slowed(self._engine.propagate(*args, **kwargs))

    def refine_steps(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return self._slowed(self._engine.refine_steps(*args, **kwargs))


def _install_slice_delay(delay: float) -> None:
    import django

    django.setup()
    from annotator.services import propagation

    real_get_engine = propagation.get_engine

    def get_engine() -> Any:
        loaded = real_get_engine()
        if isinstance(loaded.engine, _SlowEngine):
            return loaded
        return propagation.LoadedEngine(_SlowEngine(loaded.engine, delay), loaded.name, loaded.note)

    # Patched in the parent before the pool forks, so every child inherits it.
    propagation.get_engine = get_engine


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
    delay = float(os.environ.get("PROPLABEL_TEST_SLICE_DELAY") or 0)
    if delay > 0:
        _install_slice_delay(delay)
    from backend.celery import app

    app.worker_main(["worker", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
