"""Notifications: made from events, kept per user, pushed to devices.

``Notifier`` subscribes to the event hub. It makes a notification for a
mention (``@username`` of a member), a message in a direct chat, being added
to a group, and a role change; a muted chat makes none but mentions. Each
batch is stored in one write, published to its user as a
``notification.created`` event, and queued for push (``push.py``): one
delivery per receiving URL (PUSH_WEBHOOK_URL, users' device endpoints)
carrying every notification of the batch meant for it, as
``{"deliveries": [{"user_id", "notification", "devices" | "device_id"}]}``,
stored in the same write as the notifications. Queuing never waits on a
receiver: delivery happens on the push worker's thread.

Deleting a message takes its text out of the previews of the notifications
about it, of their events and of their push jobs, queued or dead
(``Hub.retract``).

Device endpoints are URLs the server will call, so a user may register one
only on a host the operator allowed (PUSH_DEVICE_HOSTS); anything else would
let users make the server probe internal addresses. The URL is read exactly
as the push worker reads it (``push.parse_url``: no user@, no backslash,
nothing percent-encoded in the host), and an IP address or port that every
delivery would refuse is refused here already; names are checked, by the
addresses they resolve to, at each delivery.
"""

import logging
import threading
import time
import uuid

from store import Conflict

from .http import BadRequest, Forbidden, NotFound, success, views
from .http.fields import limit as read_limit
from .http.fields import text
from .services import push

log = logging.getLogger("oxc.notifications")

