// The auditor views: sessions, a session's member report (filters, sorting, exports), roll-ups
// by unit and venue, a member's history, the session timeline, and the audit chain's status.
//
// Read-only: every call is a GET. The open session lives in the URL hash (#session=3) so a
// reload or a shared link shows the same view. Everything renders from `state`, again on a
// language switch, without asking the server again.
import { api, loggedIn } from './api.js';
import { renderChart } from './chart.js';
import { hasString, initI18n, language, onLanguageChange, t } from './i18n.js';

initI18n({
  en: {
    'audit.title': 'Audit · studycast',
    'audit.heading': 'Audit',
    'audit.who': '{name} ({role})',
    'audit.retry': 'Try again',
    'audit.loading': 'Loading…',
    'error.network': 'The server cannot be reached. Check the connection and try again.',
    'error.store_error': 'The server cannot reach its database right now. Try again shortly.',
    'error.forbidden': 'This login may not read reports.',
    'error.other': 'Something went wrong: {detail}',
    'chain.heading': 'Audit log chain',
    'chain.verify': 'Verify now',
    'chain.verifying': 'Verifying…',
    'chain.publicKey': 'Download public key',
    'chain.unknown': 'Not verified yet.',
    'chain.ok': 'Verified: the attendance and admin chains are intact.',
    'chain.broken': 'Broken: the {chain} chain fails at position {position} ({reason}).',
    'chain.rows': 'Attendance log: {attendance} rows; admin log: {admin} rows. Checked {at}.',
    'chain.attendance': 'attendance',
    'chain.admin': 'admin',
    'sessions.heading': 'Sessions',
    'sessions.empty': 'No sessions yet.',
    'sessions.col.title': 'Title',
    'sessions.col.state': 'State',
    'sessions.col.scheduled': 'Scheduled',
    'sessions.col.started': 'Started',
    'sessions.col.ended': 'Ended',
    'state.scheduled': 'scheduled',
    'state.live': 'live',
    'state.paused': 'paused',
    'state.ended': 'ended',
    'session.meta': '{state} · scheduled {start} · {final}',
    'session.final': 'final figures',
    'session.running': 'live figures at {at}',
    'session.missing': 'Session {id} was not found.',
    'session.recordings': 'Recordings',
    'report.heading': 'Members',
    'report.exportCsv': 'Download CSV',
    'report.exportXlsx': 'Download XLSX',
    'report.summary': '{shown} members shown; {qualified} qualified. Live time {live} min.',
    'report.empty': 'No members match these filters.',
    'report.sortBy': 'Sort by {column}',
    'report.col.member_no': 'No.',
    'report.col.name': 'Name',
    'report.col.unit': 'Unit',
    'report.col.mode': 'Mode',
    'report.col.venue': 'Venue',
    'report.col.first_join': 'Joined',
    'report.col.watched_min': 'Watched (min)',
    'report.col.share': 'Share',
    'report.col.presence': 'Checks',
    'report.col.quiz_points': 'Quiz',
    'report.col.notes': 'Notes',
    'report.col.qualified': 'Qualified',
    'report.col.reason': 'Reason',
    'filter.unit': 'Unit',
    'filter.venue': 'Venue',
    'filter.mode': 'Mode',
    'filter.qualified': 'Qualified',
    'filter.all': 'All',
    'mode.onsite': 'on site',
    'mode.remote': 'remote',
    'mode.absent': 'absent',
    'notes.none': '—',
    'notes.submitted': 'submitted',
    'notes.accepted': 'accepted',
    'notes.returned': 'returned',
    'yes': 'yes',
    'no': 'no',
    'history.heading': 'History of {no} {name}',
    'history.meta': '{unit} · {points} points in all',
    'history.col.session': 'Session',
    'history.col.start': 'Scheduled',
    'history.col.points': 'Points',
    'history.close': 'Close',
    'history.empty': 'No sessions for this member.',
    'timeline.heading': 'Timeline',
    'timeline.label':
      'Members watching, venue screens connected and check-ins over time for {title}',
    'timeline.empty': 'Nothing recorded yet.',
    'series.viewers': 'Members watching',
    'series.screens': 'Screens connected',
    'series.checkins': 'Checked in (total)',
    'marker.live': 'Live',
    'marker.paused': 'Paused',
    'marker.ended': 'Ended',
    'marker.quiz_opened': 'Question {ref} opened',
    'marker.quiz_closed': 'Question {ref} closed',
    'marker.presence_opened': 'Presence check {ref} opened',
    'marker.presence_closed': 'Presence check {ref} closed',
    'units.heading': 'By unit',
    'units.col.unit': 'Unit',
    'units.col.expected': 'Expected',
    'units.col.present': 'Present',
    'units.col.guests': 'Guests',
    'units.col.qualified': 'Qualified',
    'units.col.rate': 'Rate',
    'venues.heading': 'By venue',
    'venues.col.venue': 'Venue',
    'venues.col.uptime': 'Screen uptime (min)',
    'venues.col.share': 'Of live time',
    'venues.col.checkins': 'Check-ins',
    'venues.col.onsite': 'On site',
  },
  'zh-CN': {
    'audit.title': '审计 · studycast',
    'audit.heading': '审计',
    'audit.who': '{name}（{role}）',
    'audit.retry': '重试',
    'audit.loading': '正在加载…',
    'error.network': '无法连接服务器，请检查网络后重试。',
    'error.store_error': '服务器暂时无法访问数据库，请稍后重试。',
    'error.forbidden': '此账号无权查看报告。',
    'error.other': '出错了：{detail}',
    'chain.heading': '审计日志哈希链',
    'chain.verify': '立即校验',
    'chain.verifying': '正在校验…',
    'chain.publicKey': '下载公钥',
    'chain.unknown': '尚未校验。',
    'chain.ok': '已校验：考勤链与管理链完整无误。',
    'chain.broken': '已损坏：{chain}链在第 {position} 条处校验失败（{reason}）。',
    'chain.rows': '考勤日志 {attendance} 条；管理日志 {admin} 条。校验时间 {at}。',
    'chain.attendance': '考勤',
    'chain.admin': '管理',
    'sessions.heading': '学习会',
    'sessions.empty': '暂无学习会。',
    'sessions.col.title': '标题',
    'sessions.col.state': '状态',
    'sessions.col.scheduled': '计划时间',
    'sessions.col.started': '开始',
    'sessions.col.ended': '结束',
    'state.scheduled': '未开始',
    'state.live': '直播中',
    'state.paused': '已暂停',
    'state.ended': '已结束',
    'session.meta': '{state} · 计划 {start} · {final}',
    'session.final': '最终结果',
    'session.running': '截至 {at} 的实时数据',
    'session.missing': '未找到学习会 {id}。',
    'session.recordings': '录像',
    'report.heading': '成员',
    'report.exportCsv': '下载 CSV',
    'report.exportXlsx': '下载 XLSX',
    'report.summary': '显示 {shown} 名成员，其中 {qualified} 名合格。直播时长 {live} 分钟。',
    'report.empty': '没有符合筛选条件的成员。',
    'report.sortBy': '按{column}排序',
    'report.col.member_no': '编号',
    'report.col.name': '姓名',
    'report.col.unit': '单位',
    'report.col.mode': '方式',
    'report.col.venue': '会场',
    'report.col.first_join': '加入时间',
    'report.col.watched_min': '观看（分钟）',
    'report.col.share': '占比',
    'report.col.presence': '签到抽查',
    'report.col.quiz_points': '答题',
    'report.col.notes': '笔记',
    'report.col.qualified': '合格',
    'report.col.reason': '说明',
    'filter.unit': '单位',
    'filter.venue': '会场',
    'filter.mode': '方式',
    'filter.qualified': '合格',
    'filter.all': '全部',
    'mode.onsite': '现场',
    'mode.remote': '远程',
    'mode.absent': '缺席',
    'notes.none': '—',
    'notes.submitted': '已提交',
    'notes.accepted': '已通过',
    'notes.returned': '已退回',
    'yes': '是',
    'no': '否',
    'history.heading': '{no} {name} 的记录',
    'history.meta': '{unit} · 累计 {points} 积分',
    'history.col.session': '学习会',
    'history.col.start': '计划时间',
    'history.col.points': '积分',
    'history.close': '关闭',
    'history.empty': '该成员暂无记录。',
    'timeline.heading': '时间线',
    'timeline.label': '{title}：观看人数、已连接会场屏幕和签到人数随时间变化',
    'timeline.empty': '暂无记录。',
    'series.viewers': '观看人数',
    'series.screens': '已连接屏幕',
    'series.checkins': '累计签到',
    'marker.live': '开播',
    'marker.paused': '暂停',
    'marker.ended': '结束',
    'marker.quiz_opened': '第 {ref} 题开始',
    'marker.quiz_closed': '第 {ref} 题结束',
    'marker.presence_opened': '在场确认 {ref} 开始',
    'marker.presence_closed': '在场确认 {ref} 结束',
    'units.heading': '按单位汇总',
    'units.col.unit': '单位',
    'units.col.expected': '应到',
    'units.col.present': '实到',
    'units.col.guests': '列席',
    'units.col.qualified': '合格',
    'units.col.rate': '合格率',
    'venues.heading': '按会场汇总',
    'venues.col.venue': '会场',
    'venues.col.uptime': '屏幕在线（分钟）',
    'venues.col.share': '占直播时长',
    'venues.col.checkins': '签到',
    'venues.col.onsite': '现场人数',
  },
});

