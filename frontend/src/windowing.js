/**
 * Window/level maths on raw intensities (HU for CT). Width W and level (centre) L map [L - W/2, L + W/2]
 * onto black..white, as in every clinical viewer.
 */

/** @typedef {{width: number, level: number}} Window */

/** Presets named as radiologists know them. @type {Record<string, Window & {label: string}>} */
export const PRESETS = {
  soft: { label: 'CT soft tissue', width: 400, level: 40 },
  lung: { label: 'CT lung', width: 1500, level: -600 },
  bone: { label: 'CT bone', width: 1800, level: 400 },
  brain: { label: 'CT brain', width: 80, level: 40 },
};

/** Narrowest window allowed (a zero width would divide by zero). */
export const MIN_WIDTH = 1;

/**
 * @param {Window} w
 * @returns {{lower: number, upper: number}}
 */
export function windowToRange({ width, level }) {
  return { lower: level - width / 2, upper: level + width / 2 };
}

/**
 * @param {{lower: number, upper: number}} range
 * @returns {Window}
 */
export function rangeToWindow({ lower, upper }) {
  return { width: Math.max(MIN_WIDTH, upper - lower), level: (lower + upper) / 2 };
}

/**
 * MR (and anything without calibrated units): window from the robust intensity range p0.5..p99.5.
 * @param {{p0_5: number, p99_5: number, min?: number, max?: number}} stats
 * @returns {Window}
 */
export function autoWindow(stats) {
  let lower = stats.p0_5;
  let upper = stats.p99_5;
  if (!(upper > lower)) {
    // Nearly constant images: fall back to the full range so something is visible.
    lower = stats.min ?? lower;
    upper = stats.max ?? lower + 1;
  }
  return rangeToWindow({ lower, upper });
}

/**
 * The window a case opens with: CT soft tissue for CT, percentiles for everything else.
 * @param {string} modality
 * @param {{p0_5: number, p99_5: number, min?: number, max?: number} | null | undefined} stats
 * @returns {Window}
 */
export function defaultWindow(modality, stats) {
  if ((modality || '').toUpperCase() === 'CT' || !stats) {
    const { width, level } = PRESETS.soft;
    return { width, level };
  }
  return autoWindow(stats);
}

/**
 * New window after a mouse drag: right = wider, down = higher level (OHIF/Slicer convention).
 * Sensitivity scales with the current width, so fine windows (brain) stay controllable.
 * @param {Window} start window when the drag began
 * @param {number} dx pixels dragged horizontally
 * @param {number} dy pixels dragged vertically
 * @param {number} [rate] fraction of the width per pixel
 * @returns {Window}
 */
export function dragWindow(start, dx, dy, rate = 0.005) {
  const perPixel = Math.max(start.width, 10) * rate;
  return {
    width: Math.max(MIN_WIDTH, start.width + dx * perPixel),
    level: start.level + dy * perPixel,
  };
}

/**
 * Grey value 0..255 of an intensity under a window (linear ramp, clamped).
 * @param {number} value
 * @param {Window} w
 * @returns {number}
 */
export function greyValue(value, { width, level }) {
  const t = (value - (level - width / 2)) / width;
  return Math.round(255 * Math.min(1, Math.max(0, t)));
}
