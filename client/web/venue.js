// The venue screen (a kiosk): the broadcast, the rotating check-in code, presence codes and
// quiz questions for the room. Opened from the venue link venue.html#s=ID&t=TOKEN; a venue
// assigned an edge opens it on the edge with &o=ORIGIN, and plays from the origin while the edge
// is down (see WhepPlayer's failover).
import { api } from './api.js';
import { initI18n, onLanguageChange, t } from './i18n.js';
import {
  LiveStream,
  clearFragment,
  forgetLink,
  fragmentParams,
  rememberLink,
  rememberedLink,
  svgDataUrl,
  tokenClaims,
} from './live.js';
import { WhepPlayer, nodeBase } from './whep.js';

initI18n({
  en: {
    'venue.title': 'Venue screen · studycast',
    'venue.checkin': 'Scan to check in',
    'venue.qrAlt': 'Check-in QR code',
    'venue.shortCode': 'Or type the code',
    'venue.venueId': 'Venue',
    'venue.checkedIn': 'Checked in',
    'venue.presence': 'Presence check',
    'venue.presenceHint': 'Enter this code on your phone',
    'venue.closesIn': 'Closes in {seconds} s',
    'venue.closed': 'Closed',
    'venue.quizOpen': 'Question {n}',
    'venue.quizClosed': 'Answers closed',
    'venue.quizRevealed': 'The answer',
    'venue.banner.connecting': 'Connecting to the broadcast…',
    'venue.banner.scheduled': 'Starting soon',
    'venue.banner.scheduledAt': 'Starting soon · {time}',
    'venue.banner.paused': 'Broadcast paused: it will continue here by itself',
    'venue.banner.ended': 'The session has ended. Thank you for taking part.',
    'venue.banner.unreachable': 'The server cannot be reached: retrying…',
    'venue.banner.full': 'The server is busy: retrying shortly…',
    'player.unmute': 'Click for sound',
    'venue.fatal.link': 'This venue link has expired or is not valid',
    'venue.fatal.linkText': 'Ask the organiser for the current venue screen link.',
    'venue.fatal.missing': 'This page needs the venue screen link',
    'venue.fatal.missingText': 'Open the venue link the organiser sent you (venue.html#s=…&t=…).',
    'venue.fatal.notFound': 'This session does not exist',
    'venue.node.edge': 'Playing from edge {host}',
    'venue.node.fallback': 'Playing from origin {host}: the edge is unreachable',
  },
  'zh-CN': {
    'venue.title': '会场大屏 · studycast',
    'venue.checkin': '扫码签到',
    'venue.qrAlt': '签到二维码',
    'venue.shortCode': '或输入签到码',
    'venue.venueId': '会场编号',
    'venue.checkedIn': '已签到',
    'venue.presence': '在场确认',
    'venue.presenceHint': '请在手机上输入此代码',
    'venue.closesIn': '{seconds} 秒后截止',
    'venue.closed': '已截止',
    'venue.quizOpen': '第 {n} 题',
    'venue.quizClosed': '作答已截止',
    'venue.quizRevealed': '正确答案',
    'venue.banner.connecting': '正在连接直播…',
    'venue.banner.scheduled': '直播即将开始',
    'venue.banner.scheduledAt': '直播即将开始 · {time}',
    'venue.banner.paused': '直播暂停中，恢复后将自动继续',
    'venue.banner.ended': '本场学习已结束，感谢参与。',
    'venue.banner.unreachable': '无法连接服务器，正在重试…',
    'venue.banner.full': '服务器繁忙，稍后自动重试…',
    'player.unmute': '点击开启声音',
    'venue.fatal.link': '会场链接已过期或无效',
    'venue.fatal.linkText': '请向组织者索取当前的会场大屏链接。',
    'venue.fatal.missing': '此页面需要会场大屏链接',
    'venue.fatal.missingText': '请打开组织者发送的会场链接（venue.html#s=…&t=…）。',
    'venue.fatal.notFound': '该场次不存在',
    'venue.node.edge': '经边缘节点 {host} 播放',
    'venue.node.fallback': '经源站 {host} 播放：边缘节点无法连接',
  },
});

