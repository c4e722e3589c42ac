// The recording player: a session's segments played one after another as one timeline, a bar
// over the whole session (segments, what has played, chapter marks), the chapters to jump to,
// and, for staff, the downloads.
//
// recording.html?session=ID with an organiser or auditor login; a member opens it with their
// personal link's fragment (#s=ID&t=TOKEN), the token going to the API as a bearer header and
// to <video src> as ?token=. Everything renders from `state`, again on a language switch.
import { ApiError, api, loggedIn } from './api.js';
import { hasString, initI18n, onLanguageChange, t } from './i18n.js';

initI18n({
  en: {
    'rec.title': 'Recording · studycast',
    'rec.heading': 'Recording',
    'rec.loading': 'Loading…',
    'rec.empty': 'This session has no recording.',
    'rec.player': 'Player',
    'rec.play': 'Play',
    'rec.pause': 'Pause',
    'rec.position': 'Position in the session',
    'rec.barHelp': 'Click the bar to jump; arrow keys move 5 seconds.',
    'rec.segment': 'Part {n} of {count}',
    'rec.session': '{title} · {duration} recorded in {count} parts',
    'rec.sessionNoTitle': 'Session {id} · {duration} recorded in {count} parts',
    'rec.chapters': 'Chapters',
    'rec.noChapters': 'No quiz questions, presence checks or pauses.',
    'rec.chapter.quiz': 'Question {n}: {text}',
    'rec.chapter.presence': 'Presence check',
    'rec.chapter.pause': 'Broadcast paused',
    'rec.downloads': 'Downloads',
    'rec.downloadsHelp': 'Every download is recorded in the audit trail.',
    'rec.downloadAll': 'Download the whole session',
    'rec.downloadSegment': 'Download part {n}',
    'rec.segmentInfo': 'Part {n}: {duration}, {size}',
    'rec.segmentDeleted': 'Part {n}: deleted (retention)',
    'rec.who': '{name} ({role})',
    'rec.member': 'Member {no}',
    'error.network': 'The server cannot be reached. Check the connection and try again.',
    'error.forbidden': 'This login may not see this recording.',
    'error.wrong_session': 'This link is for another session.',
    'error.not_found': 'This session was not found.',
    'error.no_session': 'Open this page from a session (recording.html?session=…).',
    'error.media': 'The recording could not be played in this browser.',
  },
  'zh-CN': {
    'rec.title': '录像 · studycast',
    'rec.heading': '录像',
    'rec.loading': '正在加载…',
    'rec.empty': '本场学习会没有录像。',
    'rec.player': '播放器',
    'rec.play': '播放',
    'rec.pause': '暂停',
    'rec.position': '在学习会中的位置',
    'rec.barHelp': '点击进度条跳转；方向键每次移动 5 秒。',
    'rec.segment': '第 {n} 段，共 {count} 段',
    'rec.session': '{title} · 共录制 {duration}，分 {count} 段',
    'rec.sessionNoTitle': '学习会 {id} · 共录制 {duration}，分 {count} 段',
    'rec.chapters': '章节',
    'rec.noChapters': '没有答题、签到抽查或暂停。',
    'rec.chapter.quiz': '第 {n} 题：{text}',
    'rec.chapter.presence': '签到抽查',
    'rec.chapter.pause': '直播暂停',
    'rec.downloads': '下载',
    'rec.downloadsHelp': '每次下载都会记入审计日志。',
    'rec.downloadAll': '下载整场录像',
    'rec.downloadSegment': '下载第 {n} 段',
    'rec.segmentInfo': '第 {n} 段：{duration}，{size}',
    'rec.segmentDeleted': '第 {n} 段：已删除（保留期满）',
    'rec.who': '{name}（{role}）',
    'rec.member': '成员 {no}',
    'error.network': '无法连接服务器，请检查网络后重试。',
    'error.forbidden': '此账号无权查看该录像。',
    'error.wrong_session': '此链接属于另一场学习会。',
    'error.not_found': '未找到该学习会。',
    'error.no_session': '请从学习会页面打开（recording.html?session=…）。',
    'error.media': '此浏览器无法播放该录像。',
  },
});

