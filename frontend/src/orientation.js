/**
 * Radiological display orientation from the volume's affine (pure, no Cornerstone3D).
 *
 * The server's `affine` maps the canonical index column vector (z, y, x, 1) to world RAS+ mm. The viewer
 * still renders in display space = index x spacing (coords.js: voxels stay on the server's grid), and only
 * chooses, per plane, which in-plane index axis runs along the screen's x and y and in which direction, so
 * that every volume looks the same whatever its storage order (like OHIF / 3D Slicer):
 *
 *   axial    (normal S/I): anterior at the top, patient's right on the screen's left
 *   coronal  (normal A/P): superior at the top, patient's right on the screen's left
 *   sagittal (normal R/L): superior at the top, anterior on the screen's left
 *
 * A plane keeps its index definition (axial = the z slices, as the server and the tools expect); which
 * display rule it follows comes from the world direction of its slice axis. Oblique volumes use the dominant
 * world component of each index axis (the best one-to-one assignment, like nibabel's io_orientation).
 */

import { PLANES } from './coords.js';

/** @typedef {import('./coords.js').PlaneName} PlaneName */
/** @typedef {'axial' | 'coronal' | 'sagittal'} Anatomy */
/** @typedef {[number, number, number]} Vec3 */

/**
 * @typedef {object} IndexAxisDirection
 * @property {number} world world axis the index axis mostly runs along: 0 = R-L, 1 = A-P, 2 = S-I
 * @property {1 | -1} sign +1 when increasing the index moves towards R, A or S; -1 towards L, P or I
 */

/**
 * @typedef {object} PlaneView
 * @property {number} slice index axis (0=z, 1=y, 2=x) along the plane normal
 * @property {number} xAxis index axis running along the screen's x (left -> right)
 * @property {boolean} flipX true when that index increases towards the screen's left
 * @property {number} yAxis index axis running along the screen's y (top -> bottom)
 * @property {boolean} flipY true when that index increases towards the screen's top
 * @property {Anatomy} anatomy which radiological rule the plane follows
 * @property {{left: string, right: string, top: string, bottom: string}} labels patient directions at the edges
 */

const POSITIVE = ['R', 'A', 'S'];
const NEGATIVE = ['L', 'P', 'I'];

/** Display rule per anatomical plane: world axis and direction (+1 = towards R/A/S) of screen right and down. */
const RULES = /** @type {Record<Anatomy, {right: [number, number], down: [number, number]}>} */ ({
  axial: { right: [0, -1], down: [1, -1] }, // right -> patient left, down -> posterior
  coronal: { right: [0, -1], down: [2, -1] }, // right -> patient left, down -> inferior
  sagittal: { right: [1, -1], down: [2, -1] }, // right -> posterior, down -> inferior
});

/** Anatomical plane whose normal is a world axis. */
const ANATOMY_OF_NORMAL = /** @type {Anatomy[]} */ (['sagittal', 'coronal', 'axial']);

const PERMUTATIONS = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];

/**
 * For each index axis (z, y, x): the world axis it mostly runs along and in which direction.
 * @param {ArrayLike<ArrayLike<number>> | null | undefined} affine 4x4, rows; (z, y, x, 1) -> RAS+ mm
 * @returns {[IndexAxisDirection, IndexAxisDirection, IndexAxisDirection]}
 */
export function indexAxisDirections(affine) {
  // Column i of the 3x3 part is the world step of index axis i; normalise so spacing does not weigh in.
  const columns = [0, 1, 2].map((i) => {
    const c = [0, 1, 2].map((r) => Number(affine?.[r]?.[i]) || 0);
    const norm = Math.hypot(...c);
    return norm > 0 ? c.map((v) => v / norm) : c;
  });
  const usable = columns.every((c) => c.some((v) => v !== 0));
  // Without a usable affine: the array order of a DICOM-like (LPS) volume, i.e. the viewer's old display.
  if (!usable) return [{ world: 2, sign: 1 }, { world: 1, sign: -1 }, { world: 0, sign: -1 }];
  let best = PERMUTATIONS[0];
  let bestScore = -1;
  for (const p of PERMUTATIONS) {
    const score = p.reduce((sum, w, i) => sum + Math.abs(columns[i][w]), 0);
    if (score > bestScore + 1e-9) {
      best = p;
      bestScore = score;
    }
  }
  return /** @type {any} */ (best.map((w, i) => ({ world: w, sign: columns[i][w] < 0 ? -1 : 1 })));
}

