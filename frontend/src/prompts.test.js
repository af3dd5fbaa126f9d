import { describe, expect, it } from 'vitest';
import { boundsFromMarkers, correctionClicks, editedSlicesByLabel } from './prompts.js';

describe('boundsFromMarkers', () => {
  it('sends nothing without markers', () => {
    expect(boundsFromMarkers({ top: null, bottom: null }, true, 5, 10)).toEqual({ bounds: {} });
  });

  it('maps top/bottom to z_max/z_min by display direction', () => {
    expect(boundsFromMarkers({ top: 8, bottom: 2 }, true, 5, 10)).toEqual({ bounds: { z_min: 2, z_max: 8 } });
    expect(boundsFromMarkers({ top: 2, bottom: 8 }, false, 5, 10)).toEqual({ bounds: { z_min: 2, z_max: 8 } });
    expect(boundsFromMarkers({ top: 8, bottom: null }, true, 5, 10)).toEqual({ bounds: { z_max: 8 } });
    // swapped by the user: still an interval
    expect(boundsFromMarkers({ top: 2, bottom: 8 }, true, 5, 10)).toEqual({ bounds: { z_min: 2, z_max: 8 } });
  });

  it('refuses a prompt outside the boundaries in words', () => {
    const result = boundsFromMarkers({ top: 4, bottom: null }, true, 5, 10);
    expect('error' in result && result.error).toMatch(/slice 6 lies outside/);
  });
});

describe('editedSlicesByLabel', () => {
  it('groups touched slices per label', () => {
    const strokes = [
      { value: 1, patches: [{ z: 4 }, { z: 2 }] },
      { value: 2, patches: [{ z: 7 }] },
      { value: 1, patches: [{ z: 4 }] },
    ];
    expect(editedSlicesByLabel(strokes)).toEqual(new Map([[1, [2, 4]], [2, [7]]]));
  });
});

describe('correctionClicks', () => {
  it('sends the earlier clicks on the same slice with the new one, in order', () => {
    const added = { z: 4, y: 10, x: 12, positive: true };
    const elsewhere = { z: 5, y: 10, x: 12, positive: false };
    const removal = { z: 4, y: 20, x: 3, positive: false };
    expect(correctionClicks([added, elsewhere], removal)).toEqual([added, removal]);
  });

  it('sends the new click alone on a slice not clicked before', () => {
    const click = { z: 2, y: 1, x: 1, positive: false };
    expect(correctionClicks([{ z: 3, y: 1, x: 1, positive: true }], click)).toEqual([click]);
  });
});
