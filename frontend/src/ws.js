/**
 * A WebSocket to /ws/cases/<id>/ that reconnects by itself. The server sends a `state` event on every
 * connect, so catching up after a drop needs nothing more than reconnecting (LiveState drops repeats).
 */
import { backoffDelay } from './live.js';

/** Close codes from the consumer that retrying cannot fix. */
const FINAL_CLOSE = {
  4401: 'Your session has ended; sign in again to see live updates.',
  4403: 'You are not allowed to follow this case.',
  4404: 'This case does not exist or is not shared with you.',
};

/**
 * @param {string} path e.g. '/ws/cases/3/'
 * @param {Location | {protocol: string, host: string}} [loc]
 */
export function socketUrl(path, loc = window.location) {
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}${path}`;
}

export class CaseSocket {
  /**
   * @param {string} url
   * @param {{onEvent: (event: any) => void, onStatus: (status: 'connected'|'reconnecting'|'closed', message?: string) => void}} handlers
   */
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.attempt = 0;
    this.stopped = false;
    /** @type {WebSocket | null} */
    this.socket = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.timer = null;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => {
      this.attempt = 0;
      this.handlers.onStatus('connected');
    };
    socket.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return; // not ours to interpret
      }
      this.handlers.onEvent(event);
    };
    socket.onclose = (close) => {
      if (this.stopped || socket !== this.socket) return;
      const final = FINAL_CLOSE[/** @type {keyof typeof FINAL_CLOSE} */ (close.code)];
      if (final) {
        this.stopped = true;
        this.handlers.onStatus('closed', final);
        return;
      }
      const delay = backoffDelay(this.attempt++);
      this.handlers.onStatus('reconnecting', `Live connection lost; reconnecting in ${Math.ceil(delay / 1000)} s…`);
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  /** Drop the connection now and reconnect (used by tests and the "reconnect" link). */
  reconnect() {
    this.socket?.close();
  }

  close() {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.socket?.close();
  }
}
