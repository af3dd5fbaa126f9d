import { describe, expect, it } from 'vitest';
import { cameraVectors, indexAxisDirections, planeView, planeViews, voxelToScreenCell } from './orientation.js';

// Affines map the canonical index (z, y, x, 1) to RAS+ mm: column 0 = z step, 1 = y step, 2 = x step.
const spacing = [3, 1.5, 0.8]; // sz, sy, sx
/** NIfTI stored RAS: x -> R, y -> A, z -> S (nibabel canonical). */
const RAS = [[0, 0, 0.8, -50], [0, 1.5, 0, -60], [3, 0, 0, -70], [0, 0, 0, 1]];
/** DICOM-like LPS: x -> L, y -> P, z -> S (also the e2e phantom). */
const LPS = [[0, 0, -0.8, 50], [0, -1.5, 0, 60], [3, 0, 0, -70], [0, 0, 0, 1]];
/** LAS (FSL radiological NIfTI): x -> L, y -> A, z -> S. */
const LAS = [[0, 0, -0.8, 50], [0, 1.5, 0, -60], [3, 0, 0, -70], [0, 0, 0, 1]];
/** RAS tilted 20 degrees about R (gantry tilt) and 10 about S: still axial, dominant components RAS. */
const oblique = (() => {
  const a = (20 * Math.PI) / 180;
  const b = (10 * Math.PI) / 180;
  // unit index-axis directions in RAS, then scaled by spacing
  const x = [Math.cos(b), Math.sin(b), 0];
  const y = [-Math.sin(b) * Math.cos(a), Math.cos(b) * Math.cos(a), Math.sin(a)];
  const z = [Math.sin(b) * Math.sin(a), -Math.cos(b) * Math.sin(a), Math.cos(a)];
  const cols = [z.map((v) => v * spacing[0]), y.map((v) => v * spacing[1]), x.map((v) => v * spacing[2])];
  return [0, 1, 2].map((r) => [cols[0][r], cols[1][r], cols[2][r], 0]).concat([[0, 0, 0, 1]]);
})();
/** Sagittally acquired (slices along R->L): z -> L, y -> P... rows run S->I: y -> I, x -> A. */
const SAG = [[-1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]];

const shape = [40, 100, 120]; // Z, Y, X

/**
 * Reference: patient direction (RAS unit vector) of moving one cell right / down on the screen.
 * @param {number[][]} affine
 * @param {any} view
 */
function screenSteps(affine, view) {
  const step = (axis, sign) => [0, 1, 2].map((r) => sign * affine[r][axis]);
  return { right: step(view.xAxis, view.flipX ? -1 : 1), down: step(view.yAxis, view.flipY ? -1 : 1) };
}

