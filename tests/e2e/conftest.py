"""Fixtures for the browser tests: a live embedded server (Daphne + one Celery worker) with the offline demo
data, and headless Debian Chromium driven by Playwright (never a browser Playwright downloads itself).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.live_server import REPO, SLICE_DELAY, EmbeddedServer, start_embedded_server

CHROMIUM = Path(os.environ.get("PROPLABEL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts" / "e2e"


def _skip_reason() -> str | None:
    if not (REPO / "frontend" / "dist" / "index.html").is_file():
        return "frontend/dist is missing: build the viewer first (cd frontend && npm ci && npm run build)"
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing: apt-get install -y chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


@pytest.fixture(scope="session")
def live_embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """base_url, demo credentials (annotator / reviewer share DEMO password), torn down after the session."""
    if reason := _skip_reason():
        pytest.skip(reason)
    # Slices are held SLICE_DELAY s each so the tests can see streaming in flight and cancel a job.
    server = start_embedded_server(tmp_path_factory.mktemp("proplabel-e2e"), slice_delay=SLICE_DELAY)
    try:
        yield server
    finally:
        server.stop()
        # Keep the server and worker logs next to the screenshots: the temp folder does not survive.
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name in ("server.log", "worker.log"):
            if (server.var_dir / name).is_file():
                shutil.copyfile(server.var_dir / name, ARTIFACTS / name)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if reason := _skip_reason():
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
