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
``POST /events/ticket`` instead of the access token; a ticket opens one stream.

A listener also ends (a poll with 401) once its session does: a logout, a
password change or reset, a revoked token family. Its session is looked up
before each delivery and every ``SESSION_CHECK_EVERY`` seconds while idle, so
nothing reaches a stream after its session has ended, and an idle one closes
within a few seconds, whichever process ended the session. One user holds at
most ``REALTIME_MAX_PER_USER`` listeners per process (429 beyond them).
"""

import json
import logging
import time

from .auth import SESSION_ENDED, authenticate, session_is_open
from .http import HTTPError, Response, ServiceUnavailable, TooManyRequests, Unauthorized, success, views
from .http.declare import (
    CHAT_PATH,
    Flag,
    Reply,
    array,
    endpoint,
    envelope,
    header,
    query,
    ref,
    refuses,
    returns,
    string,
)
from .http.views import iso_time
from .services.hub import Busy, CursorGone, UserBusy
from .services.messaging import advance_pointer
from .services.roles import in_chat

log = logging.getLogger("oxc.events")

MAX_POLL = 25
SINCE = query(
    "Since",
    "since",
    "Events after this cursor (an event id or a previous 'next'); empty or absent for events from now on.",
    {"type": "string"},
)
TIMEOUT = query(
    "Timeout",
    "timeout",
    f"Seconds to wait for an event: 0 to {MAX_POLL} (default {MAX_POLL}).",
    {"type": "number", "minimum": 0, "maximum": MAX_POLL, "default": MAX_POLL},
    refusal=f"Query parameter 'timeout' must be a number of seconds from 0 to {MAX_POLL}",
)
LAST_EVENT_ID = header(
    "LastEventId",
    "Last-Event-ID",
    "Resume after this event id (browsers send it when they reconnect); wins over 'since'.",
)
RETRY_MS = 3000
CHECK_EVERY = 1.0  # seconds between looks at a departed client
SESSION_CHECK_EVERY = 2.0  # seconds between looks at an idle listener's session
BAD_TICKET = "Invalid or expired stream ticket"


class Gone(HTTPError):
    status = 410


def render(hub, event):
    """An event as clients see it."""
    return views.event(hub.cursor(event.seq), event.type, iso_time(event.at), event.data)


def _position(hub, cursor):
    try:
        return hub.position(cursor)
    except CursorGone as exc:
        raise Gone(str(exc)) from None


class SessionWatch:
    """Whether a listener's session is still open, asking the store at most every ``every`` seconds."""

    def __init__(self, store, session_id, user_id, every=SESSION_CHECK_EVERY):
        self.store = store
        self.session_id = session_id
        self.user_id = user_id
        self.every = every
        self._due = time.monotonic() + every  # the request was just authenticated

    def ended(self, force=False):
        """True once the session has ended; ``force`` asks the store even when no look is due (before a delivery)."""
        now = time.monotonic()
        if not force and now < self._due:
            return False
        self._due = now + self.every
        return not session_is_open(self.store, self.session_id, self.user_id)


def _listen(hub, user_id):
    try:
        hub.listen(user_id)
    except UserBusy:
        raise TooManyRequests(
            "You have too many open event listeners; close one or try again shortly", retry_after=5
        ) from None
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


@endpoint(
    "events",
    "Wait for events (long-poll)",
    f"Answers the caller's events after 'since' as soon as there are any, or none after "
    f"'timeout' seconds (at most {MAX_POLL}). Pass 'next' as 'since' to go on.",
    answers={
        200: returns(
            envelope(events=array(ref("Event")), next=string("The cursor to pass as 'since' next time.", "k3J9x-42")),
            "The events (maybe none).",
        ),
        400: refuses(f"timeout is not a number from 0 to {MAX_POLL}."),
        401: refuses("The session ended while the poll waited (a logout, a password change or reset)."),
        410: refuses(
            "The cursor is from an earlier run of the server or too old: resync through the "
            "list endpoints and start again without one."
        ),
        429: refuses(
            "The caller already holds REALTIME_MAX_PER_USER open streams and polls on this "
            "process; close one or retry after Retry-After."
        ),
        503: refuses("Too many open event listeners; retry after Retry-After."),
    },
    parameters=(SINCE, TIMEOUT),
    writes=True,
)
def get_events(req):
    """Long-poll: events after ``since`` as soon as there are any, or none at ``timeout``."""
    hub, user_id = req.ctx.events, req.user["id"]
    timeout = TIMEOUT.read(req.query)
    after = _position(hub, req.query.get("since"))
    session = SessionWatch(req.ctx.store, req.claims["sid"], user_id)
    _listen(hub, user_id)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if session.ended():
                raise Unauthorized(SESSION_ENDED)
            events, after = hub.read(user_id, after)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0 or _departed(req.environ):
                break
            hub.wait(after, min(remaining, CHECK_EVERY))
        if events and session.ended(force=True):
            raise Unauthorized(SESSION_ENDED)
    finally:
        hub.leave(user_id)
    mark_delivered(req.ctx, user_id, events)
    return success(events=[render(hub, event) for event in events], next=hub.cursor(after))


