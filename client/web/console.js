// The organiser console: sessions, the links to hand out, going live from the browser, and the
// live dashboard (stream health, venues, quiz, presence checks) over the session's event stream.
import { api, loggedIn } from './api.js';
import { hasString, initI18n, onLanguageChange, t } from './i18n.js';
import { WhipPublisher } from './whip.js';

initI18n({
  en: {
    'console.title': 'Organiser console · studycast',
    'console.loading': 'Loading…',
    'console.retry': 'Retry',
    'console.sessions': 'Study sessions',
    'console.new': 'New session',
    'console.newHeading': 'New study session',
    'console.editHeading': 'Edit the session',
    'console.noSessions': 'No sessions yet.',
    'console.open': 'Open',
    'console.recordings': 'Recordings',
    'console.col.title': 'Title',
    'console.col.start': 'Starts',
    'console.col.state': 'State',
    'console.col.venue': 'Venue',
    'console.col.screen': 'Screen',
    'console.col.question': 'Question',
    'console.f.title': 'Title',
    'console.f.description': 'Description',
    'console.f.start': 'Starts',
    'console.f.end': 'Ends',
    'console.f.venues': 'Venues',
    'console.f.units': 'Expected units',
    'console.f.rule': 'Attendance rule',
    'console.f.minShare': 'Share of live time (%)',
    'console.f.minPresence': 'Presence checks passed (%)',
    'console.f.points': 'Points for attending',
    'console.f.recording': 'Record the broadcast',
    'console.f.makeupPresence': 'Make-up viewers must pass the presence checks in the recording',
    'console.f.codec': 'Video codec',
    'console.save': 'Save',
    'console.saved': 'Saved.',
    'console.cancel': 'Cancel',
    'console.back': '← All sessions',
    'console.edit': 'Edit',
    'console.end': 'End session',
    'console.endSure': 'End for everyone? This cannot be undone.',
    'console.endYes': 'Yes, end it',
    'console.goLive': 'Go live from this browser',
    'console.source': 'Source',
    'console.source.camera': 'Camera',
    'console.source.screen': 'Screen + microphone',
    'console.camera': 'Camera',
    'console.microphone': 'Microphone',
    'console.noMicrophone': 'No microphone',
    'console.preview': 'Preview',
    'console.publish': 'Go live',
    'console.stop': 'Stop broadcasting',
    'console.publisher': 'Publisher',
    'console.publishStats': '{kbps} kbit/s · {fps} fps · RTT {rtt} ms',
    'console.pub.idle': 'not broadcasting',
    'console.pub.connecting': 'connecting…',
    'console.pub.live': 'live',
    'console.pub.reconnecting': 'connection lost, reconnecting…',
    'console.pub.stopped': 'stopped',
    'console.pub.failed': 'refused: {detail}',
    'console.pub.taken_over': 'another device took over this broadcast; Go live takes it back',
    'console.dashboard': 'Live dashboard',
    'console.broadcaster': 'Broadcaster',
    'console.health': 'Stream',
    'console.healthText': '{kbps} kbit/s · {fps} fps · {packets} video packets',
    'console.viewers': 'Viewers',
    'console.checkins': 'Check-ins',
    'console.online': 'online',
    'console.offline': 'offline',
    'console.none': 'none',
    'console.stream.live': 'Event stream connected.',
    'console.stream.reconnecting': 'Event stream interrupted, reconnecting…',
    'console.quiz': 'Quiz',
    'console.answered': 'Answered',
    'console.notAnswered': 'Not answered',
    'console.andMore': '… and {n} more',
    'console.timeLimit': 'Time limit (s)',
    'console.openQ': 'Open',
    'console.closeQ': 'Close',
    'console.revealQ': 'Reveal',
    'console.results': 'Results',
    'console.q.state.ready': 'ready',
    'console.q.state.open': 'open',
    'console.q.state.closed': 'closed',
    'console.q.state.revealed': 'revealed',
    'console.addQuestion': 'Add a question',
    'console.q.prompt': 'Question',
    'console.q.choices': 'Choices, one per line',
    'console.q.correct': 'Correct choices (letters, e.g. B or A,C)',
    'console.q.add': 'Add question',
    'console.q.badCorrect': 'Name the correct choices by letter, e.g. B or A,C.',
    'console.bank': 'Upload a question bank (CSV or JSON)',
    'console.bankAdded': '{n} questions added.',
    'console.leaderboard': 'Leaderboard',
    'console.lb.member': 'Members',
    'console.lb.venue': 'Venues',
    'console.lb.unit': 'Units',
    'console.refresh': 'Refresh',
    'console.points': '{points} points',
    'console.presence': 'Presence check',
    'console.window': 'Answer window (s)',
    'console.trigger': 'Send a presence check',
    'console.code': 'Code',
    'console.passRate': 'Pass rate',
    'console.passRateText': '{passed} of {expected} ({pct}%)',
    'console.check.open': 'open',
    'console.check.closed': 'closed',
    'console.check.scheduled': 'scheduled',
    'console.links': 'Links to hand out',
    'console.obs': 'OBS (WHIP output)',
    'console.whipUrl': 'Server (WHIP URL)',
    'console.whipToken': 'Bearer token',
    'console.copy': 'Copy',
    'console.copied': 'Copied to the clipboard.',
    'console.copyFailed': 'Could not copy: select the text and copy it by hand.',
    'console.venueLinks': 'Venue screens',
    'console.memberLinks': "Members' personal join links",
    'console.qr': 'QR code',
    'console.state.scheduled': 'scheduled',
    'console.state.live': 'live',
    'console.state.paused': 'paused',
    'console.state.ended': 'ended',
    'console.countdown': '{s} s left',
    'console.timeUp': 'time is up',
    'console.organisersOnly': 'The console is for organisers. You are logged in as {role}.',
    'error.network': 'The server cannot be reached. Check the connection and retry.',
    'error.store_error': 'The server cannot reach its database right now. Try again shortly.',
    'error.permission': 'The browser was not allowed to use the camera or microphone. Allow access in the address bar and try again.',
    'error.nodevice': 'No camera or microphone was found.',
    'error.media': 'The camera or microphone could not be started: {detail}',
  },
  'zh-CN': {
    'console.title': '组织者控制台 · studycast',
    'console.loading': '正在加载…',
    'console.retry': '重试',
    'console.sessions': '学习场次',
    'console.new': '新建场次',
    'console.newHeading': '新建学习场次',
    'console.editHeading': '编辑场次',
    'console.noSessions': '还没有场次。',
    'console.open': '打开',
    'console.recordings': '录像',
    'console.col.title': '标题',
    'console.col.start': '开始时间',
    'console.col.state': '状态',
    'console.col.venue': '会场',
    'console.col.screen': '屏幕',
    'console.col.question': '题目',
    'console.f.title': '标题',
    'console.f.description': '说明',
    'console.f.start': '开始时间',
    'console.f.end': '结束时间',
    'console.f.venues': '会场',
    'console.f.units': '应到单位',
    'console.f.rule': '考勤规则',
    'console.f.minShare': '直播时长占比（%）',
    'console.f.minPresence': '在场确认通过率（%）',
    'console.f.points': '出勤积分',
    'console.f.recording': '录制直播',
    'console.f.makeupPresence': '补看回放时也须通过录像中的在场确认',
    'console.f.codec': '视频编码',
    'console.save': '保存',
    'console.saved': '已保存。',
    'console.cancel': '取消',
    'console.back': '← 全部场次',
    'console.edit': '编辑',
    'console.end': '结束场次',
    'console.endSure': '为所有人结束本场？此操作不可撤销。',
    'console.endYes': '确认结束',
    'console.goLive': '从本浏览器直播',
    'console.source': '信号源',
    'console.source.camera': '摄像头',
    'console.source.screen': '屏幕共享 + 麦克风',
    'console.camera': '摄像头',
    'console.microphone': '麦克风',
    'console.noMicrophone': '不使用麦克风',
    'console.preview': '预览',
    'console.publish': '开始直播',
    'console.stop': '停止直播',
    'console.publisher': '推流状态',
    'console.publishStats': '{kbps} kbit/s · {fps} 帧/秒 · 往返 {rtt} 毫秒',
    'console.pub.idle': '未直播',
    'console.pub.connecting': '正在连接…',
    'console.pub.live': '直播中',
    'console.pub.reconnecting': '连接中断，正在重连…',
    'console.pub.stopped': '已停止',
    'console.pub.failed': '被拒绝：{detail}',
    'console.pub.taken_over': '另一台设备接管了本次直播；点击“开始直播”可收回',
    'console.dashboard': '实时看板',
    'console.broadcaster': '主播端',
    'console.health': '流状态',
    'console.healthText': '{kbps} kbit/s · {fps} 帧/秒 · {packets} 个视频包',
    'console.viewers': '观看数',
    'console.checkins': '签到数',
    'console.online': '在线',
    'console.offline': '离线',
    'console.none': '无',
    'console.stream.live': '事件流已连接。',
    'console.stream.reconnecting': '事件流中断，正在重连…',
    'console.quiz': '答题',
    'console.answered': '已作答',
    'console.notAnswered': '未作答',
    'console.andMore': '……另有 {n} 人',
    'console.timeLimit': '答题时限（秒）',
    'console.openQ': '开始',
    'console.closeQ': '截止',
    'console.revealQ': '公布答案',
    'console.results': '结果',
    'console.q.state.ready': '待开始',
    'console.q.state.open': '作答中',
    'console.q.state.closed': '已截止',
    'console.q.state.revealed': '已公布',
    'console.addQuestion': '添加题目',
    'console.q.prompt': '题目',
    'console.q.choices': '选项，每行一个',
    'console.q.correct': '正确选项（字母，如 B 或 A,C）',
    'console.q.add': '添加题目',
    'console.q.badCorrect': '请用字母填写正确选项，如 B 或 A,C。',
    'console.bank': '上传题库（CSV 或 JSON）',
    'console.bankAdded': '已添加 {n} 道题。',
    'console.leaderboard': '排行榜',
    'console.lb.member': '成员',
    'console.lb.venue': '会场',
    'console.lb.unit': '单位',
    'console.refresh': '刷新',
    'console.points': '{points} 分',
    'console.presence': '在场确认',
    'console.window': '作答时限（秒）',
    'console.trigger': '发起在场确认',
    'console.code': '确认码',
    'console.passRate': '通过率',
    'console.passRateText': '{expected} 人中 {passed} 人（{pct}%）',
    'console.check.open': '进行中',
    'console.check.closed': '已结束',
    'console.check.scheduled': '已安排',
    'console.links': '需分发的链接',
    'console.obs': 'OBS（WHIP 输出）',
    'console.whipUrl': '服务器（WHIP 地址）',
    'console.whipToken': 'Bearer 令牌',
    'console.copy': '复制',
    'console.copied': '已复制到剪贴板。',
    'console.copyFailed': '无法复制：请选中文字后手动复制。',
    'console.venueLinks': '会场屏幕',
    'console.memberLinks': '成员个人加入链接',
    'console.qr': '二维码',
    'console.state.scheduled': '未开始',
    'console.state.live': '直播中',
    'console.state.paused': '已暂停',
    'console.state.ended': '已结束',
    'console.countdown': '剩余 {s} 秒',
    'console.timeUp': '时间到',
    'console.organisersOnly': '控制台仅供组织者使用。您当前的身份是{role}。',
    'error.network': '无法连接服务器，请检查网络后重试。',
    'error.store_error': '服务器暂时无法访问数据库，请稍后重试。',
    'error.permission': '浏览器未获准使用摄像头或麦克风。请在地址栏中允许访问后重试。',
    'error.nodevice': '未找到摄像头或麦克风。',
    'error.media': '无法启动摄像头或麦克风：{detail}',
  },
});

