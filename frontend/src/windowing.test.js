import { describe, expect, it } from 'vitest';
import { autoWindow, defaultWindow, dragWindow, greyValue, PRESETS, rangeToWindow, windowToRange } from './windowing.js';

describe('windowing', () => {
  it('has the clinical presets', () => {
    expect(PRESETS.soft).toMatchObject({ width: 400, level: 40 });
    expect(PRESETS.lung).toMatchObject({ width: 1500, level: -600 });
    expect(PRESETS.bone).toMatchObject({ width: 1800, level: 400 });
    expect(PRESETS.brain).toMatchObject({ width: 80, level: 40 });
  });

  it('converts between window and range', () => {
    expect(windowToRange({ width: 400, level: 40 })).toEqual({ lower: -160, upper: 240 });
    expect(rangeToWindow({ lower: -160, upper: 240 })).toEqual({ width: 400, level: 40 });
    expect(rangeToWindow({ lower: 5, upper: 5 }).width).toBe(1);
  });

  it('opens CT with soft tissue and MR from percentiles', () => {
    expect(defaultWindow('CT', { p0_5: -1000, p99_5: 1000 })).toEqual({ width: 400, level: 40 });
    expect(defaultWindow('MR', { p0_5: 10, p99_5: 410 })).toEqual({ width: 400, level: 210 });
    expect(autoWindow({ p0_5: 7, p99_5: 7, min: 0, max: 100 })).toEqual({ width: 100, level: 50 });
  });

  it('drags: right widens, down raises the level, width never below 1', () => {
    const w = dragWindow({ width: 400, level: 40 }, 100, 50);
    expect(w.width).toBeCloseTo(600);
    expect(w.level).toBeCloseTo(140);
    expect(dragWindow({ width: 10, level: 0 }, -10000, 0).width).toBe(1);
  });

  it('maps intensities to grey', () => {
    const soft = { width: 400, level: 40 };
    expect(greyValue(-1000, soft)).toBe(0);
    expect(greyValue(40, soft)).toBe(128);
    expect(greyValue(3000, soft)).toBe(255);
  });
});