const $ = (id) => document.getElementById(id);
const MARKER_SHORT = {
  live: '▶',
  paused: '❚❚',
  ended: '■',
  quiz_opened: 'Q',
  quiz_closed: 'q',
  presence_opened: 'P',
  presence_closed: 'p',
};
// The report's columns: key, how to sort, how to show.
const COLUMNS = [
  { key: 'member_no', sort: (r) => r.member_no },
  { key: 'name', sort: (r) => r.name },
  { key: 'unit', sort: (r) => r.unit },
  { key: 'mode', sort: (r) => r.mode, show: (r) => t('mode.' + r.mode) },
  { key: 'venue', sort: (r) => r.venue || '', show: (r) => r.venue || '—' },
  { key: 'first_join', sort: (r) => r.first_join || '', show: (r) => when(r.first_join) },
  { key: 'watched_min', sort: (r) => r.watched_min, numeric: true },
  { key: 'share', sort: (r) => r.share, show: (r) => percent(r.share), numeric: true },
  {
    key: 'presence',
    sort: (r) => r.presence_passed,
    show: (r) => `${r.presence_passed}/${r.presence_total}`,
    numeric: true,
  },
  { key: 'quiz_points', sort: (r) => r.quiz_points, numeric: true },
  { key: 'notes', sort: (r) => r.notes, show: (r) => t('notes.' + r.notes) },
  { key: 'qualified', sort: (r) => (r.qualified ? 1 : 0), show: (r) => t(r.qualified ? 'yes' : 'no') },
  { key: 'reason', sort: (r) => r.reason },
];

