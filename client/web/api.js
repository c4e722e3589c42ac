// Calls to the studycast JSON API, shared by every page.
//
// api(path, {method, body, token, csrf}) sends JSON and returns the parsed answer; a failure
// throws ApiError with the server's {error, detail} (code "network" when the server cannot be
// reached). Members and venue screens pass their session token (a bearer header); logged-in
// staff rely on the cookie, and unsafe methods need the CSRF token that loggedIn() fetches.

/** A failed API call: the server's {error, detail}, or a network failure. */
export class ApiError extends Error {
  constructor(code, detail, status = 0, retryAfter = null) {
    super(detail || code);
    this.code = code;
    this.detail = detail;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export async function api(path, { method = 'GET', body, csrf, token, raw = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (csrf) headers['X-CSRF-Token'] = csrf;
  if (token) headers.Authorization = 'Bearer ' + token;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError('network', '');
  }
  if (raw && response.ok) return response;
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON (a proxy's error page): reported below by status
  }
  if (!response.ok) {
    throw new ApiError(
      data?.error || 'http_' + response.status,
      data?.detail || response.statusText,
      response.status,
      response.headers.get('Retry-After'),
    );
  }
  return data;
}

/** The logged-in user and CSRF token ({user, csrf_token}), or null when nobody is logged in. */
export async function loggedIn() {
  try {
    return await api('/api/me');
  } catch (error) {
    if (error.status === 401) return null;
    throw error;
  }
}
