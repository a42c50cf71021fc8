// Real-time events: an EventSource opened with a one-minute ticket from
// POST /events/ticket and reopened with a fresh ticket whenever the stream
// ends, resuming after the last event seen; each event updates the page.

import {API, BODY} from "./config.js";
import {$, timeOf} from "./dom.js";
import {session} from "./session.js";
import {api} from "./api.js";
import {conv, me, state} from "./state.js";
import {loadChats, reloadChatsSoon, renderChatList} from "./chatlist.js";
import {closeChat, nearBottom, refreshConversation, scrollToBottom} from "./conversation.js";
import {upsertMessage} from "./messages.js";
import {advancePointer, loadMembers, markRead} from "./receipts.js";
import {setPresence, setTyping} from "./presence.js";

let source = null;
let lastEventId = null;
let failures = 0;
let reconnectTimer = null;
let connecting = false;

export function setConnection(text) {
  $("connection").textContent = text;
}

export function closeEvents() {
  clearTimeout(reconnectTimer);
  if (source) source.close();
  source = null;
  lastEventId = null;
  failures = 0;
  delete BODY.dataset.live;
}

export async function connectEvents() {
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

/** True while an EventSource is open or connecting (not while its ticket is being fetched). */
export function streaming() {
  return source !== null;
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
