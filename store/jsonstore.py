"""The embedded default backend: in-memory tables and indexes over a journal.

Every table is a dict of id -> record, and every change is a list of
operations ``[kind, table, key, value]`` that goes through ``_apply``, both
live and when the journal is replayed at start-up, so recovery rebuilds the
indexes with the very code that maintains them.

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

With ``data_dir=None`` the store lives in memory only (for embedding and
tests); otherwise see ``journal.py`` for what reaches the disk and when.
"""

import bisect
import collections
import contextlib
import heapq
import itertools
import logging
import os
import threading
import time

from .base import (
    UNCHECKED,
    Page,
    Store,
    dropped_attachment,
    member_updates,
    push_message_ids,
    search_terms,
    without_preview,
)
from .blobs import Blobs
from .errors import Conflict, Missing, QuotaExceeded, StoreCorrupt, StoreUnavailable
from .files import write_new
from .journal import SNAPSHOT, Journal

log = logging.getLogger("oxc.store")

#: Undo records are dropped once durable, checked in bulk when this many are kept.
UNDO_PRUNE_AT = 64
#: The file under the data directory that keeps the generated signing key.
SIGNING_KEY = "signing.key"
MIN_SIGNING_KEY_BYTES = 32
#: Seconds a used ticket is remembered past its expiry (clocks of processes may disagree a little).
TICKET_MEMORY = 300
TABLES = (
    "users",
    "messages",
    "sessions",
    "chats",
    "members",
    "chat_messages",
    "attachments",
    "keys",
    "codes",
    "notifications",
    "devices",
    "push_jobs",
    "meta",
)


def member_key(chat_id, user_id):
    return f"{chat_id}:{user_id}"


def pair_key(first, second):
    return "|".join(sorted((first, second)))


def _insert_sorted(seqs, seq):
    if not seqs or seqs[-1] < seq:
        seqs.append(seq)
    else:
        bisect.insort(seqs, seq)


def _remove_sorted(seqs, seq):
    index = bisect.bisect_left(seqs, seq)
    if index < len(seqs) and seqs[index] == seq:
        del seqs[index]


def _contains(seqs, seq):
    index = bisect.bisect_left(seqs, seq)
    return index < len(seqs) and seqs[index] == seq


def _exists_below(lists, seq):
    return any(bisect.bisect_left(seqs, seq) > 0 for seqs in lists)


def _exists_above(lists, seq):
    return any(bisect.bisect_right(seqs, seq) < len(seqs) for seqs in lists)


def _remove_name(names, name):
    index = bisect.bisect_left(names, name)
    if index < len(names) and names[index] == name:
        del names[index]


def _remove_job(pending, job):
    entry = (job["next_attempt_at"], job["id"])
    index = bisect.bisect_left(pending, entry)
    if index < len(pending) and pending[index] == entry:
        del pending[index]


def _fold(text):
    return text.casefold() if text else text


