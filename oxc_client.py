"""A Python client for the oxc chat API: standard library only, vendorable alone.

    from oxc_client import Client

    chat = Client("http://127.0.0.1:5000")
    chat.login("alice", "correct horse battery")
    chat.send_message("Hello, world!")
    group = chat.create_group("Book club", members=["bob"])
    chat.send(group["id"], "hi @bob")
    for message in chat.iter_history(group["id"]):
        print(message["username"], message["content"])
    for event in chat.stream():               # Server-Sent Events, resumed on reconnect
        print(event["type"], event["data"])

What it takes care of:

- tokens: the access token is refreshed at ``refresh_at`` and once more on a
  401 that says it expired; refresh tokens rotate, so every new one is kept
  (``on_tokens`` is called with them, e.g. to save them);
- 429 and 503 are retried after their Retry-After (``retries`` times);
- lists are pages; ``iter_*`` methods follow the cursors;
- ``stream`` reads SSE, reconnects with Last-Event-ID, and falls back to
  long-polling where the stream is not available;
- every refusal raises an ``OxcError`` subclass carrying the server's message
  and status; a server that cannot be reached raises ``ConnectionFailed``.
"""

import http.client
import json
import mimetypes
import os
import threading
import time
import urllib.parse
from typing import Any

__all__ = [
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "CursorGone",
    "Forbidden",
    "NotFound",
    "OxcError",
    "RateLimited",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]

CHUNK = 64 * 1024


# =============================================================================
# Errors
# =============================================================================


class OxcError(Exception):
    """The server refused: ``status`` and the server's ``message``."""

    status: int | None = None

    def __init__(
        self, message: str, status: int | None = None, body: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.body = body
        self.retry_after = retry_after


class BadRequest(OxcError):
    status = 400


class Unauthorized(OxcError):
    status = 401


class Forbidden(OxcError):
    status = 403


class NotFound(OxcError):
    status = 404


class Conflict(OxcError):
    status = 409


class CursorGone(OxcError):
    """410: the event cursor is from an earlier server run or too old; resync."""

    status = 410


class TooLarge(OxcError):
    status = 413


class UnsupportedMediaType(OxcError):
    status = 415


class RateLimited(OxcError):
    status = 429


class Unavailable(OxcError):
    status = 503


class ConnectionFailed(OxcError):
    """No answer from the server (refused, reset, timed out)."""


ERRORS = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        CursorGone,
        TooLarge,
        UnsupportedMediaType,
        RateLimited,
        Unavailable,
    )
}


def _error(status, body, headers):
    message = body.get("message") if isinstance(body, dict) else None
    retry = headers.get("Retry-After")
    retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    return ERRORS.get(status, OxcError)(message or f"HTTP {status}", status, body, retry_after)


# =============================================================================
# The client
# =============================================================================


