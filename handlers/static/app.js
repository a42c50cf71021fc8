// oxc web chat: ES modules the browser loads natively, no framework, no build step.
//
// The server renders what the page must know into data- attributes of <body>
// (config.js). Every call goes to the API with fetch() and a bearer token
// (api.js); the session lives in localStorage and is refreshed at refresh_at
// (session.js). Live updates come over EventSource (events.js).
//
// This module is the entry point: it wires the page's controls to the
// modules that handle them and starts. The others, by what they do:
//   dom.js           element and formatting helpers
//   state.js         what the page holds in memory
//   auth.js          the sign-in forms, signing in and out
//   chatlist.js      the chat list
//   newchat.js       the "New chat" dialog
//   conversation.js  the open conversation and its history
//   messages.js      one message and its actions
//   composer.js      writing, replying, editing, deleting, typing notices
//   attachments.js   files
//   receipts.js      read receipts
//   presence.js      typing and online status of the others
//   events.js        the event stream
//
// The view modules import one another (the chat list opens a conversation, a
// conversation redraws the list). Such cycles are safe here because no module
// calls into another while it loads: every call happens after start().

import {STORE_KEY} from "./config.js";
import {$} from "./dom.js";
import {readStored, refresh, resume, scheduleRefresh, session} from "./session.js";
import {whenSessionEnds} from "./api.js";
import {enterApp, onLogin, onRegister, showAuth, signOut} from "./auth.js";
import {openNewChat, startChat, suggestPeople} from "./newchat.js";
import {closeChat, loadOlder, maybeLoadOlder, nearBottom, scroller, scrollToBottom} from "./conversation.js";
import {cancelComposerMode, onComposerInput, onComposerKey, onSubmitComposer} from "./composer.js";
import {setupAttachments} from "./attachments.js";
import {markRead} from "./receipts.js";
import {connectEvents, streaming} from "./events.js";

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
    if (!streaming()) connectEvents();
  });
  window.addEventListener("online", () => { if (session && !streaming()) connectEvents(); });
  window.addEventListener("storage", (event) => {
    if (event.key !== STORE_KEY) return;
    const stored = readStored();
    if (!stored && session) signOut("You logged out in another tab.");
    else if (stored && !session) {
      resume(stored);
      enterApp();
    } else if (stored) {
      resume(stored);
      scheduleRefresh();
    }
  });
  setupAttachments();
}

function start() {
  whenSessionEnds(signOut);
  wire();
  resume(readStored());
  if (!session) {
    showAuth("login");
    return;
  }
  enterApp();
}

start();