const state = {
  me: null,
  error: null, // the failure that stopped loading (retry re-runs load())
  chain: null,
  verifying: false,
  sessions: [],
  sessionId: null,
  session: null, // {report, units, venues, timeline} of the open session
  missing: false,
  allUnits: [],
  allVenues: [],
  filters: { unit: '', venue: '', mode: '', qualified: '' },
  sort: { key: 'member_no', dir: 1 },
  history: null,
};

// --- formatting -------------------------------------------------------------------------------

function when(iso) {
  if (!iso) return '—';
  return new Date(iso).toLocaleString(language(), { dateStyle: 'medium', timeStyle: 'short' });
}

function percent(share) {
  if (share === null || share === undefined) return '—';
  return new Intl.NumberFormat(language(), { style: 'percent', maximumFractionDigits: 1 }).format(
    share,
  );
}

function errorText(error) {
  const key = 'error.' + error.code;
  if (hasString(key)) return t(key);
  return t('error.other', { detail: error.detail || error.code });
}

function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fillBody(table, rows, emptyKey, columns) {
  const body = table.tBodies[0];
  body.replaceChildren();
  if (!rows.length && emptyKey) {
    const tr = body.insertRow();
    const td = cell(tr, t(emptyKey), 'muted');
    td.colSpan = columns;
  }
  return body;
}

// --- loading ----------------------------------------------------------------------------------

function query() {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(state.filters)) if (value) params.set(name, value);
  return params;
}

function exportHref(format) {
  const params = query();
  params.set('format', format);
  return `/api/sessions/${state.sessionId}/report?${params}`;
}

let reportRequest = 0;

async function loadReport() {
  const params = query().toString();
  const mine = ++reportRequest;
  const report = await api(`/api/sessions/${state.sessionId}/report${params ? '?' + params : ''}`);
  // Filters changed quickly: only the answer to the latest request is shown.
  if (mine === reportRequest && state.session) state.session.report = report;
}

