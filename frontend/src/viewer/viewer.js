/**
 * The case viewer: three linked planes (Cornerstone3D images + our annotation overlay), the label panel,
 * prompt / correction / brush tools with shortcuts, live propagation over the WebSocket, undo/redo through
 * revisions, save, and the review workflow. All server changes go through the REST API (api.js).
 */
import { api, ApiError, downloadBinary, DTYPES } from '../api.js';
import { boxFromCorners, clampVoxel, discPixels, planeSize } from '../coords.js';
import { LiveState } from '../live.js';
import { encodeLabel } from '../maskcodec.js';
import { boundsFromMarkers, correctionClicks, editedSlicesByLabel } from '../prompts.js';
import { applyStroke, StrokeRecorder, UndoStack } from '../undo.js';
import { defaultWindow, dragWindow, PRESETS } from '../windowing.js';
import { CaseSocket, socketUrl } from '../ws.js';
import { Labelmap, labelVolumesMl } from './labelmap.js';
import { Overlay, PLANE_COLORS } from './overlay.js';
import { ImageRenderer } from './renderer.js';
import { el, escapeHtml } from '../dom.js';

/** @typedef {import('../coords.js').PlaneName} PlaneName */
/** @typedef {import('../coords.js').Vec3} Vec3 */

const PLANE_NAMES = /** @type {PlaneName[]} */ (['axial', 'coronal', 'sagittal']);

/** Tools: id -> [label, shortcut, needs edit rights, axial only] */
const TOOLS = {
  navigate: ['Navigate', 'V', false, false],
  box: ['Box prompt', 'B', true, true],
  sketch: ['Sketch mask', 'M', true, true],
  click: ['Click prompt', 'C', true, true],
  positive: ['+ correction', 'P', true, false],
  negative: ['− correction', 'N', true, false],
  brush: ['Brush', 'D', true, true],
  eraser: ['Eraser', 'E', true, true],
};

const STATUS_LABELS = {
  new: 'New',
  in_progress: 'In progress',
  submitted: 'Submitted',
  in_review: 'In review',
  changes_requested: 'Changes requested',
  approved: 'Approved',
};

const ACTION_LABELS = {
  submit: 'Submit for review',
  start_review: 'Start review',
  approve: 'Approve',
  request_changes: 'Request changes',
  reopen: 'Reopen',
};

export class Viewer {
  /**
   * @param {HTMLElement} root
   * @param {number} caseId
   * @param {{navigate: (path: string) => void}} app
   */
  constructor(root, caseId, app) {
    this.root = root;
    this.caseId = caseId;
    this.app = app;
    this.tool = 'navigate';
    this.brushRadius = 3;
    /** @type {Vec3} */
    this.cursor = [0, 0, 0];
    /** @type {Vec3 | null} voxel under the mouse */
    this.hover = null;
    this.window = { width: 400, level: 40 };
    /** @type {Map<number, {visible: boolean, opacity: number}>} */
    this.display = new Map();
    /** @type {any[]} */
    this.classes = [];
    this.activeLabel = null;
    this.markers = { top: /** @type {number|null} */ (null), bottom: /** @type {number|null} */ (null) };
    /** @type {any} */
    this.lastPrompt = null;
    /** @type {{z: number, y: number, x: number, positive: boolean}[]} */
    this.clicks = [];
    /** Correction clicks since the active object's prompt: each correction request repeats its slice's. */
    /** @type {{z: number, y: number, x: number, positive: boolean}[]} */
    this.corrections = [];
    /** @type {Uint8Array | null} */
    this.sketch = null;
    /** @type {number | null} */
    this.sketchZ = null;
    this.undo = new UndoStack();
    this.live = new LiveState();
    /** @type {number | null} */
    this.revision = null;
    this.revisionSeq = 0;
    this.labelsVisible = true;
    this.editable = false;
    this.workflow = { status: '', allowed_actions: [], may_edit_labels: false, relations: [] };
    this.drawQueued = false;
    this.saving = false;
    this.ready = false;
    this.destroyed = false;
    /** @type {CaseSocket | null} */
    this.socket = null;
    this.onKey = this.onKey.bind(this);
    this.onResize = () => {
      if (!this.ready) return;
      this.renderer.resize();
      this.renderer.render();
      this.scheduleDraw();
    };
  }

  // --- layout ------------------------------------------------------------------------------------------

