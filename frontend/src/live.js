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

/** Order of job states: a job never goes back to an earlier one. @type {Record<string, number>} */
const STATUS_RANK = { queued: 0, running: 1, done: 2, failed: 2, cancelled: 2 };

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
      case 'job.started': {
        // The POST's own answer can arrive after the worker's events for a fast job: never move a job
        // back from running/done to queued.
        if (!this.#accept(event.job, actions)) break;
        if (STATUS_RANK[event.job.status] < STATUS_RANK[this.job?.status ?? 'queued']) break;
        this.job = { ...this.job, ...event.job };
        if (event.job.status === 'queued' && event.job.queue_position) {
          actions.push({ type: 'status', level: 'info', text: `Queued (position ${event.job.queue_position})…` });
        } else if (event.type === 'job.started') {
          actions.push({ type: 'status', level: 'info', text: 'Propagating…' });
        }
        break;
      }
      case 'slice':
        if (!this.#accept({ id: event.job, status: 'running', label: event.label, label_value: event.label_value }, actions)) break;
        if (/** @type {Job} */ (this.job).status === 'queued') /** @type {Job} */ (this.job).status = 'running';
        if (typeof event.done_up === 'number') this.doneUp = event.done_up;
        if (typeof event.done_down === 'number') this.doneDown = event.done_down;
        actions.push(...this.#slice(event));
        break;
      case 'job.done':
        if (!this.#accept(event.job, actions)) break;
        this.job = { ...event.job, status: 'done' };
        this.currentRevision = event.revision;
        actions.push({ type: 'load-revision', revision: event.revision });
        actions.push({ type: 'status', level: 'info', text: `Propagation finished: ${this.seen.size} slices.` });
        break;
      case 'job.failed':
        if (!this.#accept(event.job, actions)) break;
        this.job = { ...event.job, status: 'failed' };
        actions.push({ type: 'reset-live' });
        actions.push({ type: 'status', level: 'error', text: `Propagation failed: ${event.error || 'unknown error'}. Your saved segmentation is unchanged.` });
        break;
      case 'job.cancelled':
        if (!this.#accept(event.job, actions)) break;
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

  /**
   * Follow `job` if it is the current job or a newer one (ids only grow); false for a stale job.
   * Switching to a newer job drops the live slices of the old one.
   * @param {Job} job
   * @param {Action[]} actions
   */
  #accept(job, actions) {
    if (!job) return false;
    if (this.job && job.id < this.job.id) return false;
    if (!this.job || job.id > this.job.id) {
      if (this.seen.size) actions.push({ type: 'reset-live' });
      this.seen = new Set();
      this.doneUp = 0;
      this.doneDown = 0;
      this.job = { ...job };
    }
    return true;
  }

  /** @param {any} slice @returns {Action[]} */
  #slice(slice) {
    // A slice arrives twice only when the slice refiner re-drew it after propagation ("refined"); any
    // other repeat is a reconnect's duplicate.
    if (this.seen.has(slice.z) && slice.direction !== 'refined') return [];
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
