"""The real-time core: the event log that every listener waits on.

Handlers ``publish`` an event with its audience once their write is durable;
only the types declared in ``event_types.EVENT_TYPES`` are accepted.
Listeners (long-poll requests and SSE streams) ``wait`` for events after their
cursor. A cursor is ``<run>-<seq>``. Events go through the store's event log
(``Store.event_log``): in memory for the JSON store, which one process owns,
and a table every process shares for PostgreSQL. Each process appends to the
log and keeps a copy of its newest ``capacity`` events, filled by a thread that
follows the log; ``run`` is the log's epoch (new whenever the log starts
empty, as the JSON store's does at every start) and ``seq`` its event id, so a
cursor resumes on whichever process a client reconnects to. A cursor from
another run, or older than the events still kept (the last ``capacity``),
raises ``CursorGone`` and the client resyncs through the list endpoints.

Deleted text leaves the log: ``retract`` publishes a message's deletion
after scrubbing its text from every copy (see ``RETRACTS``). Its earlier
events (created, edited) show the deletion's data from then on and the
events of notifications about it lose their preview, in the store (the log's
rows, notifications, push jobs) and in this process; every other
process scrubs its copies when the deletion event reaches it, and so does any
event about the message that arrives later.

Who sees an event is decided twice: its audience (a set of user ids, or
everyone) is fixed when it is published, and events about a chat are checked
again against the chat's members when they are read, so a member removed a
moment ago receives nothing more from that chat.

Every listener holds a server thread while it waits, so listeners are counted
against ``max_listeners``; beyond it ``Busy`` is raised (503 with
Retry-After), leaving threads for the requests that publish. One user may hold
at most ``max_per_user`` of them (``UserBusy``, 429), so that one account
cannot take every slot. Both counts are per process, as the threads are. A listener also
makes its user "online"; when the last one of a user has been gone for
``offline_after`` seconds, the user is "offline" and ``last_seen`` is written.
Typing notices expire by themselves after ``typing_ttl`` seconds. One daemon
thread (started on first use) runs both timers. Presence and typing are kept
per process: with several processes, a user listening on two of them is
announced online by each, and typing notices are best kept on one process by
routing a user's requests to it.
"""

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from store import StoreError

from ..http.views import iso_time
from .event_types import EVENT_TYPES

log = logging.getLogger("oxc.events")

EVERYONE = None

#: A deletion event's type -> the types of the earlier events about the same message (data ``id``)
#: whose data it replaces.
RETRACTS = {
    "chat.message.deleted": ("chat.message.created", "chat.message.edited"),
    "message.deleted": ("message.created",),
}
#: What a retracted event keeps of a field that held text or pointed at an attachment.
TEXT_FIELDS: dict[str, object] = {
    "content": None,
    "envelope": None,
    "attachment": None,
    "mentions": [],
    "preview": None,
}
#: Retracted message ids remembered, so that events about them arriving later are scrubbed too.
RETRACTED_KEPT = 10_000


def retraction(type, data):
    """``retract(event type, event data)`` for the deletion event (``type``, ``data``) of message ``data["id"]``.

    It answers the data an event about that message carries from now on, or
    None for one it leaves as it is.
    """
    message_id, earlier = data["id"], RETRACTS[type]

    def retract(event_type, event_data):
        if event_type in earlier and event_data.get("id") == message_id:
            scrubbed = {name: value for name, value in TEXT_FIELDS.items() if name in event_data}
            return {**event_data, **scrubbed, **data}
        if event_data.get("message_id") == message_id and event_data.get("preview") is not None:
            return dict(event_data, preview=None)
        return None

    return retract


class CursorGone(Exception):
    """The cursor is from an earlier run or older than the events kept."""


class Busy(Exception):
    """Every listener slot is taken."""


class UserBusy(Busy):
    """The user already holds as many listener slots as one user may."""


class Event:
    """One published event: its place, type, payload and who may see it."""

    __slots__ = ("seq", "type", "data", "audience", "chat_id", "at")

    def __init__(self, seq, type, data, audience, chat_id, at):
        self.seq = seq
        self.type = type
        self.data = data
        self.audience = audience
        self.chat_id = chat_id
        self.at = at


