/**
 * Undo stack for local, unsaved brush strokes (before they are saved as a revision).
 * Each entry records the slice pixels a stroke changed (before and after), so undo/redo restore exactly
 * those pixels; memory stays proportional to what was painted, not to the volume.
 */

/**
 * @typedef {{z: number, indices: Uint32Array, before: Uint8Array, after: Uint8Array}} SlicePatch
 * @typedef {{label: string, patches: SlicePatch[]}} Stroke
 */

export class UndoStack {
  /** @param {number} [limit] how many strokes to keep */
  constructor(limit = 100) {
    this.limit = limit;
    /** @type {Stroke[]} */
    this.done = [];
    /** @type {Stroke[]} */
    this.undone = [];
  }

  /** @param {Stroke} stroke */
  push(stroke) {
    this.done.push(stroke);
    if (this.done.length > this.limit) this.done.shift();
    this.undone = []; // a new edit forks history: the redo branch is gone
  }

  get canUndo() {
    return this.done.length > 0;
  }

  get canRedo() {
    return this.undone.length > 0;
  }

  /** @returns {Stroke | null} the stroke to revert (apply its `before`) */
  undo() {
    const stroke = this.done.pop();
    if (!stroke) return null;
    this.undone.push(stroke);
    return stroke;
  }

  /** @returns {Stroke | null} the stroke to re-apply (apply its `after`) */
  redo() {
    const stroke = this.undone.pop();
    if (!stroke) return null;
    this.done.push(stroke);
    return stroke;
  }

  clear() {
    this.done = [];
    this.undone = [];
  }

  /** Slices touched by strokes still applied (what a save must send). @returns {number[]} */
  dirtySlices() {
    const slices = new Set();
    for (const stroke of this.done) for (const patch of stroke.patches) slices.add(patch.z);
    return [...slices].sort((a, b) => a - b);
  }
}

/**
 * Records pixel changes during one stroke; first write of a pixel keeps its original value.
 */
export class StrokeRecorder {
  /** @param {string} label */
  constructor(label) {
    this.label = label;
    /** @type {Map<number, Map<number, [number, number]>>} z -> index -> [before, after] */
    this.changes = new Map();
  }

  /**
   * @param {number} z
   * @param {number} index pixel index within the slice
   * @param {number} before
   * @param {number} after
   */
  record(z, index, before, after) {
    let slice = this.changes.get(z);
    if (!slice) {
      slice = new Map();
      this.changes.set(z, slice);
    }
    const previous = slice.get(index);
    slice.set(index, [previous ? previous[0] : before, after]);
  }

  /** @returns {Stroke | null} null when nothing changed */
  finish() {
    /** @type {SlicePatch[]} */
    const patches = [];
    for (const [z, slice] of this.changes) {
      const entries = [...slice].filter(([, [b, a]]) => b !== a);
      if (!entries.length) continue;
      patches.push({
        z,
        indices: Uint32Array.from(entries, ([i]) => i),
        before: Uint8Array.from(entries, ([, [b]]) => b),
        after: Uint8Array.from(entries, ([, [, a]]) => a),
      });
    }
    return patches.length ? { label: this.label, patches } : null;
  }
}

/**
 * Write a stroke's before or after values into the labelmap.
 * @param {Uint8Array} labels (Z, Y, X) labelmap
 * @param {number} sliceSize Y * X
 * @param {Stroke} stroke
 * @param {'before' | 'after'} which
 */
export function applyStroke(labels, sliceSize, stroke, which) {
  for (const patch of stroke.patches) {
    const offset = patch.z * sliceSize;
    const values = patch[which];
    for (let i = 0; i < patch.indices.length; i++) labels[offset + patch.indices[i]] = values[i];
  }
}
