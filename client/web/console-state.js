// The organiser console's state and the small helpers every part of it uses.
import { hasString, t } from './i18n.js';

export const $ = (id) => document.getElementById(id);
export const STATS_POLL_MS = 3000;
export const CHECKS_POLL_MS = 3000;
export const LETTERS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';

export const state = {
  me: null,
  sessions: [],
  venues: [],
  units: [],
  session: null, // the open session (describe())
  editing: null, // the session being edited in the form, or 'new'
  links: null,
  memberLinks: null,
  stats: null,
  counts: null,
  questions: [],
  activeQuestion: null,
  results: null,
  checks: [],
  expected: 0,
  clockOffsetMs: 0,
  events: null,
  streamOk: false,
  publisher: null,
  publishState: 'idle',
  publishError: null,
  publishStats: null,
  media: null,
  timers: [],
};

// --- helpers ----------------------------------------------------------------------------------

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export function errorText(error) {
  const key = 'error.' + error.code;
  if (hasString(key)) return t(key);
  return error.detail || error.message || String(error.code);
}

export function showBanner(error, retry = null) {
  $('banner').hidden = false;
  $('banner-text').textContent = errorText(error);
  $('banner-retry').hidden = !retry;
  $('banner-retry').onclick = retry
    ? () => {
        $('banner').hidden = true;
        retry();
      }
    : null;
}

export function handleError(error, retry = null) {
  if (error.status === 401) {
    window.location.replace('login.html?next=console.html');
    return;
  }
  showBanner(error, retry);
}

export function localTime(iso) {
  return iso ? new Date(iso).toLocaleString() : '';
}

export function toInputTime(iso) {
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fromInputTime(value) {
  return value ? new Date(value).toISOString() : '';
}

export function csrf() {
  return state.me?.csrf_token;
}

export function sessionPath(suffix = '') {
  return `/api/sessions/${state.session.id}${suffix}`;
}

export function selectedId() {
  const match = /(?:^|[#&])s=(\d+)/.exec(window.location.hash);
  return match ? Number(match[1]) : null;
}

export function stateText(s) {
  return t('console.state.' + s);
}

export function serverNow() {
  return Date.now() + state.clockOffsetMs;
}