  mount() {
    this.root.innerHTML = `
      <div class="viewer">
        <div class="toolbar">
          <a class="back" href="/app/" data-link>← Cases</a>
          <span class="case-name"></span>
          <span class="badge status-badge"></span>
          <span class="sep"></span>
          <span class="tools"></span>
          <label class="brush-size" title="Brush size: [ and ]">size <input type="range" min="0" max="20" value="3" class="brush-range"><span class="brush-value">3</span></label>
          <span class="sep"></span>
          <select class="wl-preset" title="Window/level preset (or right-drag / Ctrl+drag)">
            <option value="">W/L preset…</option>
            ${Object.entries(PRESETS).map(([k, p]) => `<option value="${k}">${p.label} (W${p.width} L${p.level})</option>`).join('')}
            <option value="auto">Auto (percentiles)</option>
          </select>
          <span class="wl-readout"></span>
          <span class="sep"></span>
          <button class="btn-top" title="Mark the current axial slice as the top boundary (T)">Top (T)</button>
          <button class="btn-bottom" title="Mark the current axial slice as the bottom boundary (Y)">Bottom (Y)</button>
          <button class="btn-propagate primary" title="Propagate the prompt (Enter)">Propagate ⏎</button>
          <button class="btn-repropagate" title="Re-propagate the active label from this axial slice (Shift+Enter)">Re-propagate from slice</button>
          <span class="sep"></span>
          <button class="btn-undo" title="Undo (Ctrl+Z)">Undo</button>
          <button class="btn-redo" title="Redo (Ctrl+Shift+Z)">Redo</button>
          <button class="btn-save" title="Save brush edits as a revision (Ctrl+S)">Save</button>
        </div>
        <div class="banner" hidden></div>
        <div class="main">
          <div class="views">
            ${PLANE_NAMES.map((p) => `
              <div class="pane pane-${p}" data-plane="${p}">
                <div class="cs"></div>
                <canvas class="overlay" data-plane="${p}" tabindex="-1"></canvas>
                <div class="pane-label" style="color:${PLANE_COLORS[p]}"><span>${p}</span> <span class="slice-label"></span> <span class="anatomy-note"></span></div>
                ${['top', 'bottom', 'left', 'right'].map((side) => `<div class="orient orient-${side}" aria-hidden="true"></div>`).join('')}
              </div>`).join('')}
            <div class="loading">
              <div class="loading-text">Loading case…</div>
              <div class="progress"><div class="progress-bar"></div></div>
            </div>
          </div>
          <aside class="side">
            <section class="panel">
              <h3>Labels</h3>
              <div class="labels"></div>
              <label class="small"><input type="checkbox" class="all-visible" checked> show segmentation</label>
            </section>
            <section class="panel job-panel" hidden>
              <h3>Propagation</h3>
              <div class="job-text"></div>
              <div class="progress"><div class="progress-bar job-bar"></div></div>
              <button class="btn-cancel">Cancel propagation</button>
            </section>
            <section class="panel review-panel">
              <h3>Workflow</h3>
              <div class="workflow-text"></div>
              <div class="comments"></div>
              <textarea class="comment" rows="3" placeholder="Comment (required to request changes)"></textarea>
              <div class="actions"></div>
            </section>
            <section class="panel help">
              <h3>Keys</h3>
              <div class="small">Scroll: wheel / ↑↓ · Zoom: Ctrl+wheel · Pan: Shift+drag or middle drag · W/L: right drag or Ctrl+drag · Reset view: R ·
              Labels: 1–9 · Brush size: [ ] · Esc: stop tool</div>
            </section>
          </aside>
        </div>
        <div class="statusbar">
          <span class="status" role="status" aria-live="polite"></span>
          <span class="cursor-info"></span>
          <span class="conn"></span>
        </div>
      </div>`;
    const $ = (/** @type {string} */ sel) => /** @type {HTMLElement} */ (this.root.querySelector(sel));
    this.$ = $;
    const tools = $('.tools');
    for (const [id, [label, key]] of Object.entries(TOOLS)) {
      tools.append(el('button', { class: `tool tool-${id}`, 'data-tool': id, title: `${label} (${key})` }, `${label} (${key})`));
    }
    tools.addEventListener('click', (e) => {
      const button = /** @type {HTMLElement} */ (e.target).closest('[data-tool]');
      if (button) this.setTool(/** @type {string} */ (button.getAttribute('data-tool')));
    });
    $('.brush-range').addEventListener('input', (e) => this.setBrush(Number(/** @type {HTMLInputElement} */ (e.target).value)));
    $('.wl-preset').addEventListener('change', (e) => {
      const value = /** @type {HTMLSelectElement} */ (e.target).value;
      if (value) this.applyPreset(value);
      /** @type {HTMLSelectElement} */ (e.target).value = '';
    });
    $('.btn-top').addEventListener('click', () => this.setMarker('top'));
    $('.btn-bottom').addEventListener('click', () => this.setMarker('bottom'));
    $('.btn-propagate').addEventListener('click', () => this.propagateCurrent());
    $('.btn-repropagate').addEventListener('click', () => this.repropagateFromSlice());
    $('.btn-undo').addEventListener('click', () => this.undoAction());
    $('.btn-redo').addEventListener('click', () => this.redoAction());
    $('.btn-save').addEventListener('click', () => this.save());
    $('.btn-cancel').addEventListener('click', () => this.cancelJob());
    $('.all-visible').addEventListener('change', (e) => {
      this.labelsVisible = /** @type {HTMLInputElement} */ (e.target).checked;
      this.scheduleDraw();
    });
    this.root.querySelector('.back')?.addEventListener('click', (e) => {
      e.preventDefault();
      this.app.navigate('/app/');
    });
    window.addEventListener('keydown', this.onKey);
    window.addEventListener('resize', this.onResize);
    // The views also change size without a window resize (banner shown, side panel grows): keep
    // Cornerstone's canvases and the overlay the same size, or the overlay drifts off the image.
    this.resizeObserver = new ResizeObserver(() => this.onResize());
    this.resizeObserver.observe(this.$('.views'));
    /** @type {Record<PlaneName, Overlay>} */
    this.overlays = /** @type {any} */ ({});
    for (const plane of PLANE_NAMES) {
      const canvas = /** @type {HTMLCanvasElement} */ (this.root.querySelector(`canvas.overlay[data-plane="${plane}"]`));
      this.overlays[plane] = new Overlay(canvas, plane);
      this.bindPointer(canvas, plane);
    }
    this.updateToolbar();
  }

  destroy() {
    this.destroyed = true;
    window.removeEventListener('keydown', this.onKey);
    window.removeEventListener('resize', this.onResize);
    this.resizeObserver?.disconnect();
    this.socket?.close();
    this.renderer?.destroy();
  }

  // --- status ------------------------------------------------------------------------------------------

  /**
   * Show a message in the status bar (errors stay visible and are announced).
   * @param {string} text
   * @param {'info'|'error'|'ok'} [level]
   */
  setStatus(text, level = 'info') {
    const status = this.$('.status');
    status.textContent = text;
    status.className = `status status-${level}`;
    status.setAttribute('role', level === 'error' ? 'alert' : 'status');
  }

  /** @param {unknown} error */
  showError(error) {
    const message = error instanceof ApiError ? error.message : `Something went wrong: ${/** @type {Error} */ (error)?.message || error}`;
    this.setStatus(message, 'error');
  }

  // --- loading -----------------------------------------------------------------------------------------