describe('orientation', () => {
  it('reads the dominant direction of each index axis', () => {
    expect(indexAxisDirections(RAS)).toEqual([{ world: 2, sign: 1 }, { world: 1, sign: 1 }, { world: 0, sign: 1 }]);
    expect(indexAxisDirections(LPS)).toEqual([{ world: 2, sign: 1 }, { world: 1, sign: -1 }, { world: 0, sign: -1 }]);
    expect(indexAxisDirections(LAS)).toEqual([{ world: 2, sign: 1 }, { world: 1, sign: 1 }, { world: 0, sign: -1 }]);
    expect(indexAxisDirections(oblique)).toEqual([{ world: 2, sign: 1 }, { world: 1, sign: 1 }, { world: 0, sign: 1 }]);
    // no affine: the array order of a DICOM-like volume (what the viewer showed before)
    expect(indexAxisDirections(null)).toEqual(indexAxisDirections(LPS));
  });

  it('keeps an LPS volume in array order (rows top-down, columns left-right)', () => {
    const v = planeViews(LPS);
    expect(v.axial).toMatchObject({ xAxis: 2, flipX: false, yAxis: 1, flipY: false, anatomy: 'axial' });
    expect(v.coronal).toMatchObject({ xAxis: 2, flipX: false, yAxis: 0, flipY: true, anatomy: 'coronal' });
    expect(v.sagittal).toMatchObject({ xAxis: 1, flipX: false, yAxis: 0, flipY: true, anatomy: 'sagittal' });
  });

  it('flips a RAS volume so that anterior is at the top and the patient right on the left', () => {
    const v = planeViews(RAS);
    expect(v.axial).toMatchObject({ xAxis: 2, flipX: true, yAxis: 1, flipY: true });
    expect(v.coronal).toMatchObject({ xAxis: 2, flipX: true, yAxis: 0, flipY: true });
    expect(v.sagittal).toMatchObject({ xAxis: 1, flipX: true, yAxis: 0, flipY: true });
    // the most anterior row (y = Y-1) is drawn at the top of the axial view, the rightmost column on the left
    expect(voxelToScreenCell(v.axial, shape, [0, shape[1] - 1, 0])[1]).toBe(0);
    expect(voxelToScreenCell(v.axial, shape, [0, 0, shape[2] - 1])[0]).toBe(0);
  });

  it('flips only x for LAS', () => {
    const v = planeView(LAS, 'axial');
    expect(v).toMatchObject({ xAxis: 2, flipX: false, yAxis: 1, flipY: true });
  });

  it('follows the radiological convention for every affine and plane', () => {
    for (const affine of [RAS, LPS, LAS, oblique, SAG]) {
      for (const plane of /** @type {const} */ (['axial', 'coronal', 'sagittal'])) {
        const view = planeView(affine, plane);
        const { right, down } = screenSteps(affine, view);
        if (view.anatomy === 'axial') {
          expect(right[0]).toBeLessThan(0); // towards patient left
          expect(down[1]).toBeLessThan(0); // towards posterior
          expect(view.labels).toEqual({ left: 'R', right: 'L', top: 'A', bottom: 'P' });
        } else if (view.anatomy === 'coronal') {
          expect(right[0]).toBeLessThan(0);
          expect(down[2]).toBeLessThan(0); // towards inferior
          expect(view.labels).toEqual({ left: 'R', right: 'L', top: 'S', bottom: 'I' });
        } else {
          expect(right[1]).toBeLessThan(0); // towards posterior: anterior on the left
          expect(down[2]).toBeLessThan(0);
          expect(view.labels).toEqual({ left: 'A', right: 'P', top: 'S', bottom: 'I' });
        }
      }
    }
  });

  it('names planes by their anatomy for a sagittally stored volume', () => {
    const v = planeViews(SAG);
    expect(v.axial.anatomy).toBe('sagittal'); // the z slices are sagittal images
    expect(v.coronal.anatomy).toBe('axial');
    expect(v.sagittal.anatomy).toBe('coronal');
    // z-slices: superior at the top -> y (towards I) runs down; anterior on the left -> x (towards A) flipped
    expect(v.axial).toMatchObject({ xAxis: 2, flipX: true, yAxis: 1, flipY: false });
  });

  it('gives Cornerstone3D camera vectors (right = up x normal)', () => {
    // LPS reproduces Cornerstone3D's own MPR cameras (display space = index x spacing)
    const v = planeViews(LPS);
    expect(cameraVectors(v.axial)).toMatchObject({ viewPlaneNormal: [0, 0, -1], viewUp: [0, -1, 0] });
    expect(cameraVectors(v.coronal)).toMatchObject({ viewPlaneNormal: [0, -1, 0], viewUp: [0, 0, 1] });
    expect(cameraVectors(v.sagittal)).toMatchObject({ viewPlaneNormal: [1, 0, 0], viewUp: [0, 0, 1] });
    const cross = (p, q) => [p[1] * q[2] - p[2] * q[1], p[2] * q[0] - p[0] * q[2], p[0] * q[1] - p[1] * q[0]].map((x) => x + 0);
    for (const affine of [RAS, LPS, LAS, oblique, SAG]) {
      for (const view of Object.values(planeViews(affine))) {
        const { viewPlaneNormal, viewUp, viewRight } = cameraVectors(view);
        expect(cross(viewUp, viewPlaneNormal)).toEqual(viewRight);
        // the normal is the slice axis (display axis 2 - index axis)
        expect(Math.abs(viewPlaneNormal[2 - view.slice])).toBe(1);
      }
    }
    // a RAS axial view: up = +y display (anterior), right = -x display (patient left)
    expect(cameraVectors(planeView(RAS, 'axial'))).toMatchObject({ viewUp: [0, 1, 0], viewRight: [-1, 0, 0] });
  });
});