async function loadSession(id) {
  state.sessionId = id;
  state.session = null;
  state.missing = false;
  state.history = null;
  if (id === null) return;
  try {
    const [report, units, venues, timeline] = await Promise.all([
      api(`/api/sessions/${id}/report`),
      api(`/api/sessions/${id}/report/units`),
      api(`/api/sessions/${id}/report/venues`),
      api(`/api/sessions/${id}/timeline`),
    ]);
    state.session = { report, units: units.units, venues: venues.venues, timeline };
    state.allUnits = units.units.map((u) => u.unit);
    state.allVenues = venues.venues.map((v) => v.venue);
    if (Object.values(state.filters).some(Boolean)) await loadReport();
  } catch (error) {
    if (error.status === 404) state.missing = true;
    else throw error;
  }
}

async function verify() {
  state.verifying = true;
  render();
  try {
    state.chain = await api('/api/audit/status');
  } catch (error) {
    state.error = error;
  } finally {
    state.verifying = false;
    render();
  }
}

function sessionFromHash() {
  const match = /session=(\d+)/.exec(location.hash);
  return match ? Number(match[1]) : null;
}

async function guarded(work) {
  try {
    await work();
    state.error = null;
  } catch (error) {
    if (error.status === 401) {
      location.assign('login.html?next=audit.html');
      return;
    }
    state.error = error;
  }
  render();
}

async function load() {
  await guarded(async () => {
    state.me = await loggedIn();
    if (state.me === null) {
      location.assign('login.html?next=audit.html');
      return;
    }
    state.sessions = (await api('/api/sessions')).sessions;
    await loadSession(sessionFromHash());
  });
  if (state.me && !state.error) await verify();
}

// --- rendering --------------------------------------------------------------------------------

function renderChain() {
  const status = $('chain-status');
  const chain = state.chain;
  $('verify').disabled = state.verifying;
  $('verify').textContent = t(state.verifying ? 'chain.verifying' : 'chain.verify');
  if (!chain) {
    status.dataset.state = 'unknown';
    status.textContent = t('chain.unknown');
    status.className = 'chain-status';
    $('chain-detail').textContent = '';
    return;
  }
  status.dataset.state = chain.ok ? 'ok' : 'broken';
  status.className = 'chain-status ' + (chain.ok ? 'status' : 'alert');
  if (chain.ok) {
    status.textContent = t('chain.ok');
  } else {
    const [name, broken] = Object.entries(chain.chains).find(([, c]) => !c.ok);
    status.textContent = t('chain.broken', {
      chain: t('chain.' + name),
      position: broken.fault.position,
      reason: broken.fault.explanation || broken.fault.reason,
    });
  }
  $('chain-detail').textContent = t('chain.rows', {
    attendance: chain.chains.attendance?.rows ?? '?',
    admin: chain.chains.admin?.rows ?? '?',
    at: when(chain.checked_at),
  });
}

function renderSessions() {
  const table = $('sessions-table');
  $('sessions-empty').hidden = state.sessions.length > 0;
  table.hidden = state.sessions.length === 0;
  const body = fillBody(table, [], null, 5);
  for (const s of state.sessions) {
    const tr = body.insertRow();
    if (s.id === state.sessionId) tr.className = 'selected';
    const link = document.createElement('a');
    link.href = `#session=${s.id}`;
    link.textContent = s.title;
    link.className = 'session-link';
    link.dataset.sessionId = String(s.id);
    if (s.id === state.sessionId) link.setAttribute('aria-current', 'true');
    const td = cell(tr, '');
    td.appendChild(link);
    cell(tr, t('state.' + s.state), 'state state-' + s.state);
    cell(tr, when(s.scheduled_start));
    cell(tr, when(s.started_at));
    cell(tr, when(s.ended_at));
  }
}

function sortedRows(rows) {
  const column = COLUMNS.find((c) => c.key === state.sort.key) || COLUMNS[0];
  const collator = new Intl.Collator(language(), { numeric: true });
  return [...rows].sort((a, b) => {
    const x = column.sort(a);
    const y = column.sort(b);
    const order = column.numeric ? x - y : collator.compare(String(x), String(y));
    return order * state.sort.dir || collator.compare(a.member_no, b.member_no);
  });
}

