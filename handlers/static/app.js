// oxc web chat: one JavaScript module, no framework, no build step.
//
// The server renders what this script must know into data- attributes of
// <body> (handlers/web.py): the API prefix, the mount point, and whether
// registration and attachments are on. Every call goes to the API with
// fetch() and a bearer token; the session (access and refresh tokens) lives
// in localStorage, so a reload keeps it, and is refreshed at refresh_at (a
// new refresh token every time, which is stored at once). Live updates come
// over EventSource, opened with a one-minute ticket from POST /events/ticket
// and reopened with a fresh ticket whenever the stream ends.
//
// Sections: helpers, session, API calls, signing in, chat list, conversation,
// composer, attachments, receipts/typing/presence, real-time events, start.

const BODY = document.body;
const API = BODY.dataset.api || "/api";
const REGISTER = BODY.dataset.register !== "off";
const ATTACHMENTS = BODY.dataset.attachments === "on";
const STORE_KEY = `oxc.session:${API}`;
const PAGE_SIZE = 50;
const TYPING_EVERY = 4000;     // ms between "still typing" notices (the server forgets after 6 s)
const TYPING_IDLE = 5000;      // ms without a key press before "stopped typing"
const TYPING_SHOWN = 8000;     // ms a typing notice is shown without news (the server stops it at 6 s)

// =============================================================================
// Helpers
// =============================================================================

const $ = (id) => document.getElementById(id);

/** A new element: attributes (class, text, on<event> and plain ones) and children. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function sameDay(a, b) {
  return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
}

function shortTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return "";
  const time = when.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
  return sameDay(when, new Date()) ? time : `${when.toLocaleDateString([], {day: "numeric", month: "short"})} ${time}`;
}

function fullTime(iso) {
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? "" : when.toLocaleString();
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} kB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** A paper clip drawn in SVG (emoji fonts are not everywhere). */
function clipIcon() {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", "M16.5 6.5 8.6 14.4a2 2 0 0 0 2.8 2.8l8-8a4 4 0 0 0-5.7-5.7l-8 8a6 6 0 0 0 8.5 8.5l7.2-7.2");
  svg.append(path);
  return svg;
}

function fileLabel(attachment) {
  return `${attachment.kind === "image" ? "Photo" : "File"}: ${attachment.name}`;
}

function snippet(text, length = 80) {
  const flat = (text || "").replace(/\s+/g, " ").trim();
  return flat.length > length ? `${flat.slice(0, length - 1)}…` : flat;
}

function timeOf(iso) {
  const value = Date.parse(iso || "");
  return Number.isNaN(value) ? 0 : value;
}

// =============================================================================
// Session: tokens in localStorage, refreshed at refresh_at
// =============================================================================

let session = null;        // {access_token, refresh_token, user, refreshDue, expires} (times in local ms)
let refreshTimer = null;
let refreshing = null;

