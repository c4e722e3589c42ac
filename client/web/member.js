// The member page: join a session from the personal link (member.html#s=ID&t=TOKEN), check in
// at a venue or watch remotely, answer quiz questions and presence checks, see one's own record,
// and hand in a study note. Everything a member sends goes through the outbox, so a bad
// connection delays it but never loses it.
import { api } from './api.js';
import { initI18n, language, onLanguageChange, t } from './i18n.js';
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

initI18n({
  en: {
    'member.title': 'Study session · studycast',
    'member.mode': 'How are you taking part?',
    'member.onsite': 'At a venue',
    'member.remote': 'Remotely',
    'member.scanHint':
      "Scan the QR code on the venue screen with your phone's camera, or type the code shown under it.",
    'member.venue': 'Venue',
    'member.venueId': 'Venue (as shown on the screen)',
    'member.checkinCode': 'Six-digit code',
    'member.checkin': 'Check in',
    'member.checkingIn': 'Checking in…',
    'member.checkedIn': 'Checked in at {venue}',
    'member.checkin.expired': 'The code has expired: scan the screen again.',
    'member.checkin.forged': 'This check-in code is not genuine. Scan the code on the venue screen.',
    'member.checkin.wrong_code': 'The code does not match the venue screen (it changes every 30 s).',
    'member.checkin.other_session': 'This code belongs to another session.',
    'member.checkin.no_code': 'Scan the QR code or type its six-digit code.',
    'member.checkin.session_ended': 'The session has ended.',
    'member.checkin.invalid': 'Check the venue and the code: {detail}',
    'member.checkin.missing': 'Choose the venue and type the six digits shown on its screen.',
    'member.state.scheduled': 'Not started yet',
    'member.state.live': 'Live',
    'member.state.paused': 'Broadcast paused',
    'member.state.ended': 'Ended',
    'member.notice.scheduled': 'The session has not started yet. It starts at {time}.',
    'member.notice.paused': 'The broadcast is paused; it continues here by itself.',
    'member.notice.ended': 'The session has ended. Your record is below.',
    'member.notice.unreachable':
      'The server cannot be reached. Retrying by itself; what you send is kept and sent later.',
    'member.player.connecting': 'Connecting to the broadcast…',
    'member.player.waiting': 'Connected; waiting for the picture…',
    'member.player.playing': 'Playing',
    'member.player.retrying': 'Connection lost: reconnecting…',
    'member.player.full': 'The server is busy: trying again shortly…',
    'member.player.ended': 'The broadcast has ended.',
    'member.player.stopped': '',
    'member.player.unauthorized': 'This link can no longer play the broadcast.',
    'player.unmute': 'Tap for sound',
    'member.quizSubmit': 'Send answer',
    'member.quiz.open': 'Question {n}',
    'member.quiz.closed': 'Answers closed',
    'member.quiz.revealed': 'Answer revealed',
    'member.quiz.multiple': 'Choose all that apply.',
    'member.quiz.pending': 'Sending your answer…',
    'member.quiz.saved': 'Answer saved. You can change it until the question closes.',
    'member.quiz.refused': 'Answer not accepted: {detail}',
    'member.quiz.right': 'Your answer is right.',
    'member.quiz.wrong': 'Your answer is not right.',
    'member.quiz.none': 'You did not answer this question.',
    'member.quiz.choose': 'Choose an answer first.',
    'member.true': 'True',
    'member.false': 'False',
    'member.presence': 'Presence check',
    'member.presenceHint': 'Enter the code shown on the screen.',
    'member.presenceImage': 'The presence code',
    'member.code': 'Code',
    'member.presenceSubmit': 'Confirm',
    'member.presence.closesIn': 'Closes in {seconds} s',
    'member.presence.pending': 'Sending…',
    'member.presence.passed': 'Presence confirmed.',
    'member.presence.late': 'Confirmed late: the check had closed.',
    'member.presence.wrong_code': 'Wrong code: look at the screen and try again.',
    'member.presence.replay': 'You have already confirmed this check.',
    'member.presence.not_open': 'This check is not open.',
    'member.presence.too_many': 'Too many wrong codes for this check.',
    'member.presence.other': 'Not accepted: {detail}',
    'member.me': 'My record',
    'member.me.name': 'Member',
    'member.me.mode': 'Taking part',
    'member.me.watched': 'Watched',
    'member.me.presence': 'Presence checks',
    'member.me.quiz': 'Quiz points',
    'member.me.points': 'Points (total)',
    'member.me.absent': 'not yet',
    'member.me.onsite': 'at {venue}',
    'member.me.remote': 'remotely',
    'member.me.watchedValue': '{minutes} min ({share}%)',
    'member.me.presenceValue': '{passed} of {total}',
    'member.note': 'Study note',
    'member.noteLabel': 'What did you learn?',
    'member.noteCount': '{n} / 20,000 characters',
    'member.noteSubmit': 'Submit note',
    'member.note.empty': 'Write something first.',
    'member.note.pending': 'Sending your note…',
    'member.note.saved': 'Note handed in. Thank you.',
    'member.note.refused': 'Note not accepted: {detail}',
    'member.outbox.pending': '{n} waiting to be sent',
    'member.outbox.retrying': '{n} waiting to be sent: retrying…',
    'member.outbox.idle': 'Everything is saved.',
    'member.fatal.link': 'Your link has expired or is not valid',
    'member.fatal.linkText': 'Ask the organiser for your current personal link, then open it again.',
    'member.fatal.missing': 'Open your personal link',
    'member.fatal.missingText':
      'This page needs the personal link the organiser sent you (member.html#s=…&t=…).',
    'member.fatal.scanFirst': 'Open your personal link first',
    'member.fatal.scanFirstText':
      'This phone does not know you yet: open your personal link once, then scan the venue code again.',
    'member.fatal.notFound': 'This session does not exist',
    'member.makeup': 'Watch the recording',
    'member.makeupHint':
      'Missed the live session? Watch the recording: the time you watch counts as make-up viewing, shown apart from live attendance.',
    'member.makeupWatched': 'Make-up viewing',
    'member.makeup.loading': 'Loading the recording…',
    'member.makeup.none': 'There is no recording of this session.',
    'member.makeup.unavailable': 'The recording cannot be loaded now: {detail}',
    'member.makeup.ready': 'Press play to watch. Part {n} of {count}.',
    'member.makeup.playing': 'Playing part {n} of {count}.',
    'member.makeup.fast': 'Played faster than 2x: this time does not count.',
    'member.makeup.hidden': 'The page is hidden: this time does not count.',
    'member.makeup.done': 'You reached the end of the recording.',
    'member.makeup.value': '{minutes} min ({share}% of the recording)',
    'member.me.makeup': 'Make-up viewing',
    'member.makeupCheck': 'Presence check in the recording',
    'member.makeupCheckHint':
      'A presence check was held here. Enter the code below to go on: it counts toward your make-up attendance.',
    'member.makeupCheckSkip': 'Skip this check',
    'member.makeup.checks': 'Presence checks in the recording: {passed} of {total} passed.',
  },
  'zh-CN': {
    'member.title': '学习会 · studycast',
    'member.mode': '您如何参加？',
    'member.onsite': '在会场',
    'member.remote': '远程收看',
    'member.scanHint': '用手机相机扫描会场大屏上的二维码，或输入二维码下方的签到码。',
    'member.venue': '会场',
    'member.venueId': '会场编号（见大屏）',
    'member.checkinCode': '六位签到码',
    'member.checkin': '签到',
    'member.checkingIn': '正在签到…',
    'member.checkedIn': '已在{venue}签到',
    'member.checkin.expired': '签到码已过期，请重新扫描大屏。',
    'member.checkin.forged': '此签到码无效，请扫描会场大屏上的二维码。',
    'member.checkin.wrong_code': '签到码与大屏不符（每 30 秒更新一次）。',
    'member.checkin.other_session': '此签到码属于其他场次。',
    'member.checkin.no_code': '请扫描二维码或输入六位签到码。',
    'member.checkin.session_ended': '本场学习已结束。',
    'member.checkin.invalid': '请检查会场与签到码：{detail}',
    'member.checkin.missing': '请选择会场并输入大屏上显示的六位数字。',
    'member.state.scheduled': '尚未开始',
    'member.state.live': '直播中',
    'member.state.paused': '直播暂停',
    'member.state.ended': '已结束',
    'member.notice.scheduled': '本场学习尚未开始，开始时间：{time}。',
    'member.notice.paused': '直播暂停中，恢复后将自动继续。',
    'member.notice.ended': '本场学习已结束，您的记录见下方。',
    'member.notice.unreachable': '无法连接服务器，正在自动重试；您提交的内容已保存，恢复后自动发送。',
    'member.player.connecting': '正在连接直播…',
    'member.player.waiting': '已连接，等待画面…',
    'member.player.playing': '正在播放',
    'member.player.retrying': '连接中断，正在重连…',
    'member.player.full': '服务器繁忙，稍后自动重试…',
    'member.player.ended': '直播已结束。',
    'member.player.stopped': '',
    'member.player.unauthorized': '此链接已无法播放直播。',
    'player.unmute': '点击开启声音',
    'member.quizSubmit': '提交答案',
    'member.quiz.open': '第 {n} 题',
    'member.quiz.closed': '作答已截止',
    'member.quiz.revealed': '已公布答案',
    'member.quiz.multiple': '多选题：选择所有正确选项。',
    'member.quiz.pending': '正在提交答案…',
    'member.quiz.saved': '答案已保存，截止前可以修改。',
    'member.quiz.refused': '答案未被接受：{detail}',
    'member.quiz.right': '回答正确。',
    'member.quiz.wrong': '回答错误。',
    'member.quiz.none': '您未作答此题。',
    'member.quiz.choose': '请先选择答案。',
    'member.true': '对',
    'member.false': '错',
    'member.presence': '在场确认',
    'member.presenceHint': '请输入屏幕上显示的代码。',
    'member.presenceImage': '在场确认代码',
    'member.code': '代码',
    'member.presenceSubmit': '确认',
    'member.presence.closesIn': '{seconds} 秒后截止',
    'member.presence.pending': '正在提交…',
    'member.presence.passed': '在场已确认。',
    'member.presence.late': '已确认（逾时）：本次确认已截止。',
    'member.presence.wrong_code': '代码错误，请看屏幕后重试。',
    'member.presence.replay': '您已完成本次确认。',
    'member.presence.not_open': '本次确认未开放。',
    'member.presence.too_many': '本次确认错误次数过多。',
    'member.presence.other': '未被接受：{detail}',
    'member.me': '我的记录',
    'member.me.name': '成员',
    'member.me.mode': '参加方式',
    'member.me.watched': '收看时长',
    'member.me.presence': '在场确认',
    'member.me.quiz': '答题得分',
    'member.me.points': '总积分',
    'member.me.absent': '尚未参加',
    'member.me.onsite': '在{venue}',
    'member.me.remote': '远程',
    'member.me.watchedValue': '{minutes} 分钟（{share}%）',
    'member.me.presenceValue': '{total} 次中通过 {passed} 次',
    'member.note': '学习心得',
    'member.noteLabel': '您有哪些收获？',
    'member.noteCount': '{n} / 20000 字',
    'member.noteSubmit': '提交心得',
    'member.note.empty': '请先填写内容。',
    'member.note.pending': '正在提交心得…',
    'member.note.saved': '心得已提交，谢谢。',
    'member.note.refused': '心得未被接受：{detail}',
    'member.outbox.pending': '{n} 条待发送',
    'member.outbox.retrying': '{n} 条待发送，正在重试…',
    'member.outbox.idle': '全部已保存。',
    'member.fatal.link': '您的链接已过期或无效',
    'member.fatal.linkText': '请向组织者索取最新的个人链接后重新打开。',
    'member.fatal.missing': '请打开您的个人链接',
    'member.fatal.missingText': '此页面需要组织者发给您的个人链接（member.html#s=…&t=…）。',
    'member.fatal.scanFirst': '请先打开您的个人链接',
    'member.fatal.scanFirstText': '这部手机还不认识您：请先打开一次个人链接，再扫描会场二维码。',
    'member.fatal.notFound': '该场次不存在',
    'member.makeup': '观看回放',
    'member.makeupHint': '错过了直播？可以观看回放：观看时长计为补看，与直播出勤分开记录。',
    'member.makeupWatched': '补看时长',
    'member.makeup.loading': '正在加载回放…',
    'member.makeup.none': '本场学习没有录像。',
    'member.makeup.unavailable': '暂时无法加载回放：{detail}',
    'member.makeup.ready': '点击播放开始观看。第 {n} 段，共 {count} 段。',
    'member.makeup.playing': '正在播放第 {n} 段，共 {count} 段。',
    'member.makeup.fast': '播放速度超过 2 倍：这段时间不计入。',
    'member.makeup.hidden': '页面不可见：这段时间不计入。',
    'member.makeup.done': '已看到回放结尾。',
    'member.makeup.value': '{minutes} 分钟（占回放 {share}%）',
    'member.me.makeup': '补看',
    'member.makeupCheck': '回放中的在场确认',
    'member.makeupCheckHint': '直播时在此处进行过在场确认。请输入下方代码后继续，结果计入补看出勤。',
    'member.makeupCheckSkip': '跳过本次确认',
    'member.makeup.checks': '回放中的在场确认：{total} 次中通过 {passed} 次。',
  },
});

