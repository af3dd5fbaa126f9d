import { describe, expect, it } from 'vitest';
import { decodeRle, encodeLabel, encodeRle, paintRle, validateRle } from './maskcodec.js';

describe('maskcodec', () => {
  it('matches the contract example', () => {
    expect(encodeRle([0, 1, 1, 1, 0, 0])).toEqual([1, 3, 2]);
    expect(Array.from(decodeRle([1, 3, 2], 6))).toEqual([0, 1, 1, 1, 0, 0]);
  });

  it('opens with a zero background run when the first pixel is foreground', () => {
    expect(encodeRle([1, 1, 0])).toEqual([0, 2, 1]);
    expect(encodeRle(new Uint8Array(4))).toEqual([4]);
    expect(encodeRle([])).toEqual([0]);
  });

  it('round-trips random masks', () => {
    for (let trial = 0; trial < 20; trial++) {
      const mask = Uint8Array.from({ length: 257 }, () => (Math.random() < 0.3 ? 1 : 0));
      expect(Array.from(decodeRle(encodeRle(mask), mask.length))).toEqual(Array.from(mask));
    }
  });

  it('refuses bad runs with a readable reason', () => {
    expect(validateRle([1, 2], 4)).toMatch(/sum to 3/);
    expect(validateRle([1, -1, 4], 4)).toMatch(/negative/);
    expect(validateRle([1.5, 2.5], 4)).toMatch(/integers/);
    expect(validateRle([], 0)).toMatch(/empty/);
    expect(validateRle('x', 1)).toMatch(/list/);
    expect(() => decodeRle([5], 4)).toThrow(/sum to 5/);
  });

  it('paints one label into a slice without touching other or locked labels', () => {
    const slice = Uint8Array.from([2, 0, 3, 1, 1, 0]);
    paintRle(slice, [0, 3, 3], 1, { locked: new Set([3]) });
    // foreground on pixels 0..2: 2 (not locked) is overwritten, 3 (locked) kept; old 1s outside cleared
    expect(Array.from(slice)).toEqual([1, 1, 3, 0, 0, 0]);
    expect(encodeLabel(slice, 1)).toEqual([0, 2, 4]);
  });
});