const $ = (id) => document.getElementById(id);
const els = {
  video: $('video'),
  venueName: $('venue-name'),
  sessionTitle: $('session-title'),
  nodeStatus: $('node-status'),
  checkinPanel: $('checkin-panel'),
  qr: $('qr'),
  shortCode: $('short-code'),
  venueSlug: $('venue-slug'),
  checkinCount: $('checkin-count'),
  banner: $('banner'),
  unmute: $('unmute'),
  presence: $('presence-overlay'),
  presenceCode: $('presence-code'),
  presenceCountdown: $('presence-countdown'),
  quiz: $('quiz-overlay'),
  quizStatus: $('quiz-status'),
  quizPrompt: $('quiz-prompt'),
  quizChoices: $('quiz-choices'),
  quizCountdown: $('quiz-countdown'),
  fatal: $('fatal'),
  fatalTitle: $('fatal-title'),
  fatalText: $('fatal-text'),
};

const REVEAL_SHOWN_MS = 20000;

// What the screen shows; render() turns it into the DOM (again on a language switch).
const state = {
  fatal: null, // 'link' | 'missing' | 'notFound'
  session: null,
  sessionState: null,
  venueName: '',
  slug: '',
  code: null,
  checkins: 0,
  check: null,
  question: null,
  revealedUntil: 0,
  live: 'connecting',
  player: 'stopped',
  playerReason: null,
  muted: false,
  nodes: 1, // WHEP URLs the player may play from (2: an edge, then the origin)
  node: 0, // the one it plays from
  nodeBase: '',
  clockOffsetMs: 0, // server clock minus ours
};

function serverNow() {
  return Date.now() + state.clockOffsetMs;
}

function link() {
  const params = fragmentParams();
  const sid = Number(params.get('s'));
  const token = params.get('t');
  if (sid && token) {
    const origin = originParam(params.get('o'));
    rememberLink('venue', sid, token);
    rememberOrigin(sid, origin);
    clearFragment();
    return { sessionId: sid, token, origin };
  }
  const remembered = rememberedLink('venue', sid || null);
  return remembered && { ...remembered, origin: rememberedOrigin(remembered.sessionId) };
}

/** The origin's base URL from a venue link played on an edge (o=...), or null. */
function originParam(value) {
  if (!value) return null;
  try {
    const url = new URL(value);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
    return (url.origin + url.pathname).replace(/\/+$/, '');
  } catch {
    return null;
  }
}

function rememberOrigin(sessionId, origin) {
  try {
    const key = `studycast.venue.origin.${sessionId}`;
    if (origin) window.localStorage.setItem(key, origin);
    else window.localStorage.removeItem(key);
  } catch {
    // no storage: a reload plays from this node only
  }
}

function rememberedOrigin(sessionId) {
  try {
    return originParam(window.localStorage.getItem(`studycast.venue.origin.${sessionId}`));
  } catch {
    return null;
  }
}

/** Where the screen plays from: this node, then (on an edge) the origin. */
function whepUrls(session) {
  const here = `/whep/${session.sessionId}`;
  const urls = [here];
  if (session.origin && session.origin !== nodeBase(here)) {
    urls.push(`${session.origin}/whep/${session.sessionId}`);
  }
  return urls;
}

function bannerKind() {
  if (state.sessionState === 'ended' || state.player === 'ended') return 'ended';
  // This node's live events may be gone while the picture plays from the origin: no banner then.
  if (
    (state.live === 'retrying' && state.player !== 'playing') ||
    (state.player === 'retrying' && state.playerReason === 'network')
  ) {
    return 'unreachable';
  }
  if (state.player === 'retrying' && state.playerReason === 'full') return 'full';
  if (state.sessionState === 'scheduled') return 'scheduled';
  if (state.sessionState === 'paused') return 'paused';
  if (state.sessionState === 'live' && state.player !== 'playing') return 'connecting';
  return null;
}

