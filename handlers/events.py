"""Real-time delivery over plain HTTP: long-poll, Server-Sent Events, typing.

Both ways read the same log (``hub.py``: in the process, or shared by every
process on PostgreSQL) with the same cursor, so a client may switch between them. An event on the wire::

    {"id": "<cursor>", "type": "chat.message.created", "at": "...", "data": {...}}

SSE sends each as ``id: <cursor>`` + ``data: <json>`` (no ``event:`` field,
so ``EventSource.onmessage`` sees them all), starts with a comment and a
``retry:`` line at once (waitress sends headers only with the first bytes),
sends a comment every ``SSE_HEARTBEAT`` seconds, and ends when the access
token it was opened with expires, so that auth is checked again on reconnect.
Browsers, whose EventSource cannot send headers, open it with a ticket from
``POST /events/ticket`` instead of the access token.
"""

import json
import logging
import time

from .auth import authenticate
from .http import BadRequest, HTTPError, Response, ServiceUnavailable, Unauthorized, success
from .hub import Busy, CursorGone
from .chats import advance_pointer
from .roles import in_chat
from .views import iso_time

log = logging.getLogger("oxc.events")

MAX_POLL = 25
RETRY_MS = 3000
CHECK_EVERY = 1.0  # seconds between looks at a departed client


class Gone(HTTPError):
    status = 410


def render(hub, event):
    """An event as clients see it."""
    return {"id": hub.cursor(event.seq), "type": event.type, "at": iso_time(event.at), "data": event.data}


def _position(hub, cursor):
    try:
        return hub.position(cursor)
    except CursorGone as exc:
        raise Gone(str(exc)) from None


def _listen(hub, user_id):
    try:
        hub.listen(user_id)
    except Busy:
        raise ServiceUnavailable("Too many open event listeners; try again shortly", retry_after=5) from None


def _departed(environ):
    """True once waitress has noticed the client is gone (needs channel_request_lookahead)."""
    check = environ.get("waitress.client_disconnected")
    return bool(check and check())


def mark_delivered(ctx, user_id, events):
    """Chat messages that reached their recipient's stream are delivered: record and tell the chat."""
    latest = {}
    for event in events:
        if event.type == "chat.message.created" and event.data["user_id"] != user_id:
            latest[event.chat_id] = event.data
    for chat_id, message in latest.items():
        member = ctx.store.get_member(chat_id, user_id)
        stored = ctx.store.get_chat_message(message["id"])
        if member is not None and stored is not None:
            advance_pointer(ctx, chat_id, member, stored, "delivered")


def get_events(req):
    """Long-poll: events after ``since`` as soon as there are any, or none at ``timeout``."""
    hub, user_id = req.ctx.events, req.user["id"]
    raw = req.query.get("timeout", str(MAX_POLL))
    try:
        timeout = float(raw)
    except ValueError:
        timeout = -1
    if not 0 <= timeout <= MAX_POLL:
        raise BadRequest(f"Query parameter 'timeout' must be a number of seconds from 0 to {MAX_POLL}")
    after = _position(hub, req.query.get("since"))
    _listen(hub, user_id)
    try:
        deadline = time.monotonic() + timeout
        while True:
            events, after = hub.read(user_id, after)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0 or _departed(req.environ):
                break
            hub.wait(after, min(remaining, CHECK_EVERY))
    finally:
        hub.leave(user_id)
    mark_delivered(req.ctx, user_id, events)
    return success(events=[render(hub, event) for event in events], next=hub.cursor(after))


class _Stream:
    """The SSE body: an iterator whose close() gives the listener slot back exactly once."""

    def __init__(self, req, user_id, after, ends_at):
        self.req = req
        self.user_id = user_id
        self.after = after
        self.ends_at = ends_at
        self._released = False
        self._chunks = self._generate()

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._chunks)

    def _generate(self):
        ctx, hub = self.req.ctx, self.req.ctx.events
        heartbeat = ctx.settings.sse_heartbeat
        yield f": connected\nretry: {RETRY_MS}\n\n".encode()
        next_beat = time.monotonic() + heartbeat
        while ctx.clock() < self.ends_at and not _departed(self.req.environ) and not hub.closed:
            events, self.after = hub.read(self.user_id, self.after)
            if events:
                yield "".join(f"id: {hub.cursor(event.seq)}\ndata: {json.dumps(render(hub, event))}\n\n"
                              for event in events).encode()
                mark_delivered(ctx, self.user_id, events)
                continue
            now = time.monotonic()
            if now >= next_beat:
                yield b": heartbeat\n\n"
                next_beat = now + heartbeat
            hub.wait(self.after, max(0.0, min(CHECK_EVERY, next_beat - now, self.ends_at - ctx.clock())))

    def close(self):
        self._chunks.close()
        if not self._released:
            self._released = True
            self.req.ctx.events.leave(self.user_id)


def _stream_user(req):
    """(user, stream end) from the ``ticket`` query parameter or the bearer token."""
    ticket = req.query.get("ticket")
    if ticket is None:
        user = authenticate(req)
        return user, req.claims["exp"]
    redeemed = req.ctx.tokens.redeem_ticket(ticket)
    if redeemed is None:
        raise Unauthorized("Invalid or expired stream ticket")
    user_id, session_id, ends_at = redeemed
    user = req.ctx.store.get_user(user_id)
    if user is None or (session_id is not None and req.ctx.store.get_session(session_id) is None):
        raise Unauthorized("Invalid or expired stream ticket")
    return user, ends_at


def get_event_stream(req):
    """Server-Sent Events, resumable with Last-Event-ID (or ``since``)."""
    user, ends_at = _stream_user(req)
    hub = req.ctx.events
    after = _position(hub, req.header("Last-Event-ID") or req.query.get("since"))
    _listen(hub, user["id"])
    return Response(_Stream(req, user["id"], after, ends_at), 200, [
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Cache-Control", "no-cache, no-store"),
        ("X-Accel-Buffering", "no"),
    ])


def post_stream_ticket(req):
    """A ticket for EventSource: opens the event stream only, for a minute."""
    ticket, ttl = req.ctx.tokens.issue_ticket(req.user["id"], req.claims.get("sid"), req.claims["exp"])
    return success({"ticket": ticket, "expires_in": ttl}, status=201)


@in_chat()
def post_typing(req, chat, me):
    """Say I am typing in a chat (``typing: true``) or stopped; it stops by itself too."""
    active = req.json.get("typing", True)
    if not isinstance(active, bool):
        raise BadRequest("Field 'typing' must be true or false")
    req.ctx.events.typing(chat["id"], me["user_id"], req.user["username"], active)
    return success({"chat_id": chat["id"], "typing": active})
