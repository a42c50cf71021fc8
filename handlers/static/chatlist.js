// The chat list in the sidebar: names, previews, unread badges, presence
// dots, and loading it from GET /chats.

import {$, el, fileLabel, shortTime, snippet, timeOf} from "./dom.js";
import {api} from "./api.js";
import {me, state} from "./state.js";
import {closeChat, openChat, renderConversationHead} from "./conversation.js";
import {typingText} from "./presence.js";

export function chatName(chat) {
  if (chat.type === "direct") return chat.peer?.username || "Direct chat";
  return chat.name || "Group";
}

export function peerOf(chat) {
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

export function isOnline(userId) {
  return Boolean(userId && state.presence.get(userId)?.online);
}

function avatarOf(name, peerId) {
  const avatar = el("span", {class: "avatar", "aria-hidden": "true", text: (name || "?").slice(0, 1)});
  if (peerId) avatar.append(el("span", {class: `dot${isOnline(peerId) ? " online" : ""}`}));
  return avatar;
}

export function renderChatList() {
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

export async function loadChats() {
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

export function reloadChatsSoon() {
  clearTimeout(chatsReload);
  chatsReload = setTimeout(() => loadChats().catch(() => {}), 150);
}
