// The session: access and refresh tokens in localStorage, so a reload keeps
// them, refreshed at refresh_at (a new refresh token every time, which is
// stored at once) and once at a time across tabs.
//
// `session` is read by the other modules; only this module assigns it (resume
// and forget are how the start-up code and signing out change it).

import {API, STORE_KEY} from "./config.js";

export let session = null;        // {access_token, refresh_token, user, refreshDue, expires} (times in local ms)
let refreshTimer = null;
let refreshing = null;

export function readStored() {
  try {
    const value = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    return value && value.access_token && value.refresh_token && value.user ? value : null;
  } catch {
    return null;
  }
}

function saveSession() {
  try {
    if (session) localStorage.setItem(STORE_KEY, JSON.stringify(session));
    else localStorage.removeItem(STORE_KEY);
  } catch {
    // Storage may be off (private mode): the session then lasts as long as the page.
  }
}

function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return {};
  }
}

/** Keep a grant from /auth/login or /auth/refresh; times are taken relative to this clock. */
export function adopt(grant, user) {
  const now = Date.now();
  const claims = claimsOf(grant.access_token);
  const lifetime = grant.expires_in || (claims.exp - claims.iat) || 900;
  let refreshIn = typeof grant.refresh_at === "number" && claims.iat ? grant.refresh_at - claims.iat : NaN;
  if (!(refreshIn > 0 && refreshIn < lifetime)) refreshIn = lifetime * 0.8;
  session = {
    access_token: grant.access_token,
    refresh_token: grant.refresh_token || session?.refresh_token,
    user: user || session?.user,
    refreshDue: now + Math.max(5, refreshIn) * 1000,
    expires: now + lifetime * 1000,
  };
  saveSession();
  scheduleRefresh();
}

export function scheduleRefresh() {
  clearTimeout(refreshTimer);
  if (!session) return;
  const delay = Math.min(Math.max(0, session.refreshDue - Date.now()), 2 ** 31 - 1);
  refreshTimer = setTimeout(() => refresh().then((ok) => { if (ok === null) retryRefreshSoon(); }), delay);
}

function retryRefreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refresh().then((ok) => { if (ok === null) retryRefreshSoon(); }), 10000);
}

/**
 * Trade the refresh token for new tokens, once at a time across tabs.
 * Resolves true (fresh tokens), false (the session is over) or null (try later).
 */
export function refresh() {
  if (!refreshing) {
    const run = () => refreshOnce();
    const locked = navigator.locks ? navigator.locks.request(`oxc-refresh:${API}`, run) : run();
    refreshing = locked.finally(() => { refreshing = null; });
  }
  return refreshing;
}

async function refreshOnce() {
  const stored = readStored();
  if (!session && !stored) return false;
  // Another tab may have refreshed already: its tokens are as good as ours would be.
  if (stored && session && stored.refresh_token !== session.refresh_token && stored.expires > Date.now() + 15000) {
    session = stored;
    scheduleRefresh();
    return true;
  }
  const presented = (stored || session).refresh_token;
  const user = (stored || session).user;
  let response;
  try {
    response = await fetch(`${API}/auth/refresh`, {
      method: "POST",
      headers: {"Content-Type": "application/json", Accept: "application/json"},
      body: JSON.stringify({refresh_token: presented}),
      cache: "no-store",
    });
  } catch {
    return null;
  }
  if (response.ok) {
    const {data} = await response.json();
    adopt(data, user);
    return true;
  }
  if (response.status === 401) {
    const again = readStored();
    if (again && again.refresh_token !== presented) {
      session = again;
      scheduleRefresh();
      return true;
    }
    return false;
  }
  return null;
}

/** Take a session found in storage (at start, or written by another tab). */
export function resume(stored) {
  session = stored;
}

/** Forget the session here; answers its refresh token, so the server can be told too. */
export function forget() {
  const token = session?.refresh_token;
  session = null;
  saveSession();
  clearTimeout(refreshTimer);
  return token;
}
