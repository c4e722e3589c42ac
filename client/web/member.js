// The member page: join a session from the personal link (member.html#s=ID&t=TOKEN), check in
// at a venue or watch remotely, answer quiz questions and presence checks, see one's own record,
// and hand in a study note. Everything a member sends goes through the outbox, so a bad
// connection delays it but never loses it.
import { api } from './api.js';
import { initI18n, onLanguageChange, t } from './i18n.js';
import { TEXT } from './member-text.js';
import {
  makeupFigures,
  mergeRanges,
  renderMakeup,
  startMakeup,
  wireMakeup,
} from './member-makeup.js';
import {
  els,
  formatTime,
  HEARTBEAT_MS,
  MAKEUP_MAX_RATE,
  ME_REFRESH_MS,
  serverNow,
  showResult,
  state,
  venueName,
} from './member-state.js';
import {
  LiveStream,
  clearFragment,
  forgetLink,
  fragmentParams,
  rememberLink,
  rememberedLink,
  tokenClaims,
} from './live.js';
import { Outbox } from './outbox.js';
import { WhepPlayer } from './whep.js';

initI18n(TEXT);

// -- rendering ---------------------------------------------------------------------------------

function render() {
  if (!state.fatal && !state.session && state.live === 'retrying') {
    // Nothing to show yet: say why, and that it keeps trying.
    els.fatal.hidden = false;
    els.fatal.dataset.fatal = 'unreachable';
    els.fatalTitle.textContent = t('member.notice.unreachable');
    els.fatalText.textContent = '';
    els.content.hidden = true;
    return;
  }
  els.fatal.hidden = !state.fatal;
  els.content.hidden = Boolean(state.fatal) || !state.session;
  if (state.fatal) {
    els.fatal.dataset.fatal = state.fatal;
    els.fatalTitle.textContent = t('member.fatal.' + state.fatal);
    els.fatalText.textContent = state.fatal === 'notFound' ? '' : t(`member.fatal.${state.fatal}Text`);
    return;
  }
  if (!state.session) return;
  els.sessionTitle.textContent = state.session.title;
  els.sessionState.dataset.state = state.sessionState;
  els.sessionState.textContent = t('member.state.' + state.sessionState);
  renderNotice();
  renderMode();
  renderMakeup();
  renderQuiz();
  renderPresence();
  renderMe();
  renderNote();
  renderOutbox();
}

function renderNotice() {
  let kind = null;
  let text = '';
  const unreachable =
    state.live === 'retrying' || state.outbox.state === 'retrying' || state.meUnreachable;
  if (unreachable) {
    kind = 'unreachable';
    text = t('member.notice.unreachable');
  } else if (state.sessionState === 'scheduled') {
    kind = 'scheduled';
    text = t('member.notice.scheduled', { time: formatTime(state.session.scheduled_start) });
  } else if (state.sessionState === 'paused') {
    kind = 'paused';
    text = t('member.notice.paused');
  } else if (state.sessionState === 'ended') {
    kind = 'ended';
    text = t('member.notice.ended');
  }
  els.notice.hidden = !kind;
  els.notice.dataset.kind = kind || '';
  els.notice.textContent = text;
}

function renderMode() {
  els.modeOnsite.setAttribute('aria-pressed', String(state.mode === 'onsite'));
  els.modeRemote.setAttribute('aria-pressed', String(state.mode === 'remote'));
  els.onsitePanel.hidden = state.mode !== 'onsite';
  els.remotePanel.hidden = state.mode !== 'remote';

  const known = state.venues.length > 0;
  els.venueSelect.hidden = !known;
  els.venueSelectLabel.hidden = !known;
  els.venueInput.hidden = known;
  els.venueInputLabel.hidden = known;
  if (known && els.venueSelect.options.length !== state.venues.length) {
    els.venueSelect.replaceChildren(
      ...state.venues.map((v) => new Option(v.name, v.slug, false, v.slug === state.checkedIn)),
    );
  }
  const c = state.checkin;
  const okText = state.checkedIn ? t('member.checkedIn', { venue: venueName(state.checkedIn) }) : '';
  const showOk = c?.tone === 'ok' || (!c && state.checkedIn) || c?.tone === 'pending';
  els.checkinStatus.hidden = !showOk;
  els.checkinStatus.textContent = c?.tone === 'pending' ? t('member.checkingIn') : okText;
  els.checkinError.hidden = c?.tone !== 'bad';
  els.checkinError.textContent = c?.tone === 'bad' ? t(c.key, c.params) : '';

  const playerKey =
    state.player === 'retrying' && state.playerReason === 'full' ? 'full' : state.player;
  els.playerStatus.textContent = t('member.player.' + playerKey);
  els.playerStatus.dataset.state = state.player;
  els.unmute.hidden = !(state.mode === 'remote' && state.muted && state.player === 'playing');
}

