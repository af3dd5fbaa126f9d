/**
 * The annotation layer drawn over each image viewport on a plain 2D canvas: labels (with the live layer),
 * the linked crosshair, prompt previews (box, sketch, clicks), boundary markers and the brush cursor.
 * The slice image of a plane is placed with an affine computed from where Cornerstone3D draws three voxel
 * points, so the overlay follows zoom, pan and orientation exactly: the radiological flips and transposes
 * of orientation.js come with that affine, nothing here assumes rows run down or columns run right.
 */
import { affineFromPoints, PLANES, planeSize, planeToVoxel, voxelToPlane } from '../coords.js';

/** @typedef {import('../coords.js').PlaneName} PlaneName */
/** @typedef {import('../coords.js').Vec3} Vec3 */

export const PLANE_COLORS = { axial: '#ff5a5a', coronal: '#5ad25a', sagittal: '#ffd23c' };

/**
 * @param {import('./renderer.js').ImageRenderer} renderer
 * @param {PlaneName} plane
 * @param {number} index
 */
export function planeAffine(renderer, plane, index) {
  const at = (/** @type {number} */ row, /** @type {number} */ col) => renderer.voxelToCanvas(plane, planeToVoxel(plane, index, row, col));
  // Pixel (0,0) covers [-0.5, 0.5] in voxel units: its top-left corner is at (-0.5, -0.5).
  return affineFromPoints(at(-0.5, -0.5), at(-0.5, 0.5), at(0.5, -0.5));
}

