/**
 * The segmentation shown over the image: the current revision's labels (uint8 (Z, Y, X)), plus a live
 * layer for the running propagation (its slices arrive one by one and replace that label on their slice
 * until the job's revision is loaded). Rendering to RGBA goes through a 256-entry colour table.
 */
import { extractSlice, planeSize, PLANES } from '../coords.js';
import { paintRle } from '../maskcodec.js';

/** @typedef {import('../coords.js').PlaneName} PlaneName */
/** @typedef {{id: number, name: string, value: number, color: string}} LabelClass */

/**
 * '#rrggbb' -> [r, g, b]
 * @param {string} hex
 * @returns {[number, number, number]}
 */
export function parseColor(hex) {
  const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex || '');
  if (!m) return [255, 0, 0];
  return [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)];
}

/**
 * Volume in mL of each label value present.
 * @param {Uint8Array} labels
 * @param {[number, number, number]} spacing mm
 * @returns {Map<number, number>}
 */
export function labelVolumesMl(labels, spacing) {
  const counts = new Uint32Array(256);
  for (let i = 0; i < labels.length; i++) counts[labels[i]]++;
  const voxelMl = (spacing[0] * spacing[1] * spacing[2]) / 1000;
  const out = new Map();
  for (let v = 1; v < 256; v++) if (counts[v]) out.set(v, counts[v] * voxelMl);
  return out;
}

export class Labelmap {
  /**
   * @param {[number, number, number]} shape
   */
  constructor(shape) {
    this.shape = shape;
    this.sliceSize = shape[1] * shape[2];
    this.labels = new Uint8Array(shape[0] * this.sliceSize);
    /** live layer: 1 where the running job's mask is foreground */
    this.live = new Uint8Array(this.labels.length);
    /** slices (z) the running job has delivered; there its label is replaced by the live mask */
    this.liveSlices = new Uint8Array(shape[0]);
    this.liveValue = 0;
    /** @type {Uint8ClampedArray} RGBA per label value */
    this.lut = new Uint8ClampedArray(256 * 4);
    /** @type {Set<number>} */
    this.locked = new Set();
  }

  /**
   * @param {LabelClass[]} classes
   * @param {Map<number, {visible: boolean, opacity: number}>} display
   */
  setColors(classes, display) {
    this.lut.fill(0);
    for (const c of classes) {
      const d = display.get(c.value) || { visible: true, opacity: 0.5 };
      const [r, g, b] = parseColor(c.color);
      this.lut.set([r, g, b, d.visible ? Math.round(255 * d.opacity) : 0], c.value * 4);
    }
  }

  /** @param {ArrayBuffer | Uint8Array} buffer a revision's raw labels */
  setLabels(buffer) {
    const data = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
    if (data.length !== this.labels.length) throw new Error(`The label volume has ${data.length} voxels, the image ${this.labels.length}.`);
    this.labels.set(data);
  }

  clearLive() {
    this.live.fill(0);
    this.liveSlices.fill(0);
    this.liveValue = 0;
  }

  /**
   * Paint one streamed slice into the live layer.
   * @param {number} z
   * @param {number[]} rle
   * @param {number} value label value of the job
   */
  paintLive(z, rle, value) {
    if (z < 0 || z >= this.shape[0]) return;
    this.liveValue = value;
    const slice = this.live.subarray(z * this.sliceSize, (z + 1) * this.sliceSize);
    paintRle(slice, rle, 1);
    this.liveSlices[z] = 1;
  }

  /**
   * Composite label values of one plane slice: on slices the running job delivered, its label takes the
   * streamed mask's extent (mirrors the server's merge, annotator/services/propagation.merge_label).
   * @param {PlaneName} plane
   * @param {number} index
   * @returns {Uint8Array} (rows, cols)
   */
  composite(plane, index) {
    const out = extractSlice(this.labels, this.shape, plane, index);
    const value = this.liveValue;
    if (!value) return out;
    const live = extractSlice(this.live, this.shape, plane, index);
    const { rows, cols } = planeSize(plane, this.shape);
    const zAlongRows = PLANES[plane].row === 0;
    for (let r = 0; r < rows; r++) {
      const z = zAlongRows ? r : index;
      if (!this.liveSlices[z]) continue;
      const base = r * cols;
      for (let c = 0; c < cols; c++) {
        const i = base + c;
        if (live[i]) {
          // As the server merges: only background may become this label; other labels are never overwritten.
          if (out[i] === 0) out[i] = value;
        } else if (out[i] === value) {
          out[i] = 0;
        }
      }
    }
    return out;
  }

  /**
   * RGBA image of one plane slice.
   * @param {PlaneName} plane
   * @param {number} index
   * @returns {ImageData}
   */
  toImageData(plane, index) {
    const values = this.composite(plane, index);
    const { rows, cols } = planeSize(plane, this.shape);
    const rgba = new Uint8ClampedArray(rows * cols * 4);
    const lut = this.lut;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (!v) continue;
      const o = i * 4;
      const l = v * 4;
      rgba[o] = lut[l];
      rgba[o + 1] = lut[l + 1];
      rgba[o + 2] = lut[l + 2];
      rgba[o + 3] = lut[l + 3];
    }
    return new ImageData(rgba, cols, rows);
  }

  /**
   * One axial slice of the labels (a view, not a copy).
   * @param {number} z
   */
  axial(z) {
    return this.labels.subarray(z * this.sliceSize, (z + 1) * this.sliceSize);
  }
}
