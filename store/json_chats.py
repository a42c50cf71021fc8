"""The JSON store's chats: chats, members, messages in chats, search, attachments and their blobs.

A mixin of ``JsonStore``: each method takes the store's lock around what it
reads and writes, and waits (without the lock) until its write is durable.
A blob file is deleted only once no attachment record refers to it and no
upload is installing it (``_pending_blobs``).
"""

import bisect
import contextlib
import heapq
import itertools

from . import rules
from .errors import Conflict, Missing, QuotaExceeded
from .json_indexes import contains
from .rules import blob_digests, dropped_attachment, member_updates, pair_key


def member_key(chat_id, user_id):
    """The key of a membership record in the ``members`` table."""
    return f"{chat_id}:{user_id}"


class JsonChats:
    """Chats and what they hold (a mixin of ``JsonStore``)."""

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
                raise Missing(rules.chat_gone(chat_id))
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
            digests.update(blob_digests(record))
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
        for digest in blob_digests(record):
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
                raise Conflict(rules.ALREADY_MEMBER)
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
                raise Missing(rules.not_a_member(message["user_id"], chat_id))
            attachment = self._tables["attachments"].get(attachment_id) if attachment_id else None
            if attachment_id and not rules.unsent_attachment_of(attachment, chat_id):
                raise Conflict(rules.not_unsent(attachment_id, chat_id))
            message = dict(message, seq=self._new_seq())
            ops = [("put", "chat_messages", message["id"], message)]
            if attachment is not None:
                ops.append(("put", "attachments", attachment_id, dict(attachment, message_id=message["id"])))
            ops.append(
                ("put", "members", member_key(chat_id, message["user_id"]), rules.after_posting(author, message["seq"]))
            )
            ticket = self._write(ops)
        self._wait(ticket)
        return message

    def get_chat_message(self, message_id):
        return self._tables["chat_messages"].get(message_id)

    def update_chat_message(self, message_id, changes):
        return self._change("chat_messages", message_id, changes)

    def change_chat_message(self, message_id, user_id, decide):
        with self._lock:
            old = self._tables["chat_messages"].get(message_id)
            member = self._members_of.get(old["chat_id"], {}).get(user_id) if old is not None else None
            changes = decide(old, member)
            if not changes:
                return old
            if old is None:
                raise Missing(rules.message_gone(message_id))
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
            if all(contains(other, seq) for other in others):
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
                raise Missing(rules.chat_gone(attachment["chat_id"]))
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
