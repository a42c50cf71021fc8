// Who is typing and who is online, as the event stream (and GET /users/{id}) tells it.

import {api} from "./api.js";
import {me, state} from "./state.js";
import {renderChatList} from "./chatlist.js";
import {renderConversationHead} from "./conversation.js";

const TYPING_SHOWN = 8000;     // ms a typing notice is shown without news (the server stops it at 6 s)

export function typingText(chatId) {
  const users = state.typing.get(chatId);
  if (!users || users.size === 0) return "";
  const names = [...users.values()].map((entry) => entry.username);
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

export function setTyping(chatId, userId, username, active) {
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

export async function loadPresence(userId) {
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

export function setPresence(userId, online, lastSeen) {
  const known = state.presence.get(userId) || {online: false, lastSeen: null};
  known.online = online;
  if (lastSeen) known.lastSeen = lastSeen;
  state.presence.set(userId, known);
  renderChatList();
  renderConversationHead();
}
