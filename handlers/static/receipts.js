// Read receipts: telling the server what I have read, and showing under my
// newest message whether the others received and read it.

import {$} from "./dom.js";
import {api} from "./api.js";
import {conv, me, state} from "./state.js";
import {renderChatList} from "./chatlist.js";
import {renderConversationHead, scroller} from "./conversation.js";

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
export function markRead({force = false} = {}) {
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

export async function loadMembers(chatId, token) {
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

export function advancePointer(userId, kind, messageId, render = true) {
  const pointer = conv.pointers.get(userId) || {read: null, delivered: null};
  const kinds = kind === "read" ? ["read", "delivered"] : ["delivered"];
  for (const name of kinds) {
    if (position(messageId) >= position(pointer[name])) pointer[name] = messageId;
  }
  conv.pointers.set(userId, pointer);
  if (render) renderReceipts();
}

/** The receipt under my newest message: sent, delivered, read (by how many, in a group). */
export function renderReceipts() {
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