class Client:
    """One user's session with an oxc server.

    Args:
        base_url: ``http(s)://host:port`` (plus any mount path).
        api_prefix: the server's API_PREFIX.
        api_key: sent as X-API-Key when the server requires one.
        tokens: a previous login's tokens (``access_token``, ``refresh_token``, ``refresh_at``).
        on_tokens: called with the token dict whenever it changes (login, refresh, logout).
        retries: how often a 429/503 (or a dropped connection on a safe request) is retried.
    """

    def __init__(
        self,
        base_url,
        api_prefix="/api",
        api_key=None,
        tokens=None,
        on_tokens=None,
        timeout=30,
        retries=3,
        clock=time.time,
        sleep=time.sleep,
    ):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port][/path], not {base_url!r}")
        self._scheme, self._host, self._port = parsed.scheme, parsed.hostname, parsed.port
        self.prefix = parsed.path.rstrip("/") + api_prefix.rstrip("/")
        self.root = parsed.path.rstrip("/")
        self.api_key = api_key
        self.tokens = dict(tokens or {})
        self.on_tokens = on_tokens
        self.timeout = timeout
        self.retries = retries
        self._clock = clock
        self._sleep = sleep
        self._local = threading.local()
        self._refresh_lock = threading.Lock()

    # -- transport ----------------------------------------------------------------

    def _connect(self, timeout=None):
        kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=timeout or self.timeout)

    def _connection(self):
        # One keep-alive connection per thread: http.client connections are not thread-safe.
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        return connection

    def _drop_connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def _headers(self, auth, extra=None):
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        if auth and self.tokens.get("access_token"):
            headers["Authorization"] = f"Bearer {self.tokens['access_token']}"
        headers.update(extra or {})
        return headers

    @staticmethod
    def _url(path, query=None):
        pairs = {k: v for k, v in (query or {}).items() if v is not None}
        return path + ("?" + urllib.parse.urlencode(pairs) if pairs else "")

    def call(self, method, path, body=None, query=None, auth=True, raw_body=None, headers=None):
        """One API call: ``path`` below the API prefix (e.g. ``/messages``); returns the parsed answer."""
        return self._call(method, self.prefix + path, body, query, auth, raw_body, headers)

    def _call(self, method, full_path, body=None, query=None, auth=True, raw_body=None, headers=None):
        if auth and self.tokens.get("refresh_token") and self._clock() >= self.tokens.get("refresh_at", float("inf")):
            self.refresh()
        refreshed = False
        attempt = 0
        while True:
            status, answer, reply_headers = self._send(method, full_path, body, query, auth, raw_body, headers)
            if 200 <= status < 300:
                return answer
            error = _error(status, answer, reply_headers)
            if (
                status == 401
                and auth
                and not refreshed
                and self.tokens.get("refresh_token")
                and "expired" in error.message.lower()
            ):
                refreshed = True
                self.refresh()
                continue
            if status in (429, 503) and attempt < self.retries:
                attempt += 1
                self._sleep(error.retry_after if error.retry_after is not None else min(30, 2**attempt))
                continue
            raise error

    def _send(self, method, full_path, body, query, auth, raw_body, headers):
        extra = dict(headers or {})
        payload = raw_body
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            extra["Content-Type"] = "application/json"
        url = self._url(full_path, query)
        for attempt in range(2):
            connection = self._connection()
            try:
                connection.request(method, url, body=payload, headers=self._headers(auth, extra))
                response = connection.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self._drop_connection()
                break
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                # A kept-alive connection the server closed fails once; try a fresh one.
                if attempt == 0 and not isinstance(exc, (ConnectionRefusedError, TimeoutError)):
                    continue
                raise ConnectionFailed(f"cannot reach {self._host}:{self._port}: {exc}") from exc
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            answer = data
        return response.status, answer, response.headers

    def _set_tokens(self, grant):
        self.tokens = {
            "access_token": grant["access_token"],
            "refresh_token": grant.get("refresh_token", self.tokens.get("refresh_token")),
            "refresh_at": grant.get("refresh_at", self._clock() + grant.get("expires_in", 900) * 2 // 3),
        }
        if self.on_tokens:
            self.on_tokens(dict(self.tokens))

    # -- auth -------------------------------------------------------------------------

    def register(self, username, password, email=None):
        """Create an account; returns the user."""
        body = {"username": username, "password": password}
        if email:
            body["email"] = email
        return self.call("POST", "/auth/register", body, auth=False)["data"]

    def login(self, username, password):
        """Log in; keeps the tokens and returns the user."""
        data = self.call("POST", "/auth/login", {"username": username, "password": password}, auth=False)["data"]
        self._set_tokens(data)
        return data["user"]

    def refresh(self):
        """Trade the refresh token for new tokens (they rotate)."""
        with self._refresh_lock:
            token = self.tokens.get("refresh_token")
            if not token:
                raise Unauthorized("not logged in", 401)
            try:
                data = self._call("POST", self.prefix + "/auth/refresh", {"refresh_token": token}, auth=False)["data"]
            except Unauthorized:
                self.tokens = {}
                if self.on_tokens:
                    self.on_tokens({})
                raise
            self._set_tokens(data)
            return data

    def logout(self):
        """End this session on the server and forget the tokens."""
        token = self.tokens.get("refresh_token")
        try:
            if token:
                self.call("POST", "/auth/logout", {"refresh_token": token}, auth=False)
        finally:
            self.tokens = {}
            if self.on_tokens:
                self.on_tokens({})

    def token_info(self):
        """The current user and token timing."""
        return self.call("GET", "/auth/token-info")["data"]

    def service(self):
        """The service's name and version (``GET /``)."""
        return self._call("GET", self.root + "/", auth=False)["data"]

    def health(self):
        """The health check's data (raises Unavailable while the store refuses writes)."""
        return self.call("GET", "/health", auth=False)["data"]

    # -- paging ------------------------------------------------------------------------

    def _pages(self, path, key, query, oldest_first=False):
        """Every item of a list, following ``paging.before``, newest first.

        ``oldest_first`` says that each page comes oldest first (message
        histories), so it is turned around.
        """
        query = dict(query)
        while True:
            answer = self.call("GET", path, query=query)
            yield from (reversed(answer[key]) if oldest_first else answer[key])
            following = answer.get("paging", {}).get("before")
            if not following:
                return
            query["before"] = following

    # -- 0xC messages -------------------------------------------------------------------

    def send_message(self, content, recipient_id=None):
        """A public message, or a private one to ``recipient_id``."""
        body = {"content": content}
        if recipient_id:
            body["recipient_id"] = recipient_id
        return self.call("POST", "/messages", body)["data"]

    def messages(self, limit=None, before=None, after=None):
        """One page of the messages I may see (answer with ``messages`` and ``paging``)."""
        return self.call("GET", "/messages", query={"limit": limit, "before": before, "after": after})

    def iter_messages(self, limit=200):
        """Every message I may see, newest first."""
        return self._pages("/messages", "messages", {"limit": limit}, oldest_first=True)

    def my_messages(self, limit=None, before=None, after=None):
        """One page of the messages I sent."""
        return self.call("GET", "/messages/me", query={"limit": limit, "before": before, "after": after})

    def get_message(self, message_id):
        return self.call("GET", f"/messages/{_q(message_id)}")["data"]

    def delete_message(self, message_id):
        return self.call("DELETE", f"/messages/{_q(message_id)}")

    # -- chats ---------------------------------------------------------------------------

    def chats(self, limit=None, before=None):
        """One page of my chats, newest activity first."""
        return self.call("GET", "/chats", query={"limit": limit, "before": before})

    def iter_chats(self, limit=200):
        """All my chats, newest activity first."""
        return self._pages("/chats", "chats", {"limit": limit})

    def create_group(self, name, members=(), description=None):
        body = {"name": name, "members": list(members)}
        if description is not None:
            body["description"] = description
        return self.call("POST", "/chats/group", body)["data"]

    def direct_chat(self, user, content=None):
        """The direct chat with ``user`` (an id or a username), optionally sending a first message."""
        body = {"username" if _looks_like_name(user) else "user_id": user}
        if content is not None:
            body["content"] = content
        return self.call("POST", "/chats/direct", body)["data"]

    def chat(self, chat_id):
        return self.call("GET", f"/chats/{_q(chat_id)}")["data"]

    def update_chat(self, chat_id, **changes):
        return self.call("PATCH", f"/chats/{_q(chat_id)}", changes)["data"]

    def delete_chat(self, chat_id):
        return self.call("DELETE", f"/chats/{_q(chat_id)}")

    def members(self, chat_id):
        return self.call("GET", f"/chats/{_q(chat_id)}/members")["data"]

    def add_member(self, chat_id, user, role=None):
        body = {"username" if _looks_like_name(user) else "user_id": user}
        if role:
            body["role"] = role
        return self.call("POST", f"/chats/{_q(chat_id)}/members", body)["data"]

    def remove_member(self, chat_id, user_id):
        return self.call("DELETE", f"/chats/{_q(chat_id)}/members/{_q(user_id)}")

    def set_role(self, chat_id, user_id, role):
        return self.call("PATCH", f"/chats/{_q(chat_id)}/members/{_q(user_id)}", {"role": role})["data"]

    def mute(self, chat_id, muted=True):
        return self.call("PUT", f"/chats/{_q(chat_id)}/mute", {"muted": muted})["data"]

    def history(self, chat_id, limit=None, before=None, after=None):
        """One page of a chat's messages."""
        return self.call(
            "GET", f"/chats/{_q(chat_id)}/messages", query={"limit": limit, "before": before, "after": after}
        )

    def iter_history(self, chat_id, limit=200):
        """A chat's messages, newest first."""
        return self._pages(f"/chats/{_q(chat_id)}/messages", "messages", {"limit": limit}, oldest_first=True)

    def send(self, chat_id, content=None, reply_to_id=None, **extra):
        """Send a message to a chat."""
        body = dict(extra)
        if content is not None:
            body["content"] = content
        if reply_to_id:
            body["reply_to_id"] = reply_to_id
        return self.call("POST", f"/chats/{_q(chat_id)}/messages", body)["data"]

    def edit(self, chat_id, message_id, content):
        return self.call("PATCH", f"/chats/{_q(chat_id)}/messages/{_q(message_id)}", {"content": content})["data"]

    def delete_chat_message(self, chat_id, message_id):
        return self.call("DELETE", f"/chats/{_q(chat_id)}/messages/{_q(message_id)}")

    def mark_read(self, chat_id, message_id):
        return self.call("POST", f"/chats/{_q(chat_id)}/read", {"message_id": message_id})["data"]

    def mark_delivered(self, chat_id, message_id):
        return self.call("POST", f"/chats/{_q(chat_id)}/delivered", {"message_id": message_id})["data"]

    def receipts(self, chat_id, message_id):
        return self.call("GET", f"/chats/{_q(chat_id)}/messages/{_q(message_id)}/receipts")["data"]

    def typing(self, chat_id, active=True):
        return self.call("POST", f"/chats/{_q(chat_id)}/typing", {"typing": active})["data"]

    # -- people and search ---------------------------------------------------------------------

    def me(self):
        return self.call("GET", "/users/me")["data"]

    def update_me(self, **changes):
        return self.call("PATCH", "/users/me", changes)["data"]

    def change_password(self, current_password, new_password):
        return self.call(
            "POST", "/users/me/password", {"current_password": current_password, "new_password": new_password}
        )["data"]

    def users(self, prefix="", limit=None, after=None):
        return self.call("GET", "/users", query={"q": prefix, "limit": limit, "after": after})

    def user(self, user_id):
        return self.call("GET", f"/users/{_q(user_id)}")["data"]

    def search(self, text, chat_id=None, limit=None, before=None):
        """One page of the messages I can see holding every word of ``text``."""
        return self.call("GET", "/search", query={"q": text, "chat_id": chat_id, "limit": limit, "before": before})

    def iter_search(self, text, chat_id=None, limit=100):
        return self._pages("/search", "messages", {"q": text, "chat_id": chat_id, "limit": limit})

    # -- accounts and notifications -------------------------------------------------------------

    def request_verification(self, email):
        return self.call("POST", "/auth/verify-email/request", {"email": email}, auth=False)

    def verify_email(self, email, code):
        return self.call("POST", "/auth/verify-email", {"email": email, "code": code}, auth=False)

    def request_password_reset(self, email):
        return self.call("POST", "/auth/password-reset/request", {"email": email}, auth=False)

    def reset_password(self, email, code, new_password):
        return self.call(
            "POST", "/auth/password-reset", {"email": email, "code": code, "new_password": new_password}, auth=False
        )["data"]

    def notifications(self, limit=None, before=None, unread=None):
        return self.call(
            "GET",
            "/notifications",
            query={"limit": limit, "before": before, "unread": None if unread is None else str(bool(unread)).lower()},
        )

    def mentions(self, limit=None, before=None):
        return self.call("GET", "/notifications/mentions", query={"limit": limit, "before": before})

    def notification_count(self):
        return self.call("GET", "/notifications/count")["data"]["unread_count"]

    def mark_notification_read(self, notification_id):
        return self.call("POST", f"/notifications/{_q(notification_id)}/read", {})["data"]

    def mark_all_notifications_read(self):
        return self.call("POST", "/notifications/read-all", {})["data"]

    def devices(self):
        return self.call("GET", "/devices")["data"]

    def add_device(self, platform, token=None, endpoint=None):
        body = {"platform": platform}
        if token:
            body["token"] = token
        if endpoint:
            body["endpoint"] = endpoint
        return self.call("POST", "/devices", body)["data"]

    def remove_device(self, device_id):
        return self.call("DELETE", f"/devices/{_q(device_id)}")

    # -- attachments ---------------------------------------------------------------------------

    def upload(self, chat_id, source, content_type=None, name=None, content=None, progress=None):
        """Upload a file (a path or bytes) into a chat; ``content`` also sends it as a message.

        The body is streamed from the file; ``progress(sent, total)`` is called as it goes.
        """
        if isinstance(source, (bytes, bytearray)):
            data, total, name = bytes(source), len(source), name or "upload"
            stream = None
        else:
            total, name = os.path.getsize(source), name or os.path.basename(source)
            stream = open(source, "rb")
            content_type = content_type or mimetypes.guess_type(source)[0]
        content_type = content_type or "application/octet-stream"
        query = {"name": name, "content": content}
        url = self._url(f"{self.prefix}/chats/{_q(chat_id)}/attachments", query)
        connection = self._connect(timeout=max(self.timeout, 300))
        try:
            connection.putrequest("POST", url)
            for header, value in self._headers(
                True, {"Content-Type": content_type, "Content-Length": str(total)}
            ).items():
                connection.putheader(header, value)
            connection.endheaders()
            sent = 0
            while sent < total:
                chunk = data[sent : sent + CHUNK] if stream is None else stream.read(CHUNK)
                if not chunk:
                    break
                connection.send(chunk)
                sent += len(chunk)
                if progress:
                    progress(sent, total)
            response = connection.getresponse()
            if not 200 <= response.status < 300:
                raise _refusal(response)
            return json.loads(response.read())["data"]
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionFailed(f"upload to {self._host}:{self._port} failed: {exc}") from exc
        finally:
            connection.close()
            if stream is not None:
                stream.close()

    def attachment(self, attachment_id):
        return self.call("GET", f"/attachments/{_q(attachment_id)}")["data"]

    def download(self, attachment_id, destination, progress=None, thumbnail=False):
        """Stream an attachment (or its thumbnail) into the file ``destination``; returns its size."""
        which = "thumbnail" if thumbnail else "content"
        connection = self._connect(timeout=max(self.timeout, 300))
        try:
            connection.request(
                "GET",
                f"{self.prefix}/attachments/{_q(attachment_id)}/{which}",
                headers=self._headers(True, {"Accept": "*/*"}),
            )
            response = connection.getresponse()
            if response.status != 200:
                raise _refusal(response)
            total = int(response.getheader("Content-Length") or 0)
            done = 0
            with open(destination, "wb") as out:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            return done
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionFailed(f"download from {self._host}:{self._port} failed: {exc}") from exc
        finally:
            connection.close()

    # -- events -----------------------------------------------------------------------------------

    def events(self, since=None, timeout=25):
        """One long-poll: ``{"events": [...], "next": cursor}``."""
        return self.call("GET", "/events", query={"since": since, "timeout": timeout})

    def stream_ticket(self):
        return self.call("POST", "/events/ticket", {})["data"]

    def stream(self, since=None, reconnect=True, poll_fallback=True):
        """Yield events forever: SSE resumed with Last-Event-ID, or long-poll where SSE fails.

        Raises CursorGone when the cursor cannot be resumed (resync, then call again without one).
        """
        cursor = since
        failures = 0
        use_sse = True
        while True:
            try:
                if use_sse:
                    for event in self._sse(cursor):
                        failures = 0
                        cursor = event["id"]
                        yield event
                else:
                    answer = self.events(cursor)
                    failures = 0
                    for event in answer["events"]:
                        yield event
                    cursor = answer["next"]
                    continue
            except CursorGone:
                raise
            except OxcError as exc:
                if use_sse and poll_fallback and exc.status in (404, 405, 406, 415, 501):
                    use_sse = False
                    continue
                if exc.status in (401,) and self.tokens.get("refresh_token"):
                    self.refresh()
                    continue
                if not reconnect or exc.status not in (None, 429, 502, 503, 504):
                    raise
                failures += 1
                self._sleep(exc.retry_after or min(30, 2**failures))
                continue
            if not reconnect:
                return
            # The server ended the stream (token expiry): refresh if due, then resume.
            if self.tokens.get("refresh_token") and self._clock() >= self.tokens.get("refresh_at", 0):
                self.refresh()

    def _sse(self, cursor):
        if self.tokens.get("refresh_token") and self._clock() >= self.tokens.get("refresh_at", float("inf")):
            self.refresh()
        connection = self._connect(timeout=90)
        extra = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if cursor:
            extra["Last-Event-ID"] = cursor
        try:
            connection.request("GET", f"{self.prefix}/events/stream", headers=self._headers(True, extra))
            response = connection.getresponse()
            if response.status != 200:
                raise _refusal(response)
            if not (response.getheader("Content-Type") or "").startswith("text/event-stream"):
                raise OxcError("the server does not stream events", 415)
            data = []
            while True:
                line = response.readline()
                if not line:
                    return
                line = line.decode("utf-8").rstrip("\r\n")
                if not line:
                    if data:
                        yield json.loads("\n".join(data))
                    data = []
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionFailed(f"event stream from {self._host}:{self._port} broke: {exc}") from exc
        finally:
            connection.close()


def _refusal(response):
    """The typed error for a non-success answer whose body was not read yet."""
    body = response.read()
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    return _error(response.status, answer, response.headers)


def _q(value):
    return urllib.parse.quote(str(value), safe="")


def _looks_like_name(value):
    # Ids are UUIDs (36 characters with four dashes); usernames are at most 32.
    return not (len(value) == 36 and value.count("-") == 4)