  async open() {
    performance.mark('case-open-start');
    this.mount();
    const bar = /** @type {HTMLElement} */ (this.$('.loading .progress-bar'));
    const loadingText = this.$('.loading-text');
    const elements = /** @type {Record<PlaneName, HTMLDivElement>} */ ({});
    for (const plane of PLANE_NAMES) elements[plane] = /** @type {HTMLDivElement} */ (this.root.querySelector(`.pane-${plane} .cs`));
    this.renderer = new ImageRenderer(elements);
    try {
      const prepared = this.renderer.prepare(`engine_case_${this.caseId}`);
      const [kase, meta, workflow] = await Promise.all([
        api(`/api/cases/${this.caseId}/`),
        api(`/api/cases/${this.caseId}/volume/`),
        api(`/api/cases/${this.caseId}/transitions/`),
      ]);
      performance.mark('case-metadata');
      this.case = kase;
      this.meta = meta;
      this.workflow = workflow;
      this.$('.case-name').textContent = kase.name;
      const dtype = DTYPES[/** @type {keyof typeof DTYPES} */ (meta.dtype)];
      if (!dtype) throw new Error(`This viewer cannot show voxels of type ${meta.dtype}.`);
      /** @type {Vec3} */
      this.shape = /** @type {Vec3} */ (meta.shape);
      this.spacing = /** @type {Vec3} */ (meta.spacing);
      const voxelCount = this.shape[0] * this.shape[1] * this.shape[2];
      loadingText.textContent = `Downloading image (${(voxelCount * dtype.bytes / 1e6).toFixed(1)} MB)…`;
      const classesPromise = api(`/api/projects/${kase.project}/labels/`);
      const buffer = await downloadBinary(meta.voxels_url, voxelCount * dtype.bytes, (f) => {
        bar.style.width = `${Math.round(f * 100)}%`;
      });
      if (this.destroyed) return;
      performance.mark('voxels-downloaded');
      const voxels = new dtype.array(buffer);
      this.voxels = voxels;
      this.classes = (await classesPromise).sort((/** @type {any} */ a, /** @type {any} */ b) => a.value - b.value);
      for (const c of this.classes) this.display.set(c.value, { visible: true, opacity: 0.45 });
      this.activeLabel = this.classes[0] || null;
      this.labelmap = new Labelmap(this.shape);
      this.labelmap.locked = new Set(kase.locked_labels || []);
      this.labelmap.setColors(this.classes, this.display);
      loadingText.textContent = 'Preparing views…';
      await prepared;
      await this.renderer.load(`case_${this.caseId}_${meta.content_hash || ''}`.slice(0, 60), voxels, this.shape, this.spacing, meta.modality, meta.affine);
      this.showOrientationLabels();
      performance.mark('volume-created');
      this.ready = true; // from here on the handlers may touch the volume, labels and cameras
      this.window = defaultWindow(meta.modality, meta.stats);
      this.renderer.setWindow(this.window);
      this.cursor = /** @type {Vec3} */ (this.shape.map((n) => Math.floor(n / 2)));
      this.syncSlicesToCursor();
      const axialElement = elements.axial;
      const firstPaint = new Promise((resolve) => axialElement.addEventListener('CORNERSTONE_IMAGE_RENDERED', resolve, { once: true }));
      // Axial first: one viewport's first draw (shader compile + texture upload) is what the user waits for.
      this.renderer.render(['axial']);
      await Promise.race([firstPaint, new Promise((r) => setTimeout(r, 2000))]);
      performance.mark('first-slice-painted');
      this.renderer.render();
      performance.measure('first-slice', 'case-open-start', 'first-slice-painted');
      this.$('.loading').hidden = true;
      this.renderLabelPanel();
      this.applyWorkflow();
      this.loadComments();
      this.drawNow();
      await this.loadRevision(kase.current_revision);
      performance.mark('volume-ready');
      performance.measure('all-slices', 'case-open-start', 'volume-ready');
      this.setStatus(`Ready: ${this.shape[2]}×${this.shape[1]}×${this.shape[0]} voxels, ${this.spacing.map((s) => s.toFixed(2)).reverse().join(' × ')} mm.`);
      this.connect();
    } catch (error) {
      this.$('.loading-text').textContent = error instanceof ApiError ? error.message : `Could not open the case: ${/** @type {Error} */ (error).message}`;
      this.$('.loading').classList.add('failed');
      this.showError(error);
    }
  }

  /**
   * Load a revision's labels (null = empty) and make it current.
   * @param {number | null} revisionId
   */
  async loadRevision(revisionId) {
    const seq = ++this.revisionSeq;
    const size = this.shape[0] * this.shape[1] * this.shape[2];
    let data = new Uint8Array(size);
    if (revisionId !== null && revisionId !== undefined) {
      try {
        data = new Uint8Array(await downloadBinary(`/api/cases/${this.caseId}/revisions/${revisionId}/labels/`, size));
      } catch (error) {
        this.showError(error);
        return;
      }
    }
    if (seq !== this.revisionSeq || this.destroyed) return; // a newer load (or a save) won
    this.labelmap.setLabels(data);
    this.labelmap.clearLive();
    this.revision = revisionId ?? null;
    this.live.currentRevision = this.revision;
    if (this.undo.canUndo) {
      // Someone else changed the case while we had unsaved strokes: keep them on top of the new revision.
      for (const stroke of this.undo.done) applyStroke(this.labelmap.labels, this.labelmap.sliceSize, stroke, 'after');
      this.setStatus('The case changed on the server; your unsaved brush strokes were kept on top of the new revision.');
    }
    this.updateVolumes();
    this.updateToolbar();
    this.scheduleDraw();
  }

  connect() {
    this.socket = new CaseSocket(socketUrl(`/ws/cases/${this.caseId}/`), {
      onEvent: (event) => this.onEvent(event),
      onStatus: (status, message) => {
        const conn = this.$('.conn');
        conn.textContent = status === 'connected' ? '● live' : status === 'reconnecting' ? '○ reconnecting…' : '× offline';
        conn.className = `conn conn-${status}`;
        if (message) this.setStatus(message, status === 'closed' ? 'error' : 'info');
        else if (status === 'connected' && /Live connection lost/.test(this.$('.status').textContent || '')) this.setStatus('Live connection restored.', 'ok');
      },
    });
  }

  /** @param {any} event */
  onEvent(event) {
    for (const action of this.live.apply(event)) {
      switch (action.type) {
        case 'paint': {
          let value = action.labelValue;
          if (value === null) value = this.classes.find((c) => c.id === action.labelId)?.value ?? null;
          if (value !== null) {
            this.labelmap.paintLive(action.z, action.rle, value);
            if (!this.firstLivePaint) {
              this.firstLivePaint = true;
              performance.mark('first-live-slice');
              // Prompt request -> first streamed slice in the overlay (what the annotator feels).
              if (performance.getEntriesByName('prompt-sent').length) performance.measure('prompt-to-first-slice', 'prompt-sent', 'first-live-slice');
            }
          }
          break;
        }
        case 'reset-live':
          this.labelmap.clearLive();
          break;
        case 'load-revision':
          // Our own save announces its revisions too: save() settles the state itself.
          if (this.saving) break;
          if (action.revision !== this.revision || this.labelmap.liveValue) this.loadRevision(action.revision);
          break;
        case 'status':
          this.setStatus(action.text, action.level);
          break;
        case 'case-status':
          this.refreshWorkflow();
          break;
      }
    }
    this.updateJobPanel();
    this.scheduleDraw();
  }

  // --- drawing -----------------------------------------------------------------------------------------

  scheduleDraw() {
    if (this.drawQueued) return;
    this.drawQueued = true;
    requestAnimationFrame(() => {
      this.drawQueued = false;
      this.drawNow();
    });
  }

  drawNow() {
    if (!this.ready || this.destroyed) return;
    for (const plane of PLANE_NAMES) {
      const index = this.renderer.sliceIndex(plane);
      const { count } = planeSize(plane, this.shape);
      /** @type {HTMLElement} */ (this.root.querySelector(`.pane-${plane} .slice-label`)).textContent = `${index + 1} / ${count}`;
      this.overlays[plane].draw({
        renderer: this.renderer,
        labelmap: this.labelmap,
        index,
        cursor: this.cursor,
        shape: this.shape,
        preview: this.preview,
        markers: this.markers,
        clicks: this.clicks,
        brush: this.brushPreview || null,
        sketch: this.sketch,
        sketchZ: this.sketchZ,
        labelsVisible: this.labelsVisible,
      });
    }
    const { width, level } = this.window;
    this.$('.wl-readout').textContent = `W ${Math.round(width)} L ${Math.round(level)}`;
  }

