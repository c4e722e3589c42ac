// The member page's make-up viewing: the recording, after the session. What was played is
// reported through the outbox; where the rule asks, the player stops at each presence check.
import { api } from './api.js';
import { t } from './i18n.js';
import {
  els,
  MAKEUP_MAX_RATE,
  MAKEUP_MAX_SPAN_S,
  MAKEUP_REPORT_MS,
  showResult,
  state,
} from './member-state.js';

// What the rest of the page provides: its render(), fail(kind), and the current link's
// session and outbox (both null until the link is read).
const hooks = { render: () => {}, fail: () => {}, session: () => null, outbox: () => null };

let makeupTimer = null;
const makeupSent = new Map(); // segment index -> media ranges already reported
let makeupVisible = document.visibilityState === 'visible';
let makeupRate = 1;

/** Sorted ranges [[from, to]] with overlapping or touching ones joined, empty ones dropped. */
export function mergeRanges(ranges) {
  const out = [];
  for (const [from, to] of [...ranges].sort((a, b) => a[0] - b[0])) {
    if (!(to > from)) continue;
    const last = out[out.length - 1];
    if (last && from <= last[1]) last[1] = Math.max(last[1], to);
    else out.push([from, to]);
  }
  return out;
}

/** The parts of merged ranges ``a`` outside merged ranges ``b``. */
function subtractRanges(a, b) {
  const out = [];
  for (const [from, to] of a) {
    let cursor = from;
    for (const [bFrom, bTo] of b) {
      if (bTo <= cursor || bFrom >= to) continue;
      if (bFrom > cursor) out.push([cursor, bFrom]);
      cursor = Math.max(cursor, bTo);
    }
    if (cursor < to) out.push([cursor, to]);
  }
  return out;
}

function rangesLength(ranges) {
  return ranges.reduce((sum, [from, to]) => sum + (to - from), 0);
}

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(h ? 2 : 1, '0');
  const ss = String(s % 60).padStart(2, '0');
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

/** The member's make-up viewing as text: the server's figure (all visits) or, before it
 * knows, what this page has had accepted. Empty when there is nothing to say. */
export function makeupFigures() {
  const m = state.makeup;
  let seconds = 0;
  if (m && m.segments.length) {
    for (const seg of m.segments) {
      const cut = (state.makeupAccepted.get(seg.index) || [])
        .map(([from, to]) => [from, Math.min(to, seg.duration_s ?? to)]);
      seconds += rangesLength(mergeRanges(cut));
    }
  }
  const total = m?.total_s || 0;
  let share = total > 0 ? Math.min(1, seconds / total) : 0;
  const server = state.me?.makeup;
  if (server && server.seconds >= seconds) {
    seconds = server.seconds;
    share = server.share;
  }
  if (!m && !server) return '';
  return t('member.makeup.value', {
    minutes: (Math.round((seconds / 60) * 10) / 10).toString(),
    share: Math.round(share * 100),
  });
}

export function renderMakeup() {
  const m = state.makeup;
  els.makeupCard.hidden = !m;
  if (!m) return;
  const video = els.makeupVideo;
  els.makeupCard.dataset.status = m.status;
  const count = m.segments.length;
  let text = '';
  if (m.status !== 'ready') {
    text = t('member.makeup.' + m.status, { detail: m.detail || '' });
  } else if (video.ended && m.current === count - 1) {
    text = t('member.makeup.done');
  } else if (!video.paused && video.playbackRate > MAKEUP_MAX_RATE) {
    text = t('member.makeup.fast');
  } else if (!video.paused && document.visibilityState !== 'visible') {
    text = t('member.makeup.hidden');
  } else {
    const key = video.paused ? 'member.makeup.ready' : 'member.makeup.playing';
    text = t(key, { n: m.current + 1, count });
  }
  els.makeupStatus.textContent = text;
  const before = m.segments.slice(0, m.current).reduce((sum, s) => sum + (s.duration_s || 0), 0);
  const position = m.status === 'ready' ? before + (video.currentTime || 0) : 0;
  els.makeupProgress.value = m.total_s > 0 ? Math.min(1, position / m.total_s) : 0;
  els.makeupPosition.textContent = m.total_s > 0 ? `${clock(position)} / ${clock(m.total_s)}` : '';
  const server = state.me?.makeup;
  const checks = m.checks?.length && server?.presence_total
    ? ' ' + t('member.makeup.checks', { passed: server.presence_passed, total: server.presence_total })
    : '';
  els.makeupWatched.textContent = (makeupFigures() || '–') + checks;
  renderMakeupCheck();
}

