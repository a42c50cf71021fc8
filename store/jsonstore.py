"""The embedded default backend: in-memory tables and indexes over a journal.

Every table is a dict of id -> record, and every change is a list of
operations ``[kind, table, key, value]`` that goes through ``_apply``, both
live and when the journal is replayed at start-up, so recovery rebuilds the
indexes with the very code that maintains them (``json_indexes.py``).

The indexes make every query cost O(log n + page), never a scan:

- ``_public``: seqs of public messages, ascending;
- ``_private[user]``: seqs of private messages to or from a user;
- ``_sent[user]``: seqs of every message a user sent;
- ``_by_seq`` (0xC and chat messages share one rising seq), ``_by_username``,
  ``_by_email``, ``_session_by_hash``, ``_usernames`` (sorted, for prefixes);
- ``_chat_seqs[chat]``: seqs of a chat's messages (``_all_chat_seqs``: of all
  of them, for the notifier); ``_members_of[chat]`` and
  ``_chats_of[user]``; ``_direct[pair]``: the direct chat of two users;
- ``_postings[(scope, term)]``: seqs of the messages in a scope (a chat,
  ``public`` or ``user:<id>``) holding a word, so search reads only the
  postings of the scopes a user may see.

This module holds the write path (journal, undo after a failed flush,
compaction) and whole-store import and export; the queries live in mixins by
area: ``json_accounts.py`` (users, sessions, keys, codes), ``json_chats.py``
(chats, members, chat messages, search, attachments) and ``json_notices.py``
(notifications, devices, push jobs). Real-time events live in memory
(``eventlog.py``). With ``data_dir=None`` the store lives in memory only (for
embedding and tests); otherwise see ``journal.py`` for what reaches the disk
and when.
"""

import collections
import logging
import os
import threading
import time

from .base import TABLES, Store
from .blobs import Blobs
from .errors import StoreUnavailable
from .eventlog import MemoryEventLog
from .journal import SNAPSHOT, Journal
from .json_accounts import JsonAccounts
from .json_chats import JsonChats, member_key
from .json_indexes import JsonIndexes
from .json_notices import JsonNotices
from .legacy import announce_import

log = logging.getLogger("oxc.store")

#: Undo records are dropped once durable, checked in bulk when this many are kept.
UNDO_PRUNE_AT = 64


