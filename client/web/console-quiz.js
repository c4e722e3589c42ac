// The organiser console's quiz (questions, the open one's answers, the leaderboard) and
// presence checks.
import { api } from './api.js';
import { hasString, t } from './i18n.js';
import {
  $,
  csrf,
  el,
  errorText,
  handleError,
  LETTERS,
  serverNow,
  sessionPath,
  state,
} from './console-state.js';

// --- quiz -------------------------------------------------------------------------------------

export async function loadQuestions() {
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

export function upsertQuestion(question) {
  const i = state.questions.findIndex((q) => q.id === question.id);
  if (i >= 0) state.questions[i] = question;
  else state.questions.push(question);
}

export function renderQuestions() {
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

export async function questionAction(question, action) {
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

export async function loadResults() {
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

export function renderActiveQuestion() {
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

export function renderCountdown() {
  const q = state.activeQuestion;
  if (!q) return;
  if (q.state === 'open' && q.closes_at) {
    const left = Math.max(0, Math.ceil((new Date(q.closes_at).getTime() - serverNow()) / 1000));
    $('aq-countdown').textContent = left > 0 ? t('console.countdown', { s: left }) : t('console.timeUp');
  } else {
    $('aq-countdown').textContent = t('console.q.state.' + q.state);
  }
}

export async function addQuestion(event) {
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

export async function uploadBank() {
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

export async function loadLeaderboard() {
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

export async function triggerCheck() {
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

export function showCheck(check) {
  if (!check || !check.code) return;
  state.currentCheck = check;
  $('presence-current').hidden = false;
  $('presence-code').textContent = check.code;
  renderCheck();
}

export async function loadChecks() {
  if (!state.session) return;
  try {
    state.checks = (await api(sessionPath('/presence-checks'))).checks;
  } catch {
    return; // the stats poll reports an unreachable server
  }
  const latest = state.checks.filter((c) => c.state !== 'scheduled').at(-1);
  if (latest) showCheck(latest);
}

export function renderCheck() {
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
