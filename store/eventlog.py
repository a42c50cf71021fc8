"""Real-time event logs: the ``EventLog`` interface, and the in-memory one of the JSON store.

Every store hands out an ``EventLog`` (``Store.event_log``); the hub
(``handlers/services/hub.py``) appends to it and follows it. PostgreSQL's is
a table every process shares (``pg_events.py``). One process owns a JSON
store, so its log needs no table: ``MemoryEventLog`` keeps a list of rows in
that process, with the same semantics. Events are not records: that log starts
empty, with a new ``epoch``, whenever the store opens, so a cursor from before
a restart is recognised as gone.

    log = MemoryEventLog()
    first = log.append("typing.started", {"chat_id": "c1"}, ["bob"], "c1", time.time())
    log.after(first - 1, 100)   # [(first, "typing.started", {...}, ["bob"], "c1", ...)]
"""

import secrets
import threading
from collections.abc import Callable, Iterable
from typing import Any

#: ``retract(event type, event data)``: the data an event about a deleted message keeps (None: unchanged).
Retract = Callable[[str, Any], Any]

#: One event of an ``EventLog``: (id, type, data, audience (user ids, None: everyone), chat id, at).
EventRow = tuple[int, str, Any, list[str] | None, str | None, float]

#: The most events kept however rarely the log is pruned (the hub prunes it as it goes).
MAX_EVENTS = 100_000


class EventLog:
    """The real-time events of one store, which ``handlers/services/hub.py`` reads and writes.

    Ids rise by one from 1; a log that lost its events starts a new ``epoch``
    (cursors name it, so a cursor into a lost log is recognised). Every process
    on the store sees the same log: the JSON store, which one process owns, keeps
    it in memory (a new epoch per start); PostgreSQL keeps it in a table that
    every process shares. The store's ``scrub_message`` rewrites its rows.
    """

    #: Names this log's run of ids (a new one when the log starts empty).
    epoch: str

    def append(self, type: str, data: Any, audience: Iterable[str] | None, chat_id: str | None, at: float) -> int:
        """Add an event; returns its id, once readers can see it."""
        raise NotImplementedError

    def newest(self) -> int:
        """The id of the newest event (0: none yet)."""
        raise NotImplementedError

    def after(self, event_id: int, limit: int) -> list[EventRow]:
        """Events with ids above ``event_id``, oldest first, at most ``limit``."""
        raise NotImplementedError

    def recent(self, limit: int) -> list[EventRow]:
        """The newest ``limit`` events, oldest first."""
        raise NotImplementedError

    def prune(self, keep: int) -> int:
        """Drop all but the newest ``keep`` events; returns how many went."""
        raise NotImplementedError

    def follow(self, wake: Callable[[], None], stopped: Callable[[], bool]) -> None:
        """Call ``wake()`` whenever events are appended (and now and then), until ``stopped()``."""
        raise NotImplementedError


class MemoryEventLog(EventLog):
    """An ``EventLog`` in this process; thread-safe, bounded to ``limit`` events."""

    def __init__(self, limit: int = MAX_EVENTS) -> None:
        self.epoch = secrets.token_hex(4)
        self.limit = limit
        self._rows: list[list[Any]] = []  # [id, type, data, audience, chat_id, at], ids rising by one
        self._last = 0
        self._changed = threading.Condition()

    def append(self, type: str, data: Any, audience: Iterable[str] | None, chat_id: str | None, at: float) -> int:
        with self._changed:
            self._last += 1
            self._rows.append([self._last, type, data, None if audience is None else sorted(audience), chat_id, at])
            # Trimmed in bulk past the limit, so an append stays O(1) on average.
            if len(self._rows) > self.limit + self.limit // 8:
                del self._rows[: len(self._rows) - self.limit]
            self._changed.notify_all()
            return self._last

    def newest(self) -> int:
        with self._changed:
            return self._last

    def after(self, event_id: int, limit: int) -> list[EventRow]:
        with self._changed:
            if not self._rows:
                return []
            start = max(0, event_id - self._rows[0][0] + 1)
            return [_row(row) for row in self._rows[start : start + limit]]

    def recent(self, limit: int) -> list[EventRow]:
        with self._changed:
            return [_row(row) for row in self._rows[-limit:]] if limit > 0 else []

    def prune(self, keep: int) -> int:
        with self._changed:
            gone = max(0, len(self._rows) - keep)
            del self._rows[:gone]
            return gone

    def follow(self, wake: Callable[[], None], stopped: Callable[[], bool]) -> None:
        seen = self.newest()
        while not stopped():
            with self._changed:
                # At least once a second, so that ``stopped`` is seen soon after it turns true.
                if self._last == seen:
                    self._changed.wait(1.0)
                seen = self._last
            wake()

    def scrub(self, message_id: str, retract: Retract) -> None:
        """Give each event about ``message_id`` (its data's ``id`` or ``message_id``) what ``retract`` answers."""
        with self._changed:
            for row in self._rows:
                data = row[2]
                if isinstance(data, dict) and message_id in (data.get("id"), data.get("message_id")):
                    replaced = retract(row[1], data)
                    if replaced is not None:
                        row[2] = replaced


def _row(row: list[Any]) -> EventRow:
    event_id, type, data, audience, chat_id, at = row
    return (event_id, type, data, audience, chat_id, at)