function render() {
  if (state.fatal) {
    els.fatal.hidden = false;
    els.fatal.dataset.fatal = state.fatal;
    els.fatalTitle.textContent = t(
      { link: 'venue.fatal.link', missing: 'venue.fatal.missing', notFound: 'venue.fatal.notFound' }[
        state.fatal
      ],
    );
    els.fatalText.textContent = state.fatal === 'notFound' ? '' : t(`venue.fatal.${state.fatal}Text`);
    els.checkinPanel.hidden = true;
    els.banner.hidden = true;
    els.presence.hidden = true;
    els.quiz.hidden = true;
    els.unmute.hidden = true;
    els.nodeStatus.hidden = true;
    return;
  }
  els.fatal.hidden = true;
  els.venueName.textContent = state.venueName || state.slug;
  els.sessionTitle.textContent = state.session?.title || '';
  renderNode();
  document.title = [state.venueName, t('venue.title')].filter(Boolean).join(' · ');

  const kind = bannerKind();
  els.banner.hidden = !kind;
  els.banner.dataset.banner = kind || '';
  if (kind === 'scheduled' && state.session?.scheduled_start) {
    const time = new Date(state.session.scheduled_start).toLocaleString(document.documentElement.lang, {
      dateStyle: 'medium',
      timeStyle: 'short',
    });
    els.banner.textContent = t('venue.banner.scheduledAt', { time });
  } else if (kind) {
    els.banner.textContent = t('venue.banner.' + kind);
  }

  const ended = state.sessionState === 'ended';
  els.checkinPanel.hidden = ended || !state.code;
  if (state.code) {
    els.shortCode.textContent = state.code.short_code;
    els.venueSlug.textContent = state.slug;
  }
  els.checkinCount.textContent = String(state.checkins);
  els.unmute.hidden = !state.muted || state.player !== 'playing';

  renderPresence();
  renderQuiz();
}

function renderNode() {
  // Shown for a venue with an edge only: which node the picture comes from.
  els.nodeStatus.hidden = state.nodes < 2 || !state.nodeBase;
  if (els.nodeStatus.hidden) return;
  const edge = state.node === 0;
  els.nodeStatus.dataset.node = edge ? 'edge' : 'origin';
  els.nodeStatus.dataset.base = state.nodeBase;
  els.nodeStatus.textContent = t(edge ? 'venue.node.edge' : 'venue.node.fallback', {
    host: new URL(state.nodeBase).host,
  });
}

function renderPresence() {
  const check = state.check;
  // Never more than the window (the clocks' offset can make the first second look like 61).
  const left = check
    ? Math.min(check.window_s ?? Infinity, Math.ceil((Date.parse(check.closes_at) - serverNow()) / 1000))
    : 0;
  const open = check && check.state === 'open' && check.code && left > 0;
  els.presence.hidden = !open || state.sessionState === 'ended';
  if (open) {
    els.presenceCode.textContent = check.code;
    els.presenceCountdown.textContent = t('venue.closesIn', { seconds: left });
  }
}

function renderQuiz() {
  const q = state.question;
  const shown =
    q && (q.state === 'open' || q.state === 'closed' || (q.state === 'revealed' && Date.now() < state.revealedUntil));
  els.quiz.hidden = !shown || state.sessionState === 'ended';
  if (!shown) return;
  els.quiz.dataset.state = q.state;
  els.quizStatus.textContent =
    q.state === 'open'
      ? t('venue.quizOpen', { n: q.position ?? '' })
      : t(q.state === 'closed' ? 'venue.quizClosed' : 'venue.quizRevealed');
  els.quizPrompt.textContent = q.prompt;
  const correct = new Set(q.correct || []);
  els.quizChoices.replaceChildren(
    ...q.choices.map((choice, i) => {
      const li = document.createElement('li');
      li.textContent = choice;
      li.dataset.index = String(i);
      if (q.state === 'revealed' && correct.has(i)) li.classList.add('correct');
      return li;
    }),
  );
  els.quizChoices.type = q.kind === 'true_false' ? '1' : 'A';
  const left = q.closes_at ? Math.ceil((Date.parse(q.closes_at) - serverNow()) / 1000) : null;
  els.quizCountdown.textContent =
    q.state === 'open' && left !== null && left > 0 ? t('venue.closesIn', { seconds: left }) : '';
}

function setQuestion(question) {
  state.question = question;
  if (question?.state === 'revealed') state.revealedUntil = Date.now() + REVEAL_SHOWN_MS;
  render();
}

let codeTimer = null;

/** The venue's current check-in code: from this page's server, or (on an edge that cannot be
 * reached) from the origin, asked with the token in the URL so no preflight is needed. */
