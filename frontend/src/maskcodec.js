/**
 * Run-length codec for binary 2D masks (mirror of annotator/maskcodec.py; docs/ARCHITECTURE.md).
 *
 * A mask (Y, X) is flattened in C order (row by row); the runs alternate background / foreground and
 * always START WITH A BACKGROUND RUN (possibly 0). The runs sum to Y * X.
 * Example: [[0,1,1],[1,0,0]] -> [1, 3, 2].
 */

/**
 * Encode a flat mask (any typed array or array; non-zero = foreground).
 * @param {ArrayLike<number>} flat
 * @returns {number[]}
 */
export function encodeRle(flat) {
  const n = flat.length;
  if (n === 0) return [0];
  /** @type {number[]} */
  const runs = [];
  let current = 0; // runs open with background
  let length = 0;
  for (let i = 0; i < n; i++) {
    const value = flat[i] ? 1 : 0;
    if (value === current) {
      length++;
    } else {
      runs.push(length);
      current = value;
      length = 1;
    }
  }
  runs.push(length);
  return runs;
}

/**
 * Check an RLE against a pixel count; returns an error message, or null when valid.
 * @param {unknown} rle
 * @param {number} size number of pixels (Y * X)
 * @returns {string | null}
 */
export function validateRle(rle, size) {
  if (!Array.isArray(rle)) return 'RLE must be a list of integers';
  if (rle.length === 0) return 'RLE is empty; an all-background mask is [Y*X]';
  let total = 0;
  for (const run of rle) {
    if (typeof run !== 'number' || !Number.isInteger(run)) return 'RLE runs must be integers';
    if (run < 0) return 'RLE runs must not be negative';
    total += run;
  }
  if (total !== size) return `RLE runs sum to ${total}, the mask has ${size} pixels`;
  return null;
}

/**
 * Decode runs into a new Uint8Array of 0/1 (or into `out`, writing `value` for foreground and leaving
 * background pixels untouched when `keepBackground` is true — used to paint a slice into a labelmap).
 * @param {number[]} rle
 * @param {number} size
 * @returns {Uint8Array}
 */
export function decodeRle(rle, size) {
  const error = validateRle(rle, size);
  if (error) throw new Error(error);
  const out = new Uint8Array(size);
  let pos = 0;
  for (let i = 0; i < rle.length; i++) {
    const run = rle[i];
    if (i % 2 === 1) out.fill(1, pos, pos + run);
    pos += run;
  }
  return out;
}

/**
 * Paint a decoded mask into one label slice: foreground -> `value`; with `replace`, background pixels that
 * held `value` are cleared (the slice's result replaces the label there), other labels stay untouched.
 * @param {Uint8Array} labelSlice the (Y*X) view of one slice of the labelmap
 * @param {number[]} rle
 * @param {number} value label value to write
 * @param {{replace?: boolean, locked?: Set<number>}} [options]
 */
export function paintRle(labelSlice, rle, value, options = {}) {
  const error = validateRle(rle, labelSlice.length);
  if (error) throw new Error(error);
  const { replace = true, locked } = options;
  let pos = 0;
  for (let i = 0; i < rle.length; i++) {
    const end = pos + rle[i];
    const foreground = i % 2 === 1;
    for (let p = pos; p < end; p++) {
      const old = labelSlice[p];
      if (foreground) {
        if (old !== value && (old === 0 || !(locked && locked.has(old)))) labelSlice[p] = value;
      } else if (replace && old === value) {
        labelSlice[p] = 0;
      }
    }
    pos = end;
  }
}

/**
 * The binary mask of one label value in a label slice, as RLE (what the API wants for edited slices).
 * @param {Uint8Array} labelSlice
 * @param {number} value
 * @returns {number[]}
 */
export function encodeLabel(labelSlice, value) {
  const n = labelSlice.length;
  const runs = [];
  let current = 0;
  let length = 0;
  for (let i = 0; i < n; i++) {
    const v = labelSlice[i] === value ? 1 : 0;
    if (v === current) length++;
    else {
      runs.push(length);
      current = v;
      length = 1;
    }
  }
  runs.push(length);
  return runs;
}
