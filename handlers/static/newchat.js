// The "New chat" dialog: a direct chat with one person (with username
// suggestions) or a group.

import {$, el} from "./dom.js";
import {api} from "./api.js";
import {me, state} from "./state.js";
import {renderChatList} from "./chatlist.js";
import {openChat} from "./conversation.js";

export function openNewChat() {
  $("new-chat-error").textContent = "";
  $("direct-form").reset();
  $("group-form").reset();
  $("new-chat-dialog").showModal();
  $("direct-username").focus();
}

export async function startChat(path, body, form) {
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

export function suggestPeople() {
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