function choiceLabel(q, choice, i) {
  if (q.kind === 'true_false') return i === 0 ? t('member.true') : t('member.false');
  return `${String.fromCharCode(65 + i)}. ${choice}`;
}

function renderQuiz() {
  const q = state.question;
  els.quizCard.hidden = !q || !['open', 'closed', 'revealed'].includes(q.state);
  if (els.quizCard.hidden) return;
  els.quizCard.dataset.question = String(q.id);
  els.quizCard.dataset.state = q.state;
  const answer = state.answers.get(q.id);
  els.quizStatus.textContent =
    q.state === 'open'
      ? t('member.quiz.open', { n: q.position ?? '' }) +
        (q.kind === 'multiple' ? ' · ' + t('member.quiz.multiple') : '')
      : t('member.quiz.' + q.state);
  els.quizPrompt.textContent = q.prompt;
  const open = q.state === 'open';
  const correct = new Set(q.correct || []);
  const chosen = open ? state.selection : new Set(answer?.choices || []);
  els.quizChoices.replaceChildren(
    ...q.choices.map((choice, i) => {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'button';
      button.textContent = choiceLabel(q, choice, i);
      button.dataset.index = String(i);
      button.setAttribute('aria-pressed', String(chosen.has(i)));
      button.disabled = !open;
      if (q.state === 'revealed' && correct.has(i)) button.classList.add('correct');
      button.addEventListener('click', () => choose(q, i));
      return button;
    }),
  );
  els.quizSubmit.hidden = !open;
  let tone = '';
  let text = '';
  if (q.state === 'revealed') {
    const mine = new Set(answer?.choices || []);
    const right = answer && mine.size === correct.size && [...mine].every((i) => correct.has(i));
    tone = right ? 'ok' : 'bad';
    text = !answer ? t('member.quiz.none') : t(right ? 'member.quiz.right' : 'member.quiz.wrong');
  } else if (state.quizHint && open) {
    tone = 'bad';
    text = t('member.quiz.choose');
  } else if (answer) {
    tone = answer.status === 'refused' ? 'bad' : answer.status === 'saved' ? 'ok' : '';
    text =
      answer.status === 'refused'
        ? t('member.quiz.refused', { detail: answer.detail || '' })
        : t('member.quiz.' + answer.status);
  }
  els.quizResult.dataset.status = answer?.status || '';
  showResult(els.quizResult, tone, text);
}

function renderPresence() {
  const check = state.check;
  const result = check ? state.presence.get(check.id) : null;
  const left = check ? Math.ceil((Date.parse(check.closes_at) - serverNow()) / 1000) : 0;
  const open = check && check.state === 'open' && left > 0;
  els.presenceCard.hidden = !check || (!open && !result);
  if (els.presenceCard.hidden) return;
  els.presenceCard.dataset.check = String(check.id);
  const done = result && ['passed', 'late', 'replay', 'too_many'].includes(result.status);
  els.presenceForm.hidden = done || !open;
  els.presenceCountdown.textContent = open && !done ? t('member.presence.closesIn', { seconds: left }) : '';
  const showImage = state.mode === 'remote' && open && !done && check.code_image;
  els.presenceImage.hidden = !showImage;
  if (showImage && els.presenceImage.dataset.check !== String(check.id)) {
    els.presenceImage.dataset.check = String(check.id);
    els.presenceImage.src = `${check.code_image}?token=${encodeURIComponent(session.token)}`;
  }
  if (!result) {
    showResult(els.presenceResult, '', '');
    return;
  }
  const known = ['pending', 'passed', 'late', 'wrong_code', 'replay', 'not_open', 'too_many'];
  const text = known.includes(result.status)
    ? t('member.presence.' + result.status)
    : t('member.presence.other', { detail: result.detail || result.status });
  const tone = result.status === 'pending' ? '' : ['passed', 'late'].includes(result.status) ? 'ok' : 'bad';
  els.presenceResult.dataset.status = result.status;
  showResult(els.presenceResult, tone, text);
}

