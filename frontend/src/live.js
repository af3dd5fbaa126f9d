/**
 * Pure bookkeeping of a case's live propagation, fed with WebSocket events (docs/ARCHITECTURE.md):
 * which job is shown, which slices of it already arrived (duplicates after a reconnect are dropped),
 * progress per direction, and what the viewer must do next. No DOM, no sockets: unit-tested.
 */

/**
 * @typedef {{id: number, status: string, label?: number, label_value?: number, queue_position?: number|null,
 *   error?: string, kind?: string}} Job
 * @typedef {{type: 'paint', job: number, z: number, rle: number[], labelValue: number|null, labelId: number|null}
 *   | {type: 'reset-live'}
 *   | {type: 'load-revision', revision: number | null}
 *   | {type: 'status', level: 'info'|'error', text: string}
 *   | {type: 'case-status', status: string}} Action
 */

export class LiveState {
  constructor() {
    /** @type {Job | null} */
    this.job = null;
    /** @type {Set<number>} z of slices painted for the current job */
    this.seen = new Set();
    this.doneUp = 0;
    this.doneDown = 0;
    /** @type {number | null} */
    this.currentRevision = null;
  }

  /** True while a job is queued or running (the cancel button shows). */
  get active() {
    return !!this.job && ['queued', 'running'].includes(this.job.status);
  }

  /**
   * Apply one event; returns the actions for the viewer, in order.
   * @param {any} event
   * @returns {Action[]}
   */
  apply(event) {
    /** @type {Action[]} */
    const actions = [];
    switch (event.type) {
      case 'state': {
        const revisionChanged = event.current_revision !== this.currentRevision;
        this.currentRevision = event.current_revision ?? null;
        if (revisionChanged) actions.push({ type: 'load-revision', revision: this.currentRevision });
        const job = event.job || null;
        if (!job || !this.job || job.id !== this.job.id) {
          if (this.seen.size) actions.push({ type: 'reset-live' });
          this.seen = new Set();
          this.doneUp = 0;
          this.doneDown = 0;
        }
        this.job = job;
        for (const slice of event.slices || []) {
          actions.push(...this.#slice({ ...slice, job: job?.id, label_value: job?.label_value }));
        }
        break;
      }
      case 'job.queued':
      case 'job.started':
        this.#switchJob(event.job, actions);
        this.job = event.job;
        if (event.type === 'job.queued' && event.job.queue_position) {
          actions.push({ type: 'status', level: 'info', text: `Queued (position ${event.job.queue_position})…` });
        } else if (event.type === 'job.started') {
          actions.push({ type: 'status', level: 'info', text: 'Propagating…' });
        }
        break;
      case 'slice':
        if (this.job && event.job !== this.job.id) {
          // A slice of a newer job than we know: adopt it (its job.started may have been missed).
          if (event.job < this.job.id) break;
          this.#switchJob({ id: event.job, status: 'running', label_value: undefined }, actions);
          this.job = { id: event.job, status: 'running' };
        } else if (!this.job) {
          this.job = { id: event.job, status: 'running' };
        }
        if (typeof event.done_up === 'number') this.doneUp = event.done_up;
        if (typeof event.done_down === 'number') this.doneDown = event.done_down;
        actions.push(...this.#slice(event));
        break;
      case 'job.done':
        if (this.job && event.job?.id !== this.job.id) break;
        this.job = { ...event.job, status: 'done' };
        this.currentRevision = event.revision;
        actions.push({ type: 'load-revision', revision: event.revision });
        actions.push({ type: 'status', level: 'info', text: `Propagation finished: ${this.seen.size} slices.` });
        break;
      case 'job.failed':
        if (this.job && event.job?.id !== this.job.id) break;
        this.job = { ...event.job, status: 'failed' };
        actions.push({ type: 'reset-live' });
        actions.push({ type: 'status', level: 'error', text: `Propagation failed: ${event.error || 'unknown error'}. Your saved segmentation is unchanged.` });
        break;
      case 'job.cancelled':
        if (this.job && event.job?.id !== this.job.id) break;
        this.job = { ...event.job, status: 'cancelled' };
        actions.push({ type: 'reset-live' });
        actions.push({ type: 'status', level: 'info', text: 'Propagation cancelled.' });
        break;
      case 'job.retrying':
        this.seen = new Set();
        actions.push({ type: 'reset-live' });
        actions.push({ type: 'status', level: 'info', text: `The worker was lost; retrying (${event.reason || 'worker lost'}).` });
        break;
      case 'revision':
        if (event.current_revision !== this.currentRevision) {
          this.currentRevision = event.current_revision ?? null;
          actions.push({ type: 'load-revision', revision: this.currentRevision });
        }
        break;
      case 'case.status':
        actions.push({ type: 'case-status', status: event.status });
        break;
      default:
        break;
    }
    return actions;
  }

  /** @param {Job} job @param {Action[]} actions */
  #switchJob(job, actions) {
    if (!this.job || this.job.id !== job.id) {
      if (this.seen.size) actions.push({ type: 'reset-live' });
      this.seen = new Set();
      this.doneUp = 0;
      this.doneDown = 0;
    }
  }

  /** @param {any} slice @returns {Action[]} */
  #slice(slice) {
    if (this.seen.has(slice.z)) return [];
    this.seen.add(slice.z);
    const labelValue = slice.label_value ?? this.job?.label_value ?? null;
    const labelId = slice.label ?? this.job?.label ?? null;
    return [{ type: 'paint', job: slice.job, z: slice.z, rle: slice.rle, labelValue, labelId }];
  }
}

/**
 * Reconnect delay: quick first retries, then capped exponential backoff with jitter.
 * @param {number} attempt 0-based
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, random = Math.random) {
  const base = Math.min(10000, 250 * 2 ** attempt);
  return Math.round(base * (0.75 + 0.5 * random()));
}
