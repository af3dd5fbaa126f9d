import { afterEach, describe, expect, it, vi } from 'vitest';
import { CaseSocket, socketUrl } from './ws.js';

class FakeSocket {
  /** @type {FakeSocket[]} */
  static all = [];
  /** @param {string} url */
  constructor(url) {
    this.url = url;
    FakeSocket.all.push(this);
  }
  open() { this.onopen?.(); }
  /** @param {any} data */
  message(data) { this.onmessage?.({ data: JSON.stringify(data) }); }
  /** @param {number} code */
  drop(code = 1006) { this.onclose?.({ code }); }
  close() {}
}

afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllGlobals();
  FakeSocket.all = [];
});

describe('CaseSocket', () => {
  it('builds ws/wss URLs', () => {
    expect(socketUrl('/ws/cases/3/', { protocol: 'http:', host: 'h:8000' })).toBe('ws://h:8000/ws/cases/3/');
    expect(socketUrl('/ws/cases/3/', { protocol: 'https:', host: 'h' })).toBe('wss://h/ws/cases/3/');
  });

  it('forwards events and reconnects after a drop (the server then resends `state`)', () => {
    vi.useFakeTimers();
    vi.stubGlobal('WebSocket', FakeSocket);
    const events = [];
    const statuses = [];
    const socket = new CaseSocket('ws://x/ws/cases/1/', { onEvent: (e) => events.push(e), onStatus: (s, m) => statuses.push([s, m]) });
    FakeSocket.all[0].open();
    FakeSocket.all[0].message({ type: 'state', current_revision: 1 });
    FakeSocket.all[0].onmessage?.({ data: 'not json' });
    expect(events).toEqual([{ type: 'state', current_revision: 1 }]);
    FakeSocket.all[0].drop();
    expect(statuses.at(-1)[0]).toBe('reconnecting');
    expect(statuses.at(-1)[1]).toMatch(/Live connection lost/);
    vi.advanceTimersByTime(10_000);
    expect(FakeSocket.all).toHaveLength(2);
    FakeSocket.all[1].open();
    expect(statuses.at(-1)).toEqual(['connected', undefined]);
    socket.close();
  });

  it('stops with a reason when the server refuses the user', () => {
    vi.stubGlobal('WebSocket', FakeSocket);
    const statuses = [];
    new CaseSocket('ws://x/ws/cases/9/', { onEvent: () => {}, onStatus: (s, m) => statuses.push([s, m]) });
    FakeSocket.all[0].drop(4404);
    expect(statuses).toEqual([['closed', 'This case does not exist or is not shared with you.']]);
    expect(FakeSocket.all).toHaveLength(1);
  });
});