class JsonStore(Store):
    """The JSON-file backend; see the module docstring."""

    def __init__(self, data_dir=None, compact_min=10_000, legacy_import=None, reserve=0, disk=None):
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
        self._usernames = []
        self._chat_seqs = {}
        self._all_chat_seqs = []
        self._members_of = {}
        self._chats_of = {}
        self._direct = {}
        self._postings = {}
        self._blob_users = {}
        self._pending_blobs = collections.Counter()
        self._chat_attachments = {}
        self._user_keys = {}
        self._notes_of = {}
        self._unread_notes = {}
        self._devices_of = {}
        self._pending_push = []
        self._notes_about = {}  # message id -> ids of the notifications about it
        self._jobs_about = {}  # message id -> ids of the push jobs carrying notifications about it
        self._attachment_bytes = collections.Counter()  # per uploader; thumbnails not counted
        self._attempts = {}  # key -> (count, window end) of the login lockout and code cool-downs
        self._used_tickets = set()  # ids of stream tickets redeemed, until they expire
        self._ticket_expiry = []  # heap of (expires_at, ticket id) over _used_tickets
        self._signing_key = None
        self._journal = None
        self._undo = collections.deque()
        self._rearming = None
        self._closed = False
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
        if legacy_import is not None and self._is_empty() and not os.path.exists(os.path.join(data_dir, SNAPSHOT)):
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
        users, messages, sessions = legacy
        log.info(
            "store: importing a 0xC data directory: %d users, %d messages, %d tokens",
            len(users),
            len(messages),
            len(sessions),
        )
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

    # -- indexes ------------------------------------------------------------

    def _index_users(self, old, new):
        if old is not None:
            self._by_username.pop(_fold(old["username"]), None)
            _remove_name(self._usernames, _fold(old["username"]))
            if old.get("email"):
                self._by_email.pop(_fold(old["email"]), None)
        if new is not None:
            self._by_username[_fold(new["username"])] = new["id"]
            bisect.insort(self._usernames, _fold(new["username"]))
            if new.get("email"):
                self._by_email[_fold(new["email"])] = new["id"]

    def _index_messages(self, old, new):
        if old is not None:
            seq = old["seq"]
            del self._by_seq[seq]
            for seqs in self._message_lists(old):
                _remove_sorted(seqs, seq)
            self._index_terms(self._message_scopes(old), old.get("content"), seq, _remove_sorted)
        if new is not None:
            seq = new["seq"]
            self._by_seq[seq] = new
            self._next_seq = max(self._next_seq, seq + 1)
            for seqs in self._message_lists(new):
                _insert_sorted(seqs, seq)
            self._index_terms(self._message_scopes(new), new.get("content"), seq, _insert_sorted)

    def _message_scopes(self, message):
        sender, recipient = message["user_id"], message.get("recipient_id")
        if recipient is None:
            return ("public",)
        return {f"user:{sender}", f"user:{recipient}"}

    def _index_terms(self, scopes, text, seq, change):
        if not text:
            return
        for term in search_terms(text):
            for scope in scopes:
                seqs = self._postings.setdefault((scope, term), [])
                change(seqs, seq)
                if not seqs:
                    del self._postings[(scope, term)]

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

    def _index_chats(self, old, new):
        if old is not None and old["type"] == "direct":
            self._direct.pop(pair_key(*old["pair"]), None)
        if new is not None:
            self._next_seq = max(self._next_seq, new["seq"] + 1)
            self._members_of.setdefault(new["id"], {})
            self._chat_seqs.setdefault(new["id"], [])
            if new["type"] == "direct":
                self._direct[pair_key(*new["pair"])] = new["id"]
        elif old is not None:
            self._members_of.pop(old["id"], None)
            self._chat_seqs.pop(old["id"], None)

    def _index_members(self, old, new):
        if old is not None and new is None:
            self._members_of.get(old["chat_id"], {}).pop(old["user_id"], None)
            self._chats_of.get(old["user_id"], set()).discard(old["chat_id"])
        if new is not None:
            # Replaced in place, so a chat's members stay in the order they joined.
            self._members_of.setdefault(new["chat_id"], {})[new["user_id"]] = new
            self._chats_of.setdefault(new["user_id"], set()).add(new["chat_id"])

    def _index_chat_messages(self, old, new):
        if old is not None:
            self._by_seq.pop(old["seq"], None)
            _remove_sorted(self._chat_seqs.get(old["chat_id"], []), old["seq"])
            _remove_sorted(self._all_chat_seqs, old["seq"])
            self._index_terms((old["chat_id"],), self._searchable(old), old["seq"], _remove_sorted)
        if new is not None:
            seq = new["seq"]
            self._by_seq[seq] = new
            self._next_seq = max(self._next_seq, seq + 1)
            _insert_sorted(self._chat_seqs.setdefault(new["chat_id"], []), seq)
            _insert_sorted(self._all_chat_seqs, seq)
            self._index_terms((new["chat_id"],), self._searchable(new), seq, _insert_sorted)

    def _index_attachments(self, old, new):
        for record, change, sign in ((old, "discard", -1), (new, "add", 1)):
            if record is None:
                continue
            for digest in filter(None, (record["sha256"], record.get("thumbnail_sha256"))):
                users = self._blob_users.setdefault(digest, set())
                getattr(users, change)(record["id"])
                if not users:
                    del self._blob_users[digest]
            getattr(self._chat_attachments.setdefault(record["chat_id"], set()), change)(record["id"])
            uploader = record.get("uploader_id")
            if uploader is not None:
                self._attachment_bytes[uploader] += sign * (record.get("size") or 0)
                if not self._attachment_bytes[uploader]:
                    del self._attachment_bytes[uploader]

    def _index_keys(self, old, new):
        if old is not None:
            self._user_keys.get(old["user_id"], {}).pop(old["id"], None)
        if new is not None:
            self._user_keys.setdefault(new["user_id"], {})[new["id"]] = new

    def _index_notifications(self, old, new):
        for record, change in ((old, _remove_sorted), (new, _insert_sorted)):
            if record is None:
                continue
            self._next_seq = max(self._next_seq, record["seq"] + 1)
            change(self._notes_of.setdefault(record["user_id"], []), record["seq"])
            if not record["read"]:
                change(self._unread_notes.setdefault(record["user_id"], []), record["seq"])
            if change is _insert_sorted:
                self._by_seq[record["seq"]] = record
            else:
                self._by_seq.pop(record["seq"], None)
        self._index_about(
            self._notes_about, old, new, lambda note: [note["message_id"]] if note.get("message_id") else []
        )

    @staticmethod
    def _index_about(index, old, new, message_ids):
        """Keep ``index`` (message id -> record ids) up to date with one record's change."""
        for record, change in ((old, "discard"), (new, "add")):
            if record is None:
                continue
            for message_id in message_ids(record):
                ids = index.setdefault(message_id, set())
                getattr(ids, change)(record["id"])
                if not ids:
                    del index[message_id]

    def _index_devices(self, old, new):
        if old is not None:
            self._devices_of.get(old["user_id"], {}).pop(old["id"], None)
        if new is not None:
            self._devices_of.setdefault(new["user_id"], {})[new["id"]] = new

    def _index_push_jobs(self, old, new):
        if old is not None and old["status"] == "pending":
            _remove_job(self._pending_push, old)
        if new is not None and new["status"] == "pending":
            bisect.insort(self._pending_push, (new["next_attempt_at"], new["id"]))
        self._index_about(self._jobs_about, old, new, push_message_ids)

    def _index_codes(self, old, new):
        pass

    def _index_meta(self, old, new):
        pass

    def _sweep_blobs(self):
        """Remove blob files no attachment refers to (left by a crash after a delete)."""
        for root, _, names in os.walk(self.blobs.directory):
            for name in names:
                if len(name) == 64 and name not in self._blob_users:
                    os.unlink(os.path.join(root, name))

    @staticmethod
    def _searchable(message):
        return None if message.get("deleted") or message.get("encrypted") else message.get("content")

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

    def find_user_by_email(self, address):
        user_id = self._by_email.get(_fold(address))
        return None if user_id is None else self._tables["users"].get(user_id)

    def update_user(self, user_id, changes, expected=None):
        with self._lock:
            user = self._tables["users"][user_id]
            if expected and any(user.get(name) != value for name, value in expected.items()):
                return None
            user = dict(user, **changes)
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
                chunks.append(seqs[start : start + limit])
            picked = list(heapq.merge(*chunks))[:limit]
        else:
            chunks = []
            for seqs in lists:
                end = len(seqs) if before is None else bisect.bisect_left(seqs, before)
                chunks.append(seqs[max(0, end - limit) : end])
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

    def add_session(self, session, password_hash=None):
        with self._lock:
            if password_hash is not None:
                user = self._tables["users"].get(session["user_id"])
                if user is None or user.get("password_hash") != password_hash:
                    return None
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
            session = dict(
                session, token_hash=new_hash, previous_hash=token_hash, rotated_at=now, expires_at=expires_at
            )
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
            doomed = [
                key
                for key, session in self._tables["sessions"].items()
                if session["user_id"] == user_id and key != keep
            ]
            if not doomed:
                return 0
            ticket = self._write([("del", "sessions", key, None) for key in doomed])
        self._wait(ticket)
        return len(doomed)

    # -- the signing key and stream tickets -------------------------------------
    # The key is a file of its own (mode 0600) beside the journal, never a record:
    # backups and exports do not carry it. Used tickets are kept in memory only:
    # one process owns the store, and a ticket lives a minute.

    def signing_key(self, candidate):
        with self._lock:
            if self._signing_key is None:
                self._signing_key = self._read_signing_key(candidate)
            return self._signing_key

    def _read_signing_key(self, candidate):
        if self._journal is None:
            return candidate, None
        path = os.path.abspath(os.path.join(self._journal.directory, SIGNING_KEY))
        write_new(path, (candidate + "\n").encode("utf-8"))
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
        if len(key.encode("utf-8")) < MIN_SIGNING_KEY_BYTES:
            raise StoreCorrupt(
                f"{path} holds no usable signing key; remove it to have a new one generated "
                "(everyone's access tokens then end; refresh tokens keep working)"
            )
        if os.stat(path).st_mode & 0o077:
            log.warning("store: %s is readable by others; make it private: chmod 600 %s", path, path)
        return key, path

    def use_ticket(self, ticket_id, expires_at, now):
        with self._lock:
            expiry = self._ticket_expiry
            while expiry and expiry[0][0] < now - TICKET_MEMORY:
                self._used_tickets.discard(heapq.heappop(expiry)[1])
            if ticket_id in self._used_tickets:
                return False
            self._used_tickets.add(ticket_id)
            heapq.heappush(expiry, (expires_at, ticket_id))
            return True

    # -- people ---------------------------------------------------------------

    def touch_user(self, user_id, seconds):
        with self._lock:
            user = self._tables["users"].get(user_id)
            if user is None:
                return None
            user = dict(user, last_seen=seconds)
            # Not waited for: losing the last few seconds of "last seen" to a
            # crash is harmless, and a flush per request is not.
            self._write([("put", "users", user_id, user)])
            return user

    def users_by_prefix(self, prefix, limit=20, after=None):
        prefix = _fold(prefix)
        with self._lock:
            start = bisect.bisect_left(self._usernames, prefix)
            if after is not None:
                start = max(start, bisect.bisect_right(self._usernames, _fold(after)))
            found = []
            for name in itertools.islice(self._usernames, start, None):
                if not name.startswith(prefix) or len(found) > limit:
                    break
                found.append(self._tables["users"][self._by_username[name]])
        return found[:limit], len(found) > limit

    # -- chats ----------------------------------------------------------------

    def _new_seq(self):
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def create_chat(self, chat, members):
        with self._lock:
            chat = dict(chat, seq=self._new_seq())
            ops = [("put", "chats", chat["id"], chat)]
            ops += [
                ("put", "members", member_key(chat["id"], m["user_id"]), dict(m, chat_id=chat["id"])) for m in members
            ]
            ticket = self._write(ops)
        self._wait(ticket)
        return chat

    def direct_chat(self, chat, first, second):
        with self._lock:
            existing = self._direct.get(pair_key(first["user_id"], second["user_id"]))
            if existing is not None:
                return self._tables["chats"][existing], False
            chat = dict(chat, seq=self._new_seq(), pair=sorted((first["user_id"], second["user_id"])))
            ops = [("put", "chats", chat["id"], chat)]
            ops += [
                ("put", "members", member_key(chat["id"], m["user_id"]), dict(m, chat_id=chat["id"]))
                for m in (first, second)
            ]
            ticket = self._write(ops)
        self._wait(ticket)
        return chat, True

    def get_chat(self, chat_id):
        return self._tables["chats"].get(chat_id)

    def update_chat(self, chat_id, changes):
        with self._lock:
            chat = dict(self._tables["chats"][chat_id], **changes)
            ticket = self._write([("put", "chats", chat_id, chat)])
        self._wait(ticket)
        return chat

    def delete_chat(self, chat_id):
        with self._lock:
            if chat_id not in self._tables["chats"]:
                return False
            ops, attachments = self._chat_removal(chat_id)
            ticket = self._write(ops)
            orphans = self._orphaned(attachments)
        self._wait(ticket)
        self._unlink(orphans)
        return True

    def _chat_removal(self, chat_id):
        """(ops, attachment records) that remove a chat with everything in it (under the lock)."""
        ops = [("del", "chat_messages", self._by_seq[seq]["id"], None) for seq in self._chat_seqs.get(chat_id, ())]
        ops += [("del", "members", member_key(chat_id, user_id), None) for user_id in self._members_of.get(chat_id, {})]
        attachments = [self._tables["attachments"][key] for key in self._chat_attachments.get(chat_id, ())]
        ops += [("del", "attachments", record["id"], None) for record in attachments]
        ops.append(("del", "chats", chat_id, None))
        return ops, attachments

    def change_chat(self, chat_id, user_ids, decide):
        user_ids = list(dict.fromkeys(user_ids))
        with self._lock:
            chat = self._tables["chats"].get(chat_id)
            members = self._members_of.get(chat_id, {}) if chat is not None else {}
            current = {user_id: members.get(user_id) for user_id in user_ids}
            change = decide(chat, dict(current), len(members))
            if change is None:
                return chat, current
            if chat is None:
                raise Missing(f"chat {chat_id} is gone")
            updates = member_updates(change, user_ids)
            after = {user_id: members.get(user_id) for user_id in user_ids}
            ops = []
            for user_id, record in updates.items():
                if record is not None:
                    record = after[user_id] = dict(record, chat_id=chat_id, user_id=user_id)
                    ops.append(("put", "members", member_key(chat_id, user_id), record))
                elif user_id in members:
                    after[user_id] = None
                    ops.append(("del", "members", member_key(chat_id, user_id), None))
            remaining = {uid for uid in {*members, *updates} if updates.get(uid, members.get(uid)) is not None}
            if change.delete or (updates and not remaining):
                ops, attachments = self._chat_removal(chat_id)
                chat, after = None, dict.fromkeys(user_ids)
            else:
                attachments = []
                if change.chat:
                    chat = dict(chat, **change.chat)
                    ops.append(("put", "chats", chat_id, chat))
            ticket = self._write(ops) if ops else None
            orphans = self._orphaned(attachments)
        self._wait(ticket)
        self._unlink(orphans)
        return chat, after

    def _orphaned(self, removed):
        """Digests of ``removed`` attachments that nothing refers to any more (under the lock)."""
        digests = set()
        for record in removed:
            digests.update(filter(None, (record["sha256"], record.get("thumbnail_sha256"))))
        return [digest for digest in digests if self._unused(digest)]

    def _unused(self, digest):
        return digest not in self._blob_users and not self._pending_blobs[digest]

    def _unlink(self, digests):
        # Only after the journal says the records are gone: a crash in between
        # leaves an orphan file (swept at start), never a record without bytes.
        # Checked again under the lock: the same bytes may have been uploaded anew.
        with self._lock:
            for digest in digests:
                if self._unused(digest):
                    self.blobs.delete(digest)

    @contextlib.contextmanager
    def _installing(self, digest):
        with self._lock:
            yield
            self._pending_blobs[digest] += 1

    def _claim_blobs(self, record):
        """The record now refers to its blobs: they are no longer merely pending (under the lock)."""
        for digest in filter(None, (record.get("sha256"), record.get("thumbnail_sha256"))):
            if self._pending_blobs[digest] > 0:
                self._pending_blobs[digest] -= 1

    def _activity(self, chat_id):
        seqs = self._chat_seqs.get(chat_id)
        return seqs[-1] if seqs else self._tables["chats"][chat_id]["seq"]

    def chat_ids(self, user_id):
        with self._lock:
            return set(self._chats_of.get(user_id, ()))

    def user_chats(self, user_id, limit=50, before=None):
        with self._lock:
            ranked = sorted(
                ((self._activity(chat_id), chat_id) for chat_id in self._chats_of.get(user_id, ())), reverse=True
            )
            if before is not None and before in self._tables["chats"]:
                cursor = (self._activity(before), before)
                ranked = [entry for entry in ranked if entry < cursor]
            chats = [self._tables["chats"][chat_id] for _, chat_id in ranked[:limit]]
        return chats, len(ranked) > limit

    # -- members --------------------------------------------------------------

    def get_member(self, chat_id, user_id):
        return self._members_of.get(chat_id, {}).get(user_id)

    def members(self, chat_id):
        with self._lock:
            return list(self._members_of.get(chat_id, {}).values())

    def add_member(self, member):
        with self._lock:
            if member["user_id"] in self._members_of.get(member["chat_id"], {}):
                raise Conflict("User is already a member of this chat")
            ticket = self._write([("put", "members", member_key(member["chat_id"], member["user_id"]), member)])
        self._wait(ticket)
        return member

    def update_members(self, updates):
        with self._lock:
            records = [
                dict(self._members_of[chat_id][user_id], **changes) for (chat_id, user_id), changes in updates.items()
            ]
            ticket = self._write([("put", "members", member_key(r["chat_id"], r["user_id"]), r) for r in records])
        self._wait(ticket)
        return records

    def remove_member(self, chat_id, user_id):
        with self._lock:
            if user_id not in self._members_of.get(chat_id, {}):
                return False
            ticket = self._write([("del", "members", member_key(chat_id, user_id), None)])
        self._wait(ticket)
        return True

    # -- messages in chats ----------------------------------------------------

    def add_chat_message(self, message):
        chat_id, attachment_id = message["chat_id"], message.get("attachment_id")
        with self._lock:
            author = self._members_of.get(chat_id, {}).get(message["user_id"])
            if author is None:
                raise Missing(f"{message['user_id']} is not a member of chat {chat_id}")
            attachment = self._tables["attachments"].get(attachment_id) if attachment_id else None
            if attachment_id and (
                attachment is None or attachment["chat_id"] != chat_id or attachment.get("message_id") is not None
            ):
                raise Conflict(f"attachment {attachment_id} is not an unsent attachment of chat {chat_id}")
            message = dict(message, seq=self._new_seq())
            ops = [("put", "chat_messages", message["id"], message)]
            if attachment is not None:
                ops.append(("put", "attachments", attachment_id, dict(attachment, message_id=message["id"])))
            ops.append(
                (
                    "put",
                    "members",
                    member_key(chat_id, message["user_id"]),
                    dict(
                        author,
                        read_seq=message["seq"],
                        delivered_seq=max(author.get("delivered_seq", 0), message["seq"]),
                    ),
                )
            )
            ticket = self._write(ops)
        self._wait(ticket)
        return message

    def get_chat_message(self, message_id):
        return self._tables["chat_messages"].get(message_id)

    def update_chat_message(self, message_id, changes):
        with self._lock:
            message = dict(self._tables["chat_messages"][message_id], **changes)
            ticket = self._write([("put", "chat_messages", message_id, message)])
        self._wait(ticket)
        return message

    def change_chat_message(self, message_id, user_id, decide):
        with self._lock:
            old = self._tables["chat_messages"].get(message_id)
            member = self._members_of.get(old["chat_id"], {}).get(user_id) if old is not None else None
            changes = decide(old, member)
            if not changes:
                return old
            if old is None:
                raise Missing(f"chat message {message_id} is gone")
            message = dict(old, **changes)
            ops = [("put", "chat_messages", message_id, message)]
            dropped = self._tables["attachments"].get(dropped_attachment(old, message))
            if dropped is not None:
                ops.append(("del", "attachments", dropped["id"], None))
            ticket = self._write(ops)
            orphans = self._orphaned([dropped] if dropped is not None else [])
        self._wait(ticket)
        self._unlink(orphans)
        return message

    def chat_history(self, chat_id, before=None, after=None, limit=50):
        with self._lock:
            return self._page([self._chat_seqs.get(chat_id, [])], before, after, limit)

    def unread_count(self, chat_id, user_id):
        with self._lock:
            member = self._members_of.get(chat_id, {}).get(user_id)
            seqs = self._chat_seqs.get(chat_id, [])
            read = member.get("read_seq", 0) if member else 0
            return len(seqs) - bisect.bisect_right(seqs, read)

    def search(self, scopes, terms, before=None, limit=20):
        terms = sorted(set(terms))
        if not terms:
            return [], False
        with self._lock:
            streams = []
            for scope in scopes:
                lists = [self._postings.get((scope, term)) for term in terms]
                if all(lists):
                    streams.append(self._matches(lists, before))
            found = list(itertools.islice(heapq.merge(*streams, reverse=True), limit + 1))
            return [self._by_seq[seq] for seq in found[:limit]], len(found) > limit

    @staticmethod
    def _matches(lists, before):
        """Seqs in every one of ``lists`` (postings of one scope), newest first, below ``before``."""
        lists.sort(key=len)
        rarest, others = lists[0], lists[1:]
        end = len(rarest) if before is None else bisect.bisect_left(rarest, before)
        for index in range(end - 1, -1, -1):
            seq = rarest[index]
            if all(_contains(other, seq) for other in others):
                yield seq

    # -- attachments and blobs --------------------------------------------------

    def save_blob(self, read, limit):
        return self.blobs.put(read, limit, self._installing)

    def save_blob_bytes(self, data):
        return self.blobs.put_bytes(data, self._installing)

    def discard_blob(self, digest):
        with self._lock:
            if self._pending_blobs[digest] > 0:
                self._pending_blobs[digest] -= 1
            if self._unused(digest):
                self.blobs.delete(digest)

    def open_blob(self, digest):
        return self.blobs.open(digest)

    def add_attachment(self, attachment, quota=0):
        with self._lock:
            if attachment["chat_id"] not in self._tables["chats"]:
                raise Missing(f"chat {attachment['chat_id']} is gone")
            if quota:
                used = self._attachment_bytes[attachment.get("uploader_id")]
                if used + (attachment.get("size") or 0) > quota:
                    raise QuotaExceeded(used, quota)
            ticket = self._write([("put", "attachments", attachment["id"], attachment)])
        self._wait(ticket)
        # Claimed only once durable: a write taken back after a failed flush leaves its
        # blobs pending, for the uploader to discard.
        with self._lock:
            self._claim_blobs(attachment)
        return attachment

    def attachment_usage(self, user_id):
        with self._lock:
            return self._attachment_bytes[user_id]

    def get_attachment(self, attachment_id):
        return self._tables["attachments"].get(attachment_id)

    def update_attachment(self, attachment_id, changes):
        with self._lock:
            record = dict(self._tables["attachments"][attachment_id], **changes)
            ticket = self._write([("put", "attachments", attachment_id, record)])
            self._claim_blobs({"thumbnail_sha256": changes.get("thumbnail_sha256")})
        self._wait(ticket)
        return record

    def delete_attachment(self, attachment_id, unsent_only=False):
        with self._lock:
            record = self._tables["attachments"].get(attachment_id)
            if record is None or (unsent_only and record.get("message_id") is not None):
                return False
            ticket = self._write([("del", "attachments", attachment_id, None)])
            orphans = self._orphaned([record])
        self._wait(ticket)
        self._unlink(orphans)
        return True

    # -- public keys --------------------------------------------------------------

    def add_key(self, key):
        with self._lock:
            ticket = self._write([("put", "keys", key["id"], key)])
        self._wait(ticket)
        return key

    def get_key(self, key_id):
        return self._tables["keys"].get(key_id)

    def user_keys(self, user_id):
        with self._lock:
            return sorted(self._user_keys.get(user_id, {}).values(), key=lambda key: key["created_at"])

    def change_user_keys(self, user_id, decide):
        with self._lock:
            own = self._user_keys.get(user_id, {})
            added, changes = decide(sorted(own.values(), key=lambda key: key["created_at"]))
            changed = [dict(own[key_id], **change) for key_id, change in changes.items()]
            ops = [("put", "keys", key["id"], key) for key in [*added, *changed]]
            ticket = self._write(ops) if ops else None
        self._wait(ticket)
        return added, changed

    def update_key(self, key_id, changes):
        with self._lock:
            key = dict(self._tables["keys"][key_id], **changes)
            ticket = self._write([("put", "keys", key_id, key)])
        self._wait(ticket)
        return key

    # -- one-time codes ---------------------------------------------------------------

    def put_code(self, code):
        with self._lock:
            ticket = self._write([("put", "codes", code["id"], code)])
        self._wait(ticket)
        return code

    def get_code(self, code_id):
        return self._tables["codes"].get(code_id)

    def delete_code(self, code_id, code_hash=None):
        with self._lock:
            code = self._tables["codes"].get(code_id)
            if code is None or (code_hash is not None and code["code_hash"] != code_hash):
                return False
            ticket = self._write([("del", "codes", code_id, None)])
        self._wait(ticket)
        return True

    def spend_code(self, code_id, now, max_attempts):
        with self._lock:
            code = self._tables["codes"].get(code_id)
            if code is None:
                return None
            if code["expires_at"] < now or code["attempts"] >= max_attempts:
                ticket = self._write([("del", "codes", code_id, None)])
                code = None
            else:
                code = dict(code, attempts=code["attempts"] + 1)
                ticket = self._write([("put", "codes", code_id, code)])
        self._wait(ticket)
        return code

    # -- attempts ---------------------------------------------------------------------------
    # In memory, not journaled: they hold one process's lockouts for minutes, and a
    # journal record (and fsync) per failed login would buy only that a restart,
    # which takes the operator, does not lift them.

    def count_attempt(self, key, now, window):
        with self._lock:
            if len(self._attempts) > 10_000:
                for stale in [name for name, (_, ends) in self._attempts.items() if ends <= now]:
                    del self._attempts[stale]
            count, ends = self._attempts.get(key, (0, now))
            if ends <= now:
                count, ends = 0, now + window
            self._attempts[key] = (count + 1, ends)
            return count + 1, ends

    def take_back_attempt(self, key):
        with self._lock:
            count, ends = self._attempts.get(key, (0, 0))
            if count > 0:
                self._attempts[key] = (count - 1, ends)

    def clear_attempts(self, key):
        with self._lock:
            self._attempts.pop(key, None)

    # -- notifications --------------------------------------------------------------------

    def add_notifications(self, notifications, push_jobs=(), max_pending=0, mark=None, expected=UNCHECKED):
        if not notifications and not push_jobs and mark is None:
            return [], [], []
        with self._lock:
            if expected is not UNCHECKED and self.get_meta("notified_seq") != expected:
                raise Conflict("The notification mark has moved")
            records = [dict(note, seq=self._new_seq()) for note in notifications]
            room = max(0, max_pending - len(self._pending_push))
            accepted = [dict(job, status="pending") for job in push_jobs[:room]]
            refused = [dict(job, status="dead", last_error="the push queue is full") for job in push_jobs[room:]]
            ops = [("put", "notifications", note["id"], note) for note in records]
            ops += [("put", "push_jobs", job["id"], job) for job in accepted + refused]
            if mark is not None:
                ops.append(("put", "meta", "notified_seq", {"value": mark}))
            ticket = self._write(ops)
        self._wait(ticket)
        return records, accepted, refused

    def get_meta(self, key):
        record = self._tables["meta"].get(key)
        return None if record is None else record["value"]

    def latest_seq(self):
        with self._lock:
            return self._next_seq - 1

    def chat_messages_after(self, seq, limit=100):
        with self._lock:
            start = bisect.bisect_right(self._all_chat_seqs, seq)
            return [self._by_seq[number] for number in self._all_chat_seqs[start : start + limit]]

    def get_notification(self, notification_id):
        return self._tables["notifications"].get(notification_id)

    def user_notifications(self, user_id, before=None, limit=50, kind=None, unread_only=False):
        with self._lock:
            seqs = (self._unread_notes if unread_only else self._notes_of).get(user_id, [])
            end = len(seqs) if before is None else bisect.bisect_left(seqs, before)
            found = []
            for index in range(end - 1, -1, -1):
                note = self._by_seq[seqs[index]]
                if kind is None or note["kind"] == kind:
                    found.append(note)
                    if len(found) > limit:
                        break
        return found[:limit], len(found) > limit

    def unread_notification_count(self, user_id):
        with self._lock:
            return len(self._unread_notes.get(user_id, ()))

    def mark_notifications_read(self, user_id, notification_ids=None):
        with self._lock:
            unread = [self._by_seq[seq] for seq in self._unread_notes.get(user_id, ())]
            if notification_ids is not None:
                wanted = set(notification_ids)
                unread = [note for note in unread if note["id"] in wanted]
            if not unread:
                return 0
            ticket = self._write([("put", "notifications", note["id"], dict(note, read=True)) for note in unread])
        self._wait(ticket)
        return len(unread)

    def scrub_message(self, message_id, retract):
        # Events live in the process (handlers/hub.py), not here: only notifications and push jobs.
        with self._lock:
            notes = [self._tables["notifications"][note_id] for note_id in self._notes_about.get(message_id, ())]
            jobs = [self._tables["push_jobs"][job_id] for job_id in self._jobs_about.get(message_id, ())]
            ops = [
                ("put", "notifications", note["id"], dict(note, preview=None))
                for note in notes
                if note.get("preview") is not None
            ]
            ops += [
                ("put", "push_jobs", job["id"], scrubbed)
                for job in jobs
                for scrubbed in [without_preview(job, message_id)]
                if scrubbed is not job
            ]
            if not ops:
                return
            ticket = self._write(ops)
        self._wait(ticket)

    # -- devices and push jobs --------------------------------------------------------------

    def add_device(self, device, limit=None):
        with self._lock:
            if limit is not None and len(self._devices_of.get(device["user_id"], {})) >= limit:
                raise Conflict(f"user {device['user_id']} already has {limit} devices")
            ticket = self._write([("put", "devices", device["id"], device)])
        self._wait(ticket)
        return device

    def get_device(self, device_id):
        return self._tables["devices"].get(device_id)

    def user_devices(self, user_id):
        with self._lock:
            return list(self._devices_of.get(user_id, {}).values())  # in the order they were added

    def delete_device(self, device_id):
        with self._lock:
            if device_id not in self._tables["devices"]:
                return False
            ticket = self._write([("del", "devices", device_id, None)])
        self._wait(ticket)
        return True

    def _due(self, now, limit):
        """Pending jobs due at ``now``, earliest first, at most ``limit`` (under the lock)."""
        due = itertools.takewhile(lambda entry: entry[0] <= now, self._pending_push)
        return [self._tables["push_jobs"][job_id] for _, job_id in itertools.islice(due, limit)]

    def due_push_jobs(self, now, limit=50):
        with self._lock:
            return self._due(now, limit)

    def claim_push_jobs(self, now, lease, limit=50):
        with self._lock:
            claimed = [dict(job, next_attempt_at=now + lease) for job in self._due(now, limit)]
            if not claimed:
                return []
            ticket = self._write([("put", "push_jobs", job["id"], job) for job in claimed])
        self._wait(ticket)
        return claimed

    def next_push_time(self):
        with self._lock:
            return self._pending_push[0][0] if self._pending_push else None

    def update_push_job(self, job_id, changes):
        with self._lock:
            job = dict(self._tables["push_jobs"][job_id], **changes)
            ticket = self._write([("put", "push_jobs", job_id, job)])
        self._wait(ticket)
        return job

    def delete_push_job(self, job_id):
        with self._lock:
            if job_id not in self._tables["push_jobs"]:
                return False
            ticket = self._write([("del", "push_jobs", job_id, None)])
        self._wait(ticket)
        return True

    def dead_push_jobs(self, limit=100):
        with self._lock:
            dead = [job for job in self._tables["push_jobs"].values() if job["status"] == "dead"]
        dead.sort(key=lambda job: job["created_at"], reverse=True)
        return dead[:limit]