function renderMakeupCheck() {
  const check = state.makeupCheck;
  els.makeupCheck.hidden = !check;
  if (!check) return;
  els.makeupCheck.dataset.check = String(check.id);
  if (els.makeupCheckImage.dataset.check !== String(check.id)) {
    els.makeupCheckImage.dataset.check = String(check.id);
    els.makeupCheckImage.src = `${check.code_url}?token=${encodeURIComponent(hooks.session().token)}`;
  }
  const result = state.makeupChecks.get(check.id);
  if (!result) {
    showResult(els.makeupCheckResult, '', '');
    return;
  }
  const known = ['pending', 'passed', 'wrong_code', 'replay', 'too_many'];
  const text = known.includes(result.status)
    ? t('member.presence.' + result.status)
    : t('member.presence.other', { detail: result.detail || result.status });
  els.makeupCheckResult.dataset.status = result.status;
  showResult(els.makeupCheckResult, result.status === 'pending' ? '' : 'bad', text);
}

/** Stop the player where a presence check opened, when playback (not a seek) crosses it and
 * the member has not passed or skipped it yet. */
let makeupLastTime = 0;
function stopAtMakeupCheck() {
  const m = state.makeup;
  const video = els.makeupVideo;
  const now = video.currentTime || 0;
  const before = makeupLastTime;
  makeupLastTime = now;
  if (!m || m.status !== 'ready' || !m.checks.length || state.makeupCheck) return;
  if (video.seeking || now < before || now - before > 2) return; // a seek, not playback
  const seg = m.segments[m.current];
  const check = m.checks.find(
    (c) =>
      c.segment === seg.index &&
      before <= c.position_s &&
      c.position_s <= now &&
      !['passed', 'replay', 'too_many', 'skipped', 'pending'].includes(state.makeupChecks.get(c.id)?.status),
  );
  if (!check) return;
  video.pause();
  state.makeupCheck = check;
  renderMakeup();
  els.makeupCheckCode.focus();
}

export function startMakeup() {
  if (state.makeup || !hooks.session() || state.fatal) return;
  state.makeup = { status: 'loading', segments: [], current: 0, total_s: 0 };
  hooks.render();
  loadRecording();
  if (!makeupTimer) makeupTimer = setInterval(reportMakeup, MAKEUP_REPORT_MS);
}

async function loadRecording() {
  try {
    const data = await api(`/api/sessions/${hooks.session().sessionId}/recordings`, {
      token: hooks.session().token,
    });
    const segments = (data.segments || [])
      .filter((s) => !s.deleted && s.url)
      .sort((a, b) => a.index - b.index);
    state.makeup = {
      status: segments.length ? 'ready' : 'none',
      segments,
      current: 0,
      total_s: segments.reduce((sum, s) => sum + (s.duration_s || 0), 0),
      // Where the rule asks: the presence checks to stop at, [{id, segment, position_s, code_url}].
      checks: data.makeup_presence ? data.presence_checks || [] : [],
    };
    if (segments.length) loadSegment(0, false);
  } catch (error) {
    if (error.status === 401 || error.status === 403) return hooks.fail('link');
    state.makeup = {
      status: 'unavailable',
      detail: error.detail || error.code,
      segments: [],
      current: 0,
      total_s: 0,
    };
    setTimeout(() => {
      if (state.makeup?.status === 'unavailable') {
        state.makeup = null;
        startMakeup();
      }
    }, 15000);
  }
  hooks.render();
}