def _from_row(row):
    """An Event from a row of the store's event log (id, type, data, audience, chat_id, at)."""
    event_id, type, data, audience, chat_id, at = row
    return Event(event_id, type, data, None if audience is None else frozenset(audience), chat_id, at)


class Hub:
    """Publish events, wait for them, and track presence and typing."""

    PULL = 500  # events read from the store's log per query

    def __init__(
        self,
        store,
        clock=time.time,
        capacity=10_000,
        max_listeners=100,
        max_per_user=None,
        typing_ttl=6.0,
        offline_after=10.0,
    ):
        self.store = store
        self.clock = clock
        self.capacity = capacity
        self.max_listeners = max_listeners
        self.max_per_user = max_per_user
        self.typing_ttl = typing_ttl
        self.offline_after = offline_after
        self._events = collections.deque(maxlen=capacity)
        self._seq = 0
        self._changed = threading.Condition()
        self._slots = threading.BoundedSemaphore(max_listeners) if max_listeners else None
        self._listening = collections.Counter()
        self._going_offline = {}
        self._typing = {}
        self._timer = None
        self._closed = False
        self._subscribers = []
        self._retracted = collections.OrderedDict()  # message id -> retract, newest last
        self._about = {}  # id or message_id in an event's data -> the events kept with it, oldest first
        self._log = store.event_log()
        self._pull_lock = threading.Lock()
        self._follower = None
        self.run = self._log.epoch
        self._seq = self._log.newest()
        for event in map(_from_row, self._log.recent(capacity)):
            self._arrive(event)
        self._seq = max(self._seq, self._events[-1].seq if self._events else 0)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- cursors --------------------------------------------------------------

    def cursor(self, seq: int | None = None) -> str:
        """The opaque cursor for ``seq`` (default: the newest event)."""
        return f"{self.run}-{self._seq if seq is None else seq}"

    def position(self, cursor: str | None) -> int:
        """The seq a cursor stands for; CursorGone if it cannot be resumed."""
        if cursor is None or cursor == "":
            self._pull()  # "now" is the log's newest, not what this process last copied
            return self._seq
        run, _, number = cursor.rpartition("-")
        if run != self.run or not (number.isascii() and number.isdigit()):
            raise CursorGone("This cursor is from an earlier run of the server; resync and start again")
        seq = int(number)
        if seq > self._seq:
            self._pull()  # a cursor handed out by another process a moment ago
        if seq > self._seq:
            raise CursorGone("This cursor is from an earlier run of the server; resync and start again")
        with self._changed:
            oldest = self._events[0].seq if self._events else self._seq + 1
        if seq < oldest - 1:
            raise CursorGone("Events after this cursor are no longer kept; resync and start again")
        return seq

    # -- publishing -------------------------------------------------------------

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` after every publish, in the publishing thread."""
        self._subscribers.append(callback)

    def publish(
        self, type: str, data: Any, audience: Iterable[str] | None = EVERYONE, chat_id: str | None = None
    ) -> Event:
        """Add an event for ``audience`` (user ids; None: everyone) and wake listeners.

        ValueError for a ``type`` not declared in ``EVENT_TYPES``. Subscribers
        hear the events published in this process only.
        """
        if type not in EVENT_TYPES:
            raise ValueError(f"undeclared event type {type!r}: declare it in handlers/services/event_types.py")
        audience = None if audience is None else frozenset(audience)
        at = self.clock()
        event = Event(self._log.append(type, data, audience, chat_id, at), type, data, audience, chat_id, at)
        self._start_follower()
        self._pull()  # so that this process's listeners have it at once
        if event.seq % self.capacity == 0:
            self._log.prune(self.capacity)  # the log stays bounded though no one listens
        for callback in self._subscribers:
            callback(event)
        return event

    def _pull(self):
        """Copy the log's new events into this process and wake listeners."""
        with self._pull_lock:
            while True:
                rows = self._log.after(self._seq, self.PULL)
                if rows:
                    with self._changed:
                        if rows[0][0] != self._seq + 1:
                            self._events.clear()  # pruned while this process lagged: cursors before are gone
                            self._about.clear()
                        for event in map(_from_row, rows):
                            self._arrive(event)
                        self._seq = rows[-1][0]
                        self._changed.notify_all()
                if len(rows) < self.PULL:
                    return

    # -- deleted text ---------------------------------------------------------------

    def retract(
        self, type: str, data: Any, audience: Iterable[str] | None = EVERYONE, chat_id: str | None = None
    ) -> Event:
        """Publish the deletion ``type`` (see RETRACTS) of message ``data["id"]`` once its text is scrubbed."""
        self.scrub(type, data)
        return self.publish(type, data, audience, chat_id)

    def scrub(self, type: str, data: Any) -> None:
        """Take the text of message ``data["id"]``, deleted as ``type`` says, out of the store's copies and this log."""
        retract = retraction(type, data)
        self.store.scrub_message(data["id"], retract)
        with self._changed:
            self._forget(data["id"], retract)

    def _forget(self, message_id, retract):
        """Scrub the events kept about ``message_id``, and those that arrive later; call under the lock."""
        self._retracted[message_id] = retract
        self._retracted.move_to_end(message_id)
        while len(self._retracted) > RETRACTED_KEPT:
            self._retracted.popitem(last=False)
        for event in self._about.get(message_id, ()):
            event.data = retract(event.type, event.data) or event.data

    def _arrive(self, event):
        """Keep a new event, scrubbed if it is about a retracted message; call under the lock."""
        if event.type in RETRACTS and event.data.get("id") not in self._retracted:
            self._forget(event.data["id"], retraction(event.type, event.data))  # deleted in another process
        elif self._retracted and isinstance(event.data, dict):
            for key in ("id", "message_id"):
                retract = self._retracted.get(event.data.get(key))
                if retract is not None:
                    event.data = retract(event.type, event.data) or event.data
        if len(self._events) == self._events.maxlen:
            self._index(self._events[0], add=False)  # about to fall out of the log
        self._events.append(event)
        self._index(event)

    def _index(self, event, add=True):
        data = event.data
        if not isinstance(data, dict):
            return
        first, second = data.get("id"), data.get("message_id")
        for key in (first, second if second != first else None):
            if key is None:
                continue
            if add:
                self._about.setdefault(key, []).append(event)
                continue
            events = self._about.get(key, [])
            if event in events:
                events.remove(event)  # the oldest: at the front
            if not events:
                self._about.pop(key, None)

    def _start_follower(self):
        if self._follower is None:
            with self._pull_lock:
                if self._follower is None:
                    self._follower = threading.Thread(target=self._follow, name="oxc-events-follow", daemon=True)
                    self._follower.start()

    def _follow(self):
        def wake():
            try:
                self._pull()
            except StoreError as exc:
                if not self._closed:
                    log.warning("events: could not read the event log: %s", exc)

        self._log.follow(wake, lambda: self._closed)

    def chat_audience(self, chat_id: str) -> set[str]:
        """The user ids of a chat's members now."""
        return {member["user_id"] for member in self.store.members(chat_id)}

    def contacts(self, user_id: str) -> set[str]:
        """Everyone else who shares a chat with ``user_id``."""
        people = set()
        for chat_id in self.store.chat_ids(user_id):
            people.update(self.chat_audience(chat_id))
        people.discard(user_id)
        return people

    def _visible(self, event, user_id):
        if event.audience is not None and user_id not in event.audience:
            return False
        if event.chat_id is None:
            return True
        # Membership now, not at publishing: a removed member stops at once;
        # the notice of their own removal is addressed to them explicitly.
        if event.type == "member.removed" and event.data.get("user_id") == user_id:
            return True
        return self.store.get_member(event.chat_id, user_id) is not None

    def read(self, user_id: str, after: int, limit: int = 100) -> tuple[list[Event], int]:
        """(events, last seq looked at): events for ``user_id`` after seq ``after``."""
        with self._changed:
            if not self._events or self._events[-1].seq <= after:
                return [], after
            start = max(0, after - self._events[0].seq + 1)
            window = [self._events[i] for i in range(start, len(self._events))]
        found, last = [], after
        for event in window:
            last = event.seq
            if self._visible(event, user_id):
                found.append(event)
                if len(found) >= limit:
                    break
        return found, last

    def wait(self, after: int, seconds: float) -> int:
        """Block up to ``seconds`` for an event after seq ``after``."""
        with self._changed:
            if self._seq <= after and not self._closed:
                self._changed.wait(seconds)
            return self._seq

    # -- listeners and presence -----------------------------------------------

    def listen(self, user_id: str) -> None:
        """Take a listener slot for ``user_id``; UserBusy when the user holds their share, Busy when none is free."""
        self._start_timer()
        self._start_follower()
        with self._changed:
            if self.max_per_user and self._listening[user_id] >= self.max_per_user:
                raise UserBusy()
            if self._slots is not None and not self._slots.acquire(blocking=False):
                raise Busy()
            self._listening[user_id] += 1
            came_online = self._listening[user_id] == 1 and self._going_offline.pop(user_id, None) is None
        if came_online:
            self.publish("presence.online", {"user_id": user_id}, self.contacts(user_id))

    def leave(self, user_id: str) -> None:
        """Give a listener slot back; the user goes offline a little later if it was the last."""
        with self._changed:
            self._listening[user_id] -= 1
            if self._listening[user_id] <= 0:
                del self._listening[user_id]
                self._going_offline[user_id] = self.clock() + self.offline_after
        if self._slots is not None:
            self._slots.release()

    def is_online(self, user_id: str) -> bool:
        """True while the user has a listener (or left less than ``offline_after`` ago)."""
        return user_id in self._listening or user_id in self._going_offline

    # -- typing -------------------------------------------------------------------

    def typing(self, chat_id: str, user_id: str, username: str, active: bool) -> None:
        """Start or stop a typing notice; a started one stops by itself after ``typing_ttl``."""
        self._start_timer()
        key = (chat_id, user_id)
        with self._changed:
            was = key in self._typing
            if active:
                self._typing[key] = (self.clock() + self.typing_ttl, username)
            else:
                self._typing.pop(key, None)
        if active == was:
            return  # a refresh of a notice already shown, or a stop of none
        self.publish(
            "typing.started" if active else "typing.stopped",
            {"chat_id": chat_id, "user_id": user_id, "username": username},
            self.chat_audience(chat_id),
            chat_id=chat_id,
        )

    # -- timers -----------------------------------------------------------------------

    def _start_timer(self):
        if self._timer is None:
            with self._changed:
                if self._timer is None:
                    self._timer = threading.Thread(target=self._expire_forever, name="oxc-events", daemon=True)
                    self._timer.start()

    def _expire_forever(self):
        while not self._closed:
            time.sleep(0.25)
            try:
                self.expire()
            except Exception:
                log.exception("events: expiring typing and presence failed")

    def expire(self) -> None:
        """Stop typing notices and mark users offline whose time has come."""
        if self._closed:
            return
        now = self.clock()
        with self._changed:
            stale_typing = [(key, name) for key, (until, name) in self._typing.items() if until <= now]
            for key, _ in stale_typing:
                del self._typing[key]
            gone = [user for user, at in self._going_offline.items() if at <= now]
            for user in gone:
                del self._going_offline[user]
        for (chat_id, user_id), username in stale_typing:
            self.publish(
                "typing.stopped",
                {"chat_id": chat_id, "user_id": user_id, "username": username},
                self.chat_audience(chat_id),
                chat_id=chat_id,
            )
        for user_id in gone:
            try:
                self.store.touch_user(user_id, now)
            except StoreError as exc:
                log.warning("events: could not record last_seen of %s: %s", user_id, exc)
            self.publish("presence.offline", {"user_id": user_id, "last_seen": iso_time(now)}, self.contacts(user_id))

    def close(self) -> None:
        """Wake every listener so that streams end."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