  /** Patient directions (R/L, A/P, S/I) at the edges of each view, from the radiological layout. */
  showOrientationLabels() {
    for (const plane of PLANE_NAMES) {
      const pane = /** @type {HTMLElement} */ (this.root.querySelector(`.pane-${plane}`));
      const view = this.renderer.views[plane];
      for (const side of /** @type {const} */ (['top', 'bottom', 'left', 'right'])) {
        /** @type {HTMLElement} */ (pane.querySelector(`.orient-${side}`)).textContent = view.labels[side];
      }
      // A plane is the slices of one index axis; say so when the volume was stored in another orientation.
      /** @type {HTMLElement} */ (pane.querySelector('.anatomy-note')).textContent = view.anatomy === plane ? '' : `(${view.anatomy} image)`;
    }
  }

  /** Move the three planes so they pass through the cursor voxel. */
  syncSlicesToCursor() {
    this.renderer.setSlice('axial', this.cursor[0]);
    this.renderer.setSlice('coronal', this.cursor[1]);
    this.renderer.setSlice('sagittal', this.cursor[2]);
    this.renderer.render();
  }

  // --- pointer -----------------------------------------------------------------------------------------

  /**
   * @param {HTMLCanvasElement} canvas
   * @param {PlaneName} plane
   */
  bindPointer(canvas, plane) {
    /** @type {any} */
    let drag = null;
    const point = (/** @type {PointerEvent | WheelEvent} */ e) => {
      const rect = canvas.getBoundingClientRect();
      return /** @type {[number, number]} */ ([e.clientX - rect.left, e.clientY - rect.top]);
    };
    canvas.addEventListener('contextmenu', (e) => e.preventDefault());
    canvas.addEventListener('wheel', (e) => {
      if (!this.ready) return;
      e.preventDefault();
      if (e.ctrlKey || e.metaKey) {
        this.renderer.zoom(plane, e.deltaY < 0 ? 1.15 : 1 / 1.15, point(e));
      } else {
        this.scroll(plane, e.deltaY > 0 ? 1 : -1);
      }
      this.renderer.render();
      this.scheduleDraw();
    }, { passive: false });
    canvas.addEventListener('pointerdown', (e) => {
      if (!this.ready) return;
      canvas.setPointerCapture(e.pointerId);
      const p = point(e);
      const voxel = this.voxelAt(plane, p);
      if (e.button === 2 || (e.button === 0 && (e.ctrlKey || e.metaKey))) {
        drag = { kind: 'window', start: p, window: { ...this.window } };
      } else if (e.button === 1 || (e.button === 0 && e.shiftKey)) {
        drag = { kind: 'pan', last: p };
      } else if (e.button === 0) {
        drag = this.toolDown(plane, voxel, p);
      }
    });
    canvas.addEventListener('pointermove', (e) => {
      if (!this.ready) return;
      const p = point(e);
      const voxel = this.voxelAt(plane, p);
      this.hover = voxel.inside ? voxel.zyx : null;
      this.updateCursorInfo(plane);
      this.brushPreview = (this.tool === 'brush' || this.tool === 'eraser' || this.tool === 'sketch') && plane === 'axial' && voxel.inside
        ? { row: voxel.zyx[1], col: voxel.zyx[2], radius: this.brushRadius } : null;
      if (drag?.kind === 'window') {
        this.window = dragWindow(drag.window, p[0] - drag.start[0], p[1] - drag.start[1]);
        this.renderer.setWindow(this.window);
        this.renderer.render();
      } else if (drag?.kind === 'pan') {
        this.renderer.pan(plane, drag.last, p);
        drag.last = p;
        this.renderer.render();
      } else if (drag) {
        this.toolMove(drag, plane, voxel);
      }
      this.scheduleDraw();
    });
    const end = () => {
      if (drag && drag.kind !== 'window' && drag.kind !== 'pan') this.toolUp(drag);
      drag = null;
      this.scheduleDraw();
    };
    canvas.addEventListener('pointerup', end);
    canvas.addEventListener('pointercancel', end);
    canvas.addEventListener('pointerleave', () => {
      this.brushPreview = null;
      this.scheduleDraw();
    });
  }

  /**
   * @param {PlaneName} plane
   * @param {[number, number]} p
   * @returns {{zyx: Vec3, inside: boolean}}
   */
  voxelAt(plane, p) {
    const raw = this.renderer.canvasToVoxel(plane, p);
    const rounded = /** @type {Vec3} */ (raw.map((v) => Math.round(v)));
    const inside = rounded.every((v, i) => v >= 0 && v < this.shape[i]);
    return { zyx: clampVoxel(rounded, this.shape), inside };
  }

  /**
   * @param {PlaneName} plane
   * @param {number} delta
   */
  scroll(plane, delta) {
    const axis = { axial: 0, coronal: 1, sagittal: 2 }[plane];
    const index = this.renderer.setSlice(plane, this.renderer.sliceIndex(plane) + delta);
    this.cursor[axis] = index;
    this.updateCursorInfo(plane);
  }

  /** @param {PlaneName} plane */
  updateCursorInfo(plane) {
    const info = this.$('.cursor-info');
    const v = this.hover;
    if (!v) {
      info.textContent = `${plane} slice ${this.renderer.sliceIndex(plane) + 1}`;
      return;
    }
    const [z, y, x] = v;
    const index = (z * this.shape[1] + y) * this.shape[2] + x;
    const value = this.voxels[index];
    const label = this.labelmap.labels[index];
    const name = label ? this.classes.find((c) => c.value === label)?.name || `label ${label}` : '';
    const shown = Number.isInteger(value) ? value : value.toFixed(2);
    info.textContent = `z ${z} y ${y} x ${x} · ${shown}${this.meta.modality === 'CT' ? ' HU' : ''}${name ? ` · ${name}` : ''}`;
  }

  /**
   * @param {string} reason
   * @returns {boolean}
   */
  requireEdit(reason) {
    if (!this.editable) {
      this.setStatus(`Read-only: you cannot ${reason} on this case now (${STATUS_LABELS[/** @type {keyof typeof STATUS_LABELS} */ (this.workflow.status)] || this.workflow.status}).`, 'error');
      return false;
    }
    if (!this.activeLabel) {
      this.setStatus('Choose a label first (click it in the label panel).', 'error');
      return false;
    }
    if (this.labelmap.locked.has(this.activeLabel.value)) {
      this.setStatus(`The label ${this.activeLabel.name} is locked; unlock it to change it.`, 'error');
      return false;
    }
    return true;
  }

