import { describe, expect, it } from 'vitest';
import { applyStroke, StrokeRecorder, UndoStack } from './undo.js';

describe('undo stack', () => {
  it('undoes and redoes strokes in order and forgets redo on a new edit', () => {
    const stack = new UndoStack();
    expect(stack.undo()).toBeNull();
    stack.push({ label: 'a', patches: [] });
    stack.push({ label: 'b', patches: [] });
    expect(stack.undo().label).toBe('b');
    expect(stack.canRedo).toBe(true);
    expect(stack.redo().label).toBe('b');
    stack.undo();
    stack.push({ label: 'c', patches: [] });
    expect(stack.canRedo).toBe(false);
    expect(stack.undo().label).toBe('c');
    expect(stack.undo().label).toBe('a');
    expect(stack.canUndo).toBe(false);
  });

  it('keeps at most `limit` strokes', () => {
    const stack = new UndoStack(2);
    for (const label of ['a', 'b', 'c']) stack.push({ label, patches: [] });
    expect(stack.done.map((s) => s.label)).toEqual(['b', 'c']);
  });

  it('records the first before-value and restores pixels exactly', () => {
    const labels = new Uint8Array(2 * 4); // Z=2, slice of 4 pixels
    labels[5] = 2;
    const recorder = new StrokeRecorder('brush');
    recorder.record(1, 1, 2, 1);
    labels[5] = 1;
    recorder.record(1, 1, 1, 1); // painted twice: before stays 2
    recorder.record(0, 3, 0, 0); // no change: dropped
    const stroke = recorder.finish();
    expect(stroke.patches).toHaveLength(1);
    const stack = new UndoStack();
    stack.push(stroke);
    expect(stack.dirtySlices()).toEqual([1]);
    applyStroke(labels, 4, stack.undo(), 'before');
    expect(labels[5]).toBe(2);
    applyStroke(labels, 4, stack.redo(), 'after');
    expect(labels[5]).toBe(1);
    expect(new StrokeRecorder('x').finish()).toBeNull();
  });
});
