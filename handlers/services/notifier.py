"""The notifier: turns chat events into stored, streamed and pushed notifications.

One ``Notifier`` per app (``ctx.notifier``) subscribes to the event hub. It
makes a notification for a mention (``@username`` of a member), a message in
a direct chat, being added to a group, and a role change; a muted chat makes
none but mentions. Each batch is stored in one write, published to its user
as a ``notification.created`` event, and queued for push (``push.py``): one
delivery per receiving URL (PUSH_WEBHOOK_URL, users' device endpoints)
carrying every notification of the batch meant for it, as
``{"deliveries": [{"user_id", "notification", "devices" | "device_id"}]}``,
stored in the same write as the notifications. Queuing never waits on a
receiver: delivery happens on the push worker's thread.

Deleting a message takes its text out of the previews of the notifications
about it, of their events and of their push jobs, queued or dead
(``Hub.retract``). The feed and devices endpoints are ``handlers/notifications.py``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from store import Conflict

from ..http import views
from .hub import Event
from .push import PushWorker
from .worker import Worker

log = logging.getLogger("oxc.notifications")

KINDS = ("mention", "direct_message", "added_to_chat", "role_changed")
PREVIEW = 140

#: A record as the store holds it (a notification, a chat, a message).
Record = dict[str, Any]


class Notifier:
    """Turn events into stored, streamed and pushed notifications.

    Notifications for messages (mentions, direct messages) are made off the
    request path: the message is already durable with its mentions, and a
    background thread reads chat messages after the stored mark
    ``notified_seq`` in order, storing their notifications, push jobs and the
    new mark in one write. A crash loses nothing: the thread resumes from the
    mark. Rarer triggers (being added, a role change) are handled at once.
    """

    BATCH = 200
    LINGER = 0.02  # seconds

    def __init__(self, ctx: Any, worker: PushWorker) -> None:
        self.ctx = ctx
        self.worker = worker
        self._worker = Worker("oxc-notifier", self._step, linger=self.LINGER)
        store = ctx.store
        if store.get_meta("notified_seq") is None:
            # A new store, or one from before notifications: history notifies nobody.
            try:
                store.add_notifications([], mark=store.latest_seq(), expected=None)
            except Conflict:
                pass  # another process set it first
        if self.pending():
            self._start()

    def __call__(self, event: Event) -> None:
        if event.type == "chat.message.created":
            self._start()
            return
        if event.type.startswith("notification."):
            return
        try:
            notes = self._notes(event)
            if notes:
                self._deliver(notes)
        except Exception:
            # A notification must never undo the write that caused it.
            log.exception("notifications: could not notify for %s", event.type)

    def pending(self, limit: int = 1000) -> int:
        """How many chat messages still wait for their notifications (counted up to ``limit``)."""
        store = self.ctx.store
        return len(store.chat_messages_after(store.get_meta("notified_seq") or 0, limit))

    def _start(self):
        self._worker.start()

    def _step(self) -> float:
        try:
            self.catch_up()
        except Exception:
            log.exception("notifications: catching up failed; retrying shortly")
        return 1.0

    def catch_up(self) -> None:
        """Make the notifications of every chat message after the mark, in batches.

        Several processes on one store may each run a notifier: a batch is
        stored only if the mark has not moved since it was read, so one of
        them makes each notification and the others go on from the new mark.
        """
        store = self.ctx.store
        while not self._worker.stopping:
            mark = store.get_meta("notified_seq")
            messages = store.chat_messages_after(mark or 0, self.BATCH)
            if not messages:
                return
            notes = []
            for message in messages:
                notes += self._message_notes(message)
            try:
                self._deliver(notes, mark=messages[-1]["seq"], expected=mark)
            except Conflict:
                continue  # another process stored this batch first

    def close(self) -> None:
        """Stop the thread; what it had not reached is picked up at the next start."""
        self._worker.close()

    def _muted(self, chat_id, user_id):
        member = self.ctx.store.get_member(chat_id, user_id)
        return member is None or member.get("muted", False)

    def _message_notes(self, message):
        store = self.ctx.store
        chat = store.get_chat(message["chat_id"])
        if chat is None or message.get("deleted"):
            return []
        author = message["user_id"]
        mentioned = [m["user_id"] for m in message.get("mentions", []) if m["user_id"] != author]
        targets = [(uid, "mention") for uid in mentioned if store.get_member(chat["id"], uid)]
        if chat["type"] == "direct":
            targets += [
                (uid, "direct_message")
                for uid in chat["pair"]
                if uid != author and uid not in mentioned and not self._muted(chat["id"], uid)
            ]
        return self._make(targets, chat, author, message)

    def _notes(self, event):
        data, store = event.data, self.ctx.store
        chat = store.get_chat(event.chat_id) if event.chat_id else None
        if chat is None:
            return []
        if event.type == "chat.created" and chat["type"] == "group":
            return self._make(
                [
                    (member["user_id"], "added_to_chat")
                    for member in store.members(chat["id"])
                    if member["user_id"] != chat["created_by"]
                ],
                chat,
                chat["created_by"],
            )
        if event.type == "member.added":
            return self._make([(data["user_id"], "added_to_chat")], chat, data.get("by"))
        if event.type == "member.role_changed" and not self._muted(chat["id"], data["user_id"]):
            return self._make([(data["user_id"], "role_changed")], chat, data.get("by"), role=data["role"])
        return []

    def _make(self, targets, chat, actor_id, message=None, role=None):
        """One notification per (user id, kind) in ``targets``, about the same thing."""
        if not targets:
            return []
        actor = self.ctx.store.get_user(actor_id) if actor_id else None
        common = {
            "chat_id": chat["id"],
            "chat_name": chat.get("name"),
            "message_id": message["id"] if message else None,
            "actor_id": actor_id,
            "actor_username": actor["username"] if actor else None,
            "preview": _preview(message),
            "role": role,
            "created_at": views.iso_time(self.ctx.clock()),
            "read": False,
        }
        batch = uuid.uuid4().hex
        return [
            dict(common, id=f"{batch}-{number}", user_id=user_id, kind=kind)
            for number, (user_id, kind) in enumerate(targets)
        ]

    def _deliver(self, notes, **mark):
        ctx = self.ctx
        views_of = [shown(note) for note in notes]
        notes, accepted, refused = ctx.store.add_notifications(
            notes, self._jobs(notes, views_of), ctx.settings.push_queue_max, **mark
        )
        for note, view in zip(notes, views_of):
            ctx.events.publish("notification.created", view, {note["user_id"]})
        self._scrub_deleted(notes)
        if refused:
            log.warning("notifications: push queue full; %d deliveries kept as dead letters", len(refused))
        if accepted:
            self.worker.start()

    def _scrub_deleted(self, notes):
        """Scrub the previews of messages deleted while their notifications were being made.

        A delete scrubs the copies that exist when it happens (``Hub.retract``);
        notifications made from the message a moment before, and stored or
        published a moment after, are caught here.
        """
        store = self.ctx.store
        for message_id in dict.fromkeys(note["message_id"] for note in notes if note.get("message_id")):
            message = store.get_chat_message(message_id)
            if message is None or message.get("deleted"):
                self.ctx.events.scrub(
                    "chat.message.deleted", views.chat_message(message) if message else {"id": message_id}
                )

    def _jobs(self, notes, views_of):
        """One push job per receiving URL, carrying every notification of the batch meant for it."""
        settings, store, now = self.ctx.settings, self.ctx.store, self.ctx.clock()
        batches = {}
        for note, view in zip(notes, views_of):
            devices = store.user_devices(note["user_id"])
            item = {"notification": view, "user_id": note["user_id"]}
            for device in devices:
                if device.get("endpoint"):
                    batches.setdefault(device["endpoint"], []).append(
                        dict(item, device_id=device["id"], token=device.get("token"))
                    )
            if settings.push_webhook_url:
                batches.setdefault(settings.push_webhook_url, []).append(
                    dict(
                        item,
                        devices=[
                            {"device_id": d["id"], "platform": d["platform"], "token": d.get("token")} for d in devices
                        ],
                    )
                )
        return [
            {
                "id": str(uuid.uuid4()),
                "url": url,
                "payload": {"deliveries": items},
                "attempts": 0,
                "last_error": None,
                "next_attempt_at": now,
                "created_at": views.iso_time(now),
            }
            for url, items in batches.items()
        ]


def _preview(message: Record | None) -> str | None:
    if message is None:
        return None
    if message.get("encrypted"):
        return "[encrypted message]"
    if not message.get("content") and message.get("attachment_id"):
        return "[attachment]"
    return (message.get("content") or "")[:PREVIEW]


def shown(note: Record) -> Record:
    """A notification as its user sees it."""
    return views.notification(note)
