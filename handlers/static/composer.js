// The composer: send, reply, edit, delete (with its confirmation), the
// keyboard, and telling the others that I am typing.

import {$} from "./dom.js";
import {session} from "./session.js";
import {api} from "./api.js";
import {conv, me, state} from "./state.js";
import {scroller, scrollToBottom} from "./conversation.js";
import {quoteText, upsertMessage} from "./messages.js";
import {clearFile, uploadAttachment} from "./attachments.js";
import {markRead} from "./receipts.js";

const TYPING_EVERY = 4000;     // ms between "still typing" notices (the server forgets after 6 s)
const TYPING_IDLE = 5000;      // ms without a key press before "stopped typing"

export function resizeComposer() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, 160)}px`;
}

function setComposerContext(text) {
  $("composer-context").hidden = !text;
  $("composer-context-text").textContent = text || "";
}

export function cancelComposerMode() {
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

export function startReply(id) {
  const message = conv.byId.get(id);
  if (!message) return;
  if (state.editing) cancelComposerMode();
  state.replyTo = message;
  setComposerContext(`Replying to ${quoteText(id)}`);
  $("composer-input").focus();
}

export function startEdit(id) {
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

export async function deleteMessage(id) {
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

export async function onSubmitComposer(event) {
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

export function onComposerKey(event) {
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

let typingSentAt = 0;
let typingChat = null;
let typingIdle = null;

export function onComposerInput() {
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

export function stopTyping() {
  clearTimeout(typingIdle);
  if (typingChat && session) {
    api(`/chats/${encodeURIComponent(typingChat)}/typing`, {method: "POST", body: {typing: false}}).catch(() => {});
  }
  typingChat = null;
  typingSentAt = 0;
}
