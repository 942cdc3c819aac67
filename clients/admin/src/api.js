// Every request the dashboard makes goes through here: the access token (kept in memory
// only; the refresh token lives in an HttpOnly cookie no script can read), one silent
// refresh when it has expired, and problem+json errors turned into react-admin's
// HttpError with the problem's `detail`, plus the wait for 429 and 503.
import { HttpError } from 'react-admin';

// Served by the app, the API is on the same origin; `npm run dev` talks to a server.
export const API_URL = import.meta.env.DEV
    ? (import.meta.env.VITE_API_URL ?? 'http://127.0.0.1:8000/api/v1').replace(/\/$/, '')
    : '/api/v1';

// Cookie transport: the API refuses it without this header, which a cross-site form or
// link cannot send (see backend/transport.py).
const COOKIE_TRANSPORT = '?transport=cookie';
const CSRF_HEADERS = { 'X-Requested-With': 'fetch' };
// Renew this long before the access token runs out, so requests never meet a 401.
const REFRESH_MARGIN_MS = 60_000;

let accessToken = null;
let currentUser = null;
let refreshTimer = null;
let refreshing = null; // the refresh in flight: concurrent callers share it
// Set when the server said there is no session to refresh (no cookie, or an ended
// session): the screens' other checks then stop asking until the next login.
let noSession = false;
// While an admin impersonates a user: that session's refresh token (in memory, never a
// cookie) and its user. The admin's session is untouched: its refresh cookie brings it
// back when the impersonation stops or runs out.
let impersonation = null;
const impersonationListeners = new Set();

export const session = {
    get user() {
        return currentUser;
    },
    get authenticated() {
        return accessToken !== null;
    },
    /** The user being viewed as, or null. */
    get impersonating() {
        return impersonation?.user ?? null;
    },
};

/** Call `listener` with the viewed user (or null) on every change; returns the unsubscribe. */
export function onImpersonationChange(listener) {
    impersonationListeners.add(listener);
    return () => impersonationListeners.delete(listener);
}

function setImpersonation(value) {
    impersonation = value;
    for (const listener of impersonationListeners) listener(value?.user ?? null);
}

// The wait, from Retry-After, unless the detail already gives it ("Retry in 42 s.").
function withRetryAfter(detail, response) {
    const seconds = response.headers.get('Retry-After');
    if (!seconds || detail.includes(`${seconds} s`)) return detail;
    return `${detail} Retry after ${seconds} s.`;
}

async function toHttpError(response) {
    let body = null;
    try {
        body = await response.json();
    } catch {
        // not JSON: a proxy's page, say; the status text will do
    }
    // A 422 names its fields: react-admin shows `body.errors`, by field, under the inputs.
    if (Array.isArray(body?.errors)) {
        const byField = {};
        for (const { field, message } of body.errors) {
            byField[field] = byField[field] ? `${byField[field]}; ${message}` : message;
        }
        body = { ...body, errors: byField };
    }
    let detail = body?.detail ?? body?.message ?? response.statusText ?? 'Request failed';
    if ([429, 503].includes(response.status)) detail = withRetryAfter(detail, response);
    return new HttpError(detail, response.status, body);
}

export function accept(tokens) {
    noSession = false;
    accessToken = tokens.access_token;
    currentUser = tokens.user;
    clearTimeout(refreshTimer);
    const delay = Math.max(tokens.expires_in * 1000 - REFRESH_MARGIN_MS, 5_000);
    refreshTimer = setTimeout(() => refresh().catch(() => {}), delay);
}

/** Act as the user of an impersonation's tokens (POST /users/{id}/impersonate). */
export function startImpersonation(tokens) {
    accept(tokens);
    setImpersonation({ user: tokens.user, refreshToken: tokens.refresh_token });
}

/** Back to the admin's own session: its access token comes from the cookie again. */
function endImpersonation() {
    setImpersonation(null);
    forget();
}

/** End the impersonation session on the server, then go back to the admin's. */
export async function stopImpersonation() {
    try {
        await send(`${API_URL}/auth/impersonation/stop`, { method: 'POST' });
    } finally {
        endImpersonation();
    }
}

// The impersonation's refresh token goes in the body (no cookie: the admin's stays).
async function refreshImpersonation() {
    const response = await fetch(`${API_URL}/auth/refresh`, {
        method: 'POST',
        credentials: 'omit',
        headers: { 'Content-Type': 'application/json', ...CSRF_HEADERS },
        body: JSON.stringify({ refresh_token: impersonation.refreshToken }),
    });
    if (!response.ok) throw await toHttpError(response);
    const tokens = await response.json();
    accept(tokens);
    impersonation.refreshToken = tokens.refresh_token;
    return tokens.user;
}

export function forget() {
    accessToken = null;
    currentUser = null;
    clearTimeout(refreshTimer);
}

async function authCall(path, options = {}) {
    const response = await fetch(`${API_URL}/auth/${path}${COOKIE_TRANSPORT}`, {
        method: 'POST',
        credentials: 'include',
        ...options,
        headers: { ...CSRF_HEADERS, ...options.headers },
    });
    if (!response.ok) throw await toHttpError(response);
    return response.status === 204 ? null : response.json();
}

