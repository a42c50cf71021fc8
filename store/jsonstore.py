"""The embedded default backend: in-memory tables and indexes over a journal.

Every table is a dict of id -> record, and every change is a list of
operations ``[kind, table, key, value]`` that goes through ``_apply``, both
live and when the journal is replayed at start-up, so recovery rebuilds the
indexes with the very code that maintains them.

The indexes make every query cost O(log n + page), never a scan:

- ``_public``: seqs of public messages, ascending;
- ``_private[user]``: seqs of private messages to or from a user;
- ``_sent[user]``: seqs of every message a user sent;
- ``_by_seq``, ``_by_username``, ``_by_email``, ``_session_by_hash``.

With ``data_dir=None`` the store lives in memory only (for embedding and
tests); otherwise see ``journal.py`` for what reaches the disk and when.
"""

import bisect
import heapq
import logging
import os
import threading
import time

from .base import Page, Store
from .errors import Conflict, StoreUnavailable
from .journal import SNAPSHOT, Journal

log = logging.getLogger("oxc.store")

TABLES = ("users", "messages", "sessions")


def _insert_sorted(seqs, seq):
    if not seqs or seqs[-1] < seq:
        seqs.append(seq)
    else:
        bisect.insort(seqs, seq)


def _remove_sorted(seqs, seq):
    index = bisect.bisect_left(seqs, seq)
    if index < len(seqs) and seqs[index] == seq:
        del seqs[index]


def _exists_below(lists, seq):
    return any(bisect.bisect_left(seqs, seq) > 0 for seqs in lists)


def _exists_above(lists, seq):
    return any(bisect.bisect_right(seqs, seq) < len(seqs) for seqs in lists)


def _fold(text):
    return text.casefold() if text else text