  /**
   * @param {PlaneName} plane
   * @param {{zyx: Vec3, inside: boolean}} voxel
   * @param {[number, number]} p
   */
  toolDown(plane, voxel, p) {
    const tool = this.tool;
    if (tool === 'navigate' || !voxel.inside) {
      if (voxel.inside) {
        this.cursor = voxel.zyx;
        this.syncSlicesToCursor();
      }
      return { kind: 'navigate', plane };
    }
    if (TOOLS[/** @type {keyof typeof TOOLS} */ (tool)][3] && plane !== 'axial') {
      this.setStatus('Prompts and brush strokes are drawn on the axial view (left).', 'error');
      return null;
    }
    const [z, y, x] = voxel.zyx;
    if (tool === 'box') {
      if (!this.requireEdit('draw a prompt')) return null;
      this.preview = { plane, start: { row: y, col: x }, box: boxFromCorners({ row: y, col: x }, { row: y, col: x }), z };
      return { kind: 'box' };
    }
    if (tool === 'click') {
      if (!this.requireEdit('draw a prompt')) return null;
      this.clicks = [{ z, y, x, positive: true }];
      this.propagate({ type: 'point', z, y, x });
      return null;
    }
    if (tool === 'positive' || tool === 'negative') {
      if (!this.requireEdit('correct the segmentation')) return null;
      this.refine({ z, y, x, positive: tool === 'positive' });
      return null;
    }
    if (tool === 'sketch') {
      if (!this.requireEdit('draw a prompt')) return null;
      if (this.sketchZ !== z || !this.sketch) {
        this.sketch = new Uint8Array(this.shape[1] * this.shape[2]);
        this.sketchZ = z;
      }
      this.paintSketch(y, x);
      return { kind: 'sketch' };
    }
    if (tool === 'brush' || tool === 'eraser') {
      if (!this.requireEdit('paint')) return null;
      const drag = { kind: 'paint', recorder: new StrokeRecorder(this.activeLabel.name), z, value: this.activeLabel.value, erase: tool === 'eraser' };
      this.paint(drag, y, x);
      return drag;
    }
    return null;
  }

  /**
   * @param {any} drag
   * @param {PlaneName} plane
   * @param {{zyx: Vec3, inside: boolean}} voxel
   */
  toolMove(drag, plane, voxel) {
    const [, y, x] = voxel.zyx;
    if (drag.kind === 'navigate' && voxel.inside) {
      this.cursor = voxel.zyx;
      this.syncSlicesToCursor();
    } else if (drag.kind === 'box' && plane === 'axial') {
      this.preview.box = boxFromCorners(this.preview.start, { row: y, col: x });
    } else if (drag.kind === 'sketch' && plane === 'axial') {
      this.paintSketch(y, x);
    } else if (drag.kind === 'paint' && plane === 'axial') {
      this.paint(drag, y, x);
    }
  }

  /** @param {any} drag */
  toolUp(drag) {
    if (drag.kind === 'box' && this.preview) {
      const { r0, r1, c0, c1 } = this.preview.box;
      const z = this.preview.z;
      this.preview = null;
      if (r1 - r0 < 1 || c1 - c0 < 1) {
        this.setStatus('The box is too small: drag across the object.', 'error');
        return;
      }
      this.clicks = [];
      this.propagate({ type: 'box', z, y0: r0, x0: c0, y1: r1, x1: c1 });
    } else if (drag.kind === 'paint') {
      const stroke = drag.recorder.finish();
      if (stroke) {
        stroke.value = drag.value;
        this.undo.push(stroke);
        this.corrections = []; // the clicks no longer describe the mask the user now sees
        this.updateVolumes();
        this.updateToolbar();
        this.setStatus('Unsaved brush edits: Ctrl+S saves them as a revision.');
      }
    } else if (drag.kind === 'sketch') {
      this.setStatus('Sketch on this slice, then press Enter to propagate it.');
    }
  }

  /**
   * @param {number} y
   * @param {number} x
   */
  paintSketch(y, x) {
    if (!this.sketch) return;
    for (const i of discPixels(y, x, this.brushRadius, this.shape[1], this.shape[2])) this.sketch[i] = 1;
  }

  /**
   * Brush / eraser on the axial slice. The brush paints background only (other labels are never
   * overwritten, as in the server's merge of a saved slice); the eraser clears the active label only.
   * @param {any} drag
   * @param {number} y
   * @param {number} x
   */
  paint(drag, y, x) {
    const slice = this.labelmap.axial(drag.z);
    for (const i of discPixels(y, x, this.brushRadius, this.shape[1], this.shape[2])) {
      const before = slice[i];
      let after = before;
      if (drag.erase) {
        if (before === drag.value) after = 0;
      } else if (before === 0) {
        after = drag.value;
      }
      if (after !== before) {
        slice[i] = after;
        drag.recorder.record(drag.z, i, before, after);
      }
    }
  }

  // --- tools and keys ----------------------------------------------------------------------------------

  /** @param {string} tool */
  setTool(tool) {
    if (!(tool in TOOLS)) return;
    const [label, , needsEdit] = TOOLS[/** @type {keyof typeof TOOLS} */ (tool)];
    if (needsEdit && !this.editable) {
      this.setStatus(`Read-only: ${label} is not available on this case now.`, 'error');
      return;
    }
    this.tool = tool;
    if (tool !== 'sketch') {
      this.sketch = null;
      this.sketchZ = null;
    }
    this.updateToolbar();
    const hints = {
      box: 'Drag a box around the object on the axial view; it propagates when you let go.',
      sketch: 'Paint the object on one axial slice, then press Enter.',
      click: 'Click inside the object on the axial view to propagate.',
      positive: 'Click where the object is missing (adds it and re-propagates; a click past its end lengthens it).',
      negative: 'Click where the segmentation leaks (removes it and re-propagates).',
      brush: 'Paint the active label; [ and ] change the size; Ctrl+S saves.',
      eraser: 'Erase the active label; Ctrl+S saves.',
      navigate: 'Click or drag to move the crosshair; wheel scrolls slices.',
    };
    this.setStatus(hints[/** @type {keyof typeof hints} */ (tool)]);
  }

  /** @param {number} radius */
  setBrush(radius) {
    this.brushRadius = Math.max(0, Math.min(20, radius));
    /** @type {HTMLInputElement} */ (this.$('.brush-range')).value = String(this.brushRadius);
    this.$('.brush-value').textContent = String(this.brushRadius);
    this.scheduleDraw();
  }

  /** @param {string} name */
  applyPreset(name) {
    if (name === 'auto') this.window = defaultWindow('MR', this.meta.stats);
    else this.window = { width: PRESETS[/** @type {keyof typeof PRESETS} */ (name)].width, level: PRESETS[/** @type {keyof typeof PRESETS} */ (name)].level };
    this.renderer.setWindow(this.window);
    this.renderer.render();
    this.scheduleDraw();
  }

  /** @param {'top' | 'bottom'} which */
  setMarker(which) {
    const z = this.renderer.sliceIndex('axial');
    this.markers[which] = this.markers[which] === z ? null : z;
    const text = this.markers[which] === null ? `${which} boundary cleared` : `${which} boundary at slice ${z + 1}`;
    this.setStatus(`${text}. Propagation stays between the boundaries.`);
    this.scheduleDraw();
  }