function renderReport() {
  const { report } = state.session;
  const table = $('report-table');
  const head = table.tHead.rows[0];
  head.replaceChildren();
  for (const column of COLUMNS) {
    const th = document.createElement('th');
    th.scope = 'col';
    th.dataset.key = column.key;
    const active = state.sort.key === column.key;
    th.setAttribute('aria-sort', active ? (state.sort.dir > 0 ? 'ascending' : 'descending') : 'none');
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'sort';
    button.textContent = t('report.col.' + column.key);
    button.title = t('report.sortBy', { column: t('report.col.' + column.key) });
    button.addEventListener('click', () => {
      state.sort = { key: column.key, dir: active ? -state.sort.dir : 1 };
      render();
    });
    th.appendChild(button);
    head.appendChild(th);
  }
  const rows = sortedRows(report.rows);
  const body = fillBody(table, rows, 'report.empty', COLUMNS.length);
  for (const r of rows) {
    const tr = body.insertRow();
    tr.dataset.member = r.member_no;
    for (const column of COLUMNS) {
      const text = column.show ? column.show(r) : String(r[column.key] ?? '');
      const td = cell(tr, '', column.numeric ? 'num' : '');
      td.dataset.col = column.key;
      if (column.key === 'member_no') {
        const button = document.createElement('button');
        button.type = 'button';
        button.className = 'link member-link';
        button.textContent = text;
        button.addEventListener('click', () => openHistory(r.member_no));
        td.appendChild(button);
      } else {
        td.textContent = text;
      }
      if (column.key === 'qualified') td.classList.add(r.qualified ? 'ok' : 'not-ok');
    }
  }
  $('report-summary').textContent = t('report.summary', {
    shown: report.rows.length,
    qualified: report.rows.filter((r) => r.qualified).length,
    live: Math.round(report.live_s / 6) / 10,
  });
  $('export-csv').href = exportHref('csv');
  $('export-xlsx').href = exportHref('xlsx');
}

function options(select, values, label) {
  const current = select.value;
  select.replaceChildren();
  const all = document.createElement('option');
  all.value = '';
  all.textContent = t('filter.all');
  select.appendChild(all);
  for (const value of values) {
    const option = document.createElement('option');
    option.value = value;
    option.textContent = label ? label(value) : value;
    select.appendChild(option);
  }
  select.value = current;
}

function renderFilters() {
  options($('filter-unit'), state.allUnits);
  options($('filter-venue'), state.allVenues);
  options($('filter-mode'), ['onsite', 'remote', 'absent'], (m) => t('mode.' + m));
  options($('filter-qualified'), ['yes', 'no'], (v) => t(v));
  for (const [name, value] of Object.entries(state.filters)) $('filter-' + name).value = value;
}

function renderUnits() {
  const { units } = state.session;
  const body = fillBody($('units-table'), units, 'report.empty', 6);
  for (const u of units) {
    const tr = body.insertRow();
    tr.dataset.unit = u.unit;
    const name = u.unit.split('/').pop();
    const td = cell(tr, name, `unit depth-${Math.min(u.depth, 6)}`);
    td.title = u.unit;
    for (const key of ['expected', 'present', 'guests', 'qualified']) cell(tr, String(u[key]), 'num');
    cell(tr, percent(u.rate), 'num');
  }
}

function renderVenues() {
  const { venues } = state.session;
  const body = fillBody($('venues-table'), venues, 'report.empty', 5);
  for (const v of venues) {
    const tr = body.insertRow();
    tr.dataset.venue = v.venue;
    cell(tr, `${v.name} (${v.venue})`);
    cell(tr, String(Math.round(v.uptime_s / 6) / 10), 'num');
    cell(tr, percent(v.uptime_share), 'num');
    cell(tr, String(v.checkins), 'num');
    cell(tr, String(v.onsite), 'num');
  }
}

function renderTimeline() {
  const { timeline, report } = state.session;
  const container = $('timeline');
  if (!timeline.times.length) {
    container.textContent = t('timeline.empty');
    return;
  }
  renderChart(container, {
    start: new Date(timeline.start),
    step: timeline.step_s * 1000,
    locale: language(),
    label: t('timeline.label', { title: report.session.title }),
    series: ['viewers', 'screens', 'checkins'].map((key) => ({
      key,
      label: t('series.' + key),
      values: timeline.series[key],
    })),
    markers: timeline.markers.map((m) => ({
      at: new Date(m.at),
      kind: m.kind,
      short: MARKER_SHORT[m.kind] || '·',
      label: t('marker.' + m.kind, { ref: m.ref ?? '' }) + (m.label ? `: ${m.label}` : ''),
    })),
  });
}

