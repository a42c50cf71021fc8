"""PostgreSQL's people: users, 0xC messages, sessions, the signing key, keys, codes, attempts.

A mixin of ``PostgresStore``: each write is one transaction (``_write``), and
row locks make concurrent calls take turns as the JSON store's lock does.
"""

import random
import re

from psycopg import errors

from . import rules
from .base import Page
from .errors import Conflict, Missing
from .pg_schema import absent_if_nul, conflict_message
from .rules import fold, message_scopes

#: Params: key, 1, the window's end if one starts now, now, now.
COUNT_ATTEMPT = """
    INSERT INTO attempts AS a (key, count, window_ends) VALUES (%s, %s, %s)
    ON CONFLICT (key) DO UPDATE SET
        count = CASE WHEN a.window_ends <= %s THEN 1 ELSE a.count + 1 END,
        window_ends = CASE WHEN a.window_ends <= %s THEN EXCLUDED.window_ends ELSE a.window_ends END
    RETURNING count, window_ends
"""


class PostgresAccounts:
    """Users, sessions and everything else kept per person (a mixin of ``PostgresStore``)."""

    # -- users ---------------------------------------------------------------------------

    def _put_user(self, cur, user):
        try:
            with cur.connection.transaction():  # a savepoint, so the caller's transaction survives
                self._put(cur, "users", user)
        except errors.UniqueViolation as exc:
            raise Conflict(conflict_message(exc)) from None

    def create_user(self, user):
        self._write(lambda cur: self._put_user(cur, user))
        return user

    @absent_if_nul(lambda: None)
    def get_user(self, user_id):
        return self._record("SELECT data FROM users WHERE id = %s", (user_id,))

    @absent_if_nul(lambda: None)
    def find_user(self, username):
        return self._record("SELECT data FROM users WHERE username_key = %s", (fold(username),))

    @absent_if_nul(lambda: None)
    def find_user_by_email(self, address):
        if not address:
            return None
        return self._record("SELECT data FROM users WHERE email_key = %s", (fold(address),))

    def update_user(self, user_id, changes, expected=None):
        def work(cur):
            user = self._locked(cur, "users", user_id)
            if not rules.holds(user, expected):
                return None
            user = dict(user, **changes)
            self._put_user(cur, user)
            return user

        return self._write(work)

    # -- messages --------------------------------------------------------------------------

    def add_message(self, message):
        def work(cur):
            record = dict(message, seq=self._seqs(cur, 1)[0])
            self._put(cur, "messages", record)
            self._index_terms(cur, message_scopes(record), record.get("content"), record["seq"])
            return record

        return self._write(work, seq_lock=True)

    @absent_if_nul(lambda: None)
    def get_message(self, message_id):
        return self._record("SELECT data FROM messages WHERE id = %s", (message_id,))

    @absent_if_nul(lambda: None)
    def delete_message(self, message_id):
        def work(cur):
            row = self._execute(cur, "DELETE FROM messages WHERE id = %s RETURNING data", (message_id,)).fetchone()
            if row is None:
                return None
            message = row[0]
            self._index_terms(cur, message_scopes(message), message.get("content"), message["seq"], add=False)
            return message

        return self._write(work)

    @absent_if_nul(lambda: Page([], False, False))
    def visible_messages(self, user_id, before=None, after=None, limit=50):
        return self._page(
            "messages",
            [
                ("recipient_id IS NULL", ()),
                ("user_id = %s AND recipient_id IS NOT NULL", (user_id,)),
                ("recipient_id = %s", (user_id,)),
            ],
            before,
            after,
            limit,
        )

    @absent_if_nul(lambda: Page([], False, False))
    def sent_messages(self, user_id, before=None, after=None, limit=50):
        return self._page("messages", [("user_id = %s", (user_id,))], before, after, limit)

    # -- sessions ----------------------------------------------------------------------------

    def add_session(self, session, password_hash=None):
        def work(cur):
            if password_hash is not None:
                # FOR SHARE: a password change (FOR UPDATE) waits for this commit, or this sees it.
                row = self._execute(
                    cur, "SELECT data->>'password_hash' FROM users WHERE id = %s FOR SHARE", (session["user_id"],)
                ).fetchone()
                if row is None or row[0] != password_hash:
                    return None
            self._put(cur, "sessions", session)
            return session

        return self._write(work)

    @absent_if_nul(lambda: None)
    def get_session(self, session_id):
        return self._record("SELECT data FROM sessions WHERE id = %s", (session_id,))

    @absent_if_nul(lambda: None)
    def find_session(self, token_hash):
        return self._record("SELECT data FROM sessions WHERE token_hash = %s LIMIT 1", (token_hash,))

    @absent_if_nul(lambda: None)
    def rotate_session(self, session_id, token_hash, new_hash, now, expires_at):
        def work(cur):
            row = self._execute(cur, "SELECT data FROM sessions WHERE id = %s FOR UPDATE", (session_id,)).fetchone()
            if row is None or row[0]["token_hash"] != token_hash:
                return None
            session = rules.rotated(row[0], token_hash, new_hash, now, expires_at)
            self._put(cur, "sessions", session)
            return session

        return self._write(work)

    @absent_if_nul(lambda: False)
    def delete_session(self, session_id):
        return self._delete("sessions", session_id)

    @absent_if_nul(lambda: 0)
    def delete_user_sessions(self, user_id, keep=None):
        def work(cur):
            if keep is None:
                return self._execute(cur, "DELETE FROM sessions WHERE user_id = %s", (user_id,)).rowcount
            return self._execute(cur, "DELETE FROM sessions WHERE user_id = %s AND id <> %s", (user_id, keep)).rowcount

        return self._write(work)

    # -- the signing key and stream tickets ------------------------------------------------------

    def signing_key(self, candidate):
        def work(cur):
            self._execute(
                cur,
                "INSERT INTO signing_keys (name, value) VALUES ('jwt', %s) ON CONFLICT (name) DO NOTHING",
                (candidate,),
            )
            return self._execute(cur, "SELECT value FROM signing_keys WHERE name = 'jwt'").fetchone()[0]

        return self._write(work), "the database (table signing_keys)"

    def use_ticket(self, ticket_id, expires_at, now):
        # One statement: of two processes inserting one id, exactly one gets its row back.
        first = (
            self._write(
                lambda cur: self._execute(
                    cur,
                    "INSERT INTO stream_tickets (id, expires_at) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING "
                    "RETURNING id",
                    (ticket_id, expires_at),
                ).fetchone()
            )
            is not None
        )
        # Housekeeping, well past expiry: another process's clock may be a little behind this one's.
        self._write(
            lambda cur: self._execute(
                cur, "DELETE FROM stream_tickets WHERE expires_at < %s", (now - rules.TICKET_MEMORY,)
            ),
            durable=False,
        )
        return first

    # -- people -------------------------------------------------------------------------------

    def touch_user(self, user_id, seconds):
        def work(cur):
            row = self._execute(cur, "SELECT data FROM users WHERE id = %s FOR UPDATE", (user_id,)).fetchone()
            if row is None:
                return None
            user = dict(row[0], last_seen=seconds)
            self._put(cur, "users", user)
            return user

        # Not waited for: losing the last few seconds of "last seen" to a crash
        # is harmless, and a flush per request is not.
        return self._write(work, durable=False)

    @absent_if_nul(lambda: ([], False))
    def users_by_prefix(self, prefix, limit=20, after=None):
        pattern = re.sub(r"([\\%_])", r"\\\1", fold(prefix) or "") + "%"
        query = "SELECT data FROM users WHERE username_key LIKE %s ESCAPE '\\'"
        params = [pattern]
        if after is not None:
            query += " AND username_key > %s"
            params.append(fold(after))
        rows = self._rows(query + " ORDER BY username_key LIMIT %s", (*params, limit + 1))
        return [row[0] for row in rows[:limit]], len(rows) > limit

    # -- public keys ------------------------------------------------------------------------------------

    def add_key(self, key):
        self._write(lambda cur: self._put(cur, "keys", key))
        return key

    @absent_if_nul(lambda: None)
    def get_key(self, key_id):
        return self._record("SELECT data FROM keys WHERE id = %s", (key_id,))

    @absent_if_nul(lambda: [])
    def user_keys(self, user_id):
        keys = [row[0] for row in self._rows("SELECT data FROM keys WHERE user_id = %s ORDER BY position", (user_id,))]
        return rules.by_creation(keys)

    def change_user_keys(self, user_id, decide):
        def work(cur):
            # The user's row lock makes one user's key changes take turns.
            self._execute(cur, "SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,))
            own = {
                row[0]["id"]: row[0]
                for row in self._execute(
                    cur, "SELECT data FROM keys WHERE user_id = %s ORDER BY position FOR UPDATE", (user_id,)
                ).fetchall()
            }
            added, changes = decide(rules.by_creation(own.values()))
            changed = [dict(own[key_id], **change) for key_id, change in changes.items()]
            self._put_many(cur, "keys", [*added, *changed])
            return added, changed

        if "\x00" in user_id:
            added, changes = decide([])
            if added or changes:
                raise Missing(f"user {user_id!r} does not exist")
            return [], []
        return self._write(work)

    def update_key(self, key_id, changes):
        return self._change("keys", key_id, changes)

    # -- one-time codes -------------------------------------------------------------------------------------

    def put_code(self, code):
        self._write(lambda cur: self._put(cur, "codes", code))
        return code

    @absent_if_nul(lambda: None)
    def get_code(self, code_id):
        return self._record("SELECT data FROM codes WHERE id = %s", (code_id,))

    @absent_if_nul(lambda: False)
    def delete_code(self, code_id, code_hash=None):
        if code_hash is None:
            return self._delete("codes", code_id)
        return self._write(
            lambda cur: (
                self._execute(
                    cur, "DELETE FROM codes WHERE id = %s AND data->>'code_hash' = %s", (code_id, code_hash)
                ).rowcount
                > 0
            )
        )

    @absent_if_nul(lambda: None)
    def spend_code(self, code_id, now, max_attempts):
        def work(cur):
            row = self._execute(cur, "SELECT data FROM codes WHERE id = %s FOR UPDATE", (code_id,)).fetchone()
            if row is None:
                return None
            code = row[0]
            if rules.code_spent(code, now, max_attempts):
                self._execute(cur, "DELETE FROM codes WHERE id = %s", (code_id,))
                return None
            code = rules.guessed(code)
            self._put(cur, "codes", code)
            return code

        return self._write(work)

    # -- attempts counted in a window ---------------------------------------------------------------------

    def count_attempt(self, key, now, window):
        # One statement: the row lock of ON CONFLICT makes concurrent counts queue, in any process.
        count, ends = self._write(
            lambda cur: self._execute(cur, COUNT_ATTEMPT, (key, 1, now + window, now, now)).fetchone()
        )
        if random.random() < 0.001:  # housekeeping, not a rule: any process may sweep
            self._write(
                lambda cur: self._execute(cur, "DELETE FROM attempts WHERE window_ends <= %s", (now,)), durable=False
            )
        return count, ends

    def take_back_attempt(self, key):
        self._write(
            lambda cur: self._execute(cur, "UPDATE attempts SET count = count - 1 WHERE key = %s AND count > 0", (key,))
        )

    def clear_attempts(self, key):
        self._write(lambda cur: self._execute(cur, "DELETE FROM attempts WHERE key = %s", (key,)))
