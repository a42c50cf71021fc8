// Which screen shows (the sign-in forms or the chat), logging in,
// registering and signing out.

import {API, REGISTER} from "./config.js";
import {$} from "./dom.js";
import {adopt, forget, scheduleRefresh} from "./session.js";
import {api} from "./api.js";
import {me, resetState, state} from "./state.js";
import {loadChats} from "./chatlist.js";
import {openChat} from "./conversation.js";
import {closeEvents, connectEvents, setConnection} from "./events.js";

export function showAuth(which = "login") {
  $("loading").hidden = true;
  $("app-view").hidden = true;
  $("auth-view").hidden = false;
  $("to-register-line").hidden = !REGISTER;
  const registering = which === "register" && REGISTER;
  $("login-form").hidden = registering;
  $("register-form").hidden = !registering;
  document.title = registering ? "Create an account – oxc chat" : "Log in – oxc chat";
  (registering ? $("register-username") : $("login-username")).focus();
}

async function logIn(username, password) {
  const {data} = await api("/auth/login", {method: "POST", body: {username, password}, auth: false});
  adopt(data, {id: data.user.id, username: data.user.username});
}

export async function onLogin(event) {
  event.preventDefault();
  const form = event.currentTarget;
  $("login-error").textContent = "";
  if (!form.reportValidity()) return;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await logIn($("login-username").value.trim(), $("login-password").value);
    form.reset();
    enterApp();
  } catch (error) {
    $("login-error").textContent = error.message;
    $("login-password").focus();
  } finally {
    button.disabled = false;
  }
}

export async function onRegister(event) {
  event.preventDefault();
  const form = event.currentTarget;
  $("register-error").textContent = "";
  if (!form.reportValidity()) return;
  const username = $("register-username").value.trim();
  const password = $("register-password").value;
  const email = $("register-email").value.trim();
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const body = {username, password};
    if (email) body.email = email;
    await api("/auth/register", {method: "POST", body, auth: false});
    try {
      await logIn(username, password);
    } catch (error) {
      // The account exists; logging in may need a verified e-mail address first.
      form.reset();
      showAuth("login");
      $("login-username").value = username;
      $("login-error").textContent = `Account created. ${error.message}`;
      return;
    }
    form.reset();
    enterApp();
  } catch (error) {
    $("register-error").textContent = error.message;
  } finally {
    button.disabled = false;
  }
}

/** End the session here (and, unless it already ended, on the server). */
export function signOut(message) {
  const token = forget();
  closeEvents();
  resetState();
  if (token && !message) {
    fetch(`${API}/auth/logout`, {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({refresh_token: token}), keepalive: true}).catch(() => {});
  }
  history.replaceState(null, "", location.pathname + location.search);
  showAuth("login");
  $("login-error").textContent = message || "";
}

export function enterApp() {
  $("loading").hidden = true;
  $("auth-view").hidden = true;
  $("app-view").hidden = false;
  $("me-name").textContent = me().username;
  setConnection("");
  scheduleRefresh();
  connectEvents();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("chat");
  loadChats().then(() => {
    if (wanted && state.chats.has(wanted)) openChat(wanted, {focus: false});
    else if (!document.activeElement || document.activeElement === document.body) $("new-chat").focus();
  }).catch((error) => setConnection(error.message));
}
