"""Benchmark: how fast the viewer opens the demo CT in headless Chromium, against the product's targets.

    .venv/bin/python scripts/bench_viewer_open.py [--runs 7]

Starts the embedded stack on 127.0.0.1 (tests/e2e/live_server.py: migrate, offline demo, one worker, Daphne),
logs in as the demo annotator and opens the demo case ``--runs`` times, each with a fresh page load. It reads
the viewer's own performance marks (frontend/README.md) and prints, per run and as medians, the time from the
viewer's start to the first painted slice and to every slice being scrollable, with their ratio to the targets
(first slice <= 1 s, all slices <= 3 s). Exit status 1 when a median misses its target. Timings on a shared
machine are noisy, which is why this is a benchmark and the browser tests only print them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.e2e.live_server import start_embedded_server

FIRST_SLICE_TARGET_MS = 1000.0
ALL_SLICES_TARGET_MS = 3000.0
TIMINGS_JS = """() => ({
  first: performance.getEntriesByName('first-slice')[0].duration,
  all: performance.getEntriesByName('all-slices')[0].duration,
})"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        print(f"{CHROMIUM} is missing: apt-get install -y chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    server = start_embedded_server(Path(tempfile.mkdtemp(prefix="proplabel-bench-")))
    firsts: list[float] = []
    alls: list[float] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 850})
            page.goto(f"{server.base_url}/accounts/login/")
            page.fill("input[name=username]", server.username)
            page.fill("input[name=password]", server.password)
            page.click("button[type=submit], input[type=submit]")
            page.wait_for_selector("tr.case-row", timeout=20_000)
            case_id = int(page.get_attribute("tr.case-row", "data-case") or 0)
            for run in range(args.runs):
                page.goto(f"{server.base_url}/app/cases/{case_id}")
                page.wait_for_function(
                    "performance.getEntriesByName('volume-ready').length > 0", timeout=60_000
                )
                timing = page.evaluate(TIMINGS_JS)
                firsts.append(timing["first"])
                alls.append(timing["all"])
                print(
                    f"run {run + 1}: first slice {timing['first']:.0f} ms, all slices {timing['all']:.0f} ms"
                )
            browser.close()
    finally:
        server.stop()
    first, every = statistics.median(firsts), statistics.median(alls)
    print(
        f"median over {args.runs} opens: first slice {first:.0f} ms "
        f"({first / FIRST_SLICE_TARGET_MS:.2f} x the {FIRST_SLICE_TARGET_MS:.0f} ms target), "
        f"all slices {every:.0f} ms ({every / ALL_SLICES_TARGET_MS:.2f} x the {ALL_SLICES_TARGET_MS:.0f} ms target)"
    )
    return 0 if first <= FIRST_SLICE_TARGET_MS and every <= ALL_SLICES_TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