function renderHistory() {
  const card = $('history-card');
  const history = state.history;
  card.hidden = history === null;
  if (!history) return;
  $('history-heading').textContent = t('history.heading', {
    no: history.member_no,
    name: history.name,
  });
  $('history-meta').textContent = t('history.meta', {
    unit: history.unit,
    points: history.total_points,
  });
  const body = fillBody($('history-table'), history.sessions, 'history.empty', 7);
  for (const s of history.sessions) {
    const tr = body.insertRow();
    tr.dataset.sessionId = String(s.session_id);
    cell(tr, s.title);
    cell(tr, when(s.scheduled_start));
    cell(tr, t('mode.' + s.mode));
    cell(tr, String(s.watched_min), 'num');
    cell(tr, percent(s.share), 'num');
    cell(tr, t(s.qualified ? 'yes' : 'no'), s.qualified ? 'ok' : 'not-ok');
    cell(tr, String(s.points), 'num');
  }
}

// The session's recordings open in the player page; the link sits under the session's title.
function renderRecordingsLink() {
  let link = $('session-recordings');
  if (!link) {
    link = document.createElement('a');
    link.id = 'session-recordings';
    link.className = 'button';
    const holder = document.createElement('p');
    holder.className = 'audit-actions';
    holder.append(link);
    $('session-meta').after(holder);
  }
  link.hidden = state.missing;
  link.href = `recording.html?session=${state.sessionId}`;
  link.textContent = t('session.recordings');
}

function renderSession() {
  const view = $('session-view');
  view.hidden = state.sessionId === null;
  if (state.sessionId === null) return;
  renderRecordingsLink();
  const missing = $('session-missing');
  missing.hidden = !state.missing;
  missing.textContent = state.missing ? t('session.missing', { id: state.sessionId }) : '';
  $('session-body').hidden = state.session === null;
  if (state.missing) {
    $('session-heading').textContent = `#${state.sessionId}`;
    $('session-meta').textContent = '';
    return;
  }
  if (!state.session) return;
  const { report } = state.session;
  const listed = state.sessions.find((s) => s.id === state.sessionId);
  $('session-heading').textContent = report.session.title;
  $('session-meta').textContent = t('session.meta', {
    state: t('state.' + report.session.state),
    start: when(listed?.scheduled_start),
    final: report.final ? t('session.final') : t('session.running', { at: when(report.generated_at) }),
  });
  renderFilters();
  renderReport();
  renderUnits();
  renderVenues();
  renderTimeline();
  renderHistory();
}

function render() {
  if (state.me) {
    const { username, role } = state.me.user;
    $('who').textContent = t('audit.who', { name: username, role: t('role.' + role) });
  }
  $('load-error').hidden = state.error === null;
  $('load-error-text').textContent = state.error ? errorText(state.error) : '';
  if (state.error) $('load-error').dataset.code = state.error.code;
  renderChain();
  renderSessions();
  renderSession();
}

// --- actions ----------------------------------------------------------------------------------

async function openHistory(memberNo) {
  await guarded(async () => {
    state.history = await api(`/api/members/${encodeURIComponent(memberNo)}/history`);
  });
  $('history-card').scrollIntoView({ block: 'nearest' });
}

$('filters').addEventListener('change', (event) => {
  const name = event.target.name;
  if (!(name in state.filters)) return;
  state.filters[name] = event.target.value;
  guarded(loadReport);
});
$('filters').addEventListener('submit', (event) => event.preventDefault());
$('history-close').addEventListener('click', () => {
  state.history = null;
  render();
});
$('verify').addEventListener('click', verify);
$('retry').addEventListener('click', load);
window.addEventListener('hashchange', () => {
  const id = sessionFromHash();
  if (id === state.sessionId) return;
  state.filters = { unit: '', venue: '', mode: '', qualified: '' };
  guarded(() => loadSession(id));
});
onLanguageChange(() => {
  if (state.me) render();
});
load();
