import { afterEach, describe, expect, it, vi } from 'vitest';
import { api, ApiError, describeError, downloadBinary, getCookie } from './api.js';

afterEach(() => vi.unstubAllGlobals());

describe('api', () => {
  it('reads cookies', () => {
    expect(getCookie('csrftoken', 'a=1; csrftoken=abc%3D; b=2')).toBe('abc=');
    expect(getCookie('missing', 'a=1')).toBeNull();
  });

  it('turns statuses into sentences', () => {
    expect(describeError(403, { detail: 'You may view this case but not change its segmentation.' })).toMatch(/^Not allowed: You may view/);
    expect(describeError(404, { detail: 'Not found.' })).toMatch(/does not exist/);
    expect(describeError(409, { detail: 'The case changed since you loaded it', code: 'revision_conflict' })).toMatch(/^Conflict: The case changed/);
    expect(describeError(400, { prompt: ['z is outside the volume'] })).toBe('Request refused: prompt: z is outside the volume');
    expect(describeError(0, null)).toMatch(/Cannot reach the server/);
    expect(describeError(502, '')).toMatch(/server had a problem/);
  });

  it('sends JSON with the CSRF token and raises ApiError on failure', async () => {
    vi.stubGlobal('document', { cookie: 'csrftoken=tok' });
    const fetchMock = vi.fn(async () => new Response(JSON.stringify({ detail: 'stale', code: 'revision_conflict', current_revision: 9 }), { status: 409 }));
    vi.stubGlobal('fetch', fetchMock);
    const error = await api('/api/cases/1/undo/', { method: 'POST', body: {} }).catch((e) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect(error.status).toBe(409);
    expect(error.code).toBe('revision_conflict');
    expect(error.body.current_revision).toBe(9);
    const [, init] = fetchMock.mock.calls[0];
    expect(init.headers['X-CSRFToken']).toBe('tok');
    expect(init.body).toBe('{}');
  });

  it('reports network failures in words', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => { throw new TypeError('Failed to fetch'); }));
    await expect(api('/api/me/')).rejects.toThrow(/Cannot reach the server/);
  });

  it('streams a download with progress into one buffer', async () => {
    const bytes = new Uint8Array([1, 2, 3, 4, 5, 6]);
    vi.stubGlobal('fetch', vi.fn(async () => new Response(new ReadableStream({
      start(controller) {
        controller.enqueue(bytes.slice(0, 4));
        controller.enqueue(bytes.slice(4));
        controller.close();
      },
    }))));
    const seen = [];
    const buffer = await downloadBinary('/x', 6, (f) => seen.push(f));
    expect(Array.from(new Uint8Array(buffer))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(seen.at(-1)).toBe(1);
  });
});
