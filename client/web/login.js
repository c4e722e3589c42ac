// The sign-in page: password login for organisers, venue operators and auditors.
import { api } from './api.js';
import { hasString, initI18n, onLanguageChange, t } from './i18n.js';

initI18n({
  en: {
    'login.title': 'Sign in · studycast',
    'login.heading': 'Sign in',
    'login.intro': 'For organisers, venue operators and auditors.',
    'login.username': 'Username',
    'login.password': 'Password',
    'login.submit': 'Sign in',
    'login.busy': 'Signing in…',
    'login.members':
      'Members do not need a password: they join with their personal link or QR code.',
    'login.welcome': 'Welcome',
    'login.loggedInAs': 'Logged in as {name} ({role})',
    'login.console': 'Open the organiser console',
    'login.audit': 'Open the audit views',
    'login.logout': 'Log out',
    'login.loggedOut': 'You have logged out.',
    'error.missing': 'Enter your username and password.',
    'error.bad_credentials': 'Wrong username or password.',
    'error.too_many_attempts': 'Too many failed attempts. Try again in {seconds} seconds.',
    'error.network': 'The server cannot be reached. Check the connection and try again.',
    'error.store_error': 'The server cannot reach its database right now. Try again shortly.',
  },
  'zh-CN': {
    'login.title': '登录 · studycast',
    'login.heading': '登录',
    'login.intro': '供组织者、会场管理员和审计员使用。',
    'login.username': '用户名',
    'login.password': '密码',
    'login.submit': '登录',
    'login.busy': '正在登录…',
    'login.members': '成员无需密码：使用个人链接或二维码加入即可。',
    'login.welcome': '欢迎',
    'login.loggedInAs': '已登录：{name}（{role}）',
    'login.console': '打开组织者控制台',
    'login.audit': '打开审计视图',
    'login.logout': '退出登录',
    'login.loggedOut': '您已退出登录。',
    'error.missing': '请输入用户名和密码。',
    'error.bad_credentials': '用户名或密码错误。',
    'error.too_many_attempts': '失败次数过多，请在 {seconds} 秒后重试。',
    'error.network': '无法连接服务器，请检查网络后重试。',
    'error.store_error': '服务器暂时无法访问数据库，请稍后重试。',
  },
});

const els = {
  loginCard: document.getElementById('login-card'),
  sessionCard: document.getElementById('session-card'),
  form: document.getElementById('login-form'),
  username: document.getElementById('username'),
  password: document.getElementById('password'),
  submit: document.getElementById('login-submit'),
  error: document.getElementById('login-error'),
  loggedInAs: document.getElementById('logged-in-as'),
  logout: document.getElementById('logout'),
  continue: document.getElementById('continue'),
  notice: document.getElementById('notice'),
};

// Where each role goes after signing in; ?next=PAGE.html (a page of this site) wins.
const HOME_BY_ROLE = { organiser: 'console.html', auditor: 'audit.html' };
const TEXT_BY_PAGE = { 'console.html': 'login.console', 'audit.html': 'login.audit' };

function requestedPage() {
  const next = new URLSearchParams(window.location.search).get('next');
  // A page of this site, with at most a simple query (recording.html?session=3).
  return next && /^[a-z][a-z-]*\.html(\?[A-Za-z0-9=&_-]{0,100})?$/.test(next) ? next : null;
}

// What the page shows; render() turns it into the DOM (again on a language switch).
const state = { me: null, error: null, busy: false, notice: null };

function errorText(error) {
  const key = 'error.' + error.code;
  if (hasString(key)) return t(key, { seconds: error.retryAfter ?? '?' });
  return error.detail || error.code;
}

function render() {
  const loggedIn = state.me !== null;
  els.loginCard.hidden = loggedIn;
  els.sessionCard.hidden = !loggedIn;
  if (loggedIn) {
    const { username, role } = state.me.user;
    els.loggedInAs.textContent = t('login.loggedInAs', { name: username, role: t('role.' + role) });
    const home = HOME_BY_ROLE[role];
    els.continue.hidden = !home;
    if (home) {
      els.continue.href = home;
      els.continue.textContent = t(TEXT_BY_PAGE[home]);
    }
  }
  els.error.hidden = state.error === null;
  els.error.textContent = state.error ? errorText(state.error) : '';
  if (state.error) els.error.dataset.code = state.error.code;
  els.submit.disabled = state.busy;
  els.submit.textContent = t(state.busy ? 'login.busy' : 'login.submit');
  els.notice.hidden = state.notice === null;
  els.notice.textContent = state.notice ? t(state.notice) : '';
}

async function signIn(event) {
  event.preventDefault();
  const username = els.username.value.trim();
  const password = els.password.value;
  state.notice = null;
  if (!username || !password) {
    state.error = { code: 'missing', detail: '' };
    render();
    (username ? els.password : els.username).focus();
    return;
  }
  state.busy = true;
  state.error = null;
  render();
  try {
    state.me = await api('/api/login', { method: 'POST', body: { username, password } });
    els.password.value = '';
  } catch (error) {
    state.error = error;
    els.password.select();
  } finally {
    state.busy = false;
    render();
  }
  if (state.me) {
    if (requestedPage()) {
      window.location.assign(requestedPage());
      return;
    }
    els.logout.focus();
  }
}

async function signOut() {
  try {
    await api('/api/logout', { method: 'POST', csrf: state.me?.csrf_token });
  } catch (error) {
    // Already logged out elsewhere (401): the page simply shows the form again.
    if (error.status !== 401) {
      state.error = error;
    }
  }
  state.me = null;
  state.notice = 'login.loggedOut';
  render();
  els.username.focus();
}

async function loadCurrentLogin() {
  try {
    state.me = await api('/api/me');
  } catch (error) {
    if (error.status !== 401) state.error = error;
  }
  if (state.me && requestedPage()) {
    window.location.replace(requestedPage());
    return;
  }
  render();
}

els.form.addEventListener('submit', signIn);
els.logout.addEventListener('click', signOut);
onLanguageChange(render);
loadCurrentLogin();
