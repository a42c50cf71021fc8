// The open conversation: its head (name, presence, typing), opening and
// closing it, catching up after a reconnect, and older history on scroll.
// How one message is drawn is in messages.js.

import {$, shortTime} from "./dom.js";
import {api} from "./api.js";
import {conv, resetConversation, state} from "./state.js";
import {chatName, isOnline, peerOf, reloadChatsSoon, renderChatList} from "./chatlist.js";
import {messageNode, refreshQuotes, upsertMessage} from "./messages.js";
import {cancelComposerMode, resizeComposer, stopTyping} from "./composer.js";
import {clearFile} from "./attachments.js";
import {loadMembers, markRead, renderReceipts} from "./receipts.js";
import {loadPresence, typingText} from "./presence.js";

const PAGE_SIZE = 50;

export const scroller = () => $("messages");

export function nearBottom() {
  const box = scroller();
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

export function scrollToBottom() {
  const box = scroller();
  box.scrollTop = box.scrollHeight;
  $("jump-latest").hidden = true;
}

export function renderConversationHead() {
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

export async function openChat(id, {focus = true} = {}) {
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
export function closeChat(message) {
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
export async function refreshConversation() {
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

export function updateHistoryControls() {
  $("load-older").hidden = !conv.before;
  $("history-start").hidden = Boolean(conv.before) || conv.order.length === 0;
}

export function maybeLoadOlder() {
  if (conv.before && conv.loaded && !conv.loadingOlder && scroller().scrollTop < 150) loadOlder();
}

export async function loadOlder() {
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
