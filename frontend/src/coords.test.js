import { describe, expect, it } from 'vitest';
import {
  affineFromPoints, boxFromCorners, clampVoxel, discPixels, extractSlice, invertAffinePoint, planeSize,
  planeToVoxel, voxelToPlane, voxelToWorld, worldToVoxel,
} from './coords.js';

const shape = [3, 4, 5]; // Z, Y, X
const spacing = [3, 1.5, 0.5];
const volume = Uint16Array.from({ length: 60 }, (_, i) => i); // value = z*20 + y*5 + x

describe('coords', () => {
  it('maps voxels to world mm and back', () => {
    expect(voxelToWorld([2, 3, 4], spacing)).toEqual([2, 4.5, 6]);
    expect(worldToVoxel([2, 4.5, 6], spacing, shape)).toEqual([2, 3, 4]);
    expect(worldToVoxel([2.2, 4.4, 5.2], spacing, shape)).toEqual([2, 3, 4]);
    expect(worldToVoxel([-1, 0, 0], spacing, shape)).toBeNull();
    expect(worldToVoxel([0, 0, 9], spacing, shape)).toBeNull();
    expect(clampVoxel([-2, 9, 2.4], shape)).toEqual([0, 3, 2]);
  });

  it('knows each plane', () => {
    expect(planeSize('axial', shape)).toEqual({ rows: 4, cols: 5, count: 3 });
    expect(planeSize('coronal', shape)).toEqual({ rows: 3, cols: 5, count: 4 });
    expect(planeSize('sagittal', shape)).toEqual({ rows: 3, cols: 4, count: 5 });
    for (const plane of ['axial', 'coronal', 'sagittal']) {
      const v = planeToVoxel(plane, 1, 2, 0);
      const back = voxelToPlane(plane, v);
      expect([back.index, back.row, back.col]).toEqual([1, 2, 0]);
    }
  });

  it('extracts slices in every plane', () => {
    const at = (z, y, x) => z * 20 + y * 5 + x;
    const axial = extractSlice(volume, shape, 'axial', 2);
    expect(axial[1 * 5 + 3]).toBe(at(2, 1, 3));
    const coronal = extractSlice(volume, shape, 'coronal', 1);
    expect(coronal.length).toBe(15);
    expect(coronal[2 * 5 + 4]).toBe(at(2, 1, 4));
    const sagittal = extractSlice(volume, shape, 'sagittal', 3);
    expect(sagittal[1 * 4 + 2]).toBe(at(1, 2, 3));
  });

  it('inverts the overlay affine (zoom, pan and a flip)', () => {
    // pixels are 4 canvas px wide, rows go up (flip), origin at (100, 200)
    const m = affineFromPoints([100, 200], [104, 200], [100, 194]);
    expect(m).toEqual([4, 0, 0, -6, 100, 200]);
    const [col, row] = invertAffinePoint(m, 110, 185);
    expect(col).toBeCloseTo(2.5);
    expect(row).toBeCloseTo(2.5);
  });

  it('builds inclusive boxes and brush discs', () => {
    expect(boxFromCorners({ row: 5, col: 1 }, { row: 2, col: 7 })).toEqual({ r0: 2, r1: 5, c0: 1, c1: 7 });
    expect(discPixels(0, 0, 0, 4, 4)).toEqual([0]);
    expect(discPixels(1, 1, 1, 4, 4).sort((a, b) => a - b)).toEqual([1, 4, 5, 6, 9]);
  });
});
