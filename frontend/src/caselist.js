/**
 * The signed-in user's cases: filter by status and assignee, open one in the viewer.
 */
import { api, ApiError } from './api.js';
import { el, escapeHtml } from './dom.js';

const WHO = [
  ['mine', 'mine (to annotate or review)'],
  ['assigned', 'assigned to me'],
  ['review', 'to review by me'],
  ['all', 'all I can see'],
];

const STATUSES = [
  ['', 'Any status'],
  ['new', 'New'],
  ['in_progress', 'In progress'],
  ['submitted', 'Submitted'],
  ['in_review', 'In review'],
  ['changes_requested', 'Changes requested'],
  ['approved', 'Approved'],
];

/**
 * @param {HTMLElement} root
 * @param {{navigate: (path: string) => void, me: any}} app
 */
export async function showCaseList(root, app) {
  const params = new URLSearchParams(window.location.search);
  const status = params.get('status') || '';
  const who = params.get('who') || 'mine';
  root.innerHTML = `
    <div class="caselist">
      <h2>Cases</h2>
      <div class="filters">
        <label>Status <select class="f-status">${STATUSES.map(([v, l]) => `<option value="${v}" ${v === status ? 'selected' : ''}>${l}</option>`).join('')}</select></label>
        <label>Cases <select class="f-who">${WHO.map(([v, l]) => `<option value="${v}" ${v === who ? 'selected' : ''}>${l}</option>`).join('')}</select></label>
      </div>
      <div class="status" role="status"></div>
      <table class="cases"><thead><tr><th>Case</th><th>Status</th><th>Assignee</th><th>Reviewer</th><th>Size (x×y×z)</th><th>Modality</th></tr></thead><tbody></tbody></table>
    </div>`;
  const update = () => {
    const s = /** @type {HTMLSelectElement} */ (root.querySelector('.f-status')).value;
    const w = /** @type {HTMLSelectElement} */ (root.querySelector('.f-who')).value;
    const q = new URLSearchParams();
    if (s) q.set('status', s);
    if (w !== 'mine') q.set('who', w);
    app.navigate(`/app/${q.toString() ? `?${q}` : ''}`);
  };
  root.querySelector('.f-status')?.addEventListener('change', update);
  root.querySelector('.f-who')?.addEventListener('change', update);
  const message = /** @type {HTMLElement} */ (root.querySelector('.status'));
  /** @type {URLSearchParams[]} one query per relation; "mine" merges assigned and to-review */
  const queries = [];
  const base = () => {
    const q = new URLSearchParams();
    if (status) q.set('status', status);
    return q;
  };
  const me = String(app.me?.id ?? '');
  if (who === 'mine' || who === 'assigned') queries.push(base());
  if (who === 'mine' || who === 'review') queries.push(base());
  if (who === 'mine' || who === 'assigned') queries[0].set('assignee', me);
  if (who === 'mine') queries[1].set('reviewer', me);
  if (who === 'review') queries[0].set('reviewer', me);
  if (who === 'all') queries.push(base());
  /** @type {any[]} */
  const list = [];
  try {
    const pages = await Promise.all(queries.map((q) => api(`/api/cases/?${q}`)));
    const seen = new Set();
    for (const page of pages) {
      for (const c of Array.isArray(page) ? page : page.results || []) {
        if (!seen.has(c.id)) list.push(c);
        seen.add(c.id);
      }
    }
    list.sort((a, b) => a.id - b.id);
  } catch (error) {
    message.textContent = error instanceof ApiError ? error.message : String(error);
    message.className = 'status status-error';
    message.setAttribute('role', 'alert');
    return;
  }
  const body = /** @type {HTMLElement} */ (root.querySelector('tbody'));
  if (!list.length) {
    message.textContent = who === 'all' ? 'No cases match.' : 'No cases for you with this status.';
  }
  for (const c of list) {
    const row = el('tr', { class: 'case-row', 'data-case': String(c.id), tabindex: '0' });
    const shape = c.volume?.shape ? `${c.volume.shape[2]}×${c.volume.shape[1]}×${c.volume.shape[0]}` : '—';
    row.innerHTML = `
      <td><a href="/app/cases/${c.id}" class="open-case">${escapeHtml(c.name)}</a></td>
      <td><span class="badge status-${escapeHtml(c.status)}">${escapeHtml(STATUSES.find(([v]) => v === c.status)?.[1] || c.status)}</span></td>
      <td>${escapeHtml(c.assignee?.name || '—')}</td>
      <td>${escapeHtml(c.reviewer?.name || '—')}</td>
      <td>${shape}</td>
      <td>${escapeHtml(c.volume?.modality || '—')}</td>`;
    const open = (/** @type {Event} */ e) => {
      e.preventDefault();
      app.navigate(`/app/cases/${c.id}`);
    };
    row.addEventListener('click', open);
    row.addEventListener('keydown', (e) => {
      if (/** @type {KeyboardEvent} */ (e).key === 'Enter') open(e);
    });
    body.append(row);
  }
}