  /** @param {KeyboardEvent} e */
  onKey(e) {
    const target = /** @type {HTMLElement} */ (e.target);
    if (target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA' || target.tagName === 'SELECT')) return;
    // Enter/Space on a focused button press that button; they must not also propagate.
    if (target?.tagName === 'BUTTON' && (e.key === 'Enter' || e.key === ' ')) return;
    if (!this.ready) return;
    const key = e.key;
    const ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && (key === 'z' || key === 'Z')) {
      e.preventDefault();
      if (e.shiftKey) this.redoAction();
      else this.undoAction();
      return;
    }
    if (ctrl && (key === 'y' || key === 'Y')) {
      e.preventDefault();
      this.redoAction();
      return;
    }
    if (ctrl && (key === 's' || key === 'S')) {
      e.preventDefault();
      this.save();
      return;
    }
    if (ctrl || e.altKey) return;
    /** @type {Record<string, () => void>} */
    const map = {
      v: () => this.setTool('navigate'),
      b: () => this.setTool('box'),
      m: () => this.setTool('sketch'),
      c: () => this.setTool('click'),
      p: () => this.setTool('positive'),
      n: () => this.setTool('negative'),
      d: () => this.setTool('brush'),
      e: () => this.setTool('eraser'),
      t: () => this.setMarker('top'),
      y: () => this.setMarker('bottom'),
      r: () => {
        this.renderer.resetView();
        this.renderer.render();
      },
      '[': () => this.setBrush(this.brushRadius - 1),
      ']': () => this.setBrush(this.brushRadius + 1),
      Escape: () => {
        this.preview = null;
        this.sketch = null;
        this.setTool('navigate');
      },
      Enter: () => (e.shiftKey ? this.repropagateFromSlice() : this.propagateCurrent()),
      ArrowUp: () => this.scroll('axial', -1),
      ArrowDown: () => this.scroll('axial', 1),
      PageUp: () => this.scroll('axial', -5),
      PageDown: () => this.scroll('axial', 5),
    };
    const action = map[key.length === 1 ? key.toLowerCase() : key];
    if (action) {
      e.preventDefault();
      action();
      this.renderer.render();
      this.scheduleDraw();
      return;
    }
    if (/^[1-9]$/.test(key)) {
      const c = this.classes[Number(key) - 1];
      if (c) this.selectLabel(c);
    }
  }

  // --- server actions ----------------------------------------------------------------------------------

  /** Save local brush strokes first, so jobs start from a revision that includes them. */
  async flushEdits() {
    if (this.undo.canUndo) await this.save();
  }

  /**
   * Start a propagation from a prompt for the active label.
   * @param {any} prompt
   */
  async propagate(prompt) {
    if (!this.requireEdit('propagate')) return;
    this.lastPrompt = prompt;
    this.corrections = [];
    try {
      await this.flushEdits();
      /** @type {any} */
      const body = { label: this.activeLabel.id, prompt, base_revision: this.revision };
      const bounds = this.boundsFromMarkers(prompt.z);
      if (bounds === null) return;
      Object.assign(body, bounds);
      this.firstLivePaint = false;
      performance.mark('prompt-sent');
      const job = await api(`/api/cases/${this.caseId}/propagations/`, { method: 'POST', body });
      this.onEvent({ type: 'job.queued', job });
      // A fast job may already be done by the time this answer arrives: don't overwrite its result message.
      if (this.live.active) this.setStatus(`Propagating ${this.activeLabel.name} from slice ${prompt.z + 1}…`);
    } catch (error) {
      this.handleWriteError(error);
    }
  }

  /**
   * z_min / z_max for a prompt on `promptZ` from the top/bottom markers; null (and a message) if outside.
   * @param {number} promptZ
   * @returns {{z_min?: number, z_max?: number} | null}
   */
  boundsFromMarkers(promptZ) {
    const last = this.shape[0] - 1;
    const upIsHighZ = this.renderer.voxelToCanvas('coronal', [last, 0, 0])[1] < this.renderer.voxelToCanvas('coronal', [0, 0, 0])[1];
    const result = boundsFromMarkers(this.markers, upIsHighZ, promptZ, this.shape[0]);
    if ('error' in result) {
      this.setStatus(result.error, 'error');
      return null;
    }
    return result.bounds;
  }

  propagateCurrent() {
    if (this.tool === 'sketch' && this.sketch && this.sketchZ !== null) {
      if (!this.sketch.some((v) => v)) {
        this.setStatus('The sketch is empty: paint the object first.', 'error');
        return;
      }
      const prompt = { type: 'mask', z: this.sketchZ, rle: encodeLabel(this.sketch, 1) };
      this.sketch = null;
      this.sketchZ = null;
      this.propagate(prompt);
      return;
    }
    if (this.lastPrompt) {
      this.propagate(this.lastPrompt);
      return;
    }
    this.repropagateFromSlice();
  }

  /** Use the active label on the current axial slice as a mask prompt. */
  repropagateFromSlice() {
    if (!this.requireEdit('propagate')) return;
    const z = this.renderer.sliceIndex('axial');
    const value = this.activeLabel.value;
    const slice = this.labelmap.composite('axial', z);
    if (!slice.some((v) => v === value)) {
      this.setStatus(`Nothing of ${this.activeLabel.name} on axial slice ${z + 1} to propagate from: draw a prompt first.`, 'error');
      return;
    }
    this.propagate({ type: 'mask', z, rle: encodeLabel(slice, value) });
  }

  /**
   * A correction click: a refinement job from the current revision.
   * @param {{z: number, y: number, x: number, positive: boolean}} click
   */
  async refine(click) {
    this.clicks = [...this.clicks, click];
    const clicks = correctionClicks(this.corrections, click);
    this.scheduleDraw();
    try {
      await this.flushEdits();
      this.firstLivePaint = false;
      performance.mark('prompt-sent');
      const job = await api(`/api/cases/${this.caseId}/refinements/`, {
        method: 'POST',
        body: { label: this.activeLabel.id, base_revision: this.revision, clicks, edited_slices: [] },
      });
      this.corrections = [...this.corrections, click];
      this.onEvent({ type: 'job.queued', job });
      if (this.live.active) this.setStatus(`${click.positive ? 'Adding' : 'Removing'} at slice ${click.z + 1}; re-propagating…`);
    } catch (error) {
      this.handleWriteError(error);
    }
  }

  async cancelJob() {
    const job = this.live.job;
    if (!job) return;
    try {
      await api(`/api/jobs/${job.id}/cancel/`, { method: 'POST' });
      // The worker may have stopped, and its "cancelled" event been shown, before this request returned.
      if (this.live.active && this.live.job?.id === job.id) this.setStatus('Cancelling…');
    } catch (error) {
      this.showError(error);
    }
  }

