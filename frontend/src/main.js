/**
 * PropLabel single-page app: /app/ lists cases, /app/cases/<id> opens the viewer.
 * Django serves this index.html for every /app/... URL behind login.
 */
import './style.css';
import { api, ApiError, getCookie } from './api.js';
import { showCaseList } from './caselist.js';
import { escapeHtml } from './dom.js';
import { Viewer } from './viewer/viewer.js';

const root = /** @type {HTMLElement} */ (document.getElementById('app'));
/** @type {Viewer | null} */
let viewer = null;

const app = {
  /** @type {any} */
  me: null,
  /** @param {string} path */
  navigate(path) {
    history.pushState({}, '', path);
    route();
  },
};

function route() {
  viewer?.destroy();
  viewer = null;
  const match = /^\/app\/cases\/(\d+)\/?$/.exec(window.location.pathname);
  if (match) {
    viewer = new Viewer(root, Number(match[1]), app);
    /** @type {any} */ (window).proplabelViewer = viewer; // for tests and debugging
    viewer.open();
  } else {
    showCaseList(root, app);
  }
}

async function start() {
  const header = /** @type {HTMLElement} */ (document.getElementById('header'));
  try {
    app.me = await api('/api/me/');
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      window.location.href = `/accounts/login/?next=${encodeURIComponent(window.location.pathname)}`;
      return;
    }
    root.innerHTML = `<p class="status status-error" role="alert">${escapeHtml(error instanceof Error ? error.message : String(error))}</p>`;
    return;
  }
  const roles = (app.me.projects || []).map((/** @type {any} */ p) => `${p.name}: ${p.role}`).join(', ');
  header.innerHTML = `
    <a href="/app/" class="brand" data-link>PropLabel</a>
    <span class="who" title="${escapeHtml(roles)}">${escapeHtml(app.me.name)}</span>
    <form method="post" action="/accounts/logout/" class="logout">
      <input type="hidden" name="csrfmiddlewaretoken" value="${escapeHtml(getCookie('csrftoken') || '')}">
      <button type="submit">Sign out</button>
    </form>`;
  header.querySelector('.brand')?.addEventListener('click', (e) => {
    e.preventDefault();
    app.navigate('/app/');
  });
  window.addEventListener('popstate', route);
  route();
}

start();