/**
 * How one plane is laid out on the screen.
 * @param {ArrayLike<ArrayLike<number>> | null | undefined} affine
 * @param {PlaneName} plane
 * @returns {PlaneView}
 */
export function planeView(affine, plane) {
  const dirs = indexAxisDirections(affine);
  const { slice, row, col } = PLANES[plane];
  const anatomy = ANATOMY_OF_NORMAL[dirs[slice].world];
  const rule = RULES[anatomy];
  const inPlane = [row, col];
  const xAxis = inPlane.find((a) => dirs[a].world === rule.right[0]) ?? col;
  const yAxis = inPlane.find((a) => a !== xAxis) ?? row;
  const flipX = dirs[xAxis].sign * rule.right[1] < 0;
  const flipY = dirs[yAxis].sign * rule.down[1] < 0;
  const letter = (/** @type {number} */ world, /** @type {number} */ direction) => (direction > 0 ? POSITIVE : NEGATIVE)[world];
  return {
    slice,
    xAxis,
    flipX,
    yAxis,
    flipY,
    anatomy,
    labels: {
      right: letter(rule.right[0], rule.right[1]),
      left: letter(rule.right[0], -rule.right[1]),
      bottom: letter(rule.down[0], rule.down[1]),
      top: letter(rule.down[0], -rule.down[1]),
    },
  };
}

/**
 * All three planes.
 * @param {ArrayLike<ArrayLike<number>> | null | undefined} affine
 * @returns {Record<PlaneName, PlaneView>}
 */
export function planeViews(affine) {
  return {
    axial: planeView(affine, 'axial'),
    coronal: planeView(affine, 'coronal'),
    sagittal: planeView(affine, 'sagittal'),
  };
}

/**
 * Camera vectors in the viewer's display space (x, y, z) = (x*sx, y*sy, z*sz) that show a plane as `view`
 * says. Screen right = viewUp x viewPlaneNormal (Cornerstone3D / VTK), so the normal is right x up.
 * @param {PlaneView} view
 * @returns {{viewPlaneNormal: Vec3, viewUp: Vec3, viewRight: Vec3}}
 */
export function cameraVectors(view) {
  const axisVector = (/** @type {number} */ indexAxis, /** @type {boolean} */ negate) => {
    const v = /** @type {Vec3} */ ([0, 0, 0]);
    v[2 - indexAxis] = negate ? -1 : 1; // index axis z=0, y=1, x=2 -> display axis x=0, y=1, z=2
    return v;
  };
  const viewRight = axisVector(view.xAxis, view.flipX);
  const viewUp = axisVector(view.yAxis, !view.flipY); // screen y grows downwards: up is minus "down"
  const [a, b, c] = viewRight;
  const [d, e, f] = viewUp;
  /** @type {Vec3} */
  const viewPlaneNormal = [b * f - c * e, c * d - a * f, a * e - b * d];
  return { viewPlaneNormal: /** @type {Vec3} */ (viewPlaneNormal.map((v) => v + 0)), viewUp, viewRight };
}

/**
 * Where a fractional in-plane pixel (row, col) of a plane's slice image lands on a screen of the image's
 * displayed size, in units of voxels (no spacing, zoom or pan): [screenX, screenY]. The reference for tests.
 * @param {PlaneView} view
 * @param {import('./coords.js').Vec3} shape (Z, Y, X)
 * @param {import('./coords.js').Vec3} zyx voxel index
 * @returns {[number, number]}
 */
export function voxelToScreenCell(view, shape, zyx) {
  const x = view.flipX ? shape[view.xAxis] - 1 - zyx[view.xAxis] : zyx[view.xAxis];
  const y = view.flipY ? shape[view.yAxis] - 1 - zyx[view.yAxis] : zyx[view.yAxis];
  return [x, y];
}