  /** @param {unknown} error */
  handleWriteError(error) {
    this.showError(error);
    if (error instanceof ApiError && error.status === 409 && error.code === 'revision_conflict') {
      const current = error.body.current_revision ?? null;
      this.loadRevision(current).then(() => this.setStatus(`Conflict: someone changed this case; the newest revision is now loaded. Your last action was not applied — try again.`, 'error'));
    }
  }

  async undoAction() {
    if (this.undo.canUndo) {
      const stroke = this.undo.undo();
      if (stroke) applyStroke(this.labelmap.labels, this.labelmap.sliceSize, stroke, 'before');
      this.afterLocalChange('Undid a brush stroke.');
      return;
    }
    await this.moveRevision('undo');
  }

  async redoAction() {
    if (this.undo.canRedo) {
      const stroke = this.undo.redo();
      if (stroke) applyStroke(this.labelmap.labels, this.labelmap.sliceSize, stroke, 'after');
      this.afterLocalChange('Redid a brush stroke.');
      return;
    }
    await this.moveRevision('redo');
  }

  /** @param {string} text */
  afterLocalChange(text) {
    this.updateVolumes();
    this.updateToolbar();
    this.setStatus(text);
    this.scheduleDraw();
  }

  /** @param {'undo' | 'redo'} direction */
  async moveRevision(direction) {
    if (this.live.active) {
      this.setStatus('Wait for the propagation to finish (or cancel it) before undo/redo.', 'error');
      return;
    }
    try {
      const result = await api(`/api/cases/${this.caseId}/${direction}/`, { method: 'POST', body: { base_revision: this.revision } });
      this.corrections = []; // the restored revision may not hold what those clicks corrected
      await this.loadRevision(result.current_revision);
      this.setStatus(direction === 'undo' ? 'Undone: previous revision restored.' : 'Redone: next revision restored.', 'ok');
    } catch (error) {
      this.handleWriteError(error);
    }
  }

  /** Save local strokes: one revision per label edited. */
  async save() {
    if (!this.undo.canUndo) {
      this.setStatus('Nothing to save.');
      return;
    }
    if (!this.editable) {
      this.setStatus('Read-only: these edits cannot be saved on this case now.', 'error');
      return;
    }
    const byLabel = editedSlicesByLabel(/** @type {any[]} */ (this.undo.done));
    this.saving = true;
    try {
      let last = null;
      for (const [value, slices] of byLabel) {
        const labelClass = this.classes.find((c) => c.value === value);
        const edited_slices = slices.map((z) => ({ z, rle: encodeLabel(this.labelmap.axial(z), value) }));
        last = await api(`/api/cases/${this.caseId}/revisions/`, {
          method: 'POST',
          body: { label: labelClass.id, base_revision: this.revision, edited_slices },
        });
        this.revision = last.id;
        this.live.currentRevision = last.id;
      }
      this.undo.clear();
      this.revisionSeq++; // a revision load started before the save would show stale labels: drop it
      this.updateToolbar();
      this.setStatus(`Saved as revision ${last?.number ?? ''}.`, 'ok');
    } catch (error) {
      this.handleWriteError(error);
    } finally {
      this.saving = false;
    }
  }

  /** @param {string} action */
  async transition(action) {
    const comment = /** @type {HTMLTextAreaElement} */ (this.$('.comment')).value.trim();
    if (action === 'request_changes' && !comment) {
      this.setStatus('Say what needs to change: write a comment first.', 'error');
      return;
    }
    try {
      if (action === 'submit') {
        await this.flushEdits();
        if (this.live.active) {
          this.setStatus('Wait for the propagation to finish before submitting.', 'error');
          return;
        }
        if (this.workflow.status === 'new' || this.workflow.status === 'changes_requested') {
          if (this.workflow.allowed_actions.includes('start')) await api(`/api/cases/${this.caseId}/transitions/`, { method: 'POST', body: { action: 'start' } });
        }
      }
      /** @type {any} */
      const body = { action };
      if (comment) {
        body.comment = comment;
        body.slice_z = this.renderer.sliceIndex('axial');
      }
      await api(`/api/cases/${this.caseId}/transitions/`, { method: 'POST', body });
      /** @type {HTMLTextAreaElement} */ (this.$('.comment')).value = '';
      await this.refreshWorkflow();
      this.setStatus(`${ACTION_LABELS[/** @type {keyof typeof ACTION_LABELS} */ (action)] || action}: done. The case is now ${STATUS_LABELS[/** @type {keyof typeof STATUS_LABELS} */ (this.workflow.status)]?.toLowerCase() || this.workflow.status}.`, 'ok');
    } catch (error) {
      this.showError(error);
    }
  }

  /** Review comments, newest last; clicking one jumps to the slice it refers to. */
  async loadComments() {
    let comments;
    try {
      comments = await api(`/api/cases/${this.caseId}/comments/`);
    } catch (error) {
      this.showError(error);
      return;
    }
    const list = Array.isArray(comments) ? comments : comments.results || [];
    const box = this.$('.comments');
    box.innerHTML = '';
    for (const c of list) {
      const item = el('div', { class: 'comment-item' });
      const where = c.slice_z !== null && c.slice_z !== undefined ? ` · slice ${c.slice_z + 1}` : '';
      item.innerHTML = `<div class="small">${escapeHtml(c.author?.name || '')} · ${escapeHtml(new Date(c.created_at).toLocaleString())}${where}</div><div>${escapeHtml(c.text)}</div>`;
      if (where) {
        item.classList.add('has-slice');
        item.title = 'Go to the slice';
        item.addEventListener('click', () => {
          this.cursor[0] = Math.min(this.shape[0] - 1, c.slice_z);
          this.syncSlicesToCursor();
          this.scheduleDraw();
        });
      }
      box.append(item);
    }
  }

  async refreshWorkflow() {
    try {
      this.workflow = await api(`/api/cases/${this.caseId}/transitions/`);
      this.applyWorkflow();
      this.loadComments();
    } catch (error) {
      this.showError(error);
    }
  }

