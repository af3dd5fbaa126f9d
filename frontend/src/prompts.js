/**
 * Small rules behind the prompt and save requests (pure, unit-tested).
 */

/**
 * z_min / z_max of a propagation from the top/bottom boundary markers. "Top" is the boundary drawn
 * higher on the coronal view, whichever z direction that is for the volume.
 * @param {{top: number | null, bottom: number | null}} markers slice indices
 * @param {boolean} upIsHighZ whether higher z is drawn higher on the coronal view
 * @param {number} promptZ
 * @param {number} depth number of slices
 * @returns {{bounds: {z_min?: number, z_max?: number}} | {error: string}}
 */
export function boundsFromMarkers({ top, bottom }, upIsHighZ, promptZ, depth) {
  const high = upIsHighZ ? top : bottom;
  const low = upIsHighZ ? bottom : top;
  /** @type {{z_min?: number, z_max?: number}} */
  const bounds = {};
  if (low !== null) bounds.z_min = low;
  if (high !== null) bounds.z_max = high;
  if (bounds.z_min !== undefined && bounds.z_max !== undefined && bounds.z_min > bounds.z_max) {
    [bounds.z_min, bounds.z_max] = [bounds.z_max, bounds.z_min];
  }
  if ((bounds.z_min ?? 0) > promptZ || (bounds.z_max ?? depth - 1) < promptZ) {
    return {
      error: `The prompt on slice ${promptZ + 1} lies outside the top/bottom boundaries: move a boundary (T / Y toggles it) first.`,
    };
  }
  return { bounds };
}

/**
 * Which slices each label's unsaved strokes touched (one revision is saved per label).
 * @param {{value: number, patches: {z: number}[]}[]} strokes
 * @returns {Map<number, number[]>} label value -> sorted slice indices
 */
export function editedSlicesByLabel(strokes) {
  /** @type {Map<number, Set<number>>} */
  const byLabel = new Map();
  for (const stroke of strokes) {
    let slices = byLabel.get(stroke.value);
    if (!slices) {
      slices = new Set();
      byLabel.set(stroke.value, slices);
    }
    for (const patch of stroke.patches) slices.add(patch.z);
  }
  return new Map([...byLabel].map(([value, slices]) => [value, [...slices].sort((a, b) => a - b)]));
}

/**
 * The clicks a correction request carries: the new click and the earlier corrections on its slice (since
 * the object's prompt). The corrections network reads a slice's clicks together; a lone negative click on a
 * slice that a positive one just fixed reads as "the object ends before this slice" and empties it
 * (on the shared TotalSegmentator MR, 3 clicks after a box: Dice 0.729 with the newest click alone, 0.757
 * with the slice's clicks).
 * @param {{z: number, y: number, x: number, positive: boolean}[]} earlier corrections since the prompt
 * @param {{z: number, y: number, x: number, positive: boolean}} click the new one
 */
export function correctionClicks(earlier, click) {
  return [...earlier.filter((previous) => previous.z === click.z), click];
}