async function checkinCode(session) {
  const path = `/api/sessions/${session.sessionId}/venues/${state.slug}/checkin-code`;
  try {
    return await api(path, { token: session.token });
  } catch (error) {
    const gone = !error.status || error.status >= 500;
    if (!gone || !session.origin || session.origin === location.origin) throw error;
    const url = `${session.origin}${path}?token=${encodeURIComponent(session.token)}`;
    const response = await fetch(url, { cache: 'no-store' });
    if (!response.ok) throw Object.assign(new Error('checkin-code'), { status: response.status });
    return response.json();
  }
}

async function refreshCode(session) {
  clearTimeout(codeTimer);
  if (state.fatal || state.sessionState === 'ended') return;
  let delay = 5000;
  try {
    const code = await checkinCode(session);
    const qrChanged = !state.code || state.code.url !== code.url;
    state.code = code;
    state.venueName = code.venue_name;
    if (qrChanged) els.qr.src = svgDataUrl(code.qr_svg);
    // The next code exists from rotates_at (server time): ask just after it.
    delay = Math.max(1000, Date.parse(code.rotates_at) - serverNow() + 300);
  } catch (error) {
    if (error.status === 401 || error.status === 403) state.fatal = 'link';
    else if (error.status === 404) state.fatal = 'notFound';
    else delay = 3000; // unreachable: the banner says so via the live stream; try again soon
  }
  render();
  if (!state.fatal) codeTimer = setTimeout(() => refreshCode(session), delay);
}

function main() {
  const session = link();
  if (!session) {
    state.fatal = 'missing';
    render();
    onLanguageChange(render);
    return;
  }
  const claims = tokenClaims(session.token);
  state.slug = (claims?.sub || '').replace(/^venue:/, '');
  if (!claims || claims.role !== 'venue' || !state.slug) {
    state.fatal = 'link';
    render();
    onLanguageChange(render);
    return;
  }

  const urls = whepUrls(session);
  state.nodes = urls.length;
  const player = new WhepPlayer(els.video, {
    urls,
    token: session.token,
    onState: (playerState, detail) => {
      state.player = playerState;
      state.playerReason = detail.reason || null;
      state.muted = detail.muted;
      state.node = detail.node;
      state.nodeBase = detail.nodeBase;
      if (playerState === 'unauthorized') {
        state.fatal = 'link';
        forgetLink('venue', session.sessionId);
      }
      if (playerState === 'ended') state.sessionState = 'ended';
      render();
    },
  });
  window.studycastPlayer = player; // for a look from the developer tools (and the tests)
  els.unmute.addEventListener('click', () => player.unmute());

  const live = new LiveStream(session.sessionId, session.token, {
    // On an edge: the origin's stream when the edge is gone (the origin answers cross-origin).
    bases: session.origin && session.origin !== location.origin ? ['', session.origin] : [''],
    onState: (liveState) => {
      state.live = liveState;
      if (liveState === 'unauthorized') {
        state.fatal = 'link';
        forgetLink('venue', session.sessionId);
        player.stop();
      } else if (liveState === 'not_found') {
        state.fatal = 'notFound';
        player.stop();
      }
      render();
    },
  });
  const setSessionState = (value) => {
    const before = state.sessionState;
    state.sessionState = value;
    player.setExpectMedia(value === 'live');
    if (value === 'ended') {
      player.stop();
      live.stop();
    } else if (before === 'paused' && value === 'live' && player.state !== 'playing') {
      // The broadcast is back: a connection that stalled meanwhile starts afresh.
      setTimeout(() => {
        if (state.sessionState === 'live' && player.state !== 'playing') player.restart();
      }, 4000);
    }
  };
  live
    .on('snapshot', (data) => {
      state.clockOffsetMs = Date.parse(data.server_time) - Date.now();
      state.session = data.session;
      setSessionState(data.session.state);
      state.check = data.presence_check;
      state.question = data.question;
      if (data.counts) state.checkins = data.counts.checkins?.[state.slug] ?? 0;
      render();
    })
    .on('session_state', (data) => {
      setSessionState(data.state);
      render();
    })
    .on('counts', (data) => {
      state.checkins = data.checkins?.[state.slug] ?? 0;
      render();
    })
    .on('presence_check', (data) => {
      state.check = data;
      render();
    })
    .on('quiz_opened', setQuestion)
    .on('quiz_closed', setQuestion)
    .on('quiz_revealed', setQuestion);

  onLanguageChange(render);
  render();
  live.start();
  player.start();
  refreshCode(session);
  setInterval(render, 1000); // countdowns
}

main();
