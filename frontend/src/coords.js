/**
 * Coordinates between voxel indices (z, y, x) of the canonical (Z, Y, X) array, the viewer's world space
 * (mm) and a plane's 2D slice image (row, col).
 *
 * The viewer's display space is index space scaled by spacing: world = (x*sx, y*sy, z*sz) with origin 0 and
 * identity direction. That keeps every prompt exactly on the voxel grid the server uses (no resampling, and
 * voxel indices sent to the server are canonical array indices). The patient orientation from the affine
 * only decides how each plane is laid out on the screen (orientation.js: radiological flips / transposes via
 * the camera), so slice images here are always in array order: (row, col) = the plane's (row, col) axes.
 */

/** @typedef {'axial' | 'coronal' | 'sagittal'} PlaneName */
/** @typedef {[number, number, number]} Vec3 */

/**
 * For each plane: which voxel axis (0=z, 1=y, 2=x) is the slice axis, which runs along the slice image's
 * rows and which along its columns.
 * @type {Record<PlaneName, {slice: number, row: number, col: number}>}
 */
export const PLANES = {
  axial: { slice: 0, row: 1, col: 2 },
  coronal: { slice: 1, row: 0, col: 2 },
  sagittal: { slice: 2, row: 0, col: 1 },
};

/**
 * Voxel index (z, y, x) -> world (x, y, z) in mm (fractional indices allowed, e.g. voxel corners).
 * @param {Vec3} zyx
 * @param {Vec3} spacing (sz, sy, sx)
 * @returns {Vec3}
 */
export function voxelToWorld([z, y, x], [sz, sy, sx]) {
  return [x * sx, y * sy, z * sz];
}

/**
 * World (x, y, z) mm -> nearest voxel index (z, y, x), or null when outside the volume.
 * @param {ArrayLike<number>} world
 * @param {Vec3} spacing (sz, sy, sx)
 * @param {Vec3} shape (Z, Y, X)
 * @returns {Vec3 | null}
 */
export function worldToVoxel(world, [sz, sy, sx], [Z, Y, X]) {
  const z = Math.round(world[2] / sz);
  const y = Math.round(world[1] / sy);
  const x = Math.round(world[0] / sx);
  if (z < 0 || y < 0 || x < 0 || z >= Z || y >= Y || x >= X) return null;
  return [z, y, x];
}

/**
 * Clamp a voxel index into the volume.
 * @param {Vec3} zyx
 * @param {Vec3} shape
 * @returns {Vec3}
 */
export function clampVoxel(zyx, shape) {
  return /** @type {Vec3} */ (zyx.map((v, i) => Math.min(shape[i] - 1, Math.max(0, Math.round(v)))));
}

/**
 * Size of a plane's slice image.
 * @param {PlaneName} plane
 * @param {Vec3} shape
 * @returns {{rows: number, cols: number, count: number}} count = number of slices along the plane normal
 */
export function planeSize(plane, shape) {
  const p = PLANES[plane];
  return { rows: shape[p.row], cols: shape[p.col], count: shape[p.slice] };
}

/**
 * Voxel index of a pixel (row, col) of slice `index` in `plane`.
 * @param {PlaneName} plane
 * @param {number} index
 * @param {number} row
 * @param {number} col
 * @returns {Vec3}
 */
export function planeToVoxel(plane, index, row, col) {
  const p = PLANES[plane];
  const out = /** @type {Vec3} */ ([0, 0, 0]);
  out[p.slice] = index;
  out[p.row] = row;
  out[p.col] = col;
  return out;
}

/**
 * The (index, row, col) of a voxel in a plane.
 * @param {PlaneName} plane
 * @param {Vec3} zyx
 */
export function voxelToPlane(plane, zyx) {
  const p = PLANES[plane];
  return { index: zyx[p.slice], row: zyx[p.row], col: zyx[p.col] };
}

/**
 * Copy one slice of a (Z, Y, X) array into a (rows, cols) array for `plane`.
 * @template {Uint8Array | Int16Array | Uint16Array | Float32Array} T
 * @param {T} volume
 * @param {Vec3} shape
 * @param {PlaneName} plane
 * @param {number} index
 * @param {T} [out]
 * @returns {T}
 */
export function extractSlice(volume, shape, plane, index, out) {
  const [Z, Y, X] = shape;
  const { rows, cols } = planeSize(plane, shape);
  const dest = out || /** @type {T} */ (new /** @type {any} */ (volume.constructor)(rows * cols));
  if (plane === 'axial') {
    dest.set(volume.subarray(index * Y * X, (index + 1) * Y * X));
  } else if (plane === 'coronal') {
    for (let z = 0; z < Z; z++) dest.set(volume.subarray(z * Y * X + index * X, z * Y * X + index * X + X), z * X);
  } else {
    for (let z = 0; z < Z; z++) {
      const base = z * Y * X + index;
      for (let y = 0; y < Y; y++) dest[z * Y + y] = volume[base + y * X];
    }
  }
  return dest;
}

/**
 * 2D affine (canvas `setTransform` order a, b, c, d, e, f) that maps slice-image pixel space onto the
 * canvas, from where three points land: the image origin corner, one pixel along the columns, one along
 * the rows. Lets the overlay follow whatever zoom, pan and flips the image view uses.
 * @param {[number, number]} origin canvas position of image point (0, 0) (top-left corner of pixel 0,0)
 * @param {[number, number]} alongCol canvas position of image point (col + 1)
 * @param {[number, number]} alongRow canvas position of image point (row + 1)
 * @returns {[number, number, number, number, number, number]}
 */
export function affineFromPoints(origin, alongCol, alongRow) {
  return [
    alongCol[0] - origin[0],
    alongCol[1] - origin[1],
    alongRow[0] - origin[0],
    alongRow[1] - origin[1],
    origin[0],
    origin[1],
  ];
}

/**
 * Inverse of an affine from `affineFromPoints`: canvas point -> fractional image (col, row).
 * @param {[number, number, number, number, number, number]} m
 * @param {number} cx
 * @param {number} cy
 * @returns {[number, number]} [col, row] (floor to get the pixel)
 */
export function invertAffinePoint([a, b, c, d, e, f], cx, cy) {
  const det = a * d - b * c;
  const px = cx - e;
  const py = cy - f;
  return [(d * px - c * py) / det, (-b * px + a * py) / det];
}

/**
 * Box prompt bounds (inclusive) from two corner pixels in one slice image.
 * @param {{row: number, col: number}} p
 * @param {{row: number, col: number}} q
 */
export function boxFromCorners(p, q) {
  return {
    r0: Math.min(p.row, q.row),
    r1: Math.max(p.row, q.row),
    c0: Math.min(p.col, q.col),
    c1: Math.max(p.col, q.col),
  };
}

/**
 * Pixels of a disc brush of `radius` voxels centred at (row, col), clipped to the image.
 * @param {number} row
 * @param {number} col
 * @param {number} radius
 * @param {number} rows
 * @param {number} cols
 * @returns {number[]} flat pixel indices row * cols + col
 */
export function discPixels(row, col, radius, rows, cols) {
  const out = [];
  const r = Math.max(0, radius);
  const r2 = r * r + 0.5; // a little over r² so small brushes are round, not square
  for (let dr = -Math.ceil(r); dr <= Math.ceil(r); dr++) {
    for (let dc = -Math.ceil(r); dc <= Math.ceil(r); dc++) {
      if (dr * dr + dc * dc > r2) continue;
      const rr = row + dr;
      const cc = col + dc;
      if (rr >= 0 && cc >= 0 && rr < rows && cc < cols) out.push(rr * cols + cc);
    }
  }
  return out;
}