const $ = (id) => document.getElementById(id);
const STATS_POLL_MS = 3000;
const CHECKS_POLL_MS = 3000;
const LETTERS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';

const state = {
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

function el(tag, attrs = {}, ...children) {
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

function errorText(error) {
  const key = 'error.' + error.code;
  if (hasString(key)) return t(key);
  return error.detail || error.message || String(error.code);
}

function showBanner(error, retry = null) {
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

function handleError(error, retry = null) {
  if (error.status === 401) {
    window.location.replace('login.html?next=console.html');
    return;
  }
  showBanner(error, retry);
}

function localTime(iso) {
  return iso ? new Date(iso).toLocaleString() : '';
}

function toInputTime(iso) {
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromInputTime(value) {
  return value ? new Date(value).toISOString() : '';
}

function csrf() {
  return state.me?.csrf_token;
}

function sessionPath(suffix = '') {
  return `/api/sessions/${state.session.id}${suffix}`;
}

function selectedId() {
  const match = /(?:^|[#&])s=(\d+)/.exec(window.location.hash);
  return match ? Number(match[1]) : null;
}

function stateText(s) {
  return t('console.state.' + s);
}

function serverNow() {
  return Date.now() + state.clockOffsetMs;
}

// --- start ------------------------------------------------------------------------------------

async function start() {
  $('loading').hidden = false;
  try {
    state.me = await loggedIn();
  } catch (error) {
    $('loading').hidden = true;
    handleError(error, start);
    return;
  }
  if (!state.me) {
    window.location.replace('login.html?next=console.html');
    return;
  }
  $('whoami').textContent = state.me.user.username;
  if (state.me.user.role !== 'organiser') {
    $('loading').hidden = true;
    showBanner({ code: 'forbidden', detail: t('console.organisersOnly', { role: t('role.' + state.me.user.role) }) });
    return;
  }
  try {
    const [venues, units] = await Promise.all([api('/api/venues'), api('/api/units')]);
    state.venues = venues.venues;
    state.units = units.units;
  } catch (error) {
    $('loading').hidden = true;
    handleError(error, start);
    return;
  }
  $('loading').hidden = true;
  await route();
}

async function route() {
  const id = selectedId();
  closeSession();
  $('form-card').hidden = true;
  if (id === null) {
    $('session-view').hidden = true;
    $('sessions-card').hidden = false;
    await loadSessions();
  } else {
    $('sessions-card').hidden = true;
    await openSession(id);
  }
}

// --- sessions list and form --------------------------------------------------------------------

async function loadSessions() {
  try {
    state.sessions = (await api('/api/sessions')).sessions;
  } catch (error) {
    handleError(error, loadSessions);
    return;
  }
  renderSessions();
}

function renderSessions() {
  const body = $('sessions-body');
  body.replaceChildren(
    ...state.sessions.map((s) =>
      el(
        'tr',
        { 'data-session': s.id },
        el('td', { text: s.title }),
        el('td', { text: localTime(s.scheduled_start) }),
        el('td', {}, el('span', { class: 'console-pill is-' + s.state, text: stateText(s.state) })),
        el('td', {}, el('a', { class: 'button', href: `#s=${s.id}`, text: t('console.open') })),
      ),
    ),
  );
  $('sessions-empty').hidden = state.sessions.length > 0;
}

function fillChoices(container, items, selected, name) {
  container.replaceChildren(
    ...items.map((item) =>
      el(
        'label',
        {},
        el('input', { type: 'checkbox', name, value: item.value, checked: selected.includes(item.value) ? 'checked' : null }),
        el('span', { text: item.label }),
      ),
    ),
  );
}

function openForm(session) {
  state.editing = session || 'new';
  const s = session || {};
  const rule = s.attendance_rule || { min_share: 0.85, min_presence_share: 0.66, attendance_points: 10 };
  $('form-heading').textContent = t(session ? 'console.editHeading' : 'console.newHeading');
  $('f-title').value = s.title || '';
  $('f-description').value = s.description || '';
  const startAt = s.scheduled_start || new Date(Date.now() + 3600e3).toISOString();
  const endAt = s.scheduled_end || new Date(Date.now() + 2 * 3600e3).toISOString();
  $('f-start').value = toInputTime(startAt);
  $('f-end').value = toInputTime(endAt);
  fillChoices(
    $('f-venues'),
    state.venues.map((v) => ({ value: v.slug, label: v.name })),
    (s.venues || []).map((v) => v.slug),
    'venue',
  );
  fillChoices(
    $('f-units'),
    state.units.map((u) => ({ value: u.path, label: u.path })),
    s.expected_units || [],
    'unit',
  );
  $('f-min-share').value = Math.round((rule.min_share ?? 0.85) * 100);
  $('f-min-presence').value = Math.round((rule.min_presence_share ?? 0.66) * 100);
  $('f-points').value = rule.attendance_points ?? 10;
  $('f-makeup-presence').checked = Boolean(rule.makeup_presence);
  state.editingRule = rule;
  $('f-recording').checked = s.recording_enabled ?? true;
  $('f-codec').value = s.video_codec || 'h264';
  $('f-codec').disabled = Boolean(session && (session.started_at || session.state !== 'scheduled'));
  $('form-error').hidden = true;
  $('form-card').hidden = false;
  $('f-title').focus();
}

function formBody() {
  const checked = (name) => [...document.querySelectorAll(`input[name="${name}"]:checked`)].map((i) => i.value);
  const body = {
    title: $('f-title').value,
    description: $('f-description').value,
    scheduled_start: fromInputTime($('f-start').value),
    scheduled_end: fromInputTime($('f-end').value),
    venues: checked('venue'),
    expected_units: checked('unit'),
    recording_enabled: $('f-recording').checked,
    attendance_rule: {
      ...(state.editingRule || {}), // the parts the form does not show are kept
      min_share: Number($('f-min-share').value) / 100,
      min_presence_share: Number($('f-min-presence').value) / 100,
      attendance_points: Number($('f-points').value),
      makeup_presence: $('f-makeup-presence').checked,
    },
  };
  if (!$('f-codec').disabled) body.video_codec = $('f-codec').value;
  return body;
}

async function saveForm(event) {
  event.preventDefault();
  const body = formBody();
  $('form-save').disabled = true;
  try {
    let saved;
    if (state.editing === 'new') {
      saved = await api('/api/sessions', { method: 'POST', body, csrf: csrf() });
    } else {
      saved = await api(`/api/sessions/${state.editing.id}`, { method: 'PATCH', body, csrf: csrf() });
    }
    $('form-card').hidden = true;
    state.editing = null;
    if (selectedId() === saved.id) {
      state.session = saved;
      renderSessionHeader();
    } else {
      window.location.hash = `s=${saved.id}`;
    }
  } catch (error) {
    if (error.status === 401) return handleError(error);
    $('form-error').hidden = false;
    $('form-error').textContent = errorText(error);
  } finally {
    $('form-save').disabled = false;
  }
}

// --- one session ------------------------------------------------------------------------------

async function openSession(id) {
  try {
    const [session, links, memberLinks] = await Promise.all([
      api(`/api/sessions/${id}`),
      api(`/api/sessions/${id}/links`),
      api(`/api/sessions/${id}/member-links`),
    ]);
    state.session = session;
    state.links = links;
    state.memberLinks = memberLinks;
    state.expected = memberLinks.members.length;
  } catch (error) {
    handleError(error, route);
    return;
  }
  $('session-view').hidden = false;
  renderSessionHeader();
  renderLinks();
  renderPublisher();
  renderVenues();
  await Promise.all([loadQuestions(), loadChecks(), pollStats(), loadLeaderboard()]);
  connectEvents();
  state.timers.push(setInterval(pollStats, STATS_POLL_MS));
  state.timers.push(setInterval(loadChecks, CHECKS_POLL_MS));
  state.timers.push(setInterval(renderCountdown, 500));
  listDevices();
}

function closeSession() {
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
  if (state.events) state.events.close();
  state.events = null;
  state.session = null;
  state.activeQuestion = null;
  state.results = null;
  state.counts = null;
  state.stats = null;
}

function renderSessionHeader() {
  const s = state.session;
  if (!s) return;
  $('s-title').textContent = s.title;
  $('s-state').textContent = stateText(s.state);
  $('s-state').className = 'console-pill is-' + s.state;
  $('s-times').textContent = `${localTime(s.scheduled_start)} – ${localTime(s.scheduled_end)} · ${s.video_codec.toUpperCase()}`;
  const ended = s.state === 'ended';
  for (const id of ['edit-session', 'end-session', 'publish-start', 'preview-start', 'presence-trigger', 'q-add']) {
    $(id).disabled = ended;
  }
  $('end-confirm').hidden = true;
  renderRecordingsLink();
}

// The session's recordings open in the player page, from a button beside Edit.
function renderRecordingsLink() {
  let link = $('s-recordings');
  if (!link) {
    link = el('a', { id: 's-recordings', class: 'button' });
    $('edit-session').before(link);
  }
  link.href = `recording.html?session=${state.session.id}`;
  link.textContent = t('console.recordings');
}

function renderLinks() {
  $('whip-url').value = state.links.whip_url;
  $('whip-token').value = state.links.whip_token;
  const qrBase = `/api/sessions/${state.session.id}/link-qr.svg?`;
  const row = (label, url, qr) =>
    el(
      'li',
      {},
      el('span', { text: label }),
      el('input', { readonly: 'readonly', value: url, 'aria-label': label }),
      el('button', { type: 'button', class: 'button', text: t('console.copy'), onclick: () => copyText(url) }),
      el('a', { class: 'button', href: qrBase + qr, target: '_blank', rel: 'noopener', text: t('console.qr') }),
    );
  $('venue-links').replaceChildren(
    ...state.memberLinks.venues.map((v) => row(v.name, v.url, 'venue=' + encodeURIComponent(v.slug))),
  );
  $('member-links').replaceChildren(
    ...state.memberLinks.members.map((m) =>
      row(`${m.member_no} ${m.name} · ${m.unit}`, m.url, 'member=' + encodeURIComponent(m.member_no)),
    ),
  );
}

async function copyText(text) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    // no clipboard permission: fall back to the selection
    const area = el('textarea', {});
    area.value = text;
    document.body.append(area);
    area.select();
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    area.remove();
  }
  $('copy-status').textContent = t(ok ? 'console.copied' : 'console.copyFailed');
}

async function endSession() {
  try {
    await stopPublishing();
    state.session = await api(sessionPath('/end'), { method: 'POST', csrf: csrf() });
    renderSessionHeader();
  } catch (error) {
    handleError(error);
  }
}

// --- going live from the browser ----------------------------------------------------------------

async function listDevices() {
  if (!navigator.mediaDevices?.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
  const fill = (select, kind, none) => {
    const current = select.value;
    const options = devices
      .filter((d) => d.kind === kind)
      .map((d, i) => el('option', { value: d.deviceId, text: d.label || `${kind} ${i + 1}` }));
    if (none) options.push(el('option', { value: 'none', text: t('console.noMicrophone') }));
    select.replaceChildren(...options);
    if (current && [...select.options].some((o) => o.value === current)) select.value = current;
  };
  fill($('camera'), 'videoinput', false);
  fill($('microphone'), 'audioinput', true);
}

function mediaError(error) {
  if (error.name === 'NotAllowedError' || error.name === 'SecurityError') return t('error.permission');
  if (error.name === 'NotFoundError' || error.name === 'OverconstrainedError') return t('error.nodevice');
  return t('error.media', { detail: error.message || error.name });
}

async function getMedia() {
  if (state.media) return state.media;
  const mic = $('microphone').value;
  const audio = mic === 'none' ? false : mic ? { deviceId: { exact: mic } } : true;
  let stream;
  if ($('source').value === 'screen') {
    const screen = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: 30 }, audio: false });
    stream = new MediaStream(screen.getVideoTracks());
    if (audio) {
      const voice = await navigator.mediaDevices.getUserMedia({ audio });
      voice.getAudioTracks().forEach((track) => stream.addTrack(track));
    }
  } else {
    const camera = $('camera').value;
    const video = camera ? { deviceId: { exact: camera }, width: 1280, height: 720 } : { width: 1280, height: 720 };
    stream = await navigator.mediaDevices.getUserMedia({ video, audio });
  }
  state.media = stream;
  $('preview').srcObject = stream;
  listDevices();
  return stream;
}

function releaseMedia() {
  if (state.media) state.media.getTracks().forEach((track) => track.stop());
  state.media = null;
  $('preview').srcObject = null;
}

async function startPreview() {
  $('media-error').hidden = true;
  releaseMedia();
  try {
    await getMedia();
  } catch (error) {
    $('media-error').hidden = false;
    $('media-error').textContent = mediaError(error);
  }
}

async function startPublishing() {
  $('media-error').hidden = true;
  let stream;
  try {
    stream = await getMedia();
  } catch (error) {
    $('media-error').hidden = false;
    $('media-error').textContent = mediaError(error);
    return;
  }
  if (state.publisher) await state.publisher.stop();
  state.publisher = new WhipPublisher({
    url: state.links.whip_url,
    token: state.links.whip_token,
    codec: state.session.video_codec,
    onState: (s, error) => {
      state.publishState = s;
      state.publishError = error;
      renderPublisher();
    },
    onStats: (stats) => {
      state.publishStats = stats;
      renderPublisher();
    },
  });
  window.studycastPublisher = state.publisher; // for the browser tests and the curious
  try {
    await state.publisher.start(stream);
  } catch {
    // shown through onState('failed')
  }
}

async function stopPublishing() {
  const publisher = state.publisher;
  state.publisher = null;
  if (publisher) await publisher.stop();
  releaseMedia();
  state.publishStats = null;
  renderPublisher();
}

function renderPublisher() {
  const s = state.publishState;
  $('publish-state').textContent = t('console.pub.' + s, { detail: state.publishError?.detail || '' });
  $('publish-state').dataset.state = s;
  const active = state.publisher !== null && !['stopped', 'failed', 'taken_over'].includes(s);
  $('publish-stop').disabled = !active;
  $('publish-start').disabled = active || state.session?.state === 'ended';
  const st = state.publishStats;
  $('publish-stats').textContent =
    st && active
      ? t('console.publishStats', {
          kbps: st.bitrateBps === null ? '—' : Math.round(st.bitrateBps / 1000),
          fps: st.fps ?? '—',
          rtt: st.rttMs ?? '—',
        })
      : '';
}

// --- dashboard --------------------------------------------------------------------------------

async function pollStats() {
  if (!state.session) return;
  try {
    state.stats = await api(sessionPath('/stats'));
    $('banner').hidden = true;
  } catch (error) {
    if (error.status === 401) return handleError(error);
    showBanner(error, pollStats);
    return;
  }
  if (state.stats.state && state.stats.state !== state.session.state) {
    state.session.state = state.stats.state;
    renderSessionHeader();
  }
  renderDashboard();
}

function renderDashboard() {
  const stats = state.stats;
  const b = stats?.broadcaster;
  $('m-broadcaster').textContent = b ? `${b.connection} · ${(b.video_codec || '').toUpperCase()}` : t('console.none');
  $('m-broadcaster').dataset.connection = b ? b.connection : 'none';
  $('m-health').textContent = b
    ? t('console.healthText', {
        kbps: Math.round((b.bitrate_in_bps || 0) / 1000),
        fps: b.frame_rate_in ?? 0,
        packets: b.packets_in?.video ?? 0,
      })
    : '—';
  $('m-viewers').textContent = String(stats?.viewers?.total ?? state.counts?.viewers_total ?? 0);
  $('m-checkins').textContent = String(state.counts?.checkins_total ?? 0);
  renderVenues();
}

function renderVenues() {
  if (!state.session) return;
  const details = state.stats?.viewer_details || [];
  const checkins = state.counts?.checkins || {};
  $('venues-body').replaceChildren(
    ...state.session.venues.map((v) => {
      const viewers = details.filter((d) => d.kind === 'venue' && d.subject === 'venue:' + v.slug).length;
      const online = viewers > 0;
      return el(
        'tr',
        { 'data-venue': v.slug },
        el('td', { text: v.name }),
        el('td', { class: online ? 'console-online' : 'console-offline', 'data-online': String(online), text: t(online ? 'console.online' : 'console.offline') }),
        el('td', { text: String(viewers) }),
        el('td', { text: String(checkins[v.slug] || 0) }),
      );
    }),
  );
}

function connectEvents() {
  const source = new EventSource(sessionPath('/events/stream'));
  state.events = source;
  const on = (type, handler) =>
    source.addEventListener(type, (e) => {
      try {
        handler(JSON.parse(e.data));
      } catch (error) {
        console.error('live event', type, error);
      }
    });
  source.onopen = () => {
    state.streamOk = true;
    $('stream-status').textContent = t('console.stream.live');
  };
  source.onerror = () => {
    state.streamOk = false;
    $('stream-status').textContent = t('console.stream.reconnecting');
  };
  on('snapshot', (data) => {
    if (data.server_time) state.clockOffsetMs = new Date(data.server_time).getTime() - Date.now();
    if (data.counts) state.counts = data.counts;
    if (data.session?.state) state.session.state = data.session.state;
    renderSessionHeader();
    renderDashboard();
    if (data.presence_check) showCheck(data.presence_check);
  });
  on('counts', (data) => {
    state.counts = data;
    renderDashboard();
  });
  on('session_state', (data) => {
    state.session.state = data.state;
    renderSessionHeader();
  });
  for (const type of ['quiz_opened', 'quiz_closed', 'quiz_revealed']) {
    on(type, (question) => {
      upsertQuestion(question);
      if (type === 'quiz_opened' || state.activeQuestion?.id === question.id) {
        state.activeQuestion = question;
        loadResults();
      }
      renderQuestions();
    });
  }
  on('quiz_results', (results) => {
    if (state.activeQuestion && results.question?.id === state.activeQuestion.id) {
      state.results = results;
      state.activeQuestion = results.question;
      renderActiveQuestion();
    }
  });
  on('presence_check', (check) => {
    showCheck(check);
    loadChecks();
  });
}

// --- quiz -------------------------------------------------------------------------------------

async function loadQuestions() {
  try {
    state.questions = (await api(sessionPath('/questions'))).questions;
  } catch (error) {
    handleError(error);
    return;
  }
  const open = state.questions.find((q) => q.state === 'open');
  const latest = open || [...state.questions].reverse().find((q) => q.opened_at);
  if (latest) {
    state.activeQuestion = latest;
    await loadResults();
  }
  renderQuestions();
}

function upsertQuestion(question) {
  const i = state.questions.findIndex((q) => q.id === question.id);
  if (i >= 0) state.questions[i] = question;
  else state.questions.push(question);
}

function renderQuestions() {
  $('questions-body').replaceChildren(
    ...state.questions.map((q) => {
      const qState = q.state === 'pending' || q.state === 'draft' ? 'ready' : q.state;
      const button = (key, action, enabled) =>
        el('button', { type: 'button', class: 'button', 'data-action': action, disabled: enabled ? null : 'disabled', text: t(key), onclick: () => questionAction(q, action) });
      return el(
        'tr',
        { 'data-question': q.id },
        el('td', { text: String(q.position ?? '') }),
        el('td', { text: q.prompt }),
        el('td', { text: hasString('console.q.state.' + qState) ? t('console.q.state.' + qState) : qState }),
        el(
          'td',
          {},
          button('console.openQ', 'open', !q.opened_at),
          button('console.closeQ', 'close', q.state === 'open'),
          button('console.revealQ', 'reveal', q.state === 'closed'),
          button('console.results', 'results', Boolean(q.opened_at)),
        ),
      );
    }),
  );
  renderActiveQuestion();
}

async function questionAction(question, action) {
  if (action === 'results') {
    state.activeQuestion = question;
    await loadResults();
    return;
  }
  const body = action === 'open' ? { time_limit_s: Number($('time-limit').value) || 60 } : {};
  try {
    const updated = await api(sessionPath(`/questions/${question.id}/${action}`), { method: 'POST', body, csrf: csrf() });
    upsertQuestion(updated);
    state.activeQuestion = updated;
    await loadResults();
    renderQuestions();
  } catch (error) {
    handleError(error);
  }
}

async function loadResults() {
  const q = state.activeQuestion;
  if (!q) return;
  try {
    const results = await api(sessionPath(`/questions/${q.id}/results`));
    if (state.activeQuestion?.id === q.id) {
      state.results = results;
      state.activeQuestion = results.question;
      upsertQuestion(results.question);
    }
  } catch (error) {
    handleError(error);
  }
  renderActiveQuestion();
}

function renderActiveQuestion() {
  const q = state.activeQuestion;
  $('active-question').hidden = !q;
  if (!q) return;
  $('active-question').dataset.question = q.id;
  $('active-question').dataset.state = q.state;
  $('aq-prompt').textContent = q.prompt;
  const results = state.results?.question?.id === q.id ? state.results : null;
  const counts = results?.distribution || q.choices.map(() => 0);
  const max = Math.max(1, ...counts);
  const correct = new Set(q.state === 'revealed' || q.state === 'closed' ? q.correct || [] : []);
  $('aq-bars').replaceChildren(
    ...q.choices.map((choice, i) => {
      const fill = el('div', { class: 'console-bar-fill' });
      fill.style.width = `${Math.round((100 * (counts[i] || 0)) / max)}%`;
      return el(
        'div',
        { class: 'console-bar' + (correct.has(i) && q.state === 'revealed' ? ' is-correct' : ''), 'data-choice': i },
        el('span', { text: `${LETTERS[i]}. ${choice}` }),
        el('div', { class: 'console-bar-track' }, fill),
        el('span', { class: 'console-bar-count', text: String(counts[i] || 0) }),
      );
    }),
  );
  $('aq-answered').textContent = String(results?.answered ?? 0);
  const missing = results?.not_answered || { count: 0, members: [] };
  $('aq-missing-count').textContent = String(missing.count);
  const shown = missing.members.slice(0, 60).map((m) => `${m.member_no} ${m.name}`);
  if (missing.count > shown.length) shown.push(t('console.andMore', { n: missing.count - shown.length }));
  $('aq-missing').textContent = shown.join(' · ');
  renderCountdown();
}

function renderCountdown() {
  const q = state.activeQuestion;
  if (!q) return;
  if (q.state === 'open' && q.closes_at) {
    const left = Math.max(0, Math.ceil((new Date(q.closes_at).getTime() - serverNow()) / 1000));
    $('aq-countdown').textContent = left > 0 ? t('console.countdown', { s: left }) : t('console.timeUp');
  } else {
    $('aq-countdown').textContent = t('console.q.state.' + q.state);
  }
}

async function addQuestion(event) {
  event.preventDefault();
  $('question-error').hidden = true;
  const choices = $('q-choices').value.split('\n').map((c) => c.trim()).filter(Boolean);
  const letters = $('q-correct').value.toUpperCase().split(/[\s,，、]+/).filter(Boolean);
  const correct = letters.map((l) => LETTERS.indexOf(l));
  if (correct.length === 0 || correct.some((i) => i < 0 || i >= choices.length)) {
    $('question-error').hidden = false;
    $('question-error').textContent = t('console.q.badCorrect');
    return;
  }
  const body = {
    prompt: $('q-prompt').value,
    kind: correct.length > 1 ? 'multiple' : 'single',
    choices,
    correct,
    time_limit_s: Number($('time-limit').value) || 60,
  };
  try {
    const created = await api(sessionPath('/questions'), { method: 'POST', body, csrf: csrf() });
    created.questions.forEach(upsertQuestion);
    $('question-form').reset();
    renderQuestions();
  } catch (error) {
    if (error.status === 401) return handleError(error);
    $('question-error').hidden = false;
    $('question-error').textContent = errorText(error);
  }
}

async function uploadBank() {
  const file = $('bank-file').files[0];
  if (!file) return;
  const isCsv = /\.csv$/i.test(file.name) || file.type === 'text/csv';
  $('bank-status').textContent = '';
  try {
    let response;
    try {
      response = await fetch(sessionPath('/questions'), {
        method: 'POST',
        headers: { 'Content-Type': isCsv ? 'text/csv' : 'application/json', 'X-CSRF-Token': csrf(), Accept: 'application/json' },
        body: await file.arrayBuffer(),
        credentials: 'same-origin',
      });
    } catch {
      throw { code: 'network' };
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw { code: data.error || 'http_' + response.status, detail: data.detail, status: response.status };
    data.questions.forEach(upsertQuestion);
    renderQuestions();
    $('bank-status').textContent = t('console.bankAdded', { n: data.questions.length });
  } catch (error) {
    $('bank-status').textContent = errorText(error);
  }
  $('bank-file').value = '';
}

async function loadLeaderboard() {
  if (!state.session) return;
  try {
    const board = await api(`/api/leaderboard?by=${$('lb-by').value}&session=${state.session.id}&limit=20`);
    $('leaderboard').replaceChildren(
      ...board.entries.map((e) => el('li', { text: `${e.name || e.key} · ${t('console.points', { points: e.points })}` })),
    );
  } catch (error) {
    handleError(error);
  }
}

// --- presence checks --------------------------------------------------------------------------

async function triggerCheck() {
  try {
    const check = await api(sessionPath('/presence-checks'), {
      method: 'POST',
      body: { window_s: Number($('window-s').value) || 60 },
      csrf: csrf(),
    });
    showCheck(check);
    await loadChecks();
  } catch (error) {
    handleError(error);
  }
}

function showCheck(check) {
  if (!check || !check.code) return;
  state.currentCheck = check;
  $('presence-current').hidden = false;
  $('presence-code').textContent = check.code;
  renderCheck();
}

async function loadChecks() {
  if (!state.session) return;
  try {
    state.checks = (await api(sessionPath('/presence-checks'))).checks;
  } catch {
    return; // the stats poll reports an unreachable server
  }
  const latest = state.checks.filter((c) => c.state !== 'scheduled').at(-1);
  if (latest) showCheck(latest);
}

function renderCheck() {
  const current = state.currentCheck;
  if (!current) return;
  const full = state.checks.find((c) => c.id === current.id) || current;
  $('presence-state').textContent = t('console.check.' + full.state);
  const answers = full.answers || {};
  const passed = (answers.passed || 0) + (answers.late || 0);
  const expected = state.expected || Object.values(answers).reduce((a, b) => a + b, 0);
  const pct = expected ? Math.round((100 * passed) / expected) : 0;
  $('presence-rate').textContent = t('console.passRateText', { passed, expected, pct });
}

// --- wiring -----------------------------------------------------------------------------------

$('new-session').addEventListener('click', () => openForm(null));
$('edit-session').addEventListener('click', () => openForm(state.session));
$('form-cancel').addEventListener('click', () => {
  $('form-card').hidden = true;
  state.editing = null;
});
$('session-form').addEventListener('submit', saveForm);
$('end-session').addEventListener('click', () => {
  $('end-confirm').hidden = false;
});
$('end-no').addEventListener('click', () => {
  // An open "end for everyone?" prompt stays open through other state changes.
  if (ended) $('end-confirm').hidden = true;
});
$('end-yes').addEventListener('click', endSession);
$('preview-start').addEventListener('click', startPreview);
$('publish-start').addEventListener('click', startPublishing);
$('publish-stop').addEventListener('click', stopPublishing);
$('source').addEventListener('change', releaseMedia);
$('camera').addEventListener('change', releaseMedia);
$('microphone').addEventListener('change', releaseMedia);
$('question-form').addEventListener('submit', addQuestion);
$('bank-file').addEventListener('change', uploadBank);
$('lb-refresh').addEventListener('click', loadLeaderboard);
$('lb-by').addEventListener('change', loadLeaderboard);
$('presence-trigger').addEventListener('click', triggerCheck);
for (const button of document.querySelectorAll('[data-copy]')) {
  button.addEventListener('click', () => copyText($(button.dataset.copy).value));
}
window.addEventListener('hashchange', route);
window.addEventListener('beforeunload', () => {
  if (state.publisher) state.publisher.stop();
});
onLanguageChange(() => {
  if (state.session) {
    renderSessionHeader();
    renderPublisher();
    renderDashboard();
    renderQuestions();
    renderCheck();
  } else {
    renderSessions();
  }
});

start();