export class Overlay {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {PlaneName} plane
   */
  constructor(canvas, plane) {
    this.canvas = canvas;
    this.plane = plane;
    this.ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext('2d'));
    this.scratch = document.createElement('canvas');
  }

  /** Match the canvas backing store to its CSS size. */
  fit() {
    const dpr = window.devicePixelRatio || 1;
    const { clientWidth, clientHeight } = this.canvas;
    const w = Math.max(1, Math.round(clientWidth * dpr));
    const h = Math.max(1, Math.round(clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    return dpr;
  }

  /**
   * @param {{renderer: import('./renderer.js').ImageRenderer, labelmap: import('./labelmap.js').Labelmap,
   *   index: number, cursor: Vec3 | null, shape: Vec3, preview?: any, markers: {top: number|null, bottom: number|null},
   *   clicks: {z: number, y: number, x: number, positive: boolean}[], brush: {row: number, col: number, radius: number} | null,
   *   sketch: Uint8Array | null, sketchZ: number | null, labelsVisible: boolean}} s
   */
  draw(s) {
    const dpr = this.fit();
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    const { rows, cols } = planeSize(this.plane, s.shape);
    const m = planeAffine(s.renderer, this.plane, s.index);
    const image = (/** @type {ImageData} */ data) => {
      this.scratch.width = cols;
      this.scratch.height = rows;
      /** @type {CanvasRenderingContext2D} */ (this.scratch.getContext('2d')).putImageData(data, 0, 0);
      ctx.setTransform(dpr * m[0], dpr * m[1], dpr * m[2], dpr * m[3], dpr * m[4], dpr * m[5]);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(this.scratch, 0, 0);
    };
    if (s.labelsVisible) image(s.labelmap.toImageData(this.plane, s.index));
    if (s.sketch && this.plane === 'axial' && s.sketchZ === s.index) {
      const rgba = new Uint8ClampedArray(rows * cols * 4);
      for (let i = 0; i < s.sketch.length; i++) if (s.sketch[i]) rgba.set([80, 200, 255, 150], i * 4);
      image(new ImageData(rgba, cols, rows));
    }
    // Vector graphics in image pixel coordinates, drawn with the same affine (line widths in screen px).
    const toCanvas = (/** @type {number} */ row, /** @type {number} */ col) => [
      dpr * (m[0] * (col + 0.5) + m[2] * (row + 0.5) + m[4]),
      dpr * (m[1] * (col + 0.5) + m[3] * (row + 0.5) + m[5]),
    ];
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.lineWidth = Math.max(1, dpr);
    if (s.cursor) this.#crosshair(s.cursor, toCanvas, rows, cols);
    this.#markers(s.markers, toCanvas, rows, cols, dpr);
    for (const click of s.clicks) {
      const p = voxelToPlane(this.plane, [click.z, click.y, click.x]);
      if (p.index !== s.index) continue;
      const [x, y] = toCanvas(p.row, p.col);
      ctx.fillStyle = click.positive ? '#3cff6e' : '#ff3c3c';
      ctx.strokeStyle = '#000';
      ctx.beginPath();
      ctx.arc(x, y, 5 * dpr, 0, Math.PI * 2);
      ctx.fill();
      ctx.stroke();
    }
    if (s.preview && s.preview.plane === this.plane) {
      const { r0, r1, c0, c1 } = s.preview.box;
      const [x0, y0] = toCanvas(r0 - 0.5, c0 - 0.5);
      const [x1, y1] = toCanvas(r1 + 0.5, c1 + 0.5);
      ctx.strokeStyle = '#50c8ff';
      ctx.setLineDash([6 * dpr, 4 * dpr]);
      ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
      ctx.setLineDash([]);
    }
    if (s.brush && this.plane === 'axial') {
      const [x, y] = toCanvas(s.brush.row, s.brush.col);
      // along the columns, which may run vertically on the screen (a transposed orientation)
      const [x2, y2] = toCanvas(s.brush.row, s.brush.col + s.brush.radius + 0.5);
      ctx.strokeStyle = '#fff';
      ctx.beginPath();
      ctx.arc(x, y, Math.hypot(x2 - x, y2 - y), 0, Math.PI * 2);
      ctx.stroke();
    }
  }

  /**
   * Lines through the cursor voxel: in this plane, the other two planes appear as lines.
   * @param {Vec3} cursor
   * @param {(row: number, col: number) => number[]} toCanvas
   * @param {number} rows
   * @param {number} cols
   */
  #crosshair(cursor, toCanvas, rows, cols) {
    const ctx = this.ctx;
    const p = voxelToPlane(this.plane, cursor);
    const others = /** @type {PlaneName[]} */ (['axial', 'coronal', 'sagittal']).filter((q) => q !== this.plane);
    for (const other of others) {
      const axis = PLANES[other].slice;
      ctx.strokeStyle = PLANE_COLORS[other];
      ctx.globalAlpha = 0.7;
      ctx.beginPath();
      if (axis === PLANES[this.plane].row) {
        const [xa, ya] = toCanvas(p.row, -0.5);
        const [xb, yb] = toCanvas(p.row, cols - 0.5);
        ctx.moveTo(xa, ya);
        ctx.lineTo(xb, yb);
      } else {
        const [xa, ya] = toCanvas(-0.5, p.col);
        const [xb, yb] = toCanvas(rows - 0.5, p.col);
        ctx.moveTo(xa, ya);
        ctx.lineTo(xb, yb);
      }
      ctx.stroke();
      ctx.globalAlpha = 1;
    }
  }

  /**
   * Top/bottom boundary slices as dashed lines on the coronal and sagittal views.
   * @param {{top: number|null, bottom: number|null}} markers
   * @param {(row: number, col: number) => number[]} toCanvas
   * @param {number} rows
   * @param {number} cols
   * @param {number} dpr
   */
  #markers(markers, toCanvas, rows, cols, dpr) {
    if (this.plane === 'axial') return;
    const ctx = this.ctx;
    for (const [name, z] of /** @type {[string, number|null][]} */ ([['T', markers.top], ['B', markers.bottom]])) {
      if (z === null || z === undefined) continue;
      const [xa, ya] = toCanvas(z, -0.5);
      const [xb, yb] = toCanvas(z, cols - 0.5);
      ctx.strokeStyle = '#ff8c1a';
      ctx.setLineDash([4 * dpr, 3 * dpr]);
      ctx.beginPath();
      ctx.moveTo(xa, ya);
      ctx.lineTo(xb, yb);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = '#ff8c1a';
      ctx.font = `${11 * dpr}px sans-serif`;
      ctx.fillText(name === 'T' ? 'top' : 'bottom', Math.min(xa, xb) + 3 * dpr, Math.min(ya, yb) - 3 * dpr);
    }
  }
}