class _Stream:
    """The SSE body: an iterator whose close() gives the listener slot back exactly once."""

    def __init__(self, req, user_id, session_id, after, ends_at):
        self.req = req
        self.user_id = user_id
        self.session = SessionWatch(req.ctx.store, session_id, user_id)
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
            if self.session.ended():
                yield b": session ended\n\n"
                return
            events, self.after = hub.read(self.user_id, self.after)
            if events:
                if self.session.ended(force=True):
                    yield b": session ended\n\n"
                    return
                yield "".join(
                    f"id: {hub.cursor(event.seq)}\ndata: {json.dumps(render(hub, event))}\n\n" for event in events
                ).encode()
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
    """(user, session id, stream end) from the ``ticket`` query parameter or the bearer token.

    A ticket is used up here, in one atomic store operation shared by every
    process, so it opens one stream only.
    """
    ticket = req.query.get("ticket")
    if ticket is None:
        user = authenticate(req)
        return user, req.claims["sid"], req.claims["exp"]
    store = req.ctx.store
    claims = req.ctx.tokens.read_ticket(ticket)
    if claims is None:
        raise Unauthorized(BAD_TICKET)
    user = store.get_user(claims["sub"])
    if user is None or not session_is_open(store, claims["sid"], user["id"]):
        raise Unauthorized(BAD_TICKET)
    if not store.use_ticket(claims["jti"], claims["exp"], req.ctx.clock()):
        raise Unauthorized("This stream ticket was used already; get a new one")
    return user, claims["sid"], claims["end"]


@endpoint(
    "events",
    "Stream events (Server-Sent Events)",
    "The caller's events as text/event-stream ('id:' and 'data:' lines, heartbeat comments), "
    "until the access token or ticket it was opened with expires, or its session ends (a logout, "
    "a password change or reset: the stream then closes within seconds and delivers nothing "
    "more). Authenticate with the bearer token or with ?ticket= from POST /events/ticket; a "
    "ticket opens one stream.",
    answers={
        200: Reply("The stream.", {"type": "string"}, "text/event-stream"),
        401: refuses(
            "The access token or the ticket is missing, invalid or expired, the ticket was "
            "used already, or the session has ended."
        ),
        410: refuses("The cursor is from an earlier run of the server or too old."),
        429: refuses(
            "The caller already holds REALTIME_MAX_PER_USER open streams and polls on this "
            "process; close one or retry after Retry-After."
        ),
        503: refuses("Too many open event listeners; retry after Retry-After."),
    },
    parameters=(SINCE, LAST_EVENT_ID),
    security=("bearerAuth", "streamTicket"),
)
def get_event_stream(req):
    """Server-Sent Events, resumable with Last-Event-ID (or ``since``)."""
    user, session_id, ends_at = _stream_user(req)
    hub = req.ctx.events
    after = _position(hub, req.header("Last-Event-ID") or req.query.get("since"))
    _listen(hub, user["id"])
    return Response(
        _Stream(req, user["id"], session_id, after, ends_at),
        200,
        [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache, no-store"),
            ("X-Accel-Buffering", "no"),
        ],
    )


@endpoint(
    "events",
    "Get an event-stream ticket",
    "A short-lived ticket that opens GET /events/stream once, for a browser's EventSource, "
    "which cannot send headers. It opens nothing else; get a new one for each connection.",
    answers={201: returns(envelope(ref("Ticket")), "The ticket.")},
)
def post_stream_ticket(req):
    """A ticket for EventSource: opens the event stream only, for a minute."""
    ticket, ttl = req.ctx.tokens.issue_ticket(req.user["id"], req.claims["sid"], req.claims["exp"])
    return success(views.ticket.build(ticket=ticket, expires_in=ttl), status=201)


@in_chat()
@endpoint(
    "events",
    "Say I am typing",
    "Tells the chat's members that the caller is typing (typing: true) or stopped; a notice "
    "stops by itself after a few seconds.",
    answers={200: returns(envelope(ref("Typing")), "The notice now."), 400: refuses("typing is not true or false.")},
    parameters=(CHAT_PATH,),
    body={
        "typing": Flag(
            "True (the default) while typing, false on stopping; a notice stops by itself after a few seconds.",
            True,
            default=True,
        )
    },
    body_name="TypingChange",
    body_example={"typing": True},
)
def post_typing(req, chat, me, *, body):
    """Say I am typing in a chat (``typing: true``) or stopped; it stops by itself too."""
    active = body["typing"]
    req.ctx.events.typing(chat["id"], me["user_id"], req.user["username"], active)
    return success(views.typing.build(chat_id=chat["id"], typing=active))
