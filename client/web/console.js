// The organiser console: sessions, the links to hand out, going live from the browser, and the
// live dashboard (stream health, venues, quiz, presence checks) over the session's event stream.
import { api, loggedIn } from './api.js';
import { initI18n, onLanguageChange, t } from './i18n.js';
import { TEXT } from './console-text.js';
import {
  addQuestion,
  loadChecks,
  loadLeaderboard,
  loadQuestions,
  loadResults,
  renderActiveQuestion,
  renderCheck,
  renderCountdown,
  renderQuestions,
  showCheck,
  triggerCheck,
  uploadBank,
  upsertQuestion,
} from './console-quiz.js';
import {
  $,
  CHECKS_POLL_MS,
  csrf,
  el,
  errorText,
  fromInputTime,
  handleError,
  localTime,
  selectedId,
  sessionPath,
  showBanner,
  state,
  stateText,
  STATS_POLL_MS,
  toInputTime,
} from './console-state.js';
import { WhipPublisher } from './whip.js';

initI18n(TEXT);

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
  // Failed or taken over, the camera is still on: Stop turns it off.
  $('publish-stop').disabled = !active && !(state.publisher !== null && state.media !== null);
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
  $('end-confirm').hidden = true;
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