class JsonStore(JsonIndexes, JsonAccounts, JsonChats, JsonNotices, Store):
    """The JSON-file backend; see the module docstring."""

    def __init__(self, data_dir=None, compact_min=10_000, legacy_import=None, reserve=0, disk=None):
        self._lock = threading.Lock()
        self._compaction_lock = threading.Lock()
        self._tables = {name: {} for name in TABLES}
        self._next_seq = 1
        self._clear_indexes()
        self._attempts = {}  # key -> (count, window end) of the login lockout and code cool-downs
        self._used_tickets = set()  # ids of stream tickets redeemed, until they expire
        self._ticket_expiry = []  # heap of (expires_at, ticket id) over _used_tickets
        self._signing_key = None
        self._journal = None
        self._undo = collections.deque()
        self._rearming = None
        self._closed = False
        self._events = MemoryEventLog()
        if data_dir is None:
            self.blobs = Blobs(None)
            return
        journal = Journal(data_dir, compact_min=compact_min, reserve=reserve, disk=disk)
        try:
            journal.recover(self._load_snapshot, self._apply)
        except BaseException:
            journal.close()
            raise
        self._journal = journal
        self.blobs = Blobs(os.path.join(data_dir, "blobs"))
        self._sweep_blobs()
        if legacy_import is not None and self.is_empty() and not os.path.exists(os.path.join(data_dir, SNAPSHOT)):
            self.import_legacy(legacy_import(data_dir))

    @property
    def writable(self):
        return not self._closed and (self._journal is None or self._journal.problem() is None)

    def problem(self):
        """Why the store refuses writes, for people (health checks); None while it accepts them."""
        if self._closed:
            return "the store is closed"
        return None if self._journal is None else self._journal.problem()

    def close(self):
        with self._compaction_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            if self._journal is not None:
                self._journal.close()
            self.blobs.close()

    # -- the write path -----------------------------------------------------

    def _write(self, ops):
        """Journal and apply ``ops``; call under ``self._lock``. Returns a ticket."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        if self._journal is None:
            self._apply(ops)
            return None
        ticket = self._journal.append(ops)
        if len(self._undo) >= UNDO_PRUNE_AT:
            while self._undo and self._journal.is_durable(self._undo[0][0]):
                self._undo.popleft()
        # What each op replaces, so that a write whose flush fails can be taken back.
        replaced = []
        self._apply(ops, replaced)
        self._undo.append((ticket, replaced))
        # Counting the live records costs a pass over the tables: only once a compaction may be due.
        if self._journal.may_compact() and self._journal.wants_compaction(self._live_records()):
            self._journal.claim_compaction()
            threading.Thread(target=self.compact, name="oxc-compaction", daemon=True).start()
        return ticket

    def _commit(self, ops):
        """Journal and apply ``ops`` (taking the lock); return once they are durable."""
        with self._lock:
            ticket = self._write(ops)
        self._wait(ticket)

    def _change(self, table, key, changes):
        """Apply ``changes`` to the record ``key`` of ``table``; the new record, once durable."""
        with self._lock:
            record = dict(self._tables[table][key], **changes)
            ticket = self._write([("put", table, key, record)])
        self._wait(ticket)
        return record

    def _delete(self, table, key):
        """Delete the record ``key`` of ``table``; True if there was one, once durable."""
        with self._lock:
            if key not in self._tables[table]:
                return False
            ticket = self._write([("del", table, key, None)])
        self._wait(ticket)
        return True

    def _wait(self, ticket):
        """Return once the write behind ``ticket`` is durable; call without the lock."""
        if ticket is not None:
            try:
                self._journal.wait_durable(ticket)
            except StoreUnavailable:
                self._roll_back()
                raise

    def sync(self):
        """Return once every write that readers can see is durable; StoreUnavailable if one was lost.

        The app calls this before answering, so no answer ever shows a write
        that a disk error then took back.
        """
        if self._journal is not None and not self._journal.all_durable():
            self._wait(self._journal.latest())

    def _roll_back(self):
        """After a failed flush: take back every write that is not durable and start re-arming."""
        with self._lock:
            if self._journal.failed is None:
                return
            self._take_back()
            if self._rearming is None:
                self._rearming = threading.Thread(target=self._rearm_loop, name="oxc-rearm", daemon=True)
                self._rearming.start()

    def _take_back(self):
        """Undo, newest first, every write the journal lost; call under the lock."""
        durable = self._journal.discard()
        undone = 0
        while self._undo and self._undo[-1][0][1] > durable:
            _, replaced = self._undo.pop()
            self._apply(
                [
                    ("put", table, key, old) if old is not None else ("del", table, key, None)
                    for table, key, old in reversed(replaced)
                ]
            )
            undone += 1
        self._undo.clear()  # what is left is durable
        if undone:
            log.warning("store: took back %d writes that never reached the disk", undone)

    def _rearm_loop(self):
        while not self._closed and not self.rearm():
            time.sleep(1)
        self._rearming = None

    def rearm(self):
        """Accept writes again once the disk allows; True when the store accepts writes.

        Called every second after a failure; tests and operators may call it at
        once. After a failed write that was cut back cleanly the journal simply
        goes on; after a failed flush a fresh snapshot starts a new journal.
        """
        with self._compaction_lock:
            with self._lock:
                if self._closed or self._journal is None or self._journal.failed is None:
                    return True
                self._take_back()
                if not self._journal.room_to_rearm():
                    return False
                if not self._journal.doubtful:
                    self._journal.resume()
                    return True
                try:
                    generation = self._journal.restart()
                except OSError as exc:
                    log.error("store: still cannot write to %s: %s", self._journal.directory, exc)
                    return False
                snapshot = {
                    "next_seq": self._next_seq,
                    "tables": {name: dict(rows) for name, rows in self._tables.items()},
                }
            try:
                self._journal.write_snapshot(generation, snapshot, rearm=True)
            except OSError as exc:
                log.error("store: still cannot write a snapshot to %s: %s", self._journal.directory, exc)
                return False
            return True

    def _apply(self, ops, replaced=None):
        """Apply ``ops`` to the tables and indexes; ``replaced`` hears (table, key, old value) of each."""
        for kind, table, key, value in ops:
            rows = self._tables[table]
            old = rows.get(key)
            if replaced is not None:
                replaced.append((table, key, old))
            if kind == "put":
                rows[key] = value
            else:
                rows.pop(key, None)
                value = None
            getattr(self, f"_index_{table}")(old, value)

    def _live_records(self):
        return sum(len(rows) for rows in self._tables.values())

    def is_empty(self):
        return not any(self._tables.values())

    def _load_snapshot(self, snapshot):
        total = sum(len(rows) for rows in snapshot["tables"].values())
        done, next_report = 0, time.monotonic() + 2
        for table, rows in snapshot["tables"].items():
            for key, value in rows.items():
                self._apply([("put", table, key, value)])
                done += 1
                if time.monotonic() >= next_report:
                    log.info("store: indexing the snapshot: %d of %d records", done, total)
                    next_report = time.monotonic() + 2
        self._next_seq = max(self._next_seq, snapshot.get("next_seq", 1))

    def compact(self):
        """Write a snapshot of the current state and start a fresh journal."""
        if self._journal is None:
            return
        # Two snapshots written at once could land out of order.
        with self._compaction_lock:
            with self._lock:
                if self._closed or self._journal.failed is not None:
                    return
                try:
                    generation = self._journal.rotate()
                except StoreUnavailable:
                    return  # the failed flush is rolled back and re-armed by its waiters
                except OSError as exc:
                    log.error("store: could not start a new journal for compaction: %s", exc)
                    return
                snapshot = {
                    "next_seq": self._next_seq,
                    "tables": {name: dict(rows) for name, rows in self._tables.items()},
                }
            self._journal.write_snapshot(generation, snapshot)

    def import_legacy(self, legacy):
        """Take over a 0xC data directory's (users, messages, sessions), as read by ``read_legacy``."""
        announce_import(legacy)
        users, messages, sessions = legacy
        with self._lock:
            ops = [("put", "users", user["id"], user) for user in users]
            for message in messages:
                ops.append(("put", "messages", message["id"], dict(message, seq=self._next_seq)))
                self._next_seq += 1
            ops += [("put", "sessions", session["id"], session) for session in sessions]
            ticket = self._write(ops)
        self._wait(ticket)
        self.compact()
        if sessions:
            log.warning(
                "store: 0xC's tokens.json still holds raw refresh tokens; oxc keeps only "
                "their digests, so delete that file once 0xC itself is retired"
            )

    def _sweep_blobs(self):
        """Remove blob files no attachment refers to (left by a crash after a delete)."""
        for root, _, names in os.walk(self.blobs.directory):
            for name in names:
                if len(name) == 64 and name not in self._blob_users:
                    os.unlink(os.path.join(root, name))

    def _new_seq(self):
        """The next seq (0xC messages, chats, chat messages and notifications share one); under the lock."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    # -- real time --------------------------------------------------------------

    def event_log(self):
        return self._events

    # -- moving whole stores (``oxc migrate-store``) ----------------------------------

    def count_records(self):
        with self._lock:
            return {table: len(self._tables[table]) for table in TABLES}

    def export_records(self, batch=1000):
        for table in TABLES:
            with self._lock:
                rows = list(self._tables[table].items())  # the table as it is now; records are never changed in place
            for key, record in rows:
                yield table, ({"key": key, "value": record["value"]} if table == "meta" else record)

    def import_records(self, table, records):
        if table == "meta":
            ops = [("put", "meta", record["key"], {"value": record["value"]}) for record in records]
        elif table == "members":
            ops = [("put", "members", member_key(r["chat_id"], r["user_id"]), r) for r in records]
        else:
            ops = [("put", table, record["id"], record) for record in records]
        if ops:
            self._commit(ops)

    def finish_import(self, next_seq):
        with self._lock:
            self._next_seq = max(self._next_seq, next_seq)
        self.compact()  # the snapshot is where the seq to continue from is kept
