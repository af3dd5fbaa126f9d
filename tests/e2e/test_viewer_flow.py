"""The annotator's whole loop in real headless Chromium against a live embedded server (issue 6, "Done when").

log in -> case list -> open the demo CT (timings from the Performance API) -> window/level -> box prompt ->
live overlay on >= 10 slices -> negative correction click -> a positive one on that slice (both sent) ->
re-propagate from the slice -> undo -> redo -> submit. Screenshots of each step go to test-artifacts/e2e/.
The viewer exposes itself as ``window.proplabelViewer`` so the test can map voxels to screen points and wait
on its state.

Steps from the box prompt on NEED THE LIVE-PROPAGATION BACKEND (issue 5: propagations, refinements,
undo/redo, WebSocket events, the Celery gpu worker); before it lands they fail at the first wait for a job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.live_server import SLICE_DELAY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Opening the demo CT: the targets (1 s to the first slice, 3 s to all) are measured by
# scripts/bench_viewer_open.py; this test prints the figures and fails only when opening is plainly broken.
FIRST_SLICE_BROKEN_MS = 10_000
ALL_SLICES_BROKEN_MS = 30_000
JOB_TIMEOUT_MS = 60_000

# Count overlay pixels of one colour (the overlay is semi-transparent; getImageData un-premultiplies).
COUNT_COLOUR_JS = """([plane, rgb]) => {
  const canvas = document.querySelector(`canvas.overlay[data-plane="${plane}"]`);
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 20 && Math.abs(data[i] - rgb[0]) < 40 && Math.abs(data[i + 1] - rgb[1]) < 40
        && Math.abs(data[i + 2] - rgb[2]) < 40) n++;
  }
  return n;
}"""

# Mean grey of the middle of the axial image (Cornerstone3D's 2D canvas).
MEAN_GREY_JS = """() => {
  const canvas = document.querySelector('.pane-axial .cs canvas');
  const ctx = canvas.getContext('2d');
  const w = canvas.width, h = canvas.height;
  const data = ctx.getImageData(Math.floor(w * 0.3), Math.floor(h * 0.3), Math.floor(w * 0.4), Math.floor(h * 0.4)).data;
  let sum = 0;
  for (let i = 0; i < data.length; i += 4) sum += data[i];
  return sum / (data.length / 4);
}"""

# Bounding box (voxels) of a label value on one axial slice of the current labels.
LABEL_BOX_JS = """([value, z]) => {
  const v = window.proplabelViewer;
  const [, Y, X] = v.shape;
  const slice = v.labelmap.axial(z);
  let y0 = Y, y1 = -1, x0 = X, x1 = -1;
  for (let y = 0; y < Y; y++) for (let x = 0; x < X; x++) {
    if (slice[y * X + x] === value) { y0 = Math.min(y0, y); y1 = Math.max(y1, y); x0 = Math.min(x0, x); x1 = Math.max(x1, x); }
  }
  return y1 < 0 ? null : {y0, y1, x0, x1};
}"""

# Page coordinates of a voxel's centre in the axial view.
VOXEL_TO_PAGE_JS = """([z, y, x]) => {
  const v = window.proplabelViewer;
  const [cx, cy] = v.renderer.voxelToCanvas('axial', [z, y, x]);
  const rect = document.querySelector('canvas.overlay[data-plane="axial"]').getBoundingClientRect();
  return [rect.left + cx, rect.top + cy];
}"""


# The overlay must sit exactly on the image: same canvas rectangle as Cornerstone3D's, and the image under
# the centre of a bright structure's label (bone, W400/L40) is white while outside the body is black.
ALIGNMENT_JS = """([value]) => {
  const v = window.proplabelViewer;
  const out = {rects: []};
  for (const plane of ['axial', 'coronal', 'sagittal']) {
    const a = document.querySelector(`.pane-${plane} .cs canvas`).getBoundingClientRect();
    const b = document.querySelector(`canvas.overlay[data-plane="${plane}"]`).getBoundingClientRect();
    out.rects.push(Math.max(Math.abs(a.left - b.left), Math.abs(a.top - b.top), Math.abs(a.width - b.width), Math.abs(a.height - b.height)));
  }
  const z = v.renderer.sliceIndex('axial');
  const [, Y, X] = v.shape;
  const slice = v.labelmap.axial(z);
  let n = 0, sy = 0, sx = 0;
  for (let y = 0; y < Y; y++) for (let x = 0; x < X; x++) if (slice[y * X + x] === value) { n++; sy += y; sx += x; }
  const canvas = document.querySelector('.pane-axial .cs canvas');
  const scale = canvas.width / canvas.getBoundingClientRect().width;
  const grey = (zyx) => {
    const [cx, cy] = v.renderer.voxelToCanvas('axial', zyx);
    return canvas.getContext('2d').getImageData(Math.round(cx * scale), Math.round(cy * scale), 1, 1).data[0];
  };
  out.inside = n ? grey([z, Math.round(sy / n), Math.round(sx / n)]) : null;
  out.corner = grey([z, 1, 1]);
  return out;
}"""

# Where the axial slice's four edge midpoints land on the overlay canvas: the viewer's current zoom, pan and flip.
AXIAL_EDGES_JS = """() => {
  const v = window.proplabelViewer;
  const [, Y, X] = v.shape;
  const z = v.renderer.sliceIndex('axial');
  const at = (zyx) => v.renderer.voxelToCanvas('axial', zyx);
  return {anterior: at([z, Y - 1, X >> 1])[1], posterior: at([z, 0, X >> 1])[1],
          right: at([z, Y >> 1, X - 1])[0], left: at([z, Y >> 1, 0])[0]};
}"""
VIEW_NEAR_JS = f"""([before, tolerance]) => {{
  const now = ({AXIAL_EDGES_JS})();
  return Object.keys(before).every((k) => Math.abs(now[k] - before[k]) < tolerance);
}}"""


def _zoom_in_then_wait(page: Any, x: float, y: float, view_before: dict[str, float]) -> None:
    """Ctrl+wheel over (x, y); mouse.wheel returns before the page handles the event, so wait to see the zoom."""
    page.mouse.move(x, y)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    page.wait_for_function(f"(before) => !({VIEW_NEAR_JS})([before, 2])", arg=view_before, timeout=5000)


def _reset_view_and_wait(page: Any, view_before: dict[str, float]) -> None:
    """R restores the fitted view of ``view_before`` to within a pixel or two (sub-pixel refit)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.keyboard.press("r")
    try:
        page.wait_for_function(VIEW_NEAR_JS, arg=[view_before, 2], timeout=5000)
    except PlaywrightTimeout:
        pytest.fail(f"R did not restore the view: {page.evaluate(AXIAL_EDGES_JS)} against {view_before}")


