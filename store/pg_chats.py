"""PostgreSQL's chats: chats, members, messages in chats, search, attachments and their blobs.

A mixin of ``PostgresStore``. Every operation that changes a chat's members
locks the chat's row first, so they take turns on one chat; see each method
for the locks it takes and in which order.
"""

from psycopg.types.json import Json

from . import rules
from .base import Page
from .errors import Conflict, Missing, QuotaExceeded
from .pg_schema import absent_if_nul
from .rules import dropped_attachment, member_updates, pair_key, searchable

#: A seq above every seq (search without a ``before``).
NO_CURSOR = 2**63 - 1


class PostgresChats:
    """Chats and what they hold (a mixin of ``PostgresStore``)."""

    # -- chats -----------------------------------------------------------------------------------

    def _add_members(self, cur, chat_id, members):
        self._put_many(cur, "members", (dict(m, chat_id=chat_id) for m in members))

    def create_chat(self, chat, members):
        def work(cur):
            record = dict(chat, seq=self._seqs(cur, 1)[0])
            self._put(cur, "chats", record)
            self._add_members(cur, record["id"], members)
            return record

        return self._write(work, seq_lock=True)

    def direct_chat(self, chat, first, second):
        pair = sorted((first["user_id"], second["user_id"]))
        key = pair_key(*pair)
        existing = self._record("SELECT data FROM chats WHERE pair_key = %s", (key,))
        if existing is not None:
            return existing, False

        def work(cur):
            # Under the seq lock, a chat another call created for the pair is committed and seen here.
            row = self._execute(cur, "SELECT data FROM chats WHERE pair_key = %s", (key,)).fetchone()
            if row is not None:
                return row[0], False
            record = dict(chat, seq=self._seqs(cur, 1)[0], pair=pair)
            self._put(cur, "chats", record)
            self._add_members(cur, record["id"], (first, second))
            return record, True

        return self._write(work, seq_lock=True)

    @absent_if_nul(lambda: None)
    def get_chat(self, chat_id):
        return self._record("SELECT data FROM chats WHERE id = %s", (chat_id,))

    @absent_if_nul(lambda: False)
    def delete_chat(self, chat_id):
        def work(cur):
            if self._execute(cur, "SELECT 1 FROM chats WHERE id = %s FOR UPDATE", (chat_id,)).fetchone() is None:
                return None
            return self._remove_chat(cur, chat_id)

        orphans = self._write(work)
        if orphans is None:
            return False
        self._unlink(orphans)
        return True

    def _remove_chat(self, cur, chat_id):
        """Delete a chat with everything in it; returns the digests no attachment refers to any more."""
        self._execute(cur, "DELETE FROM chat_messages WHERE chat_id = %s", (chat_id,))
        self._execute(cur, "DELETE FROM postings WHERE scope = %s", (chat_id,))
        self._execute(cur, "DELETE FROM members WHERE chat_id = %s", (chat_id,))
        removed = self._execute(cur, "DELETE FROM attachments WHERE chat_id = %s RETURNING data", (chat_id,)).fetchall()
        self._execute(cur, "DELETE FROM chats WHERE id = %s", (chat_id,))
        return self._orphans(cur, [row[0] for row in removed])

    def change_chat(self, chat_id, user_ids, decide):
        user_ids = list(dict.fromkeys(user_ids))
        readable = [user_id for user_id in user_ids if "\x00" not in user_id]  # no record has a NUL in its id

        def work(cur):
            # Every operation that changes members locks the chat's row first, so they take
            # turns on one chat and each decides on what the one before it wrote.
            row = (
                None
                if "\x00" in chat_id
                else self._execute(cur, "SELECT data FROM chats WHERE id = %s FOR UPDATE", (chat_id,)).fetchone()
            )
            chat = row[0] if row else None
            current, count = dict.fromkeys(user_ids), 0
            if chat is not None:
                for user_id, data in self._execute(
                    cur,
                    "SELECT user_id, data FROM members WHERE chat_id = %s AND user_id = ANY(%s::text[]) "
                    "ORDER BY user_id FOR UPDATE",
                    (chat_id, readable),
                ).fetchall():
                    current[user_id] = data
                count = self._execute(cur, "SELECT count(*) FROM members WHERE chat_id = %s", (chat_id,)).fetchone()[0]
            change = decide(chat, dict(current), count)
            if change is None:
                return chat, current, []
            if chat is None:
                raise Missing(rules.chat_gone(chat_id))
            updates = member_updates(change, user_ids)
            after = dict(current)
            for user_id, record in updates.items():
                after[user_id] = None if record is None else dict(record, chat_id=chat_id, user_id=user_id)
            gone = [user_id for user_id, record in updates.items() if record is None and current[user_id]]
            put = [after[user_id] for user_id, record in updates.items() if record is not None]
            joined = sum(1 for record in put if current[record["user_id"]] is None)
            if change.delete or (updates and count - len(gone) + joined == 0):
                return None, dict.fromkeys(user_ids), self._remove_chat(cur, chat_id)
            if gone:
                self._execute(
                    cur, "DELETE FROM members WHERE chat_id = %s AND user_id = ANY(%s::text[])", (chat_id, gone)
                )
            self._put_many(cur, "members", put)
            if change.chat:
                chat = dict(chat, **change.chat)
                self._put(cur, "chats", chat)
            return chat, after, []

        chat, after, orphans = self._write(work)
        self._unlink(orphans)
        return chat, after

    @absent_if_nul(lambda: set())
    def chat_ids(self, user_id):
        return {row[0] for row in self._rows("SELECT chat_id FROM members WHERE user_id = %s", (user_id,))}

    @absent_if_nul(lambda: ([], False))
    def user_chats(self, user_id, limit=50, before=None):
        query = (
            "SELECT c.data FROM members m JOIN chats c ON c.id = m.chat_id WHERE m.user_id = %s{} "
            "ORDER BY c.activity DESC, c.id DESC LIMIT %s"
        )
        cursor = None if before is None else self._rows("SELECT activity, id FROM chats WHERE id = %s", (before,))
        if cursor:
            rows = self._rows(query.format(" AND (c.activity, c.id) < (%s, %s)"), (user_id, *cursor[0], limit + 1))
        else:
            rows = self._rows(query.format(""), (user_id, limit + 1))
        return [row[0] for row in rows[:limit]], len(rows) > limit

    # -- members ---------------------------------------------------------------------------------

    @absent_if_nul(lambda: None)
    def get_member(self, chat_id, user_id):
        return self._record("SELECT data FROM members WHERE chat_id = %s AND user_id = %s", (chat_id, user_id))

    @absent_if_nul(lambda: [])
    def members(self, chat_id):
        return [
            row[0] for row in self._rows("SELECT data FROM members WHERE chat_id = %s ORDER BY position", (chat_id,))
        ]

    def add_member(self, member):
        def work(cur):
            inserted = self._execute(
                cur,
                "INSERT INTO members (chat_id, user_id, data) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (member["chat_id"], member["user_id"], Json(member)),
            ).rowcount
            if not inserted:
                raise Conflict(rules.ALREADY_MEMBER)

        self._write(work)
        return member

    def update_members(self, updates):
        def work(cur):
            locked = {}
            for chat_id, user_id in sorted(updates):  # one order everywhere, so no deadlocks
                row = self._execute(
                    cur, "SELECT data FROM members WHERE chat_id = %s AND user_id = %s FOR UPDATE", (chat_id, user_id)
                ).fetchone()
                if row is None:
                    raise KeyError((chat_id, user_id))
                locked[chat_id, user_id] = row[0]
            records = [dict(locked[key], **changes) for key, changes in updates.items()]
            self._put_many(cur, "members", records)
            return records

        return self._write(work)

    @absent_if_nul(lambda: False)
    def remove_member(self, chat_id, user_id):
        def work(cur):
            return (
                self._execute(
                    cur, "DELETE FROM members WHERE chat_id = %s AND user_id = %s", (chat_id, user_id)
                ).rowcount
                > 0
            )

        return self._write(work)

    # -- messages in chats -------------------------------------------------------------------------

    def add_chat_message(self, message):
        chat_id, user_id, attachment_id = message["chat_id"], message["user_id"], message.get("attachment_id")

        def work(cur):
            record = dict(message, seq=self._seqs(cur, 1)[0])
            seq = record["seq"]
            # Locks in the order every chat operation takes them: the chat, its members, then the rest.
            self._execute(cur, "UPDATE chats SET activity = GREATEST(activity, %s) WHERE id = %s", (seq, chat_id))
            row = self._execute(
                cur, "SELECT data FROM members WHERE chat_id = %s AND user_id = %s FOR UPDATE", (chat_id, user_id)
            ).fetchone()
            if row is None:
                raise Missing(rules.not_a_member(user_id, chat_id))
            author = row[0]
            if attachment_id:
                found = self._execute(
                    cur, "SELECT data FROM attachments WHERE id = %s FOR UPDATE", (attachment_id,)
                ).fetchone()
                attachment = found[0] if found else None
                if not rules.unsent_attachment_of(attachment, chat_id):
                    raise Conflict(rules.not_unsent(attachment_id, chat_id))
                self._put(cur, "attachments", dict(attachment, message_id=record["id"]))
            self._put(cur, "chat_messages", record)
            self._index_terms(cur, [chat_id], searchable(record), seq)
            self._put(cur, "members", rules.after_posting(author, seq))
            return record

        if "\x00" in chat_id or "\x00" in user_id:  # no record has a NUL in its id
            raise Missing(rules.not_a_member(repr(user_id), repr(chat_id)))
        if attachment_id and "\x00" in attachment_id:
            raise Conflict(rules.not_unsent(repr(attachment_id), repr(chat_id)))
        return self._write(work, seq_lock=True)

    @absent_if_nul(lambda: None)
    def get_chat_message(self, message_id):
        return self._record("SELECT data FROM chat_messages WHERE id = %s", (message_id,))

    def update_chat_message(self, message_id, changes):
        def work(cur):
            old = self._locked(cur, "chat_messages", message_id)
            return self._rewrite_chat_message(cur, old, dict(old, **changes))

        return self._write(work)

    def _rewrite_chat_message(self, cur, old, message):
        """Store ``message`` in place of ``old``, moving its search postings if its text changed."""
        before, after = searchable(old), searchable(message)
        if before != after:
            self._index_terms(cur, [old["chat_id"]], before, old["seq"], add=False)
            self._index_terms(cur, [message["chat_id"]], after, message["seq"])
        self._put(cur, "chat_messages", message)
        return message

    def change_chat_message(self, message_id, user_id, decide):
        def work(cur):
            row = self._execute(cur, "SELECT chat_id FROM chat_messages WHERE id = %s", (message_id,)).fetchone()
            old = member = None
            # A key-share lock on the chat: membership changes (which lock it for update) wait, messages do not.
            if (
                row is not None
                and self._execute(cur, "SELECT 1 FROM chats WHERE id = %s FOR KEY SHARE", (row[0],)).fetchone()
            ):
                found = self._execute(
                    cur, "SELECT data FROM members WHERE chat_id = %s AND user_id = %s", (row[0], user_id)
                ).fetchone()
                member = found[0] if found else None
                found = self._execute(
                    cur, "SELECT data FROM chat_messages WHERE id = %s FOR UPDATE", (message_id,)
                ).fetchone()
                old = found[0] if found else None
            changes = decide(old, member)
            if not changes:
                return old, []
            if old is None:
                raise Missing(rules.message_gone(message_id))
            message = self._rewrite_chat_message(cur, old, dict(old, **changes))
            dropped = dropped_attachment(old, message)
            removed = (
                dropped
                and self._execute(cur, "DELETE FROM attachments WHERE id = %s RETURNING data", (dropped,)).fetchone()
            )
            return message, self._orphans(cur, [removed[0]]) if removed else []

        if "\x00" in message_id or "\x00" in user_id:
            if decide(None, None):
                raise Missing(rules.message_gone(repr(message_id)))
            return None
        message, orphans = self._write(work)
        self._unlink(orphans)
        return message

    @absent_if_nul(lambda: Page([], False, False))
    def chat_history(self, chat_id, before=None, after=None, limit=50):
        return self._page("chat_messages", [("chat_id = %s", (chat_id,))], before, after, limit)

    @absent_if_nul(lambda: 0)
    def unread_count(self, chat_id, user_id):
        return self._rows(
            "SELECT count(*) FROM chat_messages WHERE chat_id = %s AND seq > COALESCE("
            "(SELECT (data->>'read_seq')::bigint FROM members WHERE chat_id = %s AND user_id = %s), 0)",
            (chat_id, chat_id, user_id),
        )[0][0]

    def search(self, scopes, terms, before=None, limit=20):
        terms = sorted({term for term in terms if "\x00" not in term})
        scopes = [scope for scope in dict.fromkeys(scopes) if "\x00" not in scope]
        if not terms or not scopes or limit <= 0:
            return [], False
        # Each scope is read newest first from the postings of its longest
        # (likely rarest) term, stopping after limit + 1 matches.
        lead = max(terms, key=lambda term: (len(term), term))
        others = [term for term in terms if term != lead]
        checks = "".join(
            " AND EXISTS (SELECT 1 FROM postings o WHERE o.scope = p.scope AND o.term = %s AND o.seq = p.seq)"
            for _ in others
        )
        query = (
            "SELECT DISTINCT found.seq FROM unnest(%s::text[]) AS s(scope) CROSS JOIN LATERAL ("
            f"SELECT p.seq FROM postings p WHERE p.scope = s.scope AND p.term = %s AND p.seq < %s{checks} "
            "ORDER BY p.seq DESC LIMIT %s) AS found ORDER BY found.seq DESC LIMIT %s"
        )
        bound = NO_CURSOR if before is None else before
        found = [row[0] for row in self._rows(query, (scopes, lead, bound, *others, limit + 1, limit + 1))]
        wanted = found[:limit]
        records = (
            dict(
                self._rows(
                    "SELECT seq, data FROM chat_messages WHERE seq = ANY(%s::bigint[]) UNION ALL "
                    "SELECT seq, data FROM messages WHERE seq = ANY(%s::bigint[])",
                    (wanted, wanted),
                )
            )
            if wanted
            else {}
        )
        return [records[seq] for seq in wanted if seq in records], len(found) > limit

    # -- attachments and blobs ----------------------------------------------------------------------

    def save_blob(self, read, limit):
        return self.blobs.put(read, limit, self._pinning)

    def save_blob_bytes(self, data):
        return self.blobs.put_bytes(data, self._pinning)

    def discard_blob(self, digest):
        self._write(lambda cur: self._unpin(cur, {"sha256": digest}))
        self._unlink([digest])

    def open_blob(self, digest):
        return self.blobs.open(digest)

    def add_attachment(self, attachment, quota=0):
        def work(cur):
            # A key-share lock: a group deleted meanwhile waits for this insert or refuses it.
            if (
                self._execute(
                    cur, "SELECT 1 FROM chats WHERE id = %s FOR KEY SHARE", (attachment["chat_id"],)
                ).fetchone()
                is None
            ):
                raise Missing(rules.chat_gone(attachment["chat_id"]))
            if quota:
                # The uploader's row is the lock that makes check and insert one step across processes.
                uploader = attachment.get("uploader_id")
                self._execute(cur, "SELECT 1 FROM users WHERE id = %s FOR UPDATE", (uploader,))
                used = self._used(cur, uploader)
                if used + (attachment.get("size") or 0) > quota:
                    raise QuotaExceeded(used, quota)
            self._put(cur, "attachments", attachment)
            self._unpin(cur, attachment)

        self._write(work)
        return attachment

    def _used(self, cur, user_id):
        return self._execute(
            cur, "SELECT COALESCE(sum(size), 0)::bigint FROM attachments WHERE uploader_id = %s", (user_id,)
        ).fetchone()[0]

    @absent_if_nul(lambda: 0)
    def attachment_usage(self, user_id):
        with self._cursor() as cur:
            return self._used(cur, user_id)

    @absent_if_nul(lambda: None)
    def get_attachment(self, attachment_id):
        return self._record("SELECT data FROM attachments WHERE id = %s", (attachment_id,))

    @absent_if_nul(lambda: False)
    def delete_attachment(self, attachment_id, unsent_only=False):
        def work(cur):
            unsent = " AND (data->>'message_id') IS NULL" if unsent_only else ""
            row = self._execute(
                cur, f"DELETE FROM attachments WHERE id = %s{unsent} RETURNING data", (attachment_id,)
            ).fetchone()
            return None if row is None else self._orphans(cur, [row[0]])

        orphans = self._write(work)
        if orphans is None:
            return False
        self._unlink(orphans)
        return True
