/**
 * The image layer: Cornerstone3D ORTHOGRAPHIC volume viewports (axial, coronal, sagittal) over one local
 * volume built from the downloaded raw voxels. This module hides Cornerstone3D from the rest of the app:
 * slice index per plane, zoom, pan, window/level, and the mapping between voxel indices and canvas pixels.
 *
 * Display space is index space scaled by spacing (coords.js); slices are chosen by moving the camera's
 * focal point along the plane normal, so a slice index here is exactly the voxel index on that axis.
 * The patient orientation is the camera's job: each viewport looks at its plane with the view-up and
 * normal from orientation.js (radiological display from the affine), so the image, and the overlay placed
 * through voxelToCanvas / canvasToVoxel, are flipped and transposed together.
 */
import { Enums, init, RenderingEngine, setVolumesForViewports, volumeLoader, cache } from '@cornerstonejs/core';
import { PLANES, voxelToWorld } from '../coords.js';
import { cameraVectors, planeViews } from '../orientation.js';
import { windowToRange } from '../windowing.js';

/** @typedef {import('../coords.js').PlaneName} PlaneName */
/** @typedef {import('../coords.js').Vec3} Vec3 */

let initialised = null;

/** World axis (x=0, y=1, z=2) that a voxel axis (z=0, y=1, x=2) maps to. */
const WORLD_AXIS = [2, 1, 0];

/**
 * Camera vectors before the affine is known (DICOM-like array order). Given as vectors, not as
 * Enums.OrientationAxis: with a named orientation Cornerstone3D's resetCamera() would snap back to it.
 */
const DEFAULT_VIEWS = planeViews(null);

/**
 * Cornerstone3D orientation vectors of a plane view.
 * @param {import('../orientation.js').PlaneView} view
 */
function orientationOf(view) {
  const { viewPlaneNormal, viewUp } = cameraVectors(view);
  return { viewPlaneNormal, viewUp };
}

export class ImageRenderer {
  /**
   * @param {Record<PlaneName, HTMLDivElement>} elements one div per plane
   */
  constructor(elements) {
    this.elements = elements;
    /** @type {PlaneName[]} */
    this.planes = /** @type {PlaneName[]} */ (Object.keys(elements));
    this.engine = null;
    this.volumeId = null;
    /** @type {Vec3} */
    this.shape = [1, 1, 1];
    /** @type {Vec3} */
    this.spacing = [1, 1, 1];
    /** @type {Record<PlaneName, import('../orientation.js').PlaneView>} how each plane sits on the screen */
    this.views = DEFAULT_VIEWS;
  }

  /**
   * Start Cornerstone3D and create the three viewports; needs no data, so it runs while the volume
   * downloads (the WebGL context and shaders are then ready when the voxels arrive).
   * @param {string} engineId
   */
  async prepare(engineId) {
    initialised ||= init();
    await initialised;
    this.engine?.destroy();
    this.engine = new RenderingEngine(engineId);
    this.engine.setViewports(
      this.planes.map((plane) => ({
        viewportId: plane,
        element: this.elements[plane],
        type: Enums.ViewportType.ORTHOGRAPHIC,
        defaultOptions: { orientation: orientationOf(DEFAULT_VIEWS[plane]), background: [0, 0, 0] },
      })),
    );
  }

  /**
   * Build the volume from the raw voxels and show it in the three viewports (after `prepare`).
   * @param {string} volumeId unique per case and content
   * @param {Int16Array | Uint16Array | Uint8Array | Float32Array} voxels (Z, Y, X) C order
   * @param {Vec3} shape (Z, Y, X)
   * @param {Vec3} spacing (sz, sy, sx)
   * @param {string} modality
   * @param {number[][] | null} [affine] 4x4 (z, y, x, 1) -> RAS+ mm: sets the display orientation
   */
  async load(volumeId, voxels, shape, spacing, modality, affine) {
    if (!this.engine) throw new Error('ImageRenderer.prepare() must run first');
    this.shape = shape;
    this.spacing = spacing;
    this.views = planeViews(affine);
    const [Z, Y, X] = shape;
    const [sz, sy, sx] = spacing;
    const bits = voxels.BYTES_PER_ELEMENT * 8;
    // A volume id without "scheme:" keeps Cornerstone from asking an image loader for VOI defaults.
    this.volumeId = volumeId.replace(/[^a-zA-Z0-9_]/g, '_');
    // Reopening the same case reuses the id: drop the old copy first.
    if (cache.getVolume(this.volumeId)) cache.removeVolumeLoadObject(this.volumeId);
    const volume = volumeLoader.createLocalVolume(this.volumeId, {
      scalarData: voxels,
      dimensions: [X, Y, Z],
      spacing: [sx, sy, sz],
      origin: [0, 0, 0],
      direction: [1, 0, 0, 0, 1, 0, 0, 0, 1],
      metadata: {
        BitsAllocated: bits,
        BitsStored: bits,
        SamplesPerPixel: 1,
        HighBit: bits - 1,
        PhotometricInterpretation: 'MONOCHROME2',
        PixelRepresentation: voxels instanceof Int16Array || voxels instanceof Float32Array ? 1 : 0,
        Modality: modality || 'OT',
        FrameOfReferenceUID: `proplabel.${this.volumeId}`,
        voiLut: [],
      },
    });
    // The texture does not know its data arrived: mark every frame as updated.
    volume.invalidate();
    await setVolumesForViewports(this.engine, [{ volumeId: this.volumeId }], this.planes);
    for (const plane of this.planes) {
      const vp = this.viewport(plane);
      vp.setOrientation(orientationOf(this.views[plane]), false);
      vp.resetCamera();
    }
  }