KINDS = ("mention", "direct_message", "added_to_chat", "role_changed")
PLATFORMS = ("web", "ios", "android", "desktop", "webhook")
PREVIEW = 140
MAX_DEVICES = 20


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

    def __init__(self, ctx, worker):
        self.ctx = ctx
        self.worker = worker
        self._wake = threading.Event()
        self._thread = None
        self._stop = False
        self._lock = threading.Lock()
        store = ctx.store
        if store.get_meta("notified_seq") is None:
            # A new store, or one from before notifications: history notifies nobody.
            try:
                store.add_notifications([], mark=store.latest_seq(), expected=None)
            except Conflict:
                pass  # another process set it first
        if self.pending():
            self._start()

    def __call__(self, event):
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

    def pending(self, limit=1000):
        """How many chat messages still wait for their notifications (counted up to ``limit``)."""
        store = self.ctx.store
        return len(store.chat_messages_after(store.get_meta("notified_seq") or 0, limit))

    def _start(self):
        with self._lock:
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name="oxc-notifier", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self):
        while not self._stop:
            try:
                self.catch_up()
            except Exception:
                log.exception("notifications: catching up failed; retrying shortly")
            if self._wake.wait(1.0):
                # Let the request that woke us finish its answer first (the
                # interpreter is shared), and gather what arrives meanwhile.
                time.sleep(self.LINGER)
            self._wake.clear()

    def catch_up(self):
        """Make the notifications of every chat message after the mark, in batches.

        Several processes on one store may each run a notifier: a batch is
        stored only if the mark has not moved since it was read, so one of
        them makes each notification and the others go on from the new mark.
        """
        store = self.ctx.store
        while not self._stop:
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

    def close(self):
        """Stop the thread; what it had not reached is picked up at the next start."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

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


def _preview(message):
    if message is None:
        return None
    if message.get("encrypted"):
        return "[encrypted message]"
    if not message.get("content") and message.get("attachment_id"):
        return "[attachment]"
    return (message.get("content") or "")[:PREVIEW]


def shown(note):
    """A notification as its user sees it."""
    return {
        key: note.get(key)
        for key in (
            "id",
            "kind",
            "chat_id",
            "chat_name",
            "message_id",
            "actor_id",
            "actor_username",
            "preview",
            "role",
            "created_at",
            "read",
        )
    }


# -- the feed ---------------------------------------------------------------------------


def _feed(req, kind=None):
    store, user_id, query = req.ctx.store, req.user["id"], req.query
    size = read_limit(query)
    unread_only = query.get("unread") in ("1", "true")
    if query.get("unread") not in (None, "", "0", "1", "true", "false"):
        raise BadRequest("Query parameter 'unread' must be true or false")
    before = None
    if "before" in query:
        anchor = store.get_notification(query["before"])
        if anchor is None or anchor["user_id"] != user_id:
            raise BadRequest("Query parameter 'before' is not one of your notifications")
        before = anchor["seq"]
    notes, more = store.user_notifications(user_id, before=before, limit=size, kind=kind, unread_only=unread_only)
    return success(
        notifications=[shown(note) for note in notes],
        unread_count=store.unread_notification_count(user_id),
        paging={"limit": size, "before": notes[-1]["id"] if more else None},
    )


def get_notifications(req):
    """My notifications, newest first (``unread=true`` for unread only)."""
    return _feed(req)


def get_mentions(req):
    """My mention notifications only."""
    return _feed(req, kind="mention")


def get_notification_count(req):
    """How many of my notifications are unread."""
    return success({"unread_count": req.ctx.store.unread_notification_count(req.user["id"])})


def post_notification_read(req, notification_id):
    """Mark one of my notifications read."""
    note = req.ctx.store.get_notification(notification_id)
    if note is None or note["user_id"] != req.user["id"]:
        raise NotFound(f"Notification with ID {notification_id} not found")
    req.ctx.store.mark_notifications_read(req.user["id"], [notification_id])
    return success({"unread_count": req.ctx.store.unread_notification_count(req.user["id"])})


def post_notifications_read_all(req):
    """Mark every notification of mine read."""
    changed = req.ctx.store.mark_notifications_read(req.user["id"])
    return success({"marked": changed, "unread_count": 0})


# -- devices ------------------------------------------------------------------------------


def _endpoint(req, body):
    url = text(body, "endpoint", required=False, max_length=500)
    if url is None:
        return None
    try:
        target = push.parse_url(url)  # read as the push worker will read it (no user@, no backslash ...)
    except push.UnsafeURL as exc:
        raise BadRequest(f"Field 'endpoint' {exc}") from None
    allowed = {host.casefold().strip("[]") for host in req.ctx.settings.push_device_hosts}
    if target.host.casefold() not in allowed:
        raise BadRequest("Field 'endpoint' must be on a host this server allows (PUSH_DEVICE_HOSTS)")
    # An address or a port refused now would be refused at every delivery; a name is looked up then.
    refusal = push.literal_refusal(target, req.ctx.push.allowed)
    if refusal is not None:
        raise BadRequest(f"Field 'endpoint' cannot be called: {refusal}")
    return url


def post_device(req):
    """Register a device for push: a platform token, an endpoint URL, or both."""
    body = req.json
    platform = text(body, "platform", max_length=20)
    if platform not in PLATFORMS:
        raise BadRequest(f"Field 'platform' must be one of: {', '.join(PLATFORMS)}")
    token = text(body, "token", required=False, max_length=4096)
    endpoint = _endpoint(req, body)
    if token is None and endpoint is None:
        raise BadRequest("Give a device 'token', an 'endpoint' URL, or both")
    try:
        device = req.ctx.store.add_device(
            {
                "id": str(uuid.uuid4()),
                "user_id": req.user["id"],
                "platform": platform,
                "token": token,
                "endpoint": endpoint,
                "created_at": views.iso_time(req.ctx.clock()),
            },
            limit=MAX_DEVICES,
        )
    except Conflict:  # counted by the store in the write, so concurrent registrations cannot pass the cap
        raise BadRequest(f"At most {MAX_DEVICES} devices per user; remove one first") from None
    return success(_device(device), "Device registered", status=201)


def _device(device):
    return {key: device.get(key) for key in ("id", "platform", "token", "endpoint", "created_at")}


def get_devices(req):
    """My registered devices."""
    return success([_device(device) for device in req.ctx.store.user_devices(req.user["id"])])


def delete_device(req, device_id):
    """Forget one of my devices."""
    device = req.ctx.store.get_device(device_id)
    if device is None or device["user_id"] != req.user["id"] or not req.ctx.store.delete_device(device_id):
        raise NotFound(f"Device with ID {device_id} not found")
    return success(message="Device removed")


def get_dead_letters(req):
    """Deliveries that gave up (server admins only: ADMINS)."""
    admins = {name.casefold() for name in req.ctx.settings.admins}
    if req.user["username"].casefold() not in admins:
        raise Forbidden("Only the server's admins may see failed deliveries")
    size = read_limit(req.query)
    jobs = req.ctx.store.dead_push_jobs(limit=size)
    return success(
        [
            {key: job.get(key) for key in ("id", "url", "attempts", "last_error", "created_at", "payload")}
            for job in jobs
        ]
    )
