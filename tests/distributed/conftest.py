"""The distributed stack for the tests in this folder: PostgreSQL, Redis, Daphne and Celery workers as separate
processes on 127.0.0.1 (tests/distributed/stack.py).

Missing PostgreSQL/Redis binaries skip these tests on a developer machine, with the packages to install in
the reason. In CI (``CI=true``) they fail instead: the set-up step (``./run test``) installs the packages,
so their absence there is a broken machine, not a reason to pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.distributed.stack import Stack, find_binaries

WEIGHTS = Path(__file__).resolve().parents[2] / "ml" / "weights" / "proplabel_learned.pt"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_binaries() -> None:
    missing = find_binaries().missing()
    if not missing:
        return
    reason = f"Debian packages {', '.join(missing)} are not installed (apt-get install {' '.join(missing)})"
    if in_ci():
        pytest.fail(f"CI=true and {reason}: ./run test should have installed them", pytrace=False)
    pytest.skip(reason)


def engine_name() -> str:
    """The shipped model when its weights exist, else the classical engine (issue 8)."""
    if os.environ.get("PROPLABEL_ENGINE"):
        return os.environ["PROPLABEL_ENGINE"]
    return "learned" if WEIGHTS.exists() else "classical"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.distributed)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """Two gpu workers and one io worker; slices are held 60 ms each (an 80-slice job streams for about five
    seconds), so a worker or the web server can be stopped in the middle of a job."""
    require_binaries()
    running = Stack(engine=engine_name(), gpu_workers=2, slice_delay=0.06)
    try:
        running.start()
        yield running
    finally:
        running.stop()