const $ = (id) => document.getElementById(id);
const els = Object.fromEntries(
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

const HEARTBEAT_MS = 15000;
const ME_REFRESH_MS = 30000;
// Make-up viewing: what was played is reported this often (and on pause, seek, hide, rate).
const MAKEUP_REPORT_MS = 12000;
const MAKEUP_MAX_SPAN_S = 60; // the server takes at most this much media per report
const MAKEUP_MAX_RATE = 2; // faster playback does not count

// What the page shows; render() turns it into the DOM (again on a language switch).
const state = {
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

function serverNow() {
  return Date.now() + state.clockOffsetMs;
}

function venueName(slug) {
  return state.venues.find((v) => v.slug === slug)?.name || slug;
}

function formatTime(iso) {
  return new Date(iso).toLocaleString(language(), { dateStyle: 'medium', timeStyle: 'short' });
}

function showResult(el, tone, text) {
  el.hidden = !text;
  el.textContent = text || '';
  el.dataset.tone = tone || '';
}

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

// -- make-up viewing: the recording, after the session ----------------------------------------

let makeupTimer = null;
const makeupSent = new Map(); // segment index -> media ranges already reported
let makeupVisible = document.visibilityState === 'visible';
let makeupRate = 1;

/** Sorted ranges [[from, to]] with overlapping or touching ones joined, empty ones dropped. */
function mergeRanges(ranges) {
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
function makeupFigures() {
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

function renderMakeup() {
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
    els.makeupCheckImage.src = `${check.code_url}?token=${encodeURIComponent(session.token)}`;
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

function startMakeup() {
  if (state.makeup || !session || state.fatal) return;
  state.makeup = { status: 'loading', segments: [], current: 0, total_s: 0 };
  render();
  loadRecording();
  if (!makeupTimer) makeupTimer = setInterval(reportMakeup, MAKEUP_REPORT_MS);
}

async function loadRecording() {
  try {
    const data = await api(`/api/sessions/${session.sessionId}/recordings`, {
      token: session.token,
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
    if (error.status === 401 || error.status === 403) return fail('link');
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
  render();
}

function loadSegment(position, play) {
  reportMakeup(); // what was played of the segment before: played ranges reset with the source
  const m = state.makeup;
  m.current = position;
  makeupLastTime = 0;
  const url = new URL(m.segments[position].url, location.href);
  url.searchParams.set('token', session.token);
  els.makeupVideo.src = url.pathname + url.search;
  if (play) els.makeupVideo.play().catch(() => {});
  render();
}

/** Send what the player has played since the last report, as ``makeup_progress`` events of at
 * most a minute each, labelled with the visibility and rate that held while it played. */
function reportMakeup() {
  const m = state.makeup;
  const video = els.makeupVideo;
  if (!m || m.status !== 'ready' || !outbox) return;
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
      outbox.add({
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

function wireMakeup() {
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
    if (!check || !code || !outbox) return;
    reportMakeup(); // the media up to the check, so its opening counts as watched
    outbox.add({ type: 'makeup_presence_answer', check: check.id, code });
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
  wireMakeup();

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