  /** @param {PlaneName} plane */
  viewport(plane) {
    return /** @type {any} */ (this.engine).getViewport(plane);
  }

  /** Resize canvases after layout changes. */
  resize() {
    this.engine?.resize(true, true);
  }

  /**
   * Window/level on every plane.
   * @param {{width: number, level: number}} window
   */
  setWindow(window) {
    const voiRange = windowToRange(window);
    for (const plane of this.planes) this.viewport(plane).setProperties({ voiRange });
  }

  /**
   * Current slice index of a plane (voxel index along its normal).
   * @param {PlaneName} plane
   */
  sliceIndex(plane) {
    const axis = PLANES[plane].slice;
    const focal = this.viewport(plane).getCamera().focalPoint;
    return Math.round(focal[WORLD_AXIS[axis]] / this.spacing[axis]);
  }

  /**
   * Move a plane to a slice (clamped).
   * @param {PlaneName} plane
   * @param {number} index
   */
  setSlice(plane, index) {
    const axis = PLANES[plane].slice;
    const clamped = Math.min(this.shape[axis] - 1, Math.max(0, Math.round(index)));
    const vp = this.viewport(plane);
    const camera = vp.getCamera();
    const w = WORLD_AXIS[axis];
    const delta = clamped * this.spacing[axis] - camera.focalPoint[w];
    if (Math.abs(delta) < 1e-6) return clamped;
    const focalPoint = [...camera.focalPoint];
    const position = [...camera.position];
    focalPoint[w] += delta;
    position[w] += delta;
    vp.setCamera({ focalPoint, position });
    return clamped;
  }

  /**
   * Zoom by a factor, keeping the image point under `at` (CSS px) where it is (default: the centre).
   * @param {PlaneName} plane
   * @param {number} factor > 1 zooms in
   * @param {[number, number]} [at]
   */
  zoom(plane, factor, at) {
    const vp = this.viewport(plane);
    const before = at ? vp.canvasToWorld(at) : null;
    const { parallelScale } = vp.getCamera();
    vp.setCamera({ parallelScale: Math.min(1e4, Math.max(1, parallelScale / factor)) });
    if (!at || !before) return;
    const after = vp.canvasToWorld(at);
    const camera = vp.getCamera();
    const shift = [0, 1, 2].map((i) => before[i] - after[i]);
    vp.setCamera({
      focalPoint: camera.focalPoint.map((/** @type {number} */ v, /** @type {number} */ i) => v + shift[i]),
      position: camera.position.map((/** @type {number} */ v, /** @type {number} */ i) => v + shift[i]),
    });
  }

  /**
   * Pan so that the image point under canvas point `from` moves to `to` (CSS pixels).
   * @param {PlaneName} plane
   * @param {[number, number]} from
   * @param {[number, number]} to
   */
  pan(plane, from, to) {
    const vp = this.viewport(plane);
    const a = vp.canvasToWorld(from);
    const b = vp.canvasToWorld(to);
    const camera = vp.getCamera();
    const shift = [0, 1, 2].map((i) => a[i] - b[i]);
    vp.setCamera({
      focalPoint: camera.focalPoint.map((v, i) => v + shift[i]),
      position: camera.position.map((v, i) => v + shift[i]),
    });
  }

  /** Fit every plane again (keeps slices). */
  resetView() {
    for (const plane of this.planes) {
      const index = this.sliceIndex(plane);
      this.viewport(plane).resetCamera();
      this.setSlice(plane, index);
    }
  }

  /**
   * Canvas position (CSS px) of a fractional voxel index.
   * @param {PlaneName} plane
   * @param {Vec3} zyx
   * @returns {[number, number]}
   */
  voxelToCanvas(plane, zyx) {
    return this.viewport(plane).worldToCanvas(voxelToWorld(zyx, this.spacing));
  }

  /**
   * Fractional voxel index (z, y, x) under a canvas point (CSS px); the slice axis is the current slice.
   * @param {PlaneName} plane
   * @param {[number, number]} point
   * @returns {Vec3}
   */
  canvasToVoxel(plane, point) {
    const world = this.viewport(plane).canvasToWorld(point);
    const [sz, sy, sx] = this.spacing;
    /** @type {Vec3} */
    const zyx = [world[2] / sz, world[1] / sy, world[0] / sx];
    const axis = PLANES[plane].slice;
    zyx[axis] = this.sliceIndex(plane);
    return zyx;
  }

  /**
   * Draw on the next frame.
   * @param {PlaneName[]} [planes] only these viewports (default: all)
   */
  render(planes) {
    if (!this.engine) return;
    if (planes) this.engine.renderViewports(planes);
    else this.engine.render();
  }

  destroy() {
    this.engine?.destroy();
    this.engine = null;
    if (this.volumeId && cache.getVolume(this.volumeId)) cache.removeVolumeLoadObject(this.volumeId);
  }
}