# Where landmarks of the phantom are drawn in the axial IMAGE itself (Cornerstone3D's canvas, W400/L40, no
# use of the viewer's mapping): the vertebral body (700 HU, saturated white) and the aorta (200 HU, light
# grey; the kidneys at 150 HU stay darker). Centroids as fractions of the canvas size.
IMAGE_LANDMARKS_JS = """() => {
  const canvas = document.querySelector('.pane-axial .cs canvas');
  const w = canvas.width, h = canvas.height;
  const data = canvas.getContext('2d').getImageData(0, 0, w, h).data;
  const acc = {bone: [0, 0, 0], aorta: [0, 0, 0]};
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const g = data[(y * w + x) * 4];
    const which = g >= 250 ? acc.bone : (g >= 215 && g <= 245 ? acc.aorta : null);
    if (which) { which[0] += x; which[1] += y; which[2]++; }
  }
  const out = {};
  for (const [k, [sx, sy, n]] of Object.entries(acc)) out[k] = n ? {x: sx / n / w, y: sy / n / h, n, px: [sx / n, sy / n]} : null;
  out.scale = w / canvas.getBoundingClientRect().width;
  return out;
}"""


def _landmarks(page: Any) -> dict[str, Any]:
    """Image landmarks once Cornerstone3D has drawn the slice (a frame may still be pending)."""
    result: dict[str, Any] = {}
    for _ in range(25):
        result = page.evaluate(IMAGE_LANDMARKS_JS)
        if result["bone"] and result["aorta"] and result["bone"]["n"] > 50 and result["aorta"]["n"] > 50:
            return result
        page.wait_for_timeout(200)
    raise AssertionError(f"no vertebra / aorta in the axial image: {result}")


