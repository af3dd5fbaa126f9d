/**
 * The signed-in user's cases: filter by status and assignee, open one in the viewer.
 */
import { api, ApiError } from './api.js';
import { el, escapeHtml } from './dom.js';

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
  const mine = params.get('assignee') !== 'all';
  root.innerHTML = `
    <div class="caselist">
      <h2>Cases</h2>
      <div class="filters">
        <label>Status <select class="f-status">${STATUSES.map(([v, l]) => `<option value="${v}" ${v === status ? 'selected' : ''}>${l}</option>`).join('')}</select></label>
        <label>Assigned <select class="f-assignee"><option value="me" ${mine ? 'selected' : ''}>to me</option><option value="all" ${mine ? '' : 'selected'}>to anyone</option></select></label>
      </div>
      <div class="status" role="status"></div>
      <table class="cases"><thead><tr><th>Case</th><th>Status</th><th>Assignee</th><th>Reviewer</th><th>Size (x×y×z)</th><th>Modality</th></tr></thead><tbody></tbody></table>
    </div>`;
  const update = () => {
    const s = /** @type {HTMLSelectElement} */ (root.querySelector('.f-status')).value;
    const a = /** @type {HTMLSelectElement} */ (root.querySelector('.f-assignee')).value;
    const q = new URLSearchParams();
    if (s) q.set('status', s);
    if (a === 'all') q.set('assignee', 'all');
    app.navigate(`/app/${q.toString() ? `?${q}` : ''}`);
  };
  root.querySelector('.f-status')?.addEventListener('change', update);
  root.querySelector('.f-assignee')?.addEventListener('change', update);
  const message = /** @type {HTMLElement} */ (root.querySelector('.status'));
  const query = new URLSearchParams();
  if (status) query.set('status', status);
  if (mine && app.me) query.set('assignee', String(app.me.id));
  let cases;
  try {
    cases = await api(`/api/cases/?${query}`);
  } catch (error) {
    message.textContent = error instanceof ApiError ? error.message : String(error);
    message.className = 'status status-error';
    message.setAttribute('role', 'alert');
    return;
  }
  const list = Array.isArray(cases) ? cases : cases.results || [];
  const body = /** @type {HTMLElement} */ (root.querySelector('tbody'));
  if (!list.length) {
    message.textContent = mine ? 'No cases assigned to you with this status.' : 'No cases match.';
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
