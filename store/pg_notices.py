"""PostgreSQL's notifications, push devices and push delivery queue.

A mixin of ``PostgresStore``: each write is one transaction (``_write``).
"""

from psycopg.types.json import Json

from . import rules
from .base import UNCHECKED
from .errors import Conflict
from .pg_schema import absent_if_nul
from .rules import without_preview


class PostgresNotices:
    """Notifications, devices and push jobs (a mixin of ``PostgresStore``)."""

    # -- notifications ---------------------------------------------------------------------------------------

    def add_notifications(self, notifications, push_jobs=(), max_pending=0, mark=None, expected=UNCHECKED):
        if not notifications and not push_jobs and mark is None:
            return [], [], []
        push_jobs = list(push_jobs)

        def work(cur):
            if expected is not UNCHECKED:  # under the seq lock, which every writer of the mark holds
                row = self._execute(cur, "SELECT value FROM meta WHERE key = 'notified_seq'").fetchone()
                if (row[0] if row else None) != expected:
                    raise Conflict(rules.MARK_MOVED)
            seqs = self._seqs(cur, len(notifications))
            records = [dict(note, seq=seq) for note, seq in zip(notifications, seqs)]
            pending = self._execute(cur, "SELECT count(*) FROM push_jobs WHERE status = 'pending'").fetchone()[0]
            accepted, refused = rules.queue_jobs(push_jobs, pending, max_pending)
            self._put_many(cur, "notifications", records)
            self._put_many(cur, "push_jobs", accepted + refused)
            if mark is not None:
                self._execute(
                    cur,
                    "INSERT INTO meta (key, value) VALUES ('notified_seq', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (Json(mark),),
                )
            return records, accepted, refused

        # The seq lock also keeps two callers from both taking the last room in the queue.
        return self._write(work, seq_lock=True)

    @absent_if_nul(lambda: None)
    def get_meta(self, key):
        return self._record("SELECT value FROM meta WHERE key = %s", (key,))

    def latest_seq(self):
        last_value, is_called = self._rows("SELECT last_value, is_called FROM oxc_seq")[0]
        return last_value if is_called else last_value - 1

    def chat_messages_after(self, seq, limit=100):
        return [
            row[0]
            for row in self._rows("SELECT data FROM chat_messages WHERE seq > %s ORDER BY seq LIMIT %s", (seq, limit))
        ]

    @absent_if_nul(lambda: None)
    def get_notification(self, notification_id):
        return self._record("SELECT data FROM notifications WHERE id = %s", (notification_id,))

    @absent_if_nul(lambda: ([], False))
    def user_notifications(self, user_id, before=None, limit=50, kind=None, unread_only=False):
        query, params = "SELECT data FROM notifications WHERE user_id = %s", [user_id]
        if before is not None:
            query += " AND seq < %s"
            params.append(before)
        if kind is not None:
            query += " AND kind = %s"
            params.append(kind)
        if unread_only:
            query += " AND NOT is_read"
        rows = self._rows(query + " ORDER BY seq DESC LIMIT %s", (*params, limit + 1))
        return [row[0] for row in rows[:limit]], len(rows) > limit

    @absent_if_nul(lambda: 0)
    def unread_notification_count(self, user_id):
        return self._rows("SELECT count(*) FROM notifications WHERE user_id = %s AND NOT is_read", (user_id,))[0][0]

    @absent_if_nul(lambda: 0)
    def mark_notifications_read(self, user_id, notification_ids=None):
        query, params = "SELECT data FROM notifications WHERE user_id = %s AND NOT is_read", [user_id]
        if notification_ids is not None:
            wanted = [i for i in notification_ids if isinstance(i, str) and "\x00" not in i]
            if not wanted:
                return 0
            query += " AND id = ANY(%s::text[])"
            params.append(wanted)

        def work(cur):
            unread = [row[0] for row in self._execute(cur, query + " ORDER BY seq FOR UPDATE", params).fetchall()]
            self._put_many(cur, "notifications", (dict(note, read=True) for note in unread))
            return len(unread)

        return self._write(work)

    def scrub_message(self, message_id, retract):
        def work(cur):
            events = self._execute(
                cur,
                "SELECT id, type, data FROM events WHERE data->>'id' = %s "
                "OR data->>'message_id' = %s ORDER BY id FOR UPDATE",
                (message_id, message_id),
            ).fetchall()
            for event_id, kind, data in events:
                replaced = retract(kind, data)
                if replaced is not None and replaced != data:
                    self._execute(cur, "UPDATE events SET data = %s WHERE id = %s", (Json(replaced), event_id))
            notes = [
                row[0]
                for row in self._execute(
                    cur,
                    "SELECT data FROM notifications WHERE data->>'message_id' = %s ORDER BY seq FOR UPDATE",
                    (message_id,),
                ).fetchall()
            ]
            self._put_many(
                cur, "notifications", (dict(note, preview=None) for note in notes if note.get("preview") is not None)
            )
            jobs = [
                row[0]
                for row in self._execute(
                    cur,
                    "SELECT data FROM push_jobs WHERE message_ids @> ARRAY[%s]::text[] ORDER BY position FOR UPDATE",
                    (message_id,),
                ).fetchall()
            ]
            scrubbed = [without_preview(job, message_id) for job in jobs]
            self._put_many(cur, "push_jobs", (new for new, old in zip(scrubbed, jobs) if new is not old))

        if "\x00" not in message_id:
            self._write(work)

    # -- devices and push jobs -------------------------------------------------------------------------------------

    def add_device(self, device, limit=None):
        def work(cur):
            if limit is not None:
                # The user's row lock makes one user's registrations take turns, so the count holds.
                self._execute(cur, "SELECT 1 FROM users WHERE id = %s FOR UPDATE", (device["user_id"],))
                held = self._execute(
                    cur, "SELECT count(*) FROM devices WHERE user_id = %s", (device["user_id"],)
                ).fetchone()[0]
                if held >= limit:
                    raise Conflict(rules.too_many_devices(device["user_id"], limit))
            self._put(cur, "devices", device)

        self._write(work)
        return device

    @absent_if_nul(lambda: None)
    def get_device(self, device_id):
        return self._record("SELECT data FROM devices WHERE id = %s", (device_id,))

    @absent_if_nul(lambda: [])
    def user_devices(self, user_id):
        return [
            row[0] for row in self._rows("SELECT data FROM devices WHERE user_id = %s ORDER BY position", (user_id,))
        ]

    @absent_if_nul(lambda: False)
    def delete_device(self, device_id):
        return self._delete("devices", device_id)

    def due_push_jobs(self, now, limit=50):
        return [
            row[0]
            for row in self._rows(
                "SELECT data FROM push_jobs WHERE status = 'pending' AND next_attempt_at <= %s "
                "ORDER BY next_attempt_at, id LIMIT %s",
                (now, limit),
            )
        ]

    def claim_push_jobs(self, now, lease, limit=50):
        def work(cur):
            # SKIP LOCKED: a job another process is claiming right now is left to it.
            due = [
                row[0]
                for row in self._execute(
                    cur,
                    "SELECT data FROM push_jobs WHERE status = 'pending' AND next_attempt_at <= %s "
                    "ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (now, limit),
                ).fetchall()
            ]
            claimed = [dict(job, next_attempt_at=now + lease) for job in due]
            self._put_many(cur, "push_jobs", claimed)
            return claimed

        return self._write(work)

    def next_push_time(self):
        job = self._record("SELECT data FROM push_jobs WHERE status = 'pending' ORDER BY next_attempt_at, id LIMIT 1")
        return None if job is None else job["next_attempt_at"]

    def update_push_job(self, job_id, changes):
        return self._change("push_jobs", job_id, changes)

    @absent_if_nul(lambda: False)
    def delete_push_job(self, job_id):
        return self._delete("push_jobs", job_id)

    def dead_push_jobs(self, limit=100):
        return [
            row[0]
            for row in self._rows(
                "SELECT data FROM push_jobs WHERE status = 'dead' ORDER BY created_at DESC, position LIMIT %s", (limit,)
            )
        ]