const $ = (id) => document.getElementById(id);
const RETURN_KEY = 'studycast.recording.session';
const STEP_S = 5;

const state = {
  sessionId: null,
  token: null,
  me: null,
  title: null,
  listing: null,
  segments: [], // the playable ones, in order
  chapters: [],
  total: 0,
  current: -1, // index into state.segments
  position: 0, // seconds on the session's timeline
  playing: false,
  error: null,
};

// --- the page's address -----------------------------------------------------------------------

function fromAddress() {
  const hash = new URLSearchParams(location.hash.replace(/^#/, ''));
  const query = new URLSearchParams(location.search);
  const token = hash.get('t');
  let id = query.get('session') || hash.get('s');
  if (!id) {
    try {
      id = sessionStorage.getItem(RETURN_KEY);
    } catch {
      id = null;
    }
  }
  return { id: id && /^\d+$/.test(id) ? Number(id) : null, token: token || null };
}

function withToken(url) {
  if (!state.token) return url;
  return url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(state.token);
}

// --- formatting -------------------------------------------------------------------------------

function clock(seconds) {
  const total = Math.max(0, Math.floor(seconds || 0));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return '?';
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MB`;
  return `${Math.max(1, Math.round(bytes / 1024))} KB`;
}

function errorText(error) {
  const key = 'error.' + error.code;
  return hasString(key) ? t(key) : error.detail || error.message || String(error.code);
}

function chapterKind(cue) {
  return cue.id.split('-')[0];
}

function chapterLabel(cue) {
  const kind = chapterKind(cue);
  if (kind === 'quiz') return t('rec.chapter.quiz', { n: cue.id.split('-')[1], text: cue.text });
  if (kind === 'presence' || kind === 'pause') return t('rec.chapter.' + kind);
  return cue.text;
}

// --- WebVTT -----------------------------------------------------------------------------------

function vttSeconds(text) {
  const parts = text.trim().split(':').map(Number);
  return parts.reduce((sum, part) => sum * 60 + part, 0);
}

function unescapeCue(text) {
  return text.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
}

/** The cues of a WebVTT file: [{id, start, end, text}]. */
export function parseVtt(body) {
  const cues = [];
  for (const block of body.replace(/\r\n?/g, '\n').split(/\n{2,}/)) {
    const lines = block.split('\n').filter((line) => line !== '');
    const at = lines.findIndex((line) => line.includes('-->'));
    if (at < 0) continue;
    const [start, end] = lines[at].split('-->').map((part) => vttSeconds(part.trim().split(/\s+/)[0]));
    cues.push({
      id: at > 0 ? lines[at - 1] : `cue-${cues.length + 1}`,
      start,
      end,
      text: unescapeCue(lines.slice(at + 1).join(' ')),
    });
  }
  return cues;
}

// --- the timeline -----------------------------------------------------------------------------

/** The segment and the time into it for a position on the session's timeline: a position in a
 * gap (or before the first segment) plays from the next segment's start. */
function locate(position) {
  const list = state.segments;
  for (let i = 0; i < list.length; i++) {
    const seg = list[i];
    const end = seg.offset_s + (seg.duration_s ?? Infinity);
    if (position < seg.offset_s) return { index: i, into: 0 };
    if (position < end) return { index: i, into: position - seg.offset_s };
  }
  const last = list.length - 1;
  return { index: last, into: list[last].duration_s ?? 0 };
}

function load(index, into, play) {
  const video = $('video');
  const seg = state.segments[index];
  state.current = index;
  const apply = () => {
    video.currentTime = into;
    if (play) video.play().catch(() => {});
  };
  if (video.dataset.segment === String(seg.index) && video.readyState >= 1) {
    apply();
  } else {
    video.dataset.segment = String(seg.index);
    video.src = withToken(seg.url);
    video.addEventListener('loadedmetadata', apply, { once: true });
    video.load();
  }
  state.position = seg.offset_s + into;
  render();
}

function seek(position, play = state.playing) {
  if (!state.segments.length) return;
  const clamped = Math.min(Math.max(0, position), state.total);
  const { index, into } = locate(clamped);
  load(index, into, play);
}

function togglePlay() {
  const video = $('video');
  if (state.current < 0) load(0, 0, true);
  else if (video.paused) video.play().catch(() => {});
  else video.pause();
}

// --- loading ----------------------------------------------------------------------------------

async function start() {
  const { id, token } = fromAddress();
  state.sessionId = id;
  state.token = token;
  try {
    if (id === null) throw new ApiError('no_session', '');
    if (!token) {
      state.me = await loggedIn();
      if (state.me === null) {
        // The login page only follows plain page names: keep the session for the way back.
        try {
          sessionStorage.setItem(RETURN_KEY, String(id));
        } catch {
          // the session will have to be chosen again
        }
        location.assign('login.html?next=' + encodeURIComponent(`recording.html?session=${id}`));
        return;
      }
      if (!new URLSearchParams(location.search).get('session')) {
        history.replaceState(null, '', `recording.html?session=${id}`);
      }
      try {
        state.title = (await api(`/api/sessions/${id}`)).title;
      } catch {
        state.title = null; // the title is a nicety; the recording may still be listed
      }
    }
    state.listing = await api(`/api/sessions/${id}/recordings`, { token });
    state.segments = state.listing.segments.filter((s) => !s.deleted && s.url);
    state.total = state.listing.total_duration_s || 0;
    const vtt = await api(state.listing.chapters_url, { token, raw: true });
    state.chapters = parseVtt(await vtt.text());
  } catch (error) {
    state.error = error;
  }
  $('rec-loading').hidden = true;
  if (state.segments.length) load(0, 0, false);
  render();
}

// --- rendering --------------------------------------------------------------------------------

function percent(seconds) {
  return state.total > 0 ? `${Math.min(100, (seconds / state.total) * 100)}%` : '0%';
}

function renderBar() {
  const bar = $('bar');
  bar.setAttribute('aria-valuemax', String(Math.round(state.total)));
  bar.setAttribute('aria-valuenow', String(Math.round(state.position)));
  bar.setAttribute('aria-valuetext', `${clock(state.position)} / ${clock(state.total)}`);
  $('bar-segments').replaceChildren(
    ...state.segments.map((seg, i) => {
      const block = document.createElement('div');
      block.className = 'rec-bar-segment' + (i === state.current ? ' is-current' : '');
      block.dataset.index = String(seg.index);
      block.style.left = percent(seg.offset_s);
      block.style.width = percent(seg.duration_s ?? 0);
      return block;
    }),
  );
  $('bar-fill').style.width = percent(state.position);
  $('bar-marks').replaceChildren(
    ...state.chapters.map((cue) => {
      const mark = document.createElement('div');
      mark.className = 'rec-bar-mark kind-' + chapterKind(cue);
      mark.dataset.cue = cue.id;
      mark.title = `${clock(cue.start)} ${chapterLabel(cue)}`;
      mark.style.left = percent(cue.start);
      return mark;
    }),
  );
}

function renderChapters() {
  $('chapters-empty').hidden = state.chapters.length > 0;
  $('chapter-list').replaceChildren(
    ...state.chapters.map((cue) => {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'rec-chapter kind-' + chapterKind(cue);
      button.dataset.cue = cue.id;
      button.dataset.start = String(cue.start);
      const inside = state.position >= cue.start && state.position < cue.end;
      if (inside) button.setAttribute('aria-current', 'true');
      const time = document.createElement('span');
      time.className = 'rec-chapter-time';
      time.textContent = clock(cue.start);
      const label = document.createElement('span');
      label.textContent = chapterLabel(cue);
      button.append(time, label);
      button.addEventListener('click', () => seek(cue.start, true));
      li.append(button);
      return li;
    }),
  );
}

function renderDownloads() {
  const staff = !state.token && state.me;
  $('downloads').hidden = !staff || !state.listing;
  if (!staff || !state.listing) return;
  $('download-all').href = state.listing.download_url;
  $('download-all').hidden = state.segments.length === 0;
  $('segment-list').replaceChildren(
    ...state.listing.segments.map((seg) => {
      const li = document.createElement('li');
      li.dataset.index = String(seg.index);
      const info = document.createElement('span');
      const n = seg.index + 1;
      if (seg.deleted) {
        info.className = 'is-deleted';
        info.textContent = t('rec.segmentDeleted', { n });
        li.append(info);
        return li;
      }
      info.textContent = t('rec.segmentInfo', { n, duration: clock(seg.duration_s), size: size(seg.size_bytes) });
      const link = document.createElement('a');
      link.className = 'button';
      link.href = `${state.listing.download_url}?segment=${seg.index}`;
      link.setAttribute('download', '');
      link.textContent = t('rec.downloadSegment', { n });
      li.append(info, link);
      return li;
    }),
  );
}

function render() {
  if (state.me) {
    const { username, role } = state.me.user;
    $('who').textContent = t('rec.who', { name: username, role: t('role.' + role) });
  }
  $('rec-error').hidden = state.error === null;
  $('rec-error-text').textContent = state.error ? errorText(state.error) : '';
  if (state.error?.code) $('rec-error').dataset.code = state.error.code;
  const loaded = state.listing !== null && state.error === null;
  $('rec-empty').hidden = !loaded || state.segments.length > 0;
  $('rec-body').hidden = !loaded || state.segments.length === 0;
  if (!loaded) return;
  const count = state.segments.length;
  $('rec-session').textContent = state.title
    ? t('rec.session', { title: state.title, duration: clock(state.total), count })
    : t('rec.sessionNoTitle', { id: state.sessionId, duration: clock(state.total), count });
  $('play').textContent = t(state.playing ? 'rec.pause' : 'rec.play');
  $('clock').textContent = `${clock(state.position)} / ${clock(state.total)}`;
  $('segment-label').textContent =
    state.current >= 0 ? t('rec.segment', { n: state.current + 1, count }) : '';
  renderBar();
  renderChapters();
  renderDownloads();
}

// --- events -----------------------------------------------------------------------------------

const video = $('video');
video.addEventListener('timeupdate', () => {
  const seg = state.segments[state.current];
  if (!seg || video.dataset.segment !== String(seg.index)) return;
  state.position = seg.offset_s + video.currentTime;
  render();
});
video.addEventListener('play', () => {
  state.playing = true;
  render();
});
video.addEventListener('pause', () => {
  // A pause at a segment's end is the hand-over to the next one, not the viewer's.
  if (!video.ended) state.playing = false;
  render();
});
video.addEventListener('ended', () => {
  if (state.current + 1 < state.segments.length) {
    load(state.current + 1, 0, true);
  } else {
    state.playing = false;
    render();
  }
});
video.addEventListener('error', () => {
  state.error = { code: 'media' };
  render();
});
$('play').addEventListener('click', togglePlay);
$('bar').addEventListener('click', (event) => {
  const box = event.currentTarget.getBoundingClientRect();
  seek(((event.clientX - box.left) / box.width) * state.total);
});
$('bar').addEventListener('keydown', (event) => {
  const moves = { ArrowLeft: -STEP_S, ArrowRight: STEP_S, Home: -Infinity, End: Infinity };
  if (event.key in moves) {
    event.preventDefault();
    const step = moves[event.key];
    seek(Number.isFinite(step) ? state.position + step : step < 0 ? 0 : state.total);
  } else if (event.key === ' ' || event.key === 'Enter') {
    event.preventDefault();
    togglePlay();
  }
});
onLanguageChange(render);
start();
