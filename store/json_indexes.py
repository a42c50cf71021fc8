"""The JSON store's in-memory indexes, kept up to date record by record.

``JsonStore._apply`` calls ``_index_<table>(old, new)`` for every record a
write puts or deletes (``old``: what it replaces, None for a new record;
``new``: None for a deletion), both live and while the journal is replayed,
so recovery rebuilds the indexes with the very code that maintains them.
Lists of seqs are kept sorted; the helpers below keep them so.
"""

import bisect
import collections

from .rules import blob_digests, fold, message_scopes, pair_key, push_message_ids, search_terms, searchable


def insert_sorted(seqs, seq):
    """Insert ``seq`` into the sorted list ``seqs`` (at the end, cheaply, when it is the newest)."""
    if not seqs or seqs[-1] < seq:
        seqs.append(seq)
    else:
        bisect.insort(seqs, seq)


def remove_sorted(seqs, seq):
    """Remove ``seq`` (a seq, a name, a (time, id) entry) from the sorted list ``seqs`` if it is there."""
    index = bisect.bisect_left(seqs, seq)
    if index < len(seqs) and seqs[index] == seq:
        del seqs[index]


def contains(seqs, seq):
    """Whether the sorted list ``seqs`` holds ``seq``."""
    index = bisect.bisect_left(seqs, seq)
    return index < len(seqs) and seqs[index] == seq


def exists_below(lists, seq):
    """Whether any of the sorted ``lists`` holds a seq below ``seq``."""
    return any(bisect.bisect_left(seqs, seq) > 0 for seqs in lists)


def exists_above(lists, seq):
    """Whether any of the sorted ``lists`` holds a seq above ``seq``."""
    return any(bisect.bisect_right(seqs, seq) < len(seqs) for seqs in lists)


class JsonIndexes:
    """The indexes of ``JsonStore`` (a mixin of it; see the store's module docstring for each)."""

    def _clear_indexes(self):
        """Start every index empty (before the journal is replayed)."""
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

    # -- indexes ------------------------------------------------------------

    def _index_users(self, old, new):
        if old is not None:
            self._by_username.pop(fold(old["username"]), None)
            remove_sorted(self._usernames, fold(old["username"]))
            if old.get("email"):
                self._by_email.pop(fold(old["email"]), None)
        if new is not None:
            self._by_username[fold(new["username"])] = new["id"]
            bisect.insort(self._usernames, fold(new["username"]))
            if new.get("email"):
                self._by_email[fold(new["email"])] = new["id"]

    def _index_messages(self, old, new):
        if old is not None:
            seq = old["seq"]
            del self._by_seq[seq]
            for seqs in self._message_lists(old):
                remove_sorted(seqs, seq)
            self._index_terms(message_scopes(old), old.get("content"), seq, remove_sorted)
        if new is not None:
            seq = new["seq"]
            self._by_seq[seq] = new
            self._next_seq = max(self._next_seq, seq + 1)
            for seqs in self._message_lists(new):
                insert_sorted(seqs, seq)
            self._index_terms(message_scopes(new), new.get("content"), seq, insert_sorted)

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
            remove_sorted(self._chat_seqs.get(old["chat_id"], []), old["seq"])
            remove_sorted(self._all_chat_seqs, old["seq"])
            self._index_terms((old["chat_id"],), searchable(old), old["seq"], remove_sorted)
        if new is not None:
            seq = new["seq"]
            self._by_seq[seq] = new
            self._next_seq = max(self._next_seq, seq + 1)
            insert_sorted(self._chat_seqs.setdefault(new["chat_id"], []), seq)
            insert_sorted(self._all_chat_seqs, seq)
            self._index_terms((new["chat_id"],), searchable(new), seq, insert_sorted)

    def _index_attachments(self, old, new):
        for record, change, sign in ((old, "discard", -1), (new, "add", 1)):
            if record is None:
                continue
            for digest in blob_digests(record):
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
        for record, change in ((old, remove_sorted), (new, insert_sorted)):
            if record is None:
                continue
            self._next_seq = max(self._next_seq, record["seq"] + 1)
            change(self._notes_of.setdefault(record["user_id"], []), record["seq"])
            if not record["read"]:
                change(self._unread_notes.setdefault(record["user_id"], []), record["seq"])
            if change is insert_sorted:
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
            remove_sorted(self._pending_push, (old["next_attempt_at"], old["id"]))
        if new is not None and new["status"] == "pending":
            bisect.insort(self._pending_push, (new["next_attempt_at"], new["id"]))
        self._index_about(self._jobs_about, old, new, push_message_ids)

    def _index_codes(self, old, new):
        pass

    def _index_meta(self, old, new):
        pass