def _aligned(result: dict[str, Any]) -> bool:
    inside = result["inside"]
    return max(result["rects"]) <= 2 and inside is not None and inside > 200 and result["corner"] < 30


def _assert_aligned(page: Any, bright_value: int) -> None:
    # Cornerstone3D draws on an animation frame: on a busy machine the new frame can take a while.
    result: dict[str, Any] = {}
    for _ in range(25):
        result = page.evaluate(ALIGNMENT_JS, [bright_value])
        if _aligned(result):
            return
        page.wait_for_timeout(200)
    raise AssertionError(f"overlay and image disagree: {result}")


def _shot(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"))


def _hex_rgb(color: str) -> list[int]:
    color = color.lstrip("#")
    return [int(color[i : i + 2], 16) for i in (0, 2, 4)]


def _wait_job_finished(page: Any, previous_revision: int | None) -> None:
    """Until a job has ended and the viewer shows a revision other than ``previous_revision``."""
    page.wait_for_function(
        """(previous) => {
          const v = window.proplabelViewer;
          const status = v.live.job && v.live.job.status;
          if (status === 'failed') throw new Error('propagation failed: ' + document.querySelector('.status').textContent);
          return status === 'done' && v.revision !== previous && v.revision === v.live.currentRevision;
        }""",
        arg=previous_revision,
        timeout=JOB_TIMEOUT_MS,
    )


def test_annotator_flow(live_embedded_server: Any, browser: Any, artifacts: Path) -> None:
    server = live_embedded_server
    page = browser.new_page(viewport={"width": 1400, "height": 850})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        # --- log in, case list -------------------------------------------------------------------------------
        page.goto(f"{server.base_url}/accounts/login/")
        page.fill("input[name=username]", server.username)
        page.fill("input[name=password]", server.password)
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_selector("tr.case-row", timeout=20_000)
        _shot(page, artifacts, "01-case-list")
        case_id = int(page.get_attribute("tr.case-row", "data-case"))

        # --- open the demo CT with a fresh page load, so the timings include the whole app start ------------
        page.goto(f"{server.base_url}/app/cases/{case_id}")
        page.wait_for_function("performance.getEntriesByName('volume-ready').length > 0", timeout=30_000)
        timings = page.evaluate(
            """() => {
              const m = (name) => performance.getEntriesByName(name)[0];
              return {
                first_slice_ms: m('first-slice').duration,
                all_slices_ms: m('all-slices').duration,
                first_slice_since_navigation_ms: m('first-slice-painted').startTime,
                all_slices_since_navigation_ms: m('volume-ready').startTime,
              };
            }"""
        )
        print(
            "\nopen demo CT: first slice painted {first_slice_ms:.0f} ms, all slices scrollable {all_slices_ms:.0f} ms"
            " after the viewer started ({first_slice_since_navigation_ms:.0f} / {all_slices_since_navigation_ms:.0f}"
            " ms since navigation)".format(**timings)
        )
        assert timings["first_slice_ms"] <= FIRST_SLICE_BROKEN_MS
        assert timings["all_slices_ms"] <= ALL_SLICES_BROKEN_MS
        _shot(page, artifacts, "02-case-open")
        bone = page.evaluate("() => window.proplabelViewer.classes.at(-1).value")  # vertebrae: bright bone
        _assert_aligned(page, bone)
        # Radiological display of the phantom (stored LPS-like: y -> posterior, x -> patient left): the
        # vertebra is at the bottom of the axial image and the aorta (patient left of it) on its screen right.
        marks = _landmarks(page)
        assert marks["bone"]["y"] > 0.6 and marks["aorta"]["x"] > marks["bone"]["x"], marks
        assert page.text_content(".pane-axial .orient-top") == "A"
        assert page.text_content(".pane-axial .orient-left") == "R"
        assert "Read-only" not in (page.text_content(".banner") or "") or not page.is_visible(".banner")

        # --- window/level: a preset, then a right-drag; the image itself must change -------------------------
        grey_before = page.evaluate(MEAN_GREY_JS)
        page.select_option(".wl-preset", "lung")
        page.wait_for_function("document.querySelector('.wl-readout').textContent === 'W 1500 L -600'")
        # The image itself changes (waits for Cornerstone3D's next frame).
        page.wait_for_function(
            f"(before) => Math.abs(({MEAN_GREY_JS})() - before) > 5", arg=grey_before, timeout=5000
        )
        box = page.locator('canvas.overlay[data-plane="axial"]').bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx, cy)
        page.mouse.down(button="right")
        page.mouse.move(cx - 120, cy + 40, steps=5)
        page.mouse.up(button="right")
        readout = page.text_content(".wl-readout")
        assert readout != "W 1500 L -600", readout
        _shot(page, artifacts, "03-window-level")
        page.select_option(".wl-preset", "soft")

        # --- zoom (Ctrl+wheel) and pan (Shift+drag): the overlay must stay on the image -------------------
        fitted_view = page.evaluate(AXIAL_EDGES_JS)
        _zoom_in_then_wait(page, cx, cy, fitted_view)
        page.keyboard.down("Control")
        for _ in range(2):
            page.mouse.wheel(0, -100)
        page.keyboard.up("Control")
        page.keyboard.down("Shift")
        page.mouse.down()
        page.mouse.move(cx + 60, cy - 40, steps=4)
        page.mouse.up()
        page.keyboard.up("Shift")
        _assert_aligned(page, bone)
        _shot(page, artifacts, "03b-zoom-pan")
        _reset_view_and_wait(page, fitted_view)

        # --- box prompt around the liver on the middle slice -------------------------------------------------
        viewer = page.evaluate(
            "() => { const v = window.proplabelViewer; return {shape: v.shape, revision: v.revision,"
            " classes: v.classes, z: v.renderer.sliceIndex('axial')}; }"
        )
        liver = viewer["classes"][0]
        z = viewer["z"]
        bounds = page.evaluate(LABEL_BOX_JS, [liver["value"], z])
        assert bounds, "the demo case should show the liver on its middle slice"
        page.keyboard.press("1")  # active label = first class
        page.keyboard.press("b")  # box tool
        start = page.evaluate(VOXEL_TO_PAGE_JS, [z, bounds["y0"] - 2, bounds["x0"] - 2])
        end = page.evaluate(VOXEL_TO_PAGE_JS, [z, bounds["y1"] + 2, bounds["x1"] + 2])
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(*end, steps=8)
        _shot(page, artifacts, "04-box-drawn")
        page.mouse.up()
        # NEEDS LIVE PROPAGATION (issue 5) from here on.
        # In flight: slices are painted as they stream in, with progress per direction.
        page.wait_for_function(
            "() => { const v = window.proplabelViewer; return v.live.active && v.live.seen.size >= 4; }",
            timeout=JOB_TIMEOUT_MS,
        )
        assert page.is_visible(".job-panel")
        assert "↑" in page.text_content(".job-text")
        _shot(page, artifacts, "04b-streaming")
        _wait_job_finished(page, viewer["revision"])
        live = page.evaluate(
            "() => { const v = window.proplabelViewer; return {slices: v.live.seen.size, up: v.live.doneUp,"
            " down: v.live.doneDown, revision: v.revision, job: v.live.job.id}; }"
        )
        first_slice_ms = page.evaluate(
            "() => performance.getEntriesByName('prompt-to-first-slice')[0]?.duration"
        )
        print(
            f"box prompt: {live['slices']} slices streamed (up {live['up']}, down {live['down']}), revision"
            f" {live['revision']}; prompt -> first slice painted {first_slice_ms:.0f} ms"
            f" (includes the test worker's {SLICE_DELAY * 1000:.0f} ms hold per slice)"
        )
        assert live["slices"] >= 10
        # The overlay shows the label on >= 10 axial slices of the new revision (pixel check on the canvas).
        rgb = _hex_rgb(liver["color"])
        painted = page.evaluate(
            """([rgb, js]) => {
              const count = eval(js);
              const v = window.proplabelViewer;
              let slices = 0;
              for (let z = 0; z < v.shape[0]; z++) {
                v.renderer.setSlice('axial', z);
                v.drawNow();
                if (count(['axial', rgb]) > 20) slices++;
              }
              v.renderer.setSlice('axial', v.cursor[0]);
              v.renderer.render();
              v.drawNow();
              return slices;
            }""",
            [rgb, COUNT_COLOUR_JS],
        )
        print(f"overlay drawn on {painted} axial slices")
        assert painted >= 10
        assert page.evaluate(COUNT_COLOUR_JS, ["axial", rgb]) > 100
        _shot(page, artifacts, "05-propagated")
        after_box = live["revision"]

        # --- negative correction click inside the liver, then re-propagate from this slice -------------------
        page.keyboard.press("n")
        inside = page.evaluate(VOXEL_TO_PAGE_JS, [z, (bounds["y0"] + bounds["y1"]) // 2, bounds["x0"] + 3])
        page.mouse.click(*inside)
        _wait_job_finished(page, after_box)
        after_negative = page.evaluate("() => window.proplabelViewer.revision")
        # A second click on that slice carries the first one too: the corrections network reads them together.
        page.keyboard.press("p")
        centre = page.evaluate(
            VOXEL_TO_PAGE_JS, [z, (bounds["y0"] + bounds["y1"]) // 2, (bounds["x0"] + bounds["x1"]) // 2]
        )
        with page.expect_request(lambda request: request.url.endswith("/refinements/")) as refinement:
            page.mouse.click(*centre)
        sent = refinement.value.post_data_json["clicks"]
        assert [(click["z"], click["positive"]) for click in sent] == [(z, False), (z, True)]
        _wait_job_finished(page, after_negative)
        after_click = page.evaluate("() => window.proplabelViewer.revision")
        _shot(page, artifacts, "06-correction-clicks")
        page.keyboard.press("Shift+Enter")
        _wait_job_finished(page, after_click)
        after_repropagate = page.evaluate("() => window.proplabelViewer.revision")
        _shot(page, artifacts, "07-repropagated")

        # --- undo / redo move along the revision history -----------------------------------------------------
        page.keyboard.press("Control+z")
        page.wait_for_function(
            "(r) => window.proplabelViewer.revision !== r", arg=after_repropagate, timeout=20_000
        )
        undone = page.evaluate("() => window.proplabelViewer.revision")
        assert undone == after_click
        _shot(page, artifacts, "08-undo")
        page.keyboard.press("Control+Shift+z")
        page.wait_for_function(
            "(r) => window.proplabelViewer.revision === r", arg=after_repropagate, timeout=20_000
        )
        _shot(page, artifacts, "09-redo")

        # --- a dropped WebSocket reconnects by itself, says so in words, and catches up via `state` ---------
        page.evaluate("() => window.proplabelViewer.socket.reconnect()")
        page.wait_for_function(
            "() => document.querySelector('.status').textContent.startsWith('Live connection lost')",
            timeout=5000,
        )
        page.wait_for_function(
            "() => document.querySelector('.status').textContent === 'Live connection restored.'",
            timeout=20_000,
        )
        assert page.evaluate("() => window.proplabelViewer.revision") == after_repropagate

        # --- sketch-mask prompt for the second label: paint on one slice, Enter ---------------------------------
        spleen = viewer["classes"][1]
        spleen_box = page.evaluate(LABEL_BOX_JS, [spleen["value"], z])
        assert spleen_box, "the demo case should show the spleen on its middle slice"
        page.keyboard.press("2")
        page.keyboard.press("m")
        cy_ = (spleen_box["y0"] + spleen_box["y1"]) // 2
        page.mouse.move(*page.evaluate(VOXEL_TO_PAGE_JS, [z, cy_, spleen_box["x0"] + 2]))
        page.mouse.down()
        page.mouse.move(*page.evaluate(VOXEL_TO_PAGE_JS, [z, cy_, spleen_box["x1"] - 2]), steps=10)
        page.mouse.up()
        _shot(page, artifacts, "10-sketch")
        page.keyboard.press("Enter")
        _wait_job_finished(page, after_repropagate)
        after_sketch = page.evaluate("() => window.proplabelViewer.revision")

        # --- brush stroke, then Ctrl+S saves it as a revision ----------------------------------------------
        page.keyboard.press("d")
        page.mouse.move(*page.evaluate(VOXEL_TO_PAGE_JS, [z, spleen_box["y0"] - 4, spleen_box["x0"]]))
        page.mouse.down()
        page.mouse.move(
            *page.evaluate(VOXEL_TO_PAGE_JS, [z, spleen_box["y0"] - 4, spleen_box["x1"]]), steps=6
        )
        page.mouse.up()
        assert page.text_content(".btn-save") == "Save*"
        page.keyboard.press("Control+s")
        page.wait_for_function(
            "(r) => window.proplabelViewer.revision !== r", arg=after_sketch, timeout=20_000
        )
        page.wait_for_function(
            "document.querySelector('.status').textContent.startsWith('Saved as revision')"
        )
        _shot(page, artifacts, "11-brush-saved")

        # --- cancel a running propagation: the saved revision stays ---------------------------------------
        before_cancel = page.evaluate("() => window.proplabelViewer.revision")
        page.keyboard.press("Shift+Enter")  # re-propagate the active label from this slice
        page.wait_for_function(
            "() => { const v = window.proplabelViewer; return v.live.active && v.live.seen.size >= 2; }",
            timeout=JOB_TIMEOUT_MS,
        )
        page.click(".btn-cancel")
        page.wait_for_function(
            "() => window.proplabelViewer.live.job.status === 'cancelled'", timeout=JOB_TIMEOUT_MS
        )
        assert "cancelled" in (page.text_content(".status") or "")
        assert page.evaluate("() => window.proplabelViewer.revision") == before_cancel
        _shot(page, artifacts, "11b-cancelled")

        # --- submit for review; afterwards the annotator is read-only and told so in words -----------------
        page.click("button.action-submit")
        page.wait_for_function(
            "document.querySelector('.status-badge').textContent === 'Submitted'", timeout=20_000
        )
        page.wait_for_function(
            "document.querySelector('.status').textContent.startsWith('Submit for review: done')"
        )
        assert page.is_visible(".banner")
        page.keyboard.press("b")
        assert "Read-only" in (page.text_content(".status") or "")
        assert "status-error" in (page.get_attribute(".status", "class") or "")
        _shot(page, artifacts, "12-submitted")
        _assert_aligned(page, bone)
        assert not errors, errors
    finally:
        _shot(page, artifacts, "99-last")
        page.close()


def test_reviewer_requests_changes(live_embedded_server: Any, browser: Any, artifacts: Path) -> None:
    """Reviewer mode on the case the annotator submitted above: read-only, start review, request changes."""
    server = live_embedded_server
    page = browser.new_page(viewport={"width": 1400, "height": 850})
    try:
        page.goto(f"{server.base_url}/accounts/login/")
        page.fill("input[name=username]", server.reviewer)
        page.fill("input[name=password]", server.password)
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_selector("tr.case-row", timeout=20_000)
        row = page.locator("tr.case-row", has=page.locator(".badge.status-submitted"))
        if row.count() == 0:
            pytest.skip("no submitted case: the annotator flow above did not reach its submit step")
        row.first.click()
        page.wait_for_function("performance.getEntriesByName('volume-ready').length > 0", timeout=30_000)
        assert "Review mode: read-only" in (page.text_content(".banner") or "")
        _assert_aligned(page, page.evaluate("() => window.proplabelViewer.classes.at(-1).value"))
        assert page.is_disabled("button.tool-box")
        _shot(page, artifacts, "20-review-readonly")
        page.click("button.action-start_review")
        page.wait_for_function(
            "document.querySelector('.status-badge').textContent === 'In review'", timeout=20_000
        )
        # The badge can flip first through the case's WebSocket event; the action's own reply comes after it.
        page.wait_for_function(
            "document.querySelector('.status').textContent.includes('Start review: done')", timeout=20_000
        )
        page.click("button.action-request_changes")  # without a comment: refused in words
        page.wait_for_function(
            "document.querySelector('.status').textContent.includes('comment')", timeout=5000
        )
        page.fill("textarea.comment", "The liver leaks into the body wall on this slice.")
        page.click("button.action-request_changes")
        page.wait_for_function(
            "document.querySelector('.status-badge').textContent === 'Changes requested'", timeout=20_000
        )
        page.wait_for_selector(".comment-item", timeout=10_000)
        assert "leaks" in page.text_content(".comments")
        _shot(page, artifacts, "21-changes-requested")
    finally:
        page.close()


def test_radiological_orientation_of_a_ras_volume(
    live_embedded_server: Any, browser: Any, artifacts: Path
) -> None:
    """A volume stored RAS (most NIfTI) shows anterior at the top and the patient's right on the screen's left.

    The phantom's voxels are served with its affine's y and x columns negated, i.e. the same array declared
    RAS-stored (y -> anterior, x -> patient right): the vertebra (high y) is now anterior, so it must be drawn
    at the top of the axial image, and the aorta (high x, now patient right of the vertebra) on its left. The
    overlay, the cursor readout and clicks must follow the flipped image and keep canonical voxel indices.
    """
    server = live_embedded_server
    page = browser.new_page(viewport={"width": 1400, "height": 850})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def as_ras(route: Any) -> None:
        response = route.fetch()
        meta = response.json()
        for row in meta["affine"][:3]:
            row[1], row[2] = -row[1], -row[2]
        route.fulfill(response=response, json=meta)

    try:
        page.route("**/api/cases/*/volume/", as_ras)
        page.goto(f"{server.base_url}/accounts/login/")
        page.fill("input[name=username]", server.username)
        page.fill("input[name=password]", server.password)
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_selector("tr.case-row", timeout=20_000)
        case_id = int(page.get_attribute("tr.case-row", "data-case"))
        page.goto(f"{server.base_url}/app/cases/{case_id}")
        page.wait_for_function("performance.getEntriesByName('volume-ready').length > 0", timeout=30_000)
        assert page.evaluate("() => window.proplabelViewer.meta.affine[1][1]") > 0  # the RAS affine is in use
        _shot(page, artifacts, "30-ras-volume")
        bone = page.evaluate("() => window.proplabelViewer.classes.at(-1).value")
        _assert_aligned(page, bone)  # overlay on the image, also when the image is flipped

        # The image itself: the most anterior rows at the top, the patient's right on the screen's left.
        marks = _landmarks(page)
        assert marks["bone"]["y"] < 0.4 and marks["aorta"]["x"] < marks["bone"]["x"], marks
        mapping = page.evaluate(AXIAL_EDGES_JS)
        assert mapping["anterior"] < mapping["posterior"] and mapping["right"] < mapping["left"], mapping
        # Zoom, then reset the view (R): the orientation survives Cornerstone3D's camera reset.
        rect = page.locator('canvas.overlay[data-plane="axial"]').bounding_box()
        _zoom_in_then_wait(page, rect["x"] + rect["width"] / 2, rect["y"] + rect["height"] / 2, mapping)
        _reset_view_and_wait(page, mapping)
        _assert_aligned(page, bone)
        letters = page.evaluate(
            """() => Object.fromEntries(['axial', 'coronal', 'sagittal'].map((p) => [p,
              ['top', 'bottom', 'left', 'right'].map((s) => document.querySelector(`.pane-${p} .orient-${s}`).textContent).join('')]))"""
        )
        assert letters == {"axial": "APRL", "coronal": "SIRL", "sagittal": "SIAP"}, letters

        # Under the mouse: the bright vertebra in the image is the vertebra label, read out in canonical indices.
        px, py = marks["bone"]["px"]
        page.mouse.move(rect["x"] + px / marks["scale"], rect["y"] + py / marks["scale"])
        page.wait_for_function(
            "document.querySelector('.cursor-info').textContent.includes('vertebrae')", timeout=5000
        )
        readout = page.text_content(".cursor-info") or ""
        page.mouse.down()  # navigate tool: the crosshair goes to that voxel
        page.mouse.up()
        cursor = page.evaluate("() => window.proplabelViewer.cursor")
        assert f"z {cursor[0]} y {cursor[1]} x {cursor[2]}" in readout, (readout, cursor)
        shape = page.evaluate("() => window.proplabelViewer.shape")
        assert cursor[1] > shape[1] * 0.6, (
            cursor
        )  # the vertebra's canonical row index stays high (posterior in the file)
        label = page.evaluate(
            "([z, y, x]) => { const v = window.proplabelViewer; return v.labelmap.labels[(z * v.shape[1] + y) * v.shape[2] + x]; }",
            cursor,
        )
        assert label == bone
        _shot(page, artifacts, "31-ras-volume-cursor")
        assert not errors, errors
    finally:
        page.close()
