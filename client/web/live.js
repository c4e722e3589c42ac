// The live event stream of a session (Server-Sent Events), for the venue screen and member page.
//
//   const live = new LiveStream(sessionId, token, { onState });
//   live.on('snapshot', (data) => ...); live.on('quiz_opened', ...); live.start();
//
// States passed to onState(state, detail): connecting, open, retrying, unauthorized (401/403:
// for good), not_found (404: for good), stopped. The browser resumes with Last-Event-ID while
// it retries by itself; when it gives up (an HTTP error) we ask why, and either stop for good or
// open a new stream after a backoff, resuming from the last event id seen.

import { backoffDelay } from './whep.js';

export const EVENT_TYPES = [
  'snapshot',
  'session_state',
  'quiz_opened',
  'quiz_closed',
  'quiz_revealed',
  'quiz_results',
  'presence_check',
  'counts',
];

export class LiveStream {
  /** ``bases``: where the stream may come from, in order ('' is this page's own server; a venue
   * screen on an edge adds its origin): when one cannot be reached, the next is tried at once. */
  constructor(sessionId, token, { onState = () => {}, bases = [''] } = {}) {
    this.sessionId = sessionId;
    this.token = token;
    this.onState = onState;
    this.bases = bases.length ? bases : [''];
    this.base = 0; // index into bases
    this.state = 'stopped';
    this.lastEventId = null;
    this._handlers = new Map();
    this._source = null;
    this._timer = null;
    this._attempt = 0;
    this._running = false;
  }

  /** Call handler(data, event) for every event of this type ('*' for all). */
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, []);
    this._handlers.get(type).push(handler);
    return this;
  }

  start() {
    if (this._running) return;
    this._running = true;
    this._open();
  }

  stop() {
    this._running = false;
    clearTimeout(this._timer);
    if (this._source) this._source.close();
    this._source = null;
    this._setState('stopped');
  }

  _url() {
    const params = new URLSearchParams({ token: this.token });
    if (this.lastEventId) params.set('last_event_id', this.lastEventId);
    return `${this.bases[this.base]}/api/sessions/${this.sessionId}/events/stream?${params}`;
  }

  _setState(state, detail = {}) {
    if (state === this.state && state !== 'retrying') return;
    this.state = state;
    try {
      this.onState(state, detail);
    } catch (error) {
      console.warn('LiveStream onState failed', error);
    }
  }

  _open() {
    if (!this._running) return;
    this._setState(this._attempt ? 'retrying' : 'connecting');
    const source = new EventSource(this._url());
    this._source = source;
    source.onopen = () => {
      this._attempt = 0;
      this._setState('open');
    };
    source.onerror = () => {
      if (source !== this._source) return;
      // With somewhere else to go, a lost stream is looked into now (the browser would keep
      // trying the same server for ever when it cannot be reached at all).
      if (source.readyState === EventSource.CLOSED || this.bases.length > 1) {
        source.close();
        this._source = null;
        this._diagnose();
      } else {
        this._setState('retrying', { reason: 'network' });
      }
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => this._dispatch(type, event));
    }
  }

  _dispatch(type, event) {
    if (event.lastEventId) this.lastEventId = event.lastEventId;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    for (const handler of [...(this._handlers.get(type) || []), ...(this._handlers.get('*') || [])]) {
      try {
        handler(data, { type, id: event.lastEventId });
      } catch (error) {
        console.error('live event handler failed', type, error);
      }
    }
  }

  /** The browser gave up: find out whether for good (the link) or for now (the server). */
  async _diagnose() {
    let status = 0;
    const controller = new AbortController();
    try {
      const response = await fetch(this._url(), { signal: controller.signal, cache: 'no-store' });
      status = response.status;
    } catch {
      status = 0;
    } finally {
      controller.abort();
    }
    if (!this._running) return;
    if (status === 401 || status === 403) {
      this._running = false;
      this._setState('unauthorized', { status });
      return;
    }
    if (status === 404) {
      this._running = false;
      this._setState('not_found', { status });
      return;
    }
    if (this.bases.length > 1 && (status === 0 || status >= 500)) {
      // This server is gone: the next one, now. Event ids are per server, so no resuming.
      this.base = (this.base + 1) % this.bases.length;
      this.lastEventId = null;
      if (this.base !== 0 || this._attempt === 0) {
        this._attempt += this.base === 0 ? 1 : 0;
        this._setState('retrying', { reason: 'switch', base: this.bases[this.base] });
        this._timer = setTimeout(() => this._open(), 0);
        return;
      }
    }
    const delay = backoffDelay(this._attempt);
    this._attempt += 1;
    this._setState('retrying', { reason: status ? 'http_' + status : 'network', in_ms: delay });
    this._timer = setTimeout(() => this._open(), delay);
  }
}

/** The claims of a session token (not verified: the server does that), or null. */
export function tokenClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = new TextDecoder().decode(
      Uint8Array.from(atob(part + '='.repeat((4 - (part.length % 4)) % 4)), (c) => c.charCodeAt(0)),
    );
    return JSON.parse(json);
  } catch {
    return null;
  }
}

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

/** The fragment's key=value pairs (#s=7&t=TOKEN&checkin=...). */
export function fragmentParams(hash = window.location.hash) {
  return new URLSearchParams(hash.replace(/^#/, ''));
}

/** Remember a personal link's token for its session (per page kind: member or venue). */
export function rememberLink(kind, sessionId, token) {
  const store = storage();
  if (!store) return;
  store.setItem(`studycast.${kind}.token.${sessionId}`, token);
  store.setItem(`studycast.${kind}.session`, String(sessionId));
}

/** The remembered token of a session, or of the last session opened on this page kind. */
export function rememberedLink(kind, sessionId = null) {
  const store = storage();
  if (!store) return null;
  const sid = sessionId ?? store.getItem(`studycast.${kind}.session`);
  if (!sid) return null;
  const token = store.getItem(`studycast.${kind}.token.${sid}`);
  return token ? { sessionId: Number(sid), token } : null;
}

/** Forget a session's token (say, the server called it expired). */
export function forgetLink(kind, sessionId) {
  storage()?.removeItem(`studycast.${kind}.token.${sessionId}`);
}

/** Take the link out of the address bar, so it is not shared or bookmarked by accident. */
export function clearFragment() {
  history.replaceState(null, '', window.location.pathname + window.location.search);
}

/** A base64 data: URL for an SVG document (the CSP allows data: images, not blob: ones). */
export function svgDataUrl(svg) {
  const bytes = new TextEncoder().encode(svg);
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return 'data:image/svg+xml;base64,' + btoa(binary);
}