  applyWorkflow() {
    const w = this.workflow;
    this.editable = !!w.may_edit_labels;
    const badge = this.$('.status-badge');
    badge.textContent = STATUS_LABELS[/** @type {keyof typeof STATUS_LABELS} */ (w.status)] || w.status;
    badge.className = `badge status-badge status-${w.status}`;
    const banner = this.$('.banner');
    const reviewer = (w.relations || []).includes('reviewer');
    if (!this.editable) {
      banner.hidden = false;
      banner.textContent = reviewer
        ? 'Review mode: read-only. Approve or request changes in the Workflow panel.'
        : `Read-only: this case is ${(STATUS_LABELS[/** @type {keyof typeof STATUS_LABELS} */ (w.status)] || w.status).toLowerCase()}; you can look but not change it.`;
      if (TOOLS[/** @type {keyof typeof TOOLS} */ (this.tool)][2]) this.tool = 'navigate';
    } else if (reviewer && w.status === 'in_review') {
      banner.hidden = false;
      banner.textContent = 'Review mode: you may fix small errors before approving.';
    } else {
      banner.hidden = true;
    }
    const actions = this.$('.actions');
    actions.innerHTML = '';
    const allowed = new Set(w.allowed_actions || []);
    if (allowed.has('start') && (w.relations || []).includes('assignee')) allowed.add('submit');
    allowed.delete('start');
    for (const action of ['submit', 'start_review', 'approve', 'request_changes', 'reopen']) {
      if (!allowed.has(action)) continue;
      const button = el('button', { class: `action action-${action}${action === 'approve' || action === 'submit' ? ' primary' : ''}` }, ACTION_LABELS[/** @type {keyof typeof ACTION_LABELS} */ (action)]);
      button.addEventListener('click', () => this.transition(action));
      actions.append(button);
    }
    this.$('.comment').hidden = !allowed.has('request_changes') && !allowed.has('approve');
    this.$('.workflow-text').textContent = allowed.size ? '' : 'No workflow action is open to you on this case now.';
    this.updateToolbar();
  }

  // --- panels ------------------------------------------------------------------------------------------

  renderLabelPanel() {
    const box = this.$('.labels');
    box.innerHTML = '';
    const volumes = this.volumes || new Map();
    for (const [i, c] of this.classes.entries()) {
      const d = this.display.get(c.value) || { visible: true, opacity: 0.45 };
      const locked = this.labelmap.locked.has(c.value);
      const row = el('div', { class: `label-row${this.activeLabel?.id === c.id ? ' active' : ''}`, 'data-label': String(c.value), title: `Make ${c.name} the active label (${i + 1})` });
      row.innerHTML = `
        <span class="swatch" style="background:${escapeHtml(c.color)}"></span>
        <span class="label-name">${escapeHtml(c.name)}</span>
        <span class="label-ml">${volumes.has(c.value) ? `${volumes.get(c.value).toFixed(1)} mL` : '—'}</span>
        <input type="checkbox" class="vis" title="Show/hide" ${d.visible ? 'checked' : ''}>
        <input type="range" class="opacity" min="0" max="1" step="0.05" value="${d.opacity}" title="Opacity">
        <button class="lock${locked ? ' locked' : ''}" title="${locked ? 'Locked: click to unlock' : 'Lock (protect from propagation and brush)'}">${locked ? 'locked' : 'lock'}</button>`;
      row.addEventListener('click', (e) => {
        if (/** @type {HTMLElement} */ (e.target).closest('input, button')) return;
        this.selectLabel(c);
      });
      row.querySelector('.vis')?.addEventListener('change', (e) => {
        d.visible = /** @type {HTMLInputElement} */ (e.target).checked;
        this.display.set(c.value, d);
        this.labelmap.setColors(this.classes, this.display);
        this.scheduleDraw();
      });
      row.querySelector('.opacity')?.addEventListener('input', (e) => {
        d.opacity = Number(/** @type {HTMLInputElement} */ (e.target).value);
        this.display.set(c.value, d);
        this.labelmap.setColors(this.classes, this.display);
        this.scheduleDraw();
      });
      row.querySelector('.lock')?.addEventListener('click', () => this.toggleLock(c));
      box.append(row);
    }
  }

  /** @param {any} c */
  selectLabel(c) {
    this.activeLabel = c;
    this.lastPrompt = null;
    this.clicks = [];
    this.corrections = [];
    this.renderLabelPanel();
    this.setStatus(`Active label: ${c.name}.`);
  }

  /** @param {any} c */
  async toggleLock(c) {
    const locked = new Set(this.labelmap.locked);
    if (locked.has(c.value)) locked.delete(c.value);
    else locked.add(c.value);
    try {
      const updated = await api(`/api/cases/${this.caseId}/`, { method: 'PATCH', body: { locked_labels: [...locked].sort((a, b) => a - b) } });
      this.labelmap.locked = new Set(updated.locked_labels || []);
      this.renderLabelPanel();
      this.setStatus(`${c.name} is ${this.labelmap.locked.has(c.value) ? 'locked' : 'unlocked'}.`, 'ok');
    } catch (error) {
      this.showError(error);
    }
  }

  updateVolumes() {
    this.volumes = labelVolumesMl(this.labelmap.labels, this.spacing);
    for (const row of this.root.querySelectorAll('.label-row')) {
      const value = Number(row.getAttribute('data-label'));
      const cell = /** @type {HTMLElement} */ (row.querySelector('.label-ml'));
      cell.textContent = this.volumes.has(value) ? `${this.volumes.get(value)?.toFixed(1)} mL` : '—';
    }
  }

  updateJobPanel() {
    const panel = this.$('.job-panel');
    const job = this.live.job;
    const active = this.live.active;
    panel.hidden = !job || (!active && job.status === 'done');
    if (!job) return;
    const name = this.classes.find((c) => c.id === job.label || c.value === job.label_value)?.name || 'label';
    const seen = this.live.seen.size;
    const text = job.status === 'queued'
      ? `Waiting for a worker${job.queue_position ? ` (position ${job.queue_position} in the queue)` : ''}…`
      : job.status === 'running'
        ? `${name}: ${seen} slices · ↑ ${this.live.doneUp} · ↓ ${this.live.doneDown}`
        : `${name}: ${job.status}`;
    this.$('.job-text').textContent = text;
    const total = Math.max(1, job.z_max !== undefined && job.z_max !== null ? job.z_max - job.z_min + 1 : this.shape[0]);
    /** @type {HTMLElement} */ (this.$('.job-bar')).style.width = `${Math.min(100, Math.round((100 * seen) / total))}%`;
    /** @type {HTMLButtonElement} */ (this.$('.btn-cancel')).hidden = !active;
  }

  updateToolbar() {
    for (const button of this.root.querySelectorAll('[data-tool]')) {
      const id = /** @type {keyof typeof TOOLS} */ (button.getAttribute('data-tool'));
      button.classList.toggle('active', id === this.tool);
      /** @type {HTMLButtonElement} */ (button).disabled = TOOLS[id][2] && !this.editable;
    }
    for (const sel of ['.btn-top', '.btn-bottom', '.btn-propagate', '.btn-repropagate']) {
      /** @type {HTMLButtonElement} */ (this.$(sel)).disabled = !this.editable;
    }
    /** @type {HTMLButtonElement} */ (this.$('.btn-save')).disabled = !this.undo.canUndo || !this.editable;
    /** @type {HTMLButtonElement} */ (this.$('.btn-undo')).disabled = !this.editable;
    /** @type {HTMLButtonElement} */ (this.$('.btn-redo')).disabled = !this.editable;
    this.$('.btn-save').textContent = this.undo.canUndo ? 'Save*' : 'Save';
  }
}