// A login whose password passed and whose second factor is due: its mfa_token, which
// the login page (App.jsx) watches to ask for the code.
let pendingMfa = null;
const mfaListeners = new Set();

function setPendingMfa(value) {
    pendingMfa = value;
    for (const listener of mfaListeners) listener();
}

export const mfa = {
    get pending() {
        return pendingMfa;
    },
    subscribe(listener) {
        mfaListeners.add(listener);
        return () => mfaListeners.delete(listener);
    },
    cancel() {
        setPendingMfa(null);
    },
};

export async function login(email, password) {
    let tokens;
    try {
        tokens = await authCall('login', {
            headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({ email, password }),
        });
    } catch (error) {
        if (error.body?.code !== 'mfa_required') throw error;
        setPendingMfa({ token: error.body.mfa_token, methods: error.body.methods ?? [] });
        throw new HttpError('A second factor is needed: a code or a passkey.', 401, error.body);
    }
    accept(tokens);
    return tokens.user;
}

/**
 * The login's second step: `{ code }` (the authenticator app's, or a recovery code) or
 * `{ credential }` (a passkey's assertion for /auth/mfa/passkey-options' challenge).
 */
export async function verifyMfa(proof) {
    let tokens;
    try {
        tokens = await authCall('mfa/verify', {
            headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({ mfa_token: pendingMfa?.token, ...proof }),
        });
    } catch (error) {
        // Expired, used or spent: back to the password.
        if (error.body?.code === 'mfa_token_invalid') setPendingMfa(null);
        throw error;
    }
    setPendingMfa(null);
    accept(tokens);
    return tokens.user;
}

/**
 * A new access token, one refresh at a time whoever asks: the impersonation's while one
 * lasts, else the cookie's. An impersonation stopped elsewhere or past its end goes back
 * to the admin's session instead of logging out.
 */
export function refresh() {
    if (noSession) return Promise.reject(new HttpError('Not logged in', 401));
    refreshing ??= (impersonation ? refreshImpersonation().catch(backToAdmin) : refreshCookie()).finally(() => {
        refreshing = null;
    });
    return refreshing;
}

function backToAdmin(error) {
    if (error.status !== 401) throw error;
    endImpersonation();
    return refreshCookie();
}

function refreshCookie() {
    return authCall('refresh')
        .then(tokens => {
            accept(tokens);
            return tokens.user;
        })
        .catch(error => {
            forget();
            noSession = error.status === 401;
            throw error;
        });
}

export async function logout() {
    if (impersonation) await stopImpersonation().catch(() => {});
    const wasLoggedIn = accessToken !== null;
    forget();
    try {
        await authCall('logout');
    } catch (error) {
        // No session left to end (a reload after it expired): nothing more to do.
        if (wasLoggedIn && error.status !== 401) throw error;
    }
}

async function send(url, options) {
    const headers = new Headers(options.headers);
    if (!headers.has('Accept')) headers.set('Accept', 'application/json');
    if (options.body && !headers.has('Content-Type')) {
        headers.set('Content-Type', 'application/json');
    }
    if (accessToken) headers.set('Authorization', `Bearer ${accessToken}`);
    return fetch(url, { ...options, headers });
}

/**
 * fetchUtils.fetchJson's contract ({status, headers, body, json}), which the stock data
 * provider expects, with the session's token and one refresh-and-retry on a 401.
 */
export async function httpClient(url, options = {}) {
    if (!accessToken) await refresh();
    let response = await send(url, options);
    if (response.status === 401) {
        await refresh();
        response = await send(url, options);
    }
    if (!response.ok) throw await toHttpError(response);
    const body = await response.text();
    return { status: response.status, headers: response.headers, body, json: body ? JSON.parse(body) : null };
}

/**
 * The pages a mailed link opens, used without a session: a plain POST of JSON, and the
 * problem turned into an HttpError as for any other request. `cookie` asks for the
 * session the answer starts to come as the refresh cookie, as a login does.
 */
export async function publicCall(path, body, { cookie = false } = {}) {
    const response = await fetch(`${API_URL}${path}${cookie ? COOKIE_TRANSPORT : ''}`, {
        method: 'POST',
        credentials: cookie ? 'include' : 'same-origin',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json', ...CSRF_HEADERS },
        body: JSON.stringify(body),
    });
    if (!response.ok) throw await toHttpError(response);
    return response.json();
}

/** A path under the API, for the screens that call it directly. */
export function call(path, options = {}) {
    return httpClient(`${API_URL}${path}`, options);
}

/** Change your own password: every other session ends, this one gets new tokens. */
export async function changePassword(currentPassword, newPassword) {
    const { json } = await call(`/users/me/password${COOKIE_TRANSPORT}`, {
        method: 'POST',
        credentials: 'include',
        headers: CSRF_HEADERS,
        body: JSON.stringify({ current_password: currentPassword, new_password: newPassword }),
    });
    accept(json);
}
