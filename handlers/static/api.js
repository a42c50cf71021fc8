// Calls to the API: fetch() with the bearer token, JSON in and out, 0xC's
// error message surfaced as an ApiError. A 401 refreshes the tokens once and
// retries; when the session cannot be refreshed, the handler registered with
// whenSessionEnds (signing out, in auth.js) runs.

import {API} from "./config.js";
import {refresh, session} from "./session.js";

let sessionEnded = () => {};

/** What to do when the server no longer accepts the session (set once, at start). */
export function whenSessionEnds(callback) {
  sessionEnded = callback;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/**
 * Call the API; answers the parsed JSON (or the Response, with raw: true).
 * A 401 refreshes the tokens once and retries; a session that cannot be
 * refreshed ends here, and the login form says why.
 */
export async function api(path, {method = "GET", body, auth = true, raw = false} = {}, retried = false) {
  if (auth && session && Date.now() > session.expires - 10000 && !retried) {
    const fresh = await refresh();
    if (fresh === false) return sessionOver();
  }
  const headers = {Accept: "application/json"};
  if (auth && session) headers.Authorization = `Bearer ${session.access_token}`;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(API + path, {method, headers, body: payload, cache: "no-store"});
  } catch {
    throw new ApiError(0, "The server cannot be reached. Check your connection.");
  }
  if (response.status === 401 && auth && session && !retried) {
    const fresh = await refresh();
    if (fresh === true) return api(path, {method, body, auth, raw}, true);
    if (fresh === false) return sessionOver();
    throw new ApiError(0, "The server cannot be reached. Check your connection.");
  }
  if (raw && response.ok) return response;
  const type = response.headers.get("Content-Type") || "";
  const answer = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const message = answer && answer.message ? answer.message : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return answer;
}

function sessionOver() {
  sessionEnded("Your session has ended. Please log in again.");
  throw new ApiError(401, "Your session has ended.");
}
