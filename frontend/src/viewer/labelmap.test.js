import { describe, expect, it } from 'vitest';
import { encodeRle } from '../maskcodec.js';
import { Labelmap, labelVolumesMl, parseColor } from './labelmap.js';

describe('labelmap', () => {
  it('parses colours and measures volumes', () => {
    expect(parseColor('#e6194b')).toEqual([230, 25, 75]);
    expect(parseColor('nope')).toEqual([255, 0, 0]);
    const labels = Uint8Array.from([0, 1, 1, 2]);
    const ml = labelVolumesMl(labels, [2, 5, 10]); // 100 mm3 per voxel
    expect(ml.get(1)).toBeCloseTo(0.2);
    expect(ml.get(2)).toBeCloseTo(0.1);
    expect(ml.has(0)).toBe(false);
  });

  it('lets streamed slices replace their label on delivered slices only', () => {
    const map = new Labelmap([2, 2, 2]);
    map.setLabels(Uint8Array.from([1, 1, 2, 0, 1, 0, 0, 0]));
    map.paintLive(0, encodeRle([0, 0, 1, 1]), 1);
    // z=0: old label-1 pixels replaced by the live mask; label 2 under the live mask is kept (server merge)
    expect(Array.from(map.composite('axial', 0))).toEqual([0, 0, 2, 1]);
    // z=1 not delivered: unchanged
    expect(Array.from(map.composite('axial', 1))).toEqual([1, 0, 0, 0]);
    // coronal row y=1 spans z=0..1 (rows) and x (cols)
    expect(Array.from(map.composite('coronal', 1))).toEqual([2, 1, 0, 0]);
    map.clearLive();
    expect(Array.from(map.composite('axial', 0))).toEqual([1, 1, 2, 0]);
  });
});
