// Translations for studycast pages: no build step, no third-party code.
//
// Markup names its strings:   <h1 data-i18n="login.heading">Sign in</h1>
// and attributes the same way: <input data-i18n-attr="placeholder:login.username">
// A page module calls initI18n({ en: {...}, 'zh-CN': {...} }) once with its own strings; the
// strings below are shared by every page. Buttons with data-lang="..." switch the language and
// the choice is remembered in localStorage. Code that renders text itself uses t(key, params) and
// listens for the "studycast:language" event to render again.

export const LANGUAGES = ['zh-CN', 'en'];
export const FALLBACK = 'en';
const STORAGE_KEY = 'studycast.lang';
export const LANGUAGE_EVENT = 'studycast:language';

const dictionaries = {
  en: {
    'app.name': 'studycast',
    'app.tagline': 'Live study sessions for every venue and member',
    'lang.label': 'Language',
    'nav.home': 'Home',
    'nav.login': 'Sign in',
    'footer.text': 'studycast: broadcast, attendance record and audit in one place',
    'role.organiser': 'organiser',
    'role.venue_operator': 'venue operator',
    'role.auditor': 'auditor',
  },
  'zh-CN': {
    'app.name': 'studycast',
    'app.tagline': '面向每个会场、每位成员的在线学习直播',
    'lang.label': '语言',
    'nav.home': '首页',
    'nav.login': '登录',
    'footer.text': 'studycast：直播、考勤记录与审计，一站完成',
    'role.organiser': '组织者',
    'role.venue_operator': '会场管理员',
    'role.auditor': '审计员',
  },
};

let current = FALLBACK;

/** Add a page's strings ({ en: {...}, 'zh-CN': {...} }) to the shared dictionaries. */
export function addStrings(strings) {
  for (const [lang, entries] of Object.entries(strings)) {
    dictionaries[lang] = { ...(dictionaries[lang] || {}), ...entries };
  }
}

/** The supported language for a BCP 47 tag ("zh", "zh-Hans-CN" → "zh-CN"; "en-GB" → "en"). */
export function supportedLanguage(tag) {
  if (typeof tag !== 'string' || !tag) return null;
  const lower = tag.toLowerCase();
  if (lower.startsWith('zh')) return 'zh-CN';
  if (lower === 'en' || lower.startsWith('en-')) return 'en';
  return null;
}

function storedLanguage() {
  try {
    return supportedLanguage(window.localStorage.getItem(STORAGE_KEY));
  } catch {
    return null; // storage disabled (private mode, policy): fall back to the browser's choice
  }
}

/** The remembered choice, else the first browser language we speak, else English. */
export function pickLanguage(preferred = navigator.languages || [navigator.language]) {
  const stored = storedLanguage();
  if (stored) return stored;
  for (const tag of preferred) {
    const lang = supportedLanguage(tag);
    if (lang) return lang;
  }
  return FALLBACK;
}

export function language() {
  return current;
}

/** The text for key in the current language (English if missing), with {name} filled in. */
export function t(key, params = {}) {
  const text = dictionaries[current]?.[key] ?? dictionaries[FALLBACK]?.[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
}

export function hasString(key) {
  return key in (dictionaries[current] || {}) || key in dictionaries[FALLBACK];
}

/** Fill every data-i18n / data-i18n-attr element under root. */
export function applyTranslations(root = document) {
  for (const el of root.querySelectorAll('[data-i18n]')) {
    el.textContent = t(el.dataset.i18n);
  }
  for (const el of root.querySelectorAll('[data-i18n-attr]')) {
    for (const pair of el.dataset.i18nAttr.split(';')) {
      const [attr, key] = pair.split(':').map((s) => s.trim());
      if (attr && key) el.setAttribute(attr, t(key));
    }
  }
}

/** Switch the page to lang; remember it unless remember is false. */
export function setLanguage(lang, { remember = true } = {}) {
  current = LANGUAGES.includes(lang) ? lang : FALLBACK;
  document.documentElement.lang = current;
  if (remember) {
    try {
      window.localStorage.setItem(STORAGE_KEY, current);
    } catch {
      // not remembered; the switch still works for this page
    }
  }
  applyTranslations();
  for (const button of document.querySelectorAll('[data-lang]')) {
    button.setAttribute('aria-pressed', String(button.dataset.lang === current));
  }
  document.dispatchEvent(new CustomEvent(LANGUAGE_EVENT, { detail: { language: current } }));
}

/** Set a page up: its strings, the language switch, and the first translation pass. */
export function initI18n(pageStrings = {}) {
  addStrings(pageStrings);
  for (const button of document.querySelectorAll('[data-lang]')) {
    button.addEventListener('click', () => setLanguage(button.dataset.lang));
  }
  setLanguage(pickLanguage(), { remember: false });
}

/** Run render now and whenever the language changes. */
export function onLanguageChange(render) {
  document.addEventListener(LANGUAGE_EVENT, render);
}