function renderMe() {
  const me = state.me;
  if (!me) return;
  const a = me.attendance;
  els.meName.textContent = a ? `${a.name} (${me.member_no})` : me.member_no;
  els.meMode.textContent = me.checked_in
    ? t('member.me.onsite', { venue: venueName(me.checked_in) })
    : a && a.mode === 'remote'
      ? t('member.me.remote')
      : a && a.mode === 'onsite'
        ? t('member.me.onsite', { venue: venueName(a.venue || '') })
        : t('member.me.absent');
  els.meWatched.textContent = a
    ? t('member.me.watchedValue', {
        minutes: Math.floor(a.watched_s / 60),
        share: Math.round(a.share * 100),
      })
    : '–';
  const makeupText = makeupFigures();
  els.meMakeup.textContent = makeupText || '–';
  els.mePresence.textContent = a
    ? t('member.me.presenceValue', { passed: a.presence_passed, total: a.presence_total })
    : '–';
  els.meQuiz.textContent = a ? String(a.quiz_points) : '–';
  els.mePoints.textContent = String(me.points ?? 0);
}

function renderNote() {
  els.noteCount.textContent = t('member.noteCount', { n: els.noteText.value.length });
  const n = state.note;
  if (!n) {
    showResult(els.noteResult, '', '');
    return;
  }
  const tone = n.status === 'saved' ? 'ok' : n.status === 'pending' ? '' : 'bad';
  const text =
    n.status === 'empty'
      ? t('member.note.empty')
      : n.status === 'refused'
        ? t('member.note.refused', { detail: n.detail || '' })
        : t('member.note.' + n.status);
  els.noteResult.dataset.status = n.status;
  showResult(els.noteResult, tone, text);
}

function renderOutbox() {
  const { pending, state: outboxState } = state.outbox;
  els.outboxStatus.dataset.pending = String(pending);
  els.outboxStatus.textContent = pending
    ? t(outboxState === 'retrying' ? 'member.outbox.retrying' : 'member.outbox.pending', { n: pending })
    : t('member.outbox.idle');
}

// -- actions -----------------------------------------------------------------------------------

let session = null;
let outbox = null;
let player = null;
let heartbeatTimer = null;

function choose(q, index) {
  if (q.state !== 'open') return;
  state.quizHint = false;
  if (q.kind === 'multiple') {
    if (state.selection.has(index)) state.selection.delete(index);
    else state.selection.add(index);
  } else {
    state.selection = new Set([index]);
  }
  render();
}

function sendAnswer() {
  const q = state.question;
  if (!q || q.state !== 'open') return;
  if (!state.selection.size) {
    state.quizHint = true;
    render();
    return;
  }
  const choices = [...state.selection].sort((a, b) => a - b);
  const event = outbox.add({ type: 'quiz_answer', question: q.id, choices });
  state.answers.set(q.id, { choices, status: 'pending', id: event.id });
  render();
}

function setMode(mode) {
  state.mode = mode;
  try {
    localStorage.setItem(`studycast.member.mode.${session.sessionId}`, mode);
  } catch {
    // not remembered; the choice holds for this page
  }
  if (mode === 'remote' && state.sessionState !== 'ended') {
    player.start();
    startHeartbeats();
  } else {
    player.stop();
    stopHeartbeats();
  }
  render();
}

function heartbeat() {
  if (state.sessionState === 'ended') return;
  outbox.add({ type: 'heartbeat', visible: document.visibilityState === 'visible' });
}

function startHeartbeats() {
  if (heartbeatTimer) return;
  heartbeat();
  heartbeatTimer = setInterval(heartbeat, HEARTBEAT_MS);
}

function stopHeartbeats() {
  clearInterval(heartbeatTimer);
  heartbeatTimer = null;
}

function checkIn(fields) {
  state.checkin = { tone: 'pending' };
  outbox.add({ type: 'check_in', ...fields });
  render();
}

// Bumped by every event result: a /me answer read before a result is older than it.
let resultEpoch = 0;

