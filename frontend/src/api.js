/**
 * Fetch wrapper for the PropLabel REST API: session cookie + CSRF token, JSON in and out, and errors turned
 * into sentences a user can act on (shown in the status bar, never only in the console).
 */

export class ApiError extends Error {
  /**
   * @param {string} message readable sentence
   * @param {number} status HTTP status (0 = network failure)
   * @param {Record<string, any>} [body] the JSON error body ({detail, code, ...})
   */
  constructor(message, status, body = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.body = body;
    this.code = body.code || null;
  }
}

/**
 * Read a cookie (Django's CSRF token lives in `csrftoken`).
 * @param {string} name
 * @param {string} [cookieString]
 * @returns {string | null}
 */
export function getCookie(name, cookieString = typeof document !== 'undefined' ? document.cookie : '') {
  for (const part of cookieString.split(';')) {
    const [key, ...rest] = part.trim().split('=');
    if (key === name) return decodeURIComponent(rest.join('='));
  }
  return null;
}

/**
 * Flatten DRF error bodies ({detail}, {field: [msgs]}, [msgs]) into one line.
 * @param {any} body
 * @returns {string}
 */
function flattenBody(body) {
  if (!body) return '';
  if (typeof body === 'string') return body;
  if (Array.isArray(body)) return body.map(flattenBody).join(' ');
  if (typeof body.detail === 'string') return body.detail;
  return Object.entries(body)
    .filter(([key]) => key !== 'code')
    .map(([key, value]) => `${key}: ${flattenBody(value)}`)
    .join('; ');
}

/**
 * A readable message for a failed response.
 * @param {number} status
 * @param {any} body parsed JSON body (or text)
 * @returns {string}
 */
export function describeError(status, body) {
  const detail = flattenBody(body);
  switch (status) {
    case 0:
      return 'Cannot reach the server. Check your connection and try again.';
    case 400:
      return detail ? `Request refused: ${detail}` : 'The request was refused as invalid.';
    case 401:
      return 'Your session has ended. Please sign in again.';
    case 403:
      return detail && !/credentials were not provided/i.test(detail)
        ? `Not allowed: ${detail}`
        : 'You do not have permission to do this.';
    case 404:
      return 'Not found: this case or item does not exist or is not shared with you.';
    case 409:
      return detail ? `Conflict: ${detail}` : 'Conflict: the case changed meanwhile. Reload and try again.';
    case 413:
      return detail || 'The upload is too large.';
    default:
      if (status >= 500) return `The server had a problem (${status}). Try again in a moment.`;
      return detail || `Request failed (${status}).`;
  }
}

/**
 * Call the API. JSON body in, JSON out; throws ApiError with a readable message.
 * @param {string} path e.g. '/api/cases/3/'
 * @param {{method?: string, body?: any, signal?: AbortSignal}} [options]
 * @returns {Promise<any>}
 */
export async function api(path, { method = 'GET', body, signal } = {}) {
  /** @type {Record<string, string>} */
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD') {
    const token = getCookie('csrftoken');
    if (token) headers['X-CSRFToken'] = token;
  }
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      signal,
    });
  } catch (error) {
    if (/** @type {any} */ (error)?.name === 'AbortError') throw error;
    throw new ApiError(describeError(0, null), 0);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) {
    throw new ApiError(describeError(response.status, data), response.status, typeof data === 'object' && data ? data : {});
  }
  return data;
}

/**
 * Download a binary body with progress. The server sends gzip with Content-Encoding: gzip, so the browser
 * inflates it and the stream yields raw bytes; `expectedBytes` (from the metadata) drives the bar because
 * Content-Length counts the compressed size.
 * @param {string} url
 * @param {number} expectedBytes
 * @param {(fraction: number) => void} [onProgress]
 * @returns {Promise<ArrayBuffer>}
 */
export async function downloadBinary(url, expectedBytes, onProgress) {
  let response;
  try {
    response = await fetch(url, { credentials: 'same-origin' });
  } catch {
    throw new ApiError(describeError(0, null), 0);
  }
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      /* not JSON */
    }
    throw new ApiError(describeError(response.status, body), response.status, body || {});
  }
  if (!response.body || !expectedBytes) {
    const buffer = await response.arrayBuffer();
    onProgress?.(1);
    return buffer;
  }
  // Read into one preallocated buffer: no second copy of a large volume.
  const target = new Uint8Array(expectedBytes);
  const reader = response.body.getReader();
  let offset = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (offset + value.length > target.length) throw new ApiError('The download is larger than the volume metadata says.', 200);
    target.set(value, offset);
    offset += value.length;
    onProgress?.(offset / expectedBytes);
  }
  if (offset !== expectedBytes) {
    throw new ApiError(`The download ended early (${offset} of ${expectedBytes} bytes). Reload to try again.`, 200);
  }
  return target.buffer;
}

/** Bytes per voxel of the stored dtypes (docs/ARCHITECTURE.md). */
export const DTYPES = {
  uint8: { bytes: 1, array: Uint8Array },
  int16: { bytes: 2, array: Int16Array },
  uint16: { bytes: 2, array: Uint16Array },
  float32: { bytes: 4, array: Float32Array },
};
