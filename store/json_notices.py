"""The JSON store's notifications, push devices and push delivery queue.

A mixin of ``JsonStore``: each method takes the store's lock around what it
reads and writes, and waits (without the lock) until its write is durable.
"""

import bisect
import itertools

from . import rules
from .base import UNCHECKED
from .errors import Conflict
from .rules import without_preview


class JsonNotices:
    """Notifications, devices and push jobs (a mixin of ``JsonStore``)."""

    # -- notifications --------------------------------------------------------------------

    def add_notifications(self, notifications, push_jobs=(), max_pending=0, mark=None, expected=UNCHECKED):
        if not notifications and not push_jobs and mark is None:
            return [], [], []
        with self._lock:
            if expected is not UNCHECKED and self.get_meta("notified_seq") != expected:
                raise Conflict(rules.MARK_MOVED)
            records = [dict(note, seq=self._new_seq()) for note in notifications]
            accepted, refused = rules.queue_jobs(list(push_jobs), len(self._pending_push), max_pending)
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
        self._events.scrub(message_id, retract)  # in memory: nothing of it reaches the disk
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
                raise Conflict(rules.too_many_devices(device["user_id"], limit))
            ticket = self._write([("put", "devices", device["id"], device)])
        self._wait(ticket)
        return device

    def get_device(self, device_id):
        return self._tables["devices"].get(device_id)

    def user_devices(self, user_id):
        with self._lock:
            return list(self._devices_of.get(user_id, {}).values())  # in the order they were added

    def delete_device(self, device_id):
        return self._delete("devices", device_id)

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
        return self._change("push_jobs", job_id, changes)

    def delete_push_job(self, job_id):
        return self._delete("push_jobs", job_id)

    def dead_push_jobs(self, limit=100):
        with self._lock:
            dead = [job for job in self._tables["push_jobs"].values() if job["status"] == "dead"]
        dead.sort(key=lambda job: job["created_at"], reverse=True)
        return dead[:limit]