function onResult(event, outcome) {
  resultEpoch += 1;
  const result = outcome.result || {};
  const refusal = outcome.status === 'refused' ? result.code || 'refused' : null;
  const detail = result.detail || outcome.error?.detail || '';
  if (event.type === 'check_in') {
    if (outcome.status === 'accepted' || outcome.status === 'duplicate') {
      state.checkedIn = result.venue || event.venue;
      state.checkin = { tone: 'ok' };
    } else if (refusal) {
      const key = 'member.checkin.' + refusal;
      state.checkin = { tone: 'bad', key: t(key) === key ? 'member.checkin.invalid' : key, params: { detail } };
    } else {
      state.checkin = { tone: 'bad', key: 'member.checkin.invalid', params: { detail } };
    }
  } else if (event.type === 'quiz_answer') {
    const current = state.answers.get(event.question);
    if (current && current.id && current.id !== event.id) return; // a newer answer is on its way
    const ok = outcome.status === 'accepted' || outcome.status === 'duplicate';
    state.answers.set(event.question, {
      choices: event.choices,
      status: ok ? 'saved' : 'refused',
      detail,
    });
  } else if (event.type === 'presence_answer') {
    const ok = outcome.status === 'accepted' || outcome.status === 'duplicate';
    state.presence.set(event.check, {
      status: ok ? result.outcome || 'passed' : refusal || 'invalid',
      detail,
    });
  } else if (event.type === 'study_note') {
    const ok = outcome.status === 'accepted' || outcome.status === 'duplicate';
    state.note = { status: ok ? 'saved' : 'refused', detail };
    if (ok && els.noteText.value === event.text) els.noteText.value = '';
  } else if (event.type === 'makeup_presence_answer') {
    const ok = outcome.status === 'accepted' || outcome.status === 'duplicate';
    const status = ok ? 'passed' : refusal || 'invalid';
    state.makeupChecks.set(event.check, { status, detail });
    // Passed (or no longer answerable): the player goes on.
    if (state.makeupCheck?.id === event.check && status !== 'wrong_code') {
      state.makeupCheck = null;
      els.makeupVideo.play().catch(() => {});
    }
  } else if (event.type === 'makeup_progress') {
    if (outcome.status === 'accepted' && event.visible && event.rate <= MAKEUP_MAX_RATE) {
      const ranges = state.makeupAccepted.get(event.segment) || [];
      state.makeupAccepted.set(event.segment, mergeRanges([...ranges, [event.from_s, event.to_s]]));
    }
    render();
    return; // the record is refreshed on its own timer: not once per progress report
  }
  if (event.type !== 'heartbeat') scheduleMe(500);
  render();
}

// -- the record from the server ----------------------------------------------------------------

let meTimer = null;

function scheduleMe(delay) {
  clearTimeout(meTimer);
  meTimer = setTimeout(loadMe, delay);
}

async function loadMe() {
  const asked = resultEpoch;
  try {
    const me = await api(`/api/sessions/${session.sessionId}/me`, { token: session.token });
    // A result arrived while this was on its way: what it says may predate that result, so it
    // must not undo it; ask again shortly instead.
    if (asked !== resultEpoch) {
      render();
      scheduleMe(500);
      return;
    }
    state.me = me;
    state.meUnreachable = false;
    state.checkedIn = me.checked_in;
    for (const q of me.quiz) {
      const known = state.answers.get(q.question);
      if (!known || known.status !== 'pending') {
        state.answers.set(q.question, { choices: q.choices, status: 'saved', correct: q.correct });
      }
    }
    for (const p of me.presence) {
      const known = state.presence.get(p.check);
      if (!known || known.status !== 'passed') state.presence.set(p.check, { status: p.outcome });
    }
  } catch (error) {
    if (error.status === 401 || error.status === 403) return fail('link');
    if (error.status === 404) return fail('notFound');
    state.meUnreachable = error.code === 'network' || error.status >= 500;
  }
  render();
  scheduleMe(ME_REFRESH_MS);
}

function fail(kind) {
  state.fatal = kind;
  if (kind === 'link' && session) forgetLink('member', session.sessionId);
  player?.stop();
  stopHeartbeats();
  live?.stop();
  render();
}

// -- start -------------------------------------------------------------------------------------

let live = null;

function readLink() {
  const params = fragmentParams();
  const scanned = params.get('checkin');
  if (scanned) {
    clearFragment();
    const parts = scanned.split('.');
    const [sid, slug, windowText, sig] = parts;
    const link = rememberedLink('member', Number(sid));
    if (parts.length !== 4 || !link) return { error: 'scanFirst' };
    return {
      link,
      scan: { venue: slug, session: Number(sid), window: Number(windowText), sig },
    };
  }
  const sid = Number(params.get('s'));
  const token = params.get('t');
  if (sid && token) {
    rememberLink('member', sid, token);
    clearFragment();
    return { link: { sessionId: sid, token } };
  }
  const link = rememberedLink('member', sid || null);
  return link ? { link } : { error: 'missing' };
}

