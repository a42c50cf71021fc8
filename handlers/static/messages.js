// One message in the conversation: its bubble (author, time, text with
// mentions, quote, attachment, receipt) and its actions, and adding or
// redrawing it in place.

import {$, el, fileLabel, fullTime, shortTime, snippet} from "./dom.js";
import {conv, me, state} from "./state.js";
import {scroller, updateHistoryControls} from "./conversation.js";
import {deleteMessage, startEdit, startReply} from "./composer.js";
import {attachmentNode} from "./attachments.js";
import {renderReceipts} from "./receipts.js";

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

export function quoteText(id) {
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

export function refreshQuotes() {
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

export function messageNode(message) {
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
export function upsertMessage(message) {
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
