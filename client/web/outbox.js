// A persistent outbox of attendance events: nothing a member does is lost to a bad connection.
//
//   const outbox = new Outbox({ sessionId, owner: 'member:1001', token, onChange });
//   outbox.onResult((event, outcome) => ...);
//   outbox.add({ type: 'quiz_answer', question: 3, choices: [1] });   // stored, then sent
//
// Events are kept in localStorage (per session and owner) the moment they are added, and sent
// in batches until each gets a final answer from the server: accepted, refused, duplicate or
// invalid. Network failures and 5xx answers are retried with backoff (1 s doubling to 30 s);
// the outbox also sends at once when the browser comes back online or the page is shown again,
// and after a reload. A retried event keeps its id, so the server stores it once.

import { backoffDelay } from './whep.js';

const FINAL = new Set(['accepted', 'refused', 'duplicate', 'invalid']);
const MAX_BATCH = 100;
const KEEP_RESULTS = 50;

function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export class Outbox {
  constructor({ sessionId, owner, token, onChange = () => {} }) {
    this.sessionId = sessionId;
    this.token = token;
    this.onChange = onChange;
    this.key = `studycast.outbox.${sessionId}.${owner}`;
    this.state = 'idle'; // idle | sending | retrying | unauthorized
    this.lastError = null;
    this._listeners = [];
    this._sending = false;
    this._again = false;
    this._timer = null;
    this._attempt = 0;
    this._memory = null; // when localStorage is unavailable
    const saved = this._load();
    this.pending = saved.pending;
    this.results = saved.results;
    window.addEventListener('online', () => this.flush());
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') this.flush();
    });
  }

  /** Call listener(event, outcome) for each final answer (also for events from before a reload). */
  onResult(listener) {
    this._listeners.push(listener);
  }

  /** How many events wait for an answer. */
  get pendingCount() {
    return this.pending.length;
  }

  /** The final answer of an event by id, if it has one. */
  result(id) {
    return this.results.find((r) => r.id === id)?.outcome ?? null;
  }

  /** Store the event (given an id and time) and try to send it; returns the stored event. */
  add(fields) {
    const event = { id: newId(), at: new Date().toISOString(), ...fields };
    this.pending.push(event);
    this._save();
    this._changed();
    this.flush();
    return event;
  }

  /** Send what is pending now (coalesced with a send in progress). */
  flush() {
    if (this.state === 'unauthorized') return;
    if (this._sending) {
      this._again = true;
      return;
    }
    if (!this.pending.length) return;
    clearTimeout(this._timer);
    this._timer = null;
    this._send();
  }

  async _send() {
    this._sending = true;
    this._again = false;
    const batch = this.pending.slice(0, MAX_BATCH);
    this.state = 'sending';
    this._changed();
    let failure = null;
    let retryAfter = null;
    try {
      const response = await fetch(`/api/sessions/${this.sessionId}/events`, {
        method: 'POST',
        headers: {
          'Content-Type': 'application/json',
          Accept: 'application/json',
          Authorization: 'Bearer ' + this.token,
        },
        body: JSON.stringify({ events: batch, sent_at: new Date().toISOString() }),
        cache: 'no-store',
      });
      let body = null;
      try {
        body = await response.json();
      } catch {
        body = null;
      }
      if (response.ok && body && Array.isArray(body.results)) {
        this._settle(batch, body.results);
      } else if (response.status === 401 || response.status === 403) {
        failure = 'unauthorized';
      } else if (response.status === 400 || response.status === 413 || response.status === 422) {
        // The batch itself was refused: it would be refused again, so answer each event.
        const error = { code: body?.error || 'invalid_input', detail: body?.detail || '' };
        this._settle(batch, batch.map((e) => ({ id: e.id, status: 'invalid', error })));
      } else {
        failure = 'http_' + response.status;
        retryAfter = Number.parseFloat(response.headers.get('Retry-After') || '');
      }
    } catch {
      failure = 'network';
    }
    this._sending = false;
    if (failure === 'unauthorized') {
      this.state = 'unauthorized';
      this.lastError = failure;
      this._changed();
      return;
    }
    if (failure) {
      this.lastError = failure;
      let delay = backoffDelay(this._attempt);
      if (Number.isFinite(retryAfter)) delay = Math.max(delay, retryAfter * 1000);
      this._attempt += 1;
      this.state = 'retrying';
      this._changed();
      this._timer = setTimeout(() => {
        this._timer = null;
        this.flush();
      }, delay);
      return;
    }
    this._attempt = 0;
    this.lastError = null;
    this.state = 'idle';
    this._changed();
    if (this.pending.length) this.flush();
  }

  _settle(batch, results) {
    const byId = new Map(results.map((r) => [r.id, r]));
    const done = [];
    for (const event of batch) {
      const outcome = byId.get(event.id);
      if (outcome && FINAL.has(outcome.status)) done.push([event, outcome]);
    }
    const finished = new Set(done.map(([event]) => event.id));
    this.pending = this.pending.filter((e) => !finished.has(e.id));
    for (const [event, outcome] of done) {
      this.results.push({ id: event.id, type: event.type, event, outcome });
    }
    this.results = this.results.slice(-KEEP_RESULTS);
    this._save();
    for (const [event, outcome] of done) {
      for (const listener of this._listeners) {
        try {
          listener(event, outcome);
        } catch (error) {
          console.error('outbox listener failed', error);
        }
      }
    }
  }

  _changed() {
    try {
      this.onChange(this);
    } catch (error) {
      console.warn('outbox onChange failed', error);
    }
  }

  _load() {
    try {
      const raw = window.localStorage.getItem(this.key);
      const data = raw ? JSON.parse(raw) : null;
      return {
        pending: Array.isArray(data?.pending) ? data.pending : [],
        results: Array.isArray(data?.results) ? data.results : [],
      };
    } catch {
      return this._memory || { pending: [], results: [] };
    }
  }

  _save() {
    const data = { pending: this.pending, results: this.results };
    try {
      window.localStorage.setItem(this.key, JSON.stringify(data));
    } catch {
      this._memory = data; // kept for this page only
    }
  }
}