function main() {
  onLanguageChange(render);
  const opened = readLink();
  if (opened.error) {
    state.fatal = opened.error;
    render();
    return;
  }
  session = opened.link;
  const claims = tokenClaims(session.token);
  if (!claims || claims.role !== 'member') {
    state.fatal = 'link';
    render();
    return;
  }
  window.studycastMember = { state, session }; // for a look from the developer tools (and tests)

  outbox = new Outbox({
    sessionId: session.sessionId,
    owner: claims.sub,
    token: session.token,
    onChange: (box) => {
      state.outbox = { pending: box.pendingCount, state: box.state };
      if (box.state === 'unauthorized') fail('link');
      else render();
    },
  });
  outbox.onResult(onResult);
  window.studycastMember.outbox = outbox;
  wireMakeup({ render, fail, session: () => session, outbox: () => outbox });

  player = new WhepPlayer(els.video, {
    url: `/whep/${session.sessionId}`,
    token: session.token,
    onState: (playerState, detail) => {
      state.player = playerState;
      state.playerReason = detail.reason || null;
      state.muted = detail.muted;
      if (playerState === 'unauthorized') fail('link');
      else render();
    },
  });
  window.studycastPlayer = player;

  live = new LiveStream(session.sessionId, session.token, {
    onState: (liveState) => {
      state.live = liveState;
      if (liveState === 'unauthorized') fail('link');
      else if (liveState === 'not_found') fail('notFound');
      else render();
    },
  });
  const setSessionState = (value) => {
    const before = state.sessionState;
    state.sessionState = value;
    player.setExpectMedia(value === 'live');
    if (value === 'ended') {
      player.stop();
      stopHeartbeats();
      startMakeup();
    } else if (before === 'paused' && value === 'live' && state.mode === 'remote') {
      setTimeout(() => {
        if (state.sessionState === 'live' && player.state !== 'playing') player.restart();
      }, 4000);
    }
  };
  const setQuestion = (q) => {
    if (!state.question || state.question.id !== q.id) {
      state.selection = new Set();
      state.quizHint = false;
    }
    state.question = q;
    render();
  };
  live
    .on('snapshot', (data) => {
      state.clockOffsetMs = Date.parse(data.server_time) - Date.now();
      state.session = data.session;
      if (Array.isArray(data.session.venues)) state.venues = data.session.venues;
      setSessionState(data.session.state);
      if (data.question) setQuestion(data.question);
      state.check = data.presence_check;
      render();
    })
    .on('session_state', (data) => {
      setSessionState(data.state);
      render();
    })
    .on('quiz_opened', setQuestion)
    .on('quiz_closed', setQuestion)
    .on('quiz_revealed', setQuestion)
    .on('presence_check', (data) => {
      state.check = data;
      render();
    });

  els.modeOnsite.addEventListener('click', () => setMode('onsite'));
  els.modeRemote.addEventListener('click', () => setMode('remote'));
  els.unmute.addEventListener('click', () => player.unmute());
  els.quizSubmit.addEventListener('click', sendAnswer);
  els.checkinForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const venue = (state.venues.length ? els.venueSelect.value : els.venueInput.value).trim().toLowerCase();
    const code = els.checkinCode.value.replace(/\s/g, '');
    if (!venue || !/^[0-9]{6}$/.test(code)) {
      state.checkin = { tone: 'bad', key: 'member.checkin.missing' };
      render();
      return;
    }
    checkIn({ venue, code });
    els.checkinCode.value = '';
  });
  els.presenceForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const code = els.presenceCode.value.trim();
    if (!state.check || !code) return;
    outbox.add({ type: 'presence_answer', check: state.check.id, code });
    state.presence.set(state.check.id, { status: 'pending' });
    els.presenceCode.value = '';
    render();
  });
  els.noteText.addEventListener('input', renderNote);
  els.noteForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = els.noteText.value.trim();
    if (!text) {
      state.note = { status: 'empty' };
    } else {
      outbox.add({ type: 'study_note', text: text.slice(0, 20000) });
      state.note = { status: 'pending' };
    }
    render();
  });
  document.addEventListener('visibilitychange', () => {
    if (heartbeatTimer) heartbeat(); // the server learns at once whether the page is seen
  });

  live.start();
  loadMe();
  outbox.flush(); // what a previous visit left unsent
  let mode = null;
  try {
    mode = localStorage.getItem(`studycast.member.mode.${session.sessionId}`);
  } catch {
    mode = null;
  }
  if (opened.scan) {
    state.mode = 'onsite';
    setMode('onsite');
    checkIn(opened.scan);
  } else if (mode === 'onsite' || mode === 'remote') {
    setMode(mode);
  }
  setInterval(() => {
    if (state.check && !state.fatal && state.session) renderPresence(); // the countdown
  }, 1000);
  render();
}

main();