function readStored() {
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
function adopt(grant, user) {
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

function scheduleRefresh() {
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
function refresh() {
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

// =============================================================================
// API calls
// =============================================================================

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
async function api(path, {method = "GET", body, auth = true, raw = false} = {}, retried = false) {
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
  signOut("Your session has ended. Please log in again.");
  throw new ApiError(401, "Your session has ended.");
}

// =============================================================================
// Signing in and out
// =============================================================================

function showAuth(which = "login") {
  $("loading").hidden = true;
  $("app-view").hidden = true;
  $("auth-view").hidden = false;
  $("to-register-line").hidden = !REGISTER;
  const registering = which === "register" && REGISTER;
  $("login-form").hidden = registering;
  $("register-form").hidden = !registering;
  document.title = registering ? "Create an account – oxc chat" : "Log in – oxc chat";
  (registering ? $("register-username") : $("login-username")).focus();
}

async function logIn(username, password) {
  const {data} = await api("/auth/login", {method: "POST", body: {username, password}, auth: false});
  adopt(data, {id: data.user.id, username: data.user.username});
}

async function onLogin(event) {
  event.preventDefault();
  const form = event.currentTarget;
  $("login-error").textContent = "";
  if (!form.reportValidity()) return;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await logIn($("login-username").value.trim(), $("login-password").value);
    form.reset();
    enterApp();
  } catch (error) {
    $("login-error").textContent = error.message;
    $("login-password").focus();
  } finally {
    button.disabled = false;
  }
}

async function onRegister(event) {
  event.preventDefault();
  const form = event.currentTarget;
  $("register-error").textContent = "";
  if (!form.reportValidity()) return;
  const username = $("register-username").value.trim();
  const password = $("register-password").value;
  const email = $("register-email").value.trim();
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const body = {username, password};
    if (email) body.email = email;
    await api("/auth/register", {method: "POST", body, auth: false});
    try {
      await logIn(username, password);
    } catch (error) {
      // The account exists; logging in may need a verified e-mail address first.
      form.reset();
      showAuth("login");
      $("login-username").value = username;
      $("login-error").textContent = `Account created. ${error.message}`;
      return;
    }
    form.reset();
    enterApp();
  } catch (error) {
    $("register-error").textContent = error.message;
  } finally {
    button.disabled = false;
  }
}

/** End the session here (and, unless it already ended, on the server). */
function signOut(message) {
  const token = session?.refresh_token;
  session = null;
  saveSession();
  clearTimeout(refreshTimer);
  closeEvents();
  resetState();
  if (token && !message) {
    fetch(`${API}/auth/logout`, {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({refresh_token: token}), keepalive: true}).catch(() => {});
  }
  history.replaceState(null, "", location.pathname + location.search);
  showAuth("login");
  $("login-error").textContent = message || "";
}

// =============================================================================
// State
// =============================================================================

const state = {
  chats: new Map(),        // id -> chat summary as GET /chats gives it
  current: null,           // the open chat's id
  openToken: 0,            // bumps on every open, so late answers for another chat are dropped
  drafts: new Map(),       // chat id -> unsent text
  typing: new Map(),       // chat id -> Map(user id -> {username, timer})
  presence: new Map(),     // user id -> {online, lastSeen}
  replyTo: null,           // message being answered
  editing: null,           // my message being edited
  file: null,              // File to send with the next message
};

// The open conversation.
const conv = {
  order: [],               // message ids, oldest first
  byId: new Map(),
  before: null,            // cursor for older history, null at its start
  loaded: false,
  pending: [],             // events that came while the first page was loading
  loadingOlder: false,
  lastMarked: null,        // the last message id sent to /read
  members: [],
  pointers: new Map(),     // user id -> {read, delivered} message ids
};

const blobs = new Map();   // API path -> object URL of an image fetched with the token

function me() {
  return session?.user || {id: null, username: ""};
}

function resetState() {
  state.chats.clear();
  state.current = null;
  state.openToken += 1;
  state.drafts.clear();
  state.typing.forEach((users) => users.forEach((entry) => clearTimeout(entry.timer)));
  state.typing.clear();
  state.presence.clear();
  state.replyTo = state.editing = state.file = null;
  resetConversation();
  for (const url of blobs.values()) URL.revokeObjectURL(url);
  blobs.clear();
  $("chat-list").textContent = "";
  $("panes").classList.remove("in-chat");
  $("conversation").hidden = true;
  document.title = "oxc chat";
}

function resetConversation() {
  conv.order = [];
  conv.byId = new Map();
  conv.before = null;
  conv.loaded = false;
  conv.pending = [];
  conv.loadingOlder = false;
  conv.lastMarked = null;
  conv.members = [];
  conv.pointers = new Map();
  $("message-list").textContent = "";
  $("load-older").hidden = true;
  $("history-start").hidden = true;
  $("jump-latest").hidden = true;
}

// =============================================================================
// The chat list
// =============================================================================

function chatName(chat) {
  if (chat.type === "direct") return chat.peer?.username || "Direct chat";
  return chat.name || "Group";
}

function peerOf(chat) {
  return chat && chat.type === "direct" && chat.peer && chat.peer.id !== me().id ? chat.peer.id : null;
}

function activity(chat) {
  return timeOf(chat.last_message?.created_at || chat.created_at);
}

function previewOf(chat) {
  const message = chat.last_message;
  if (!message) return "No messages yet";
  const who = message.user_id === me().id ? "You: " : chat.type === "group" ? `${message.username}: ` : "";
  if (message.deleted) return `${who}message deleted`;
  if (message.encrypted) return `${who}encrypted message`;
  if (message.content) return who + snippet(message.content, 60);
  if (message.attachment) return `${who}${fileLabel(message.attachment)}`;
  return who;
}

function isOnline(userId) {
  return Boolean(userId && state.presence.get(userId)?.online);
}

function avatarOf(name, peerId) {
  const avatar = el("span", {class: "avatar", "aria-hidden": "true", text: (name || "?").slice(0, 1)});
  if (peerId) avatar.append(el("span", {class: `dot${isOnline(peerId) ? " online" : ""}`}));
  return avatar;
}

function renderChatList() {
  const list = $("chat-list");
  const focused = document.activeElement?.closest?.(".chat-item")?.dataset.id;
  const chats = [...state.chats.values()].sort((a, b) => activity(b) - activity(a));
  list.textContent = "";
  let unreadTotal = 0;
  for (const chat of chats) {
    const name = chatName(chat);
    const unread = chat.unread_count || 0;
    unreadTotal += unread;
    const peerId = peerOf(chat);
    const typing = typingText(chat.id);
    const preview = typing || previewOf(chat);
    const label = [name, peerId ? (isOnline(peerId) ? "online" : "offline") : null,
      unread ? `${unread} unread` : null, preview].filter(Boolean).join(", ");
    const button = el("button", {
      type: "button", class: `chat-item${unread ? " unread" : ""}`, "data-id": chat.id, "aria-label": label,
      "aria-current": chat.id === state.current ? "true" : null, onclick: () => openChat(chat.id),
    },
    avatarOf(name, peerId),
    el("span", {class: "chat-name", text: name}),
    el("span", {class: "chat-time", text: chat.last_message ? shortTime(chat.last_message.created_at) : ""}),
    el("span", {class: `chat-preview${typing ? " typing" : ""}`, text: preview}),
    unread ? el("span", {class: "badge", text: unread > 99 ? "99+" : String(unread)}) : el("span"));
    list.append(el("li", {}, button));
  }
  $("no-chats").hidden = chats.length > 0;
  if (focused) list.querySelector(`.chat-item[data-id="${CSS.escape(focused)}"]`)?.focus();
  document.title = unreadTotal ? `(${unreadTotal}) oxc chat` : "oxc chat";
}

async function loadChats() {
  const chats = [];
  let before = null;
  for (let page = 0; page < 5; page += 1) {
    const query = new URLSearchParams({limit: "200"});
    if (before) query.set("before", before);
    const answer = await api(`/chats?${query}`);
    chats.push(...answer.chats);
    before = answer.paging?.before;
    if (!before) break;
  }
  state.chats = new Map(chats.map((chat) => [chat.id, chat]));
  renderChatList();
  if (state.current && !state.chats.has(state.current)) closeChat("You are no longer in that chat.");
  else renderConversationHead();
}

let chatsReload = null;

function reloadChatsSoon() {
  clearTimeout(chatsReload);
  chatsReload = setTimeout(() => loadChats().catch(() => {}), 150);
}

// =============================================================================
// The conversation
// =============================================================================

const scroller = () => $("messages");

function nearBottom() {
  const box = scroller();
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

function scrollToBottom() {
  const box = scroller();
  box.scrollTop = box.scrollHeight;
  $("jump-latest").hidden = true;
}

function renderConversationHead() {
  const chat = state.chats.get(state.current);
  if (!chat) return;
  $("chat-title").textContent = chatName(chat);
  const peerId = peerOf(chat);
  const dot = $("chat-presence");
  dot.hidden = !peerId;
  if (peerId) {
    dot.className = `dot${isOnline(peerId) ? " online" : ""}`;
    dot.setAttribute("aria-label", isOnline(peerId) ? "online" : "offline");
  }
  const status = $("chat-status");
  const typing = typingText(chat.id);
  status.classList.toggle("typing", Boolean(typing));
  if (typing) status.textContent = typing;
  else if (peerId) {
    const seen = state.presence.get(peerId);
    status.textContent = isOnline(peerId) ? "online" : seen?.lastSeen ? `last seen ${shortTime(seen.lastSeen)}` : "";
  } else status.textContent = `${chat.member_count} members`;
}

async function openChat(id, {focus = true} = {}) {
  const chat = state.chats.get(id);
  if (!chat) return;
  if (state.current !== id) {
    if (state.current) state.drafts.set(state.current, $("composer-input").value);
    stopTyping();
    cancelComposerMode();
    clearFile();
    state.current = id;
    $("composer-input").value = state.drafts.get(id) || "";
    resizeComposer();
  }
  const token = ++state.openToken;
  resetConversation();
  $("composer-error").textContent = "";
  $("panes").classList.add("in-chat");
  $("conversation").hidden = false;
  history.replaceState(null, "", `#chat=${encodeURIComponent(id)}`);
  renderConversationHead();
  renderChatList();
  if (focus) $("composer-input").focus();
  try {
    const page = await api(`/chats/${encodeURIComponent(id)}/messages?limit=${PAGE_SIZE}`);
    if (token !== state.openToken) return;
    const list = $("message-list");
    for (const message of page.messages) {
      conv.byId.set(message.id, message);
      conv.order.push(message.id);
      list.append(messageNode(message));
    }
    conv.before = page.paging?.before || null;
    conv.loaded = true;
    for (const message of conv.pending.splice(0)) upsertMessage(message);
    updateHistoryControls();
    refreshQuotes();
    scrollToBottom();
    markRead();
    loadMembers(id, token);
    if (peerOf(chat)) loadPresence(peerOf(chat));
    requestAnimationFrame(maybeLoadOlder);
  } catch (error) {
    if (token !== state.openToken) return;
    if (error.status === 403 || error.status === 404) {
      closeChat("You are no longer in that chat.");
      reloadChatsSoon();
    } else {
      $("chat-status").textContent = error.message;
    }
  }
}

/** Show the chat list again (on a phone, the back button). */
function closeChat(message) {
  const previous = state.current;
  if (previous) state.drafts.set(previous, $("composer-input").value);
  stopTyping();
  state.current = null;
  state.openToken += 1;
  resetConversation();
  cancelComposerMode();
  clearFile();
  $("conversation").hidden = true;
  $("panes").classList.remove("in-chat");
  history.replaceState(null, "", location.pathname + location.search);
  renderChatList();
  if (message) $("connection").textContent = message;
  const item = previous && $("chat-list").querySelector(`.chat-item[data-id="${CSS.escape(previous)}"]`);
  (item || $("new-chat")).focus();
}

/** Fetch the newest page again after a reconnect and merge it (or start over if there is a gap). */
async function refreshConversation() {
  const id = state.current;
  if (!id || !conv.loaded) return;
  const token = state.openToken;
  const page = await api(`/chats/${encodeURIComponent(id)}/messages?limit=${PAGE_SIZE}`);
  if (token !== state.openToken) return;
  const overlaps = page.messages.length === 0 || conv.byId.has(page.messages[0].id) || !page.paging?.before;
  if (!overlaps) {
    openChat(id, {focus: false});
    return;
  }
  const stick = nearBottom();
  for (const message of page.messages) upsertMessage(message);
  if (stick) scrollToBottom();
  markRead();
}

function updateHistoryControls() {
  $("load-older").hidden = !conv.before;
  $("history-start").hidden = Boolean(conv.before) || conv.order.length === 0;
}

function maybeLoadOlder() {
  if (conv.before && conv.loaded && !conv.loadingOlder && scroller().scrollTop < 150) loadOlder();
}

async function loadOlder() {
  if (!conv.before || conv.loadingOlder || !conv.loaded) return;
  conv.loadingOlder = true;
  const id = state.current;
  const token = state.openToken;
  const box = scroller();
  box.setAttribute("aria-busy", "true");
  try {
    const query = new URLSearchParams({limit: String(PAGE_SIZE), before: conv.before});
    const page = await api(`/chats/${encodeURIComponent(id)}/messages?${query}`);
    if (token !== state.openToken) return;
    const fromBottom = box.scrollHeight - box.scrollTop;
    const fresh = page.messages.filter((message) => !conv.byId.has(message.id));
    const fragment = document.createDocumentFragment();
    for (const message of fresh) {
      conv.byId.set(message.id, message);
      fragment.append(messageNode(message));
    }
    $("message-list").prepend(fragment);
    conv.order = fresh.map((message) => message.id).concat(conv.order);
    conv.before = page.paging?.before || null;
    box.scrollTop = box.scrollHeight - fromBottom;
    updateHistoryControls();
    refreshQuotes();
    renderReceipts();
  } catch (error) {
    $("chat-status").textContent = error.message;
  } finally {
    conv.loadingOlder = false;
    box.removeAttribute("aria-busy");
  }
  if (token === state.openToken) requestAnimationFrame(maybeLoadOlder);
}

// -- one message ---------------------------------------------------------------

function textNode(content, mentions) {
  const names = new Set((mentions || []).map((mention) => mention.username));
  const paragraph = el("p", {class: "text"});
  let last = 0;
  for (const match of content.matchAll(/@([A-Za-z0-9_-]{3,32})/g)) {
    if (!names.has(match[1])) continue;
    paragraph.append(content.slice(last, match.index), el("span", {class: "mention", text: match[0]}));
    last = match.index + match[0].length;
  }
  paragraph.append(content.slice(last));
  return paragraph;
}

function quoteText(id) {
  const target = conv.byId.get(id);
  if (!target) return "Reply to an earlier message";
  const who = target.user_id === me().id ? "You" : target.username;
  if (target.deleted) return `${who}: message deleted`;
  return `${who}: ${snippet(target.content || (target.attachment ? fileLabel(target.attachment) : ""), 70)}`;
}

function quoteNode(id) {
  return el("button", {type: "button", class: "quote", "data-quote": id, text: quoteText(id),
    "aria-label": `In reply to ${quoteText(id)}. Show it.`, onclick: () => showMessage(id)});
}

function refreshQuotes() {
  for (const quote of $("message-list").querySelectorAll(".quote")) {
    quote.textContent = quoteText(quote.dataset.quote);
    quote.setAttribute("aria-label", `In reply to ${quote.textContent}. Show it.`);
  }
}

function showMessage(id) {
  const node = document.getElementById(`m-${id}`);
  if (!node) return;
  node.scrollIntoView({block: "center"});
  node.classList.add("highlight");
  setTimeout(() => node.classList.remove("highlight"), 1500);
  node.querySelector("button")?.focus({preventScroll: true});
}

function mayModerate() {
  const role = state.chats.get(state.current)?.role;
  return role === "admin" || role === "owner";
}

function messageNode(message) {
  const mine = message.user_id === me().id;
  const item = el("li", {class: `message${mine ? " mine" : ""}`, id: `m-${message.id}`, "data-id": message.id});
  // tabindex -1: a tap (or click) focuses the bubble, which shows its actions on touch screens.
  const bubble = el("div", {class: "bubble", tabindex: "-1"});
  if (message.reply_to_id) bubble.append(quoteNode(message.reply_to_id));
  bubble.append(el("p", {class: "meta"},
    el("span", {class: "author", text: mine ? "You" : message.username}),
    el("time", {datetime: message.created_at, title: fullTime(message.created_at), text: shortTime(message.created_at)}),
    message.edited_at && !message.deleted ? el("span", {class: "edited", text: "edited"}) : null));
  if (message.deleted) {
    bubble.append(el("p", {class: "text deleted", text: "This message was deleted."}));
  } else if (message.encrypted) {
    bubble.append(el("p", {class: "text encrypted",
      text: "An encrypted message: open it in an app that holds your keys."}));
  } else {
    if (message.content) bubble.append(textNode(message.content, message.mentions));
    if (message.attachment) bubble.append(attachmentNode(message.attachment));
  }
  if (mine && !message.deleted) bubble.append(el("p", {class: "receipt"}));
  item.append(bubble);
  if (!message.deleted) {
    const who = mine ? "your message" : `${message.username}’s message`;
    const actions = el("div", {class: "actions"},
      el("button", {type: "button", "data-action": "reply", "aria-label": `Reply to ${who}`, text: "Reply",
        onclick: () => startReply(message.id)}));
    if (mine && message.content && !message.encrypted) {
      actions.append(el("button", {type: "button", "data-action": "edit", "aria-label": "Edit your message",
        text: "Edit", onclick: () => startEdit(message.id)}));
    }
    if (mine || mayModerate()) {
      actions.append(el("button", {type: "button", "data-action": "delete", "aria-label": `Delete ${who}`,
        text: "Delete", onclick: () => deleteMessage(message.id)}));
    }
    item.append(actions);
  }
  return item;
}

/** Add a message at the end, or redraw it where it is; keeps focus on the same action. */
function upsertMessage(message) {
  if (message.chat_id && message.chat_id !== state.current) return;
  if (!conv.loaded) {
    conv.pending.push(message);
    return;
  }
  const old = document.getElementById(`m-${message.id}`);
  conv.byId.set(message.id, message);
  const node = messageNode(message);
  if (old) {
    const action = document.activeElement?.closest?.(".message") === old ? document.activeElement.dataset.action : null;
    old.replaceWith(node);
    if (action) (node.querySelector(`[data-action="${action}"]`) || node.querySelector("button") || scroller()).focus();
  } else {
    conv.order.push(message.id);
    $("message-list").append(node);
  }
  updateHistoryControls();
  refreshQuotes();
  renderReceipts();
}

// =============================================================================
// The composer: send, reply, edit, delete
// =============================================================================

function resizeComposer() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, 160)}px`;
}

function setComposerContext(text) {
  $("composer-context").hidden = !text;
  $("composer-context-text").textContent = text || "";
}

function cancelComposerMode() {
  const wasEditing = Boolean(state.editing);
  state.replyTo = null;
  state.editing = null;
  setComposerContext(null);
  $("send").textContent = "Send";
  if (wasEditing) {
    $("composer-input").value = "";
    resizeComposer();
  }
}

function startReply(id) {
  const message = conv.byId.get(id);
  if (!message) return;
  if (state.editing) cancelComposerMode();
  state.replyTo = message;
  setComposerContext(`Replying to ${quoteText(id)}`);
  $("composer-input").focus();
}

function startEdit(id) {
  const message = conv.byId.get(id);
  if (!message || message.user_id !== me().id || !message.content) return;
  state.replyTo = null;
  state.editing = message;
  setComposerContext("Editing your message");
  $("send").textContent = "Save";
  const input = $("composer-input");
  input.value = message.content;
  resizeComposer();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

async function deleteMessage(id) {
  const chatId = state.current;
  const message = conv.byId.get(id);
  if (!message) return;
  const yes = await confirmAction(message.user_id === me().id ? "Delete your message for everyone?" :
    `Delete ${message.username}’s message for everyone?`);
  if (!yes) return;
  try {
    await api(`/chats/${encodeURIComponent(chatId)}/messages/${encodeURIComponent(id)}`, {method: "DELETE"});
    if (state.current === chatId && conv.byId.has(id)) {
      upsertMessage({...conv.byId.get(id), deleted: true, content: null, attachment: null, mentions: []});
    }
    if (state.editing?.id === id) cancelComposerMode();
    scroller().focus();
  } catch (error) {
    $("composer-error").textContent = error.message;
  }
}

async function onSubmitComposer(event) {
  event.preventDefault();
  const chatId = state.current;
  if (!chatId) return;
  const input = $("composer-input");
  const text = input.value.trim();
  $("composer-error").textContent = "";
  const send = $("send");
  if (state.editing) {
    if (!text) return;
    const editing = state.editing;
    send.disabled = true;
    try {
      const {data} = await api(`/chats/${encodeURIComponent(chatId)}/messages/${encodeURIComponent(editing.id)}`,
        {method: "PATCH", body: {content: text}});
      upsertMessage(data);
      cancelComposerMode();
    } catch (error) {
      $("composer-error").textContent = error.message;
    } finally {
      send.disabled = false;
    }
    return;
  }
  const file = state.file;
  if (!text && !file) return;
  const replyTo = state.replyTo;
  send.disabled = true;
  input.value = "";
  resizeComposer();
  stopTyping();
  try {
    const body = {};
    if (text) body.content = text;
    if (replyTo) body.reply_to_id = replyTo.id;
    if (file) body.attachment_id = await uploadAttachment(chatId, file);
    const {data} = await api(`/chats/${encodeURIComponent(chatId)}/messages`, {method: "POST", body});
    state.drafts.delete(chatId);
    if (state.current === chatId) {
      cancelComposerMode();
      clearFile();
      upsertMessage(data);
      scrollToBottom();
      markRead({force: true});
    }
  } catch (error) {
    if (state.current === chatId && !input.value) {
      input.value = text;
      resizeComposer();
    }
    $("composer-error").textContent = error.message;
  } finally {
    send.disabled = false;
    if (state.current === chatId) input.focus();
  }
}

function onComposerKey(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  } else if (event.key === "Escape" && (state.replyTo || state.editing)) {
    event.preventDefault();
    cancelComposerMode();
  } else if (event.key === "ArrowUp" && !event.currentTarget.value && !state.editing) {
    const mine = [...conv.order].reverse().map((id) => conv.byId.get(id))
      .find((message) => message.user_id === me().id && message.content && !message.deleted && !message.encrypted);
    if (mine) {
      event.preventDefault();
      startEdit(mine.id);
    }
  }
}

function confirmAction(text, okLabel = "Delete") {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true});
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

// -- new chats -------------------------------------------------------------------

function openNewChat() {
  $("new-chat-error").textContent = "";
  $("direct-form").reset();
  $("group-form").reset();
  $("new-chat-dialog").showModal();
  $("direct-username").focus();
}

async function startChat(path, body, form) {
  $("new-chat-error").textContent = "";
  if (!form.reportValidity()) return;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const {data} = await api(path, {method: "POST", body});
    state.chats.set(data.id, data);
    $("new-chat-dialog").close();
    renderChatList();
    openChat(data.id);
  } catch (error) {
    $("new-chat-error").textContent = error.message;
  } finally {
    button.disabled = false;
  }
}

let peopleLookup = null;

function suggestPeople() {
  clearTimeout(peopleLookup);
  const prefix = $("direct-username").value.trim();
  if (!prefix) return;
  peopleLookup = setTimeout(async () => {
    try {
      const answer = await api(`/users?${new URLSearchParams({q: prefix, limit: "8"})}`);
      const options = answer.users.filter((user) => user.id !== me().id).map((user) => el("option", {value: user.username}));
      $("people").replaceChildren(...options);
    } catch {
      // Suggestions are a convenience; typing the whole name still works.
    }
  }, 200);
}

// =============================================================================
// Attachments (POST /chats/{id}/attachments, GET /attachments/{id}/thumbnail):
// everything about files is here, and is switched off when the server has no
// attachment routes (data-attachments="off").
// =============================================================================

function setupAttachments() {
  $("attach-slot").hidden = !ATTACHMENTS;
  if (!ATTACHMENTS) return;
  $("attach-input").addEventListener("change", (event) => {
    const file = event.currentTarget.files[0];
    if (!file) return;
    state.file = file;
    $("attachment-name").replaceChildren(clipIcon(), ` ${file.name} (${formatSize(file.size)})`);
    $("attachment-preview").hidden = false;
    $("composer-input").focus();
  });
  $("attachment-clear").addEventListener("click", () => {
    clearFile();
    $("composer-input").focus();
  });
}

function clearFile() {
  state.file = null;
  $("attach-input").value = "";
  $("attachment-preview").hidden = true;
}

/** Upload a file into a chat without sending it; answers its id for the message that carries it. */
async function uploadAttachment(chatId, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const {data} = await api(`/chats/${encodeURIComponent(chatId)}/attachments`, {method: "POST", body: form});
  return data.id;
}

async function objectUrl(path) {
  if (!blobs.has(path)) {
    const response = await api(path, {raw: true});
    blobs.set(path, URL.createObjectURL(await response.blob()));
  }
  return blobs.get(path);
}

async function openAttachment(attachment) {
  try {
    const url = await objectUrl(`/attachments/${encodeURIComponent(attachment.id)}/content`);
    const link = el("a", {href: url});
    if (attachment.kind === "image") {
      link.target = "_blank";
      link.rel = "noopener";
    } else {
      link.download = attachment.name;
    }
    link.click();
  } catch (error) {
    $("composer-error").textContent = error.message;
  }
}

function attachmentNode(attachment) {
  const box = el("div", {class: "attachment"});
  const thumbnail = attachment.thumbnail || {};
  if (attachment.kind === "image" && thumbnail.status === "ready") {
    const image = el("img", {alt: attachment.name, width: thumbnail.width, height: thumbnail.height});
    box.append(el("button", {type: "button", "aria-label": `Open the image ${attachment.name}`,
      onclick: () => openAttachment(attachment)}, image));
    objectUrl(`/attachments/${encodeURIComponent(attachment.id)}/thumbnail`)
      .then((url) => { image.src = url; })
      .catch(() => { image.alt = `${attachment.name} (the preview cannot be shown)`; });
  } else {
    box.append(el("button", {type: "button", class: "file", "aria-label": `Download ${attachment.name}`,
      onclick: () => openAttachment(attachment)},
    clipIcon(),
    el("span", {text: `${attachment.name} (${formatSize(attachment.size)})`})));
  }
  return box;
}

// =============================================================================
// Read receipts, typing and presence
// =============================================================================

let readTimer = null;
let readForced = false;

function newestInView() {
  const newest = $("message-list").lastElementChild;
  if (!newest) return false;
  return newest.getBoundingClientRect().top < scroller().getBoundingClientRect().bottom - 8;
}

/**
 * Tell the server the newest message is read: when it is in view on a visible
 * page, or (``force``) because I just sent it; the server counts my own
 * messages as unread until my read pointer passes them.
 */
function markRead({force = false} = {}) {
  clearTimeout(readTimer);
  readForced = readForced || force;
  readTimer = setTimeout(async () => {
    const chatId = state.current;
    const forced = readForced;
    readForced = false;
    if (!chatId || !conv.loaded) return;
    if (!forced && (document.visibilityState !== "visible" || !newestInView())) return;
    const last = conv.order[conv.order.length - 1];
    const chat = state.chats.get(chatId);
    if (!last || (last === conv.lastMarked && !chat?.unread_count)) return;
    conv.lastMarked = last;
    try {
      const {data} = await api(`/chats/${encodeURIComponent(chatId)}/read`, {method: "POST", body: {message_id: last}});
      if (chat) {
        chat.unread_count = data.unread_count;
        renderChatList();
      }
    } catch {
      conv.lastMarked = null;
    }
  }, 200);
}

async function loadMembers(chatId, token) {
  try {
    const {data} = await api(`/chats/${encodeURIComponent(chatId)}`);
    if (token !== state.openToken) return;
    conv.members = data.members || [];
    const chat = state.chats.get(chatId);
    if (chat) Object.assign(chat, {member_count: data.member_count, name: data.name, role: data.role});
    renderConversationHead();
    const lastMine = [...conv.order].reverse().find((id) => {
      const message = conv.byId.get(id);
      return message.user_id === me().id && !message.deleted;
    });
    if (!lastMine) return;
    const receipts = await api(`/chats/${encodeURIComponent(chatId)}/messages/${encodeURIComponent(lastMine)}/receipts`);
    if (token !== state.openToken) return;
    for (const receipt of receipts.data.receipts) {
      if (receipt.read) advancePointer(receipt.user_id, "read", lastMine, false);
      else if (receipt.delivered) advancePointer(receipt.user_id, "delivered", lastMine, false);
    }
    renderReceipts();
  } catch {
    // Receipts and member names are extras; the conversation works without them.
  }
}

function position(id) {
  return id ? conv.order.indexOf(id) : -1;
}

function advancePointer(userId, kind, messageId, render = true) {
  const pointer = conv.pointers.get(userId) || {read: null, delivered: null};
  const kinds = kind === "read" ? ["read", "delivered"] : ["delivered"];
  for (const name of kinds) {
    if (position(messageId) >= position(pointer[name])) pointer[name] = messageId;
  }
  conv.pointers.set(userId, pointer);
  if (render) renderReceipts();
}

/** The receipt under my newest message: sent, delivered, read (by how many, in a group). */
function renderReceipts() {
  const list = $("message-list");
  for (const old of list.querySelectorAll(".receipt:not([hidden])")) old.hidden = true;
  const others = conv.members.map((member) => member.user_id).filter((id) => id !== me().id);
  const lastMine = [...conv.order].reverse().find((id) => {
    const message = conv.byId.get(id);
    return message.user_id === me().id && !message.deleted;
  });
  if (!lastMine) return;
  const receipt = document.getElementById(`m-${lastMine}`)?.querySelector(".receipt");
  if (!receipt) return;
  const at = position(lastMine);
  const readers = others.filter((id) => position(conv.pointers.get(id)?.read) >= at).length;
  const reached = others.filter((id) => position(conv.pointers.get(id)?.delivered) >= at).length;
  let text = "✓ Sent";
  if (others.length && readers === others.length) text = others.length > 1 ? "✓✓ Read by everyone" : "✓✓ Read";
  else if (readers > 0) text = `✓✓ Read by ${readers} of ${others.length}`;
  else if (others.length && reached === others.length) text = "✓✓ Delivered";
  receipt.textContent = text;
  receipt.classList.toggle("read", others.length > 0 && readers === others.length);
  receipt.hidden = false;
}

function typingText(chatId) {
  const users = state.typing.get(chatId);
  if (!users || users.size === 0) return "";
  const names = [...users.values()].map((entry) => entry.username);
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

function setTyping(chatId, userId, username, active) {
  if (userId === me().id) return;
  let users = state.typing.get(chatId);
  const existing = users?.get(userId);
  if (existing) clearTimeout(existing.timer);
  if (active) {
    if (!users) state.typing.set(chatId, users = new Map());
    users.set(userId, {username, timer: setTimeout(() => setTyping(chatId, userId, username, false), TYPING_SHOWN)});
  } else if (users) {
    users.delete(userId);
    if (users.size === 0) state.typing.delete(chatId);
  }
  if (!existing && !active) return;
  renderChatList();
  if (chatId === state.current) renderConversationHead();
}

let typingSentAt = 0;
let typingChat = null;
let typingIdle = null;

function onComposerInput() {
  resizeComposer();
  const chatId = state.current;
  if (!chatId || state.editing) return;
  if (!$("composer-input").value.trim()) {
    stopTyping();
    return;
  }
  const now = Date.now();
  if (typingChat !== chatId || now - typingSentAt > TYPING_EVERY) {
    typingSentAt = now;
    typingChat = chatId;
    api(`/chats/${encodeURIComponent(chatId)}/typing`, {method: "POST", body: {typing: true}}).catch(() => {});
  }
  clearTimeout(typingIdle);
  typingIdle = setTimeout(stopTyping, TYPING_IDLE);
}

function stopTyping() {
  clearTimeout(typingIdle);
  if (typingChat && session) {
    api(`/chats/${encodeURIComponent(typingChat)}/typing`, {method: "POST", body: {typing: false}}).catch(() => {});
  }
  typingChat = null;
  typingSentAt = 0;
}

async function loadPresence(userId) {
  try {
    const {data} = await api(`/users/${encodeURIComponent(userId)}`);
    const known = state.presence.get(userId) || {online: false, lastSeen: null};
    if (!known.lastSeen) known.lastSeen = data.last_seen;
    state.presence.set(userId, known);
    renderConversationHead();
  } catch {
    // Presence is an extra.
  }
}

function setPresence(userId, online, lastSeen) {
  const known = state.presence.get(userId) || {online: false, lastSeen: null};
  known.online = online;
  if (lastSeen) known.lastSeen = lastSeen;
  state.presence.set(userId, known);
  renderChatList();
  renderConversationHead();
}

// =============================================================================
// Real-time events: EventSource with a stream ticket
// =============================================================================

let source = null;
let lastEventId = null;
let failures = 0;
let reconnectTimer = null;
let connecting = false;

function setConnection(text) {
  $("connection").textContent = text;
}

function closeEvents() {
  clearTimeout(reconnectTimer);
  if (source) source.close();
  source = null;
  lastEventId = null;
  failures = 0;
  delete BODY.dataset.live;
}

async function connectEvents() {
  if (!session || connecting) return;
  clearTimeout(reconnectTimer);
  if (source) source.close();
  source = null;
  connecting = true;
  let ticket;
  try {
    ticket = (await api("/events/ticket", {method: "POST"})).data.ticket;
  } catch (error) {
    connecting = false;
    if (session && error.status !== 401) reconnectLater();
    return;
  }
  connecting = false;
  if (!session) return;
  const query = new URLSearchParams({ticket});
  if (lastEventId) query.set("since", lastEventId);
  const stream = new EventSource(`${API}/events/stream?${query}`);
  source = stream;
  stream.onopen = () => {
    if (source !== stream) return;
    const resync = failures > 0 || !BODY.dataset.live;
    failures = 0;
    BODY.dataset.live = "on";
    setConnection("");
    if (resync) {
      loadChats().then(refreshConversation).catch(() => {});
    }
  };
  stream.onmessage = (message) => {
    if (source !== stream) return;
    if (message.lastEventId) lastEventId = message.lastEventId;
    try {
      handleEvent(JSON.parse(message.data));
    } catch (error) {
      console.error("oxc: could not handle an event", error);
    }
  };
  stream.onerror = () => {
    if (source !== stream) return;
    // The stream ends when its access token expires, or the server went away:
    // reopen with a fresh ticket, resuming after the last event seen.
    stream.close();
    source = null;
    failures += 1;
    delete BODY.dataset.live;
    // A cursor the server no longer knows (a restart, or too old) fails every time: start afresh.
    if (failures >= 3) lastEventId = null;
    if (failures > 1) setConnection("Reconnecting…");
    reconnectLater();
  };
}

function reconnectLater() {
  clearTimeout(reconnectTimer);
  const delay = Math.min(30000, 500 * 2 ** Math.min(failures, 6));
  reconnectTimer = setTimeout(connectEvents, delay);
}

function handleEvent(event) {
  const data = event.data || {};
  switch (event.type) {
    case "chat.message.created":
      onMessageCreated(data);
      break;
    case "chat.message.edited":
    case "chat.message.deleted":
      onMessageChanged(data);
      break;
    case "chat.created":
    case "chat.updated":
    case "member.added":
    case "member.role_changed":
      reloadChatsSoon();
      if (data.chat_id === state.current || data.id === state.current) loadMembers(state.current, state.openToken);
      break;
    case "member.removed":
      if (data.user_id === me().id && data.chat_id === state.current) closeChat("You are no longer in that chat.");
      reloadChatsSoon();
      if (data.chat_id === state.current) loadMembers(state.current, state.openToken);
      break;
    case "chat.deleted":
      if (data.chat_id === state.current) closeChat("That chat was deleted.");
      state.chats.delete(data.chat_id);
      renderChatList();
      break;
    case "message.read":
    case "message.delivered":
      onPointer(event.type === "message.read" ? "read" : "delivered", data);
      break;
    case "typing.started":
    case "typing.stopped":
      setTyping(data.chat_id, data.user_id, data.username, event.type === "typing.started");
      break;
    case "presence.online":
      setPresence(data.user_id, true, null);
      break;
    case "presence.offline":
      setPresence(data.user_id, false, data.last_seen);
      break;
    default:
      break; // 0xC's public messages and notifications have no place on this page
  }
}

function onMessageCreated(message) {
  const chat = state.chats.get(message.chat_id);
  setTyping(message.chat_id, message.user_id, message.username, false);
  if (!chat) {
    reloadChatsSoon();
    return;
  }
  const mine = message.user_id === me().id;
  const known = conv.byId.has(message.id);
  if (timeOf(message.created_at) >= timeOf(chat.last_message?.created_at)) chat.last_message = message;
  if (!mine && !known) chat.unread_count = (chat.unread_count || 0) + 1;
  if (message.chat_id === state.current) {
    const stick = nearBottom();
    upsertMessage(message);
    if (stick || mine) scrollToBottom();
    else if (!known) $("jump-latest").hidden = false;
    markRead({force: mine});
  }
  renderChatList();
}

function onMessageChanged(message) {
  const chat = state.chats.get(message.chat_id);
  if (chat && chat.last_message?.id === message.id) {
    chat.last_message = message;
    renderChatList();
  }
  if (message.chat_id === state.current && conv.byId.has(message.id)) upsertMessage(message);
}

function onPointer(kind, data) {
  if (data.user_id === me().id) {
    // My other tab or device read this chat.
    const chat = state.chats.get(data.chat_id);
    if (kind === "read" && chat && chat.unread_count) {
      if (chat.last_message?.id === data.message_id) chat.unread_count = 0;
      else reloadChatsSoon();
      renderChatList();
    }
    return;
  }
  if (data.chat_id === state.current) advancePointer(data.user_id, kind, data.message_id);
}

// =============================================================================
// Start
// =============================================================================

function enterApp() {
  $("loading").hidden = true;
  $("auth-view").hidden = true;
  $("app-view").hidden = false;
  $("me-name").textContent = me().username;
  setConnection("");
  scheduleRefresh();
  connectEvents();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("chat");
  loadChats().then(() => {
    if (wanted && state.chats.has(wanted)) openChat(wanted, {focus: false});
    else if (!document.activeElement || document.activeElement === document.body) $("new-chat").focus();
  }).catch((error) => setConnection(error.message));
}

function wire() {
  $("login-form").addEventListener("submit", onLogin);
  $("register-form").addEventListener("submit", onRegister);
  $("to-register").addEventListener("click", () => showAuth("register"));
  $("to-login").addEventListener("click", () => showAuth("login"));
  $("logout").addEventListener("click", () => signOut());
  $("new-chat").addEventListener("click", openNewChat);
  $("direct-form").addEventListener("submit", (event) => {
    event.preventDefault();
    startChat("/chats/direct", {username: $("direct-username").value.trim()}, event.currentTarget);
  });
  $("direct-username").addEventListener("input", suggestPeople);
  $("group-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const members = $("group-members").value.split(",").map((name) => name.trim()).filter(Boolean);
    startChat("/chats/group", {name: $("group-name").value.trim(), members}, event.currentTarget);
  });
  $("back").addEventListener("click", () => closeChat());
  $("composer").addEventListener("submit", onSubmitComposer);
  $("composer-input").addEventListener("keydown", onComposerKey);
  $("composer-input").addEventListener("input", onComposerInput);
  $("composer-cancel").addEventListener("click", () => {
    cancelComposerMode();
    $("composer-input").focus();
  });
  $("load-older").addEventListener("click", loadOlder);
  $("jump-latest").addEventListener("click", () => {
    scrollToBottom();
    markRead();
    $("composer-input").focus();
  });
  let scrolling = false;
  scroller().addEventListener("scroll", () => {
    if (scrolling) return;
    scrolling = true;
    requestAnimationFrame(() => {
      scrolling = false;
      maybeLoadOlder();
      if (nearBottom()) {
        $("jump-latest").hidden = true;
        markRead();
      }
    });
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible" || !session) return;
    markRead();
    if (Date.now() >= session.refreshDue) refresh();
    if (!source) connectEvents();
  });
  window.addEventListener("online", () => { if (session && !source) connectEvents(); });
  window.addEventListener("storage", (event) => {
    if (event.key !== STORE_KEY) return;
    const stored = readStored();
    if (!stored && session) signOut("You logged out in another tab.");
    else if (stored && !session) {
      session = stored;
      enterApp();
    } else if (stored) {
      session = stored;
      scheduleRefresh();
    }
  });
  setupAttachments();
}

function start() {
  wire();
  session = readStored();
  if (!session) {
    showAuth("login");
    return;
  }
  enterApp();
}

start();
