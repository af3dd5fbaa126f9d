import { describe, expect, it } from 'vitest';
import { backoffDelay, LiveState } from './live.js';

const job = (id, extra = {}) => ({ id, status: 'running', label: 7, label_value: 2, ...extra });

describe('LiveState', () => {
  it('paints streamed slices once and tracks progress', () => {
    const live = new LiveState();
    expect(live.apply({ type: 'state', current_revision: 5, job: null, slices: [] })).toEqual([{ type: 'load-revision', revision: 5 }]);
    live.apply({ type: 'job.started', job: job(1) });
    expect(live.active).toBe(true);
    const a = live.apply({ type: 'slice', job: 1, label: 7, label_value: 2, z: 10, rle: [4], direction: 'prompt', done_up: 0, done_down: 0 });
    expect(a).toEqual([{ type: 'paint', job: 1, z: 10, rle: [4], labelValue: 2, labelId: 7 }]);
    live.apply({ type: 'slice', job: 1, label_value: 2, z: 11, rle: [4], direction: 'up', done_up: 1, done_down: 0 });
    expect(live.doneUp).toBe(1);
    // a reconnect replays slices through `state`: only new ones are painted
    const replay = live.apply({ type: 'state', current_revision: 5, job: job(1), slices: [{ z: 10, rle: [4] }, { z: 12, rle: [4] }] });
    expect(replay.map((x) => x.type === 'paint' && x.z)).toEqual([12]);
    const done = live.apply({ type: 'job.done', job: job(1, { status: 'done' }), revision: 6 });
    expect(done[0]).toEqual({ type: 'load-revision', revision: 6 });
    expect(live.active).toBe(false);
    expect(live.currentRevision).toBe(6);
  });

  it('repaints a slice the refiner re-drew, but not a reconnect duplicate', () => {
    const live = new LiveState();
    live.apply({ type: 'job.started', job: job(4) });
    live.apply({ type: 'slice', job: 4, label_value: 2, z: 8, rle: [4], direction: 'up' });
    expect(live.apply({ type: 'slice', job: 4, label_value: 2, z: 8, rle: [4], direction: 'up' })).toEqual([]);
    const refined = live.apply({ type: 'slice', job: 4, label: 7, label_value: 2, z: 8, rle: [3, 2], direction: 'refined' });
    expect(refined).toEqual([{ type: 'paint', job: 4, z: 8, rle: [3, 2], labelValue: 2, labelId: 7 }]);
  });

  it('ignores stale jobs and resets the live layer for a new one', () => {
    const live = new LiveState();
    live.apply({ type: 'job.started', job: job(2) });
    live.apply({ type: 'slice', job: 2, label_value: 2, z: 3, rle: [4] });
    expect(live.apply({ type: 'slice', job: 1, z: 4, rle: [4] })).toEqual([]);
    const next = live.apply({ type: 'job.started', job: job(3) });
    expect(next[0]).toEqual({ type: 'reset-live' });
    expect(live.apply({ type: 'job.done', job: job(2), revision: 9 })).toEqual([]);
  });

  it('survives the POST answer arriving after a fast job already finished', () => {
    const live = new LiveState();
    live.apply({ type: 'state', current_revision: 1, job: null, slices: [] });
    // worker events first (job 7 never announced as queued to us) ...
    live.apply({ type: 'slice', job: 7, label: 7, label_value: 2, z: 5, rle: [4] });
    const done = live.apply({ type: 'job.done', job: job(7, { status: 'done' }), revision: 2 });
    expect(done[0]).toEqual({ type: 'load-revision', revision: 2 });
    // ... then the REST answer with the job as it was when created
    expect(live.apply({ type: 'job.queued', job: job(7, { status: 'queued' }) })).toEqual([]);
    expect(live.job.status).toBe('done');
    expect(live.active).toBe(false);
  });

  it('explains failures and cancellations in words', () => {
    const live = new LiveState();
    live.apply({ type: 'job.started', job: job(4) });
    const failed = live.apply({ type: 'job.failed', job: job(4), error: 'worker lost twice' });
    expect(failed).toContainEqual({ type: 'reset-live' });
    expect(failed.find((x) => x.type === 'status').text).toMatch(/Propagation failed: worker lost twice/);
    live.apply({ type: 'job.started', job: job(5) });
    expect(live.apply({ type: 'job.cancelled', job: job(5) }).find((x) => x.type === 'status').text).toMatch(/cancelled/);
  });

  it('follows undo/redo revision events and status changes', () => {
    const live = new LiveState();
    live.apply({ type: 'state', current_revision: 1, job: null, slices: [] });
    expect(live.apply({ type: 'revision', current_revision: 1 })).toEqual([]);
    expect(live.apply({ type: 'revision', current_revision: 2 })).toEqual([{ type: 'load-revision', revision: 2 }]);
    expect(live.apply({ type: 'case.status', status: 'submitted' })).toEqual([{ type: 'case-status', status: 'submitted' }]);
  });

  it('backs off with a cap', () => {
    expect(backoffDelay(0, () => 0.5)).toBe(250);
    expect(backoffDelay(3, () => 0.5)).toBe(2000);
    expect(backoffDelay(20, () => 0.5)).toBe(10000);
  });
});
