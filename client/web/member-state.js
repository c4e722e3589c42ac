// The member page's state, its elements and the small helpers every part of it uses.
import { language } from './i18n.js';

export const $ = (id) => document.getElementById(id);
export const els = Object.fromEntries(
  [
    'fatal', 'fatal-title', 'fatal-text', 'content', 'session-title', 'session-state', 'notice',
    'mode-onsite', 'mode-remote', 'onsite-panel', 'remote-panel', 'checkin-status',
    'checkin-error', 'checkin-form', 'venue-select', 'venue-select-label', 'venue-input',
    'venue-input-label', 'checkin-code', 'video', 'unmute', 'player-status', 'quiz-card',
    'quiz-status', 'quiz-prompt', 'quiz-choices', 'quiz-submit', 'quiz-result', 'presence-card',
    'presence-image', 'presence-countdown', 'presence-form', 'presence-code', 'presence-result',
    'me-name', 'me-mode', 'me-watched', 'me-presence', 'me-quiz', 'me-points', 'note-form',
    'note-text', 'note-count', 'note-result', 'outbox-status', 'makeup-card', 'makeup-video',
    'makeup-progress', 'makeup-position', 'makeup-status', 'makeup-watched', 'me-makeup',
    'makeup-check', 'makeup-check-image', 'makeup-check-form', 'makeup-check-code',
    'makeup-check-skip', 'makeup-check-result',
  ].map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), $(id)]),
);

export const HEARTBEAT_MS = 15000;
export const ME_REFRESH_MS = 30000;
// Make-up viewing: what was played is reported this often (and on pause, seek, hide, rate).
export const MAKEUP_REPORT_MS = 12000;
export const MAKEUP_MAX_SPAN_S = 60; // the server takes at most this much media per report
export const MAKEUP_MAX_RATE = 2; // faster playback does not count

// What the page shows; render() turns it into the DOM (again on a language switch).
export const state = {
  fatal: null,
  session: null,
  sessionState: null,
  venues: [], // [{slug, name}] when the server names them
  mode: null, // 'onsite' | 'remote'
  checkin: null, // {tone: 'ok'|'bad'|'pending', key, params}
  checkedIn: null, // venue slug
  question: null,
  selection: new Set(),
  answers: new Map(), // question id -> {choices, status: pending|saved|refused, detail, correct}
  check: null,
  presence: new Map(), // check id -> {status: pending|passed|late|..., detail}
  me: null,
  note: null, // {status, detail}
  live: 'connecting',
  player: 'stopped',
  playerReason: null,
  muted: false,
  outbox: { pending: 0, state: 'idle' },
  meUnreachable: false,
  clockOffsetMs: 0,
  // The recording, once the session has ended: {status: loading|ready|none|unavailable, detail,
  // segments: [{index, offset_s, duration_s, url}], current (position in segments), total_s}.
  makeup: null,
  // Per segment index: media ranges [[from, to]] accepted as watched (visible, at most 2x).
  makeupAccepted: new Map(),
  // Presence checks met in the recording (where the rule asks): check id -> {status, detail};
  // makeupCheck is the one the player stopped at, shown until answered or skipped.
  makeupChecks: new Map(),
  makeupCheck: null,
};

export function serverNow() {
  return Date.now() + state.clockOffsetMs;
}

export function venueName(slug) {
  return state.venues.find((v) => v.slug === slug)?.name || slug;
}

export function formatTime(iso) {
  return new Date(iso).toLocaleString(language(), { dateStyle: 'medium', timeStyle: 'short' });
}

export function showResult(el, tone, text) {
  el.hidden = !text;
  el.textContent = text || '';
  el.dataset.tone = tone || '';
}
