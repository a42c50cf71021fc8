"""The JSON store's people: users, 0xC messages, sessions, the signing key, keys, codes, attempts.

A mixin of ``JsonStore``: each method takes the store's lock around what it
reads and writes, and waits (without the lock) until its write is durable.
"""

import bisect
import heapq
import itertools
import logging
import os

from . import rules
from .base import Page
from .errors import Conflict, StoreCorrupt
from .files import write_new
from .json_indexes import exists_above, exists_below
from .rules import fold

log = logging.getLogger("oxc.store")

#: The file under the data directory that keeps the generated signing key.
SIGNING_KEY = "signing.key"
MIN_SIGNING_KEY_BYTES = 32


class JsonAccounts:
    """Users, sessions and everything else kept per person (a mixin of ``JsonStore``)."""

    # -- users --------------------------------------------------------------

    def _check_unique(self, user, user_id=None):
        owner = self._by_username.get(fold(user["username"]))
        if owner is not None and owner != user_id:
            raise Conflict(rules.USERNAME_TAKEN)
        if user.get("email"):
            owner = self._by_email.get(fold(user["email"]))
            if owner is not None and owner != user_id:
                raise Conflict(rules.EMAIL_TAKEN)

    def create_user(self, user):
        with self._lock:
            self._check_unique(user)
            ticket = self._write([("put", "users", user["id"], user)])
        self._wait(ticket)
        return user

    def get_user(self, user_id):
        return self._tables["users"].get(user_id)

    def find_user(self, username):
        user_id = self._by_username.get(fold(username))
        return None if user_id is None else self._tables["users"].get(user_id)

    def find_user_by_email(self, address):
        user_id = self._by_email.get(fold(address))
        return None if user_id is None else self._tables["users"].get(user_id)

    def update_user(self, user_id, changes, expected=None):
        with self._lock:
            user = self._tables["users"][user_id]
            if not rules.holds(user, expected):
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
            older = exists_below(lists, picked[0])
            newer = exists_above(lists, picked[-1])
        elif after is not None:
            older, newer = exists_below(lists, after + 1), False
        elif before is not None:
            older, newer = False, exists_above(lists, before - 1)
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
            session = rules.rotated(session, token_hash, new_hash, now, expires_at)
            ticket = self._write([("put", "sessions", session_id, session)])
        self._wait(ticket)
        return session

    def delete_session(self, session_id):
        return self._delete("sessions", session_id)

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
            while expiry and expiry[0][0] < now - rules.TICKET_MEMORY:
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
        prefix = fold(prefix)
        with self._lock:
            start = bisect.bisect_left(self._usernames, prefix)
            if after is not None:
                start = max(start, bisect.bisect_right(self._usernames, fold(after)))
            found = []
            for name in itertools.islice(self._usernames, start, None):
                if not name.startswith(prefix) or len(found) > limit:
                    break
                found.append(self._tables["users"][self._by_username[name]])
        return found[:limit], len(found) > limit

    # -- public keys --------------------------------------------------------------

    def add_key(self, key):
        self._commit([("put", "keys", key["id"], key)])
        return key

    def get_key(self, key_id):
        return self._tables["keys"].get(key_id)

    def user_keys(self, user_id):
        with self._lock:
            return rules.by_creation(self._user_keys.get(user_id, {}).values())

    def change_user_keys(self, user_id, decide):
        with self._lock:
            own = self._user_keys.get(user_id, {})
            added, changes = decide(rules.by_creation(own.values()))
            changed = [dict(own[key_id], **change) for key_id, change in changes.items()]
            ops = [("put", "keys", key["id"], key) for key in [*added, *changed]]
            ticket = self._write(ops) if ops else None
        self._wait(ticket)
        return added, changed

    def update_key(self, key_id, changes):
        return self._change("keys", key_id, changes)

    # -- one-time codes ---------------------------------------------------------------

    def put_code(self, code):
        self._commit([("put", "codes", code["id"], code)])
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
            if rules.code_spent(code, now, max_attempts):
                ticket = self._write([("del", "codes", code_id, None)])
                code = None
            else:
                code = rules.guessed(code)
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