function loadSegment(position, play) {
  reportMakeup(); // what was played of the segment before: played ranges reset with the source
  const m = state.makeup;
  m.current = position;
  makeupLastTime = 0;
  const url = new URL(m.segments[position].url, location.href);
  url.searchParams.set('token', hooks.session().token);
  els.makeupVideo.src = url.pathname + url.search;
  if (play) els.makeupVideo.play().catch(() => {});
  hooks.render();
}

/** Send what the player has played since the last report, as ``makeup_progress`` events of at
 * most a minute each, labelled with the visibility and rate that held while it played. */
function reportMakeup() {
  const m = state.makeup;
  const video = els.makeupVideo;
  if (!m || m.status !== 'ready' || !hooks.outbox()) return;
  const seg = m.segments[m.current];
  const sent = makeupSent.get(seg.index) || [];
  const played = [];
  for (let i = 0; i < video.played.length; i++) played.push([video.played.start(i), video.played.end(i)]);
  const fresh = subtractRanges(mergeRanges(played), sent);
  const limit = seg.duration_s != null ? seg.duration_s + 1 : Infinity;
  for (const range of fresh) {
    let from = range[0];
    const to = Math.min(range[1], limit);
    while (to - from >= 0.25) {
      const end = Math.min(to, from + MAKEUP_MAX_SPAN_S);
      hooks.outbox().add({
        type: 'makeup_progress',
        segment: seg.index,
        from_s: Math.round(from * 1000) / 1000,
        to_s: Math.round(end * 1000) / 1000,
        visible: makeupVisible,
        rate: makeupRate,
      });
      from = end;
    }
  }
  makeupSent.set(seg.index, mergeRanges([...sent, ...fresh]));
}

export function wireMakeup(pageHooks) {
  Object.assign(hooks, pageHooks);
  const video = els.makeupVideo;
  for (const name of ['pause', 'seeking']) video.addEventListener(name, () => {
    reportMakeup();
    renderMakeup();
  });
  video.addEventListener('play', () => {
    if (state.makeupCheck) video.pause(); // answer or skip the check first
    makeupLastTime = video.currentTime || 0;
    renderMakeup();
  });
  video.addEventListener('timeupdate', () => {
    stopAtMakeupCheck();
    renderMakeup();
  });
  video.addEventListener('seeked', () => {
    makeupLastTime = video.currentTime || 0;
  });
  els.makeupCheckForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const code = els.makeupCheckCode.value.trim();
    const check = state.makeupCheck;
    if (!check || !code || !hooks.outbox()) return;
    reportMakeup(); // the media up to the check, so its opening counts as watched
    hooks.outbox().add({ type: 'makeup_presence_answer', check: check.id, code });
    state.makeupChecks.set(check.id, { status: 'pending' });
    els.makeupCheckCode.value = '';
    renderMakeup();
  });
  els.makeupCheckSkip.addEventListener('click', () => {
    const check = state.makeupCheck;
    if (!check) return;
    state.makeupChecks.set(check.id, { status: 'skipped' });
    state.makeupCheck = null;
    renderMakeup();
    video.play().catch(() => {});
  });
  video.addEventListener('ratechange', () => {
    reportMakeup(); // at the rate it played until now
    makeupRate = video.playbackRate;
    renderMakeup();
  });
  video.addEventListener('ended', () => {
    reportMakeup();
    const m = state.makeup;
    if (m && m.current + 1 < m.segments.length) loadSegment(m.current + 1, true);
    else renderMakeup();
  });
  document.addEventListener('visibilitychange', () => {
    reportMakeup(); // what played while the page was (in)visible, labelled so
    makeupVisible = document.visibilityState === 'visible';
    renderMakeup();
  });
  window.addEventListener('pagehide', reportMakeup);
  window.studycastMember.makeup = { report: reportMakeup, video };
}
