// What the page holds in memory: the chat list, the open conversation and
// the images fetched with the token, and how to drop it all at sign-out.

import {$} from "./dom.js";
import {session} from "./session.js";

export const state = {
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
export const conv = {
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

export const blobs = new Map();   // API path -> object URL of an image fetched with the token

export function me() {
  return session?.user || {id: null, username: ""};
}

export function resetState() {
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

export function resetConversation() {
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