class JsonStore(Store):
    """The JSON-file backend; see the module docstring."""

    def __init__(self, data_dir=None, compact_min=10_000, legacy_import=None):
        self._lock = threading.Lock()
        self._compaction_lock = threading.Lock()
        self._tables = {name: {} for name in TABLES}
        self._next_seq = 1
        self._by_seq = {}
        self._public = []
        self._private = {}
        self._sent = {}
        self._by_username = {}
        self._by_email = {}
        self._session_by_hash = {}
        self._journal = None
        self._closed = False
        if data_dir is None:
            return
        journal = Journal(data_dir, compact_min=compact_min)
        try:
            journal.recover(self._load_snapshot, self._apply)
        except BaseException:
            journal.close()
            raise
        self._journal = journal
        if legacy_import is not None and self._is_empty() and not os.path.exists(
                os.path.join(data_dir, SNAPSHOT)):
            self._import(legacy_import(data_dir))

    @property
    def writable(self):
        return not self._closed and (self._journal is None or self._journal.failed is None)

    def close(self):
        with self._compaction_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            if self._journal is not None:
                self._journal.close()

    # -- the write path -----------------------------------------------------

    def _write(self, ops):
        """Journal and apply ``ops``; call under ``self._lock``. Returns a ticket."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        if self._journal is None:
            self._apply(ops)
            return None
        ticket = self._journal.append(ops)
        self._apply(ops)
        if self._journal.wants_compaction(self._live_records()):
            self._journal.claim_compaction()
            threading.Thread(target=self.compact, name="oxc-compaction", daemon=True).start()
        return ticket

    def _wait(self, ticket):
        """Return once the write behind ``ticket`` is durable; call without the lock."""
        if ticket is not None:
            self._journal.wait_durable(ticket)

    def _apply(self, ops):
        for kind, table, key, value in ops:
            rows = self._tables[table]
            old = rows.get(key)
            if kind == "put":
                rows[key] = value
            else:
                rows.pop(key, None)
                value = None
            getattr(self, f"_index_{table}")(old, value)

    def _live_records(self):
        return sum(len(rows) for rows in self._tables.values())

    def _is_empty(self):
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
                if self._closed:
                    return
                generation = self._journal.rotate()
                snapshot = {
                    "next_seq": self._next_seq,
                    "tables": {name: dict(rows) for name, rows in self._tables.items()},
                }
            self._journal.write_snapshot(generation, snapshot)

    def _import(self, legacy):
        """Take over a 0xC data directory's users, messages and tokens."""
        users, messages, sessions = legacy
        log.info("store: importing a 0xC data directory: %d users, %d messages, %d tokens",
                 len(users), len(messages), len(sessions))
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
            log.warning("store: 0xC's tokens.json still holds raw refresh tokens; oxc keeps only "
                        "their digests, so delete that file once 0xC itself is retired")

    # -- indexes ------------------------------------------------------------

    def _index_users(self, old, new):
        if old is not None:
            self._by_username.pop(_fold(old["username"]), None)
            if old.get("email"):
                self._by_email.pop(_fold(old["email"]), None)
        if new is not None:
            self._by_username[_fold(new["username"])] = new["id"]
            if new.get("email"):
                self._by_email[_fold(new["email"])] = new["id"]

    def _index_messages(self, old, new):
        if old is not None:
            seq = old["seq"]
            del self._by_seq[seq]
            for seqs in self._message_lists(old):
                _remove_sorted(seqs, seq)
        if new is not None:
            seq = new["seq"]
            self._by_seq[seq] = new
            self._next_seq = max(self._next_seq, seq + 1)
            for seqs in self._message_lists(new):
                _insert_sorted(seqs, seq)

    def _message_lists(self, message):
        sender, recipient = message["user_id"], message.get("recipient_id")
        lists = [self._sent.setdefault(sender, [])]
        if recipient is None:
            lists.append(self._public)
        else:
            lists.append(self._private.setdefault(sender, []))
            if recipient != sender:
                lists.append(self._private.setdefault(recipient, []))
        return lists

    def _index_sessions(self, old, new):
        if old is not None:
            self._session_by_hash.pop(old["token_hash"], None)
        if new is not None:
            self._session_by_hash[new["token_hash"]] = new["id"]

    # -- users --------------------------------------------------------------

    def _check_unique(self, user, user_id=None):
        owner = self._by_username.get(_fold(user["username"]))
        if owner is not None and owner != user_id:
            raise Conflict("Username already exists")
        if user.get("email"):
            owner = self._by_email.get(_fold(user["email"]))
            if owner is not None and owner != user_id:
                raise Conflict("Email already registered")

    def create_user(self, user):
        with self._lock:
            self._check_unique(user)
            ticket = self._write([("put", "users", user["id"], user)])
        self._wait(ticket)
        return user

    def get_user(self, user_id):
        return self._tables["users"].get(user_id)

    def find_user(self, username):
        user_id = self._by_username.get(_fold(username))
        return None if user_id is None else self._tables["users"].get(user_id)

    def update_user(self, user_id, changes):
        with self._lock:
            user = dict(self._tables["users"][user_id], **changes)
            self._check_unique(user, user_id)
            ticket = self._write([("put", "users", user_id, user)])
        self._wait(ticket)
        return user

    # -- messages -------------------------------------------------------------

    def add_message(self, message):
        with self._lock:
            message = dict(message, seq=self._next_seq)
            ticket = self._write([("put", "messages", message["id"], message)])
        self._wait(ticket)
        return message

    def get_message(self, message_id):
        return self._tables["messages"].get(message_id)

    def delete_message(self, message_id):
        with self._lock:
            message = self._tables["messages"].get(message_id)
            if message is None:
                return None
            ticket = self._write([("del", "messages", message_id, None)])
        self._wait(ticket)
        return message

    def visible_messages(self, user_id, before=None, after=None, limit=50):
        with self._lock:
            return self._page([self._public, self._private.get(user_id, [])], before, after, limit)

    def sent_messages(self, user_id, before=None, after=None, limit=50):
        with self._lock:
            return self._page([self._sent.get(user_id, [])], before, after, limit)

    def _page(self, lists, before, after, limit):
        if after is not None:
            chunks = []
            for seqs in lists:
                start = bisect.bisect_right(seqs, after)
                chunks.append(seqs[start:start + limit])
            picked = list(heapq.merge(*chunks))[:limit]
        else:
            chunks = []
            for seqs in lists:
                end = len(seqs) if before is None else bisect.bisect_left(seqs, before)
                chunks.append(seqs[max(0, end - limit):end])
            picked = list(heapq.merge(*chunks))[-limit:] if limit else []
        if picked:
            older = _exists_below(lists, picked[0])
            newer = _exists_above(lists, picked[-1])
        elif after is not None:
            older, newer = _exists_below(lists, after + 1), False
        elif before is not None:
            older, newer = False, _exists_above(lists, before - 1)
        else:
            older = newer = False
        return Page([self._by_seq[seq] for seq in picked], older, newer)

    # -- sessions -------------------------------------------------------------

    def add_session(self, session):
        with self._lock:
            ticket = self._write([("put", "sessions", session["id"], session)])
        self._wait(ticket)
        return session

    def get_session(self, session_id):
        return self._tables["sessions"].get(session_id)

    def find_session(self, token_hash):
        session_id = self._session_by_hash.get(token_hash)
        return None if session_id is None else self._tables["sessions"].get(session_id)

    def rotate_session(self, session_id, token_hash, new_hash, now, expires_at):
        with self._lock:
            session = self._tables["sessions"].get(session_id)
            if session is None or session["token_hash"] != token_hash:
                return None
            session = dict(session, token_hash=new_hash, previous_hash=token_hash,
                           rotated_at=now, expires_at=expires_at)
            ticket = self._write([("put", "sessions", session_id, session)])
        self._wait(ticket)
        return session

    def delete_session(self, session_id):
        with self._lock:
            if session_id not in self._tables["sessions"]:
                return False
            ticket = self._write([("del", "sessions", session_id, None)])
        self._wait(ticket)
        return True

    def delete_user_sessions(self, user_id, keep=None):
        with self._lock:
            doomed = [key for key, session in self._tables["sessions"].items()
                      if session["user_id"] == user_id and key != keep]
            if not doomed:
                return 0
            ticket = self._write([("del", "sessions", key, None) for key in doomed])
        self._wait(ticket)
        return len(doomed)
