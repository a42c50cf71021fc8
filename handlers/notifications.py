"""Notifications: made from events, kept per user, pushed to devices.

``Notifier`` subscribes to the event hub. It makes a notification for a
mention (``@username`` of a member), a message in a direct chat, being added
to a group, and a role change; a muted chat makes none but mentions. Each
batch is stored in one write, published to its user as a
``notification.created`` event, and queued for push (``push.py``) to the
user's registered device endpoints and to PUSH_WEBHOOK_URL. Queuing never
waits on a receiver: delivery happens on the push worker's thread.

Device endpoints are URLs the server will call, so a user may register one
only on a host the operator allowed (PUSH_DEVICE_HOSTS); anything else would
let users make the server probe internal addresses.
"""

import logging
import urllib.parse
import uuid

from . import views
from .fields import limit as read_limit
from .fields import text
from .http import BadRequest, Forbidden, NotFound, success

log = logging.getLogger("oxc.notifications")

KINDS = ("mention", "direct_message", "added_to_chat", "role_changed")
PLATFORMS = ("web", "ios", "android", "desktop", "webhook")
PREVIEW = 140
MAX_DEVICES = 20


class Notifier:
    """Turn published events into stored, streamed and pushed notifications."""

    def __init__(self, ctx, worker):
        self.ctx = ctx
        self.worker = worker

    def __call__(self, event):
        if event.type.startswith("notification."):
            return
        try:
            notes = self._notes(event)
            if notes:
                self._deliver(notes)
        except Exception:
            # A notification must never undo the write that caused it.
            log.exception("notifications: could not notify for %s", event.type)

    def _muted(self, chat_id, user_id):
        member = self.ctx.store.get_member(chat_id, user_id)
        return member is None or member.get("muted", False)

    def _note(self, user_id, kind, chat, actor_id, message=None):
        store = self.ctx.store
        actor = store.get_user(actor_id) if actor_id else None
        return {
            "id": str(uuid.uuid4()), "user_id": user_id, "kind": kind, "chat_id": chat["id"],
            "chat_name": chat.get("name"), "message_id": message["id"] if message else None,
            "actor_id": actor_id, "actor_username": actor["username"] if actor else None,
            "preview": (message.get("content") or "")[:PREVIEW] if message else None,
            "created_at": views.iso_time(self.ctx.clock()), "read": False,
        }

    def _notes(self, event):
        data, store = event.data, self.ctx.store
        chat = store.get_chat(event.chat_id) if event.chat_id else None
        if chat is None:
            return []
        if event.type == "chat.message.created":
            author = data["user_id"]
            mentioned = [m["user_id"] for m in data.get("mentions", []) if m["user_id"] != author]
            notes = [self._note(uid, "mention", chat, author, data) for uid in mentioned
                     if store.get_member(chat["id"], uid)]
            if chat["type"] == "direct":
                notes += [self._note(uid, "direct_message", chat, author, data) for uid in chat["pair"]
                          if uid != author and uid not in mentioned and not self._muted(chat["id"], uid)]
            return notes
        if event.type == "chat.created" and chat["type"] == "group":
            return [self._note(member["user_id"], "added_to_chat", chat, chat["created_by"])
                    for member in store.members(chat["id"]) if member["user_id"] != chat["created_by"]]
        if event.type == "member.added":
            return [self._note(data["user_id"], "added_to_chat", chat, data.get("by"))]
        if event.type == "member.role_changed" and not self._muted(chat["id"], data["user_id"]):
            return [dict(self._note(data["user_id"], "role_changed", chat, data.get("by")), role=data["role"])]
        return []

    def _deliver(self, notes):
        ctx = self.ctx
        notes = ctx.store.add_notifications(notes)
        for note in notes:
            ctx.events.publish("notification.created", shown(note), {note["user_id"]})
        jobs = self._jobs(notes)
        if jobs:
            _, refused = ctx.store.add_push_jobs(jobs, ctx.settings.push_queue_max)
            if refused:
                log.warning("notifications: push queue full; %d deliveries kept as dead letters", len(refused))
            self.worker.start()

    def _jobs(self, notes):
        settings, store, now = self.ctx.settings, self.ctx.store, self.ctx.clock()
        jobs = []
        for note in notes:
            devices = store.user_devices(note["user_id"])
            payload = {"notification": shown(note), "user_id": note["user_id"]}
            targets = [(device["endpoint"], dict(payload, device_id=device["id"], token=device.get("token")))
                       for device in devices if device.get("endpoint")]
            if settings.push_webhook_url:
                tokens = [{"device_id": d["id"], "platform": d["platform"], "token": d.get("token")}
                          for d in devices]
                targets.append((settings.push_webhook_url, dict(payload, devices=tokens)))
            jobs += [{"id": str(uuid.uuid4()), "url": url, "payload": body, "attempts": 0, "last_error": None,
                      "next_attempt_at": now, "created_at": views.iso_time(now)} for url, body in targets]
        return jobs


def shown(note):
    """A notification as its user sees it."""
    return {key: note.get(key) for key in (
        "id", "kind", "chat_id", "chat_name", "message_id", "actor_id", "actor_username", "preview",
        "role", "created_at", "read")}


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
    return success(notifications=[shown(note) for note in notes],
                   unread_count=store.unread_notification_count(user_id),
                   paging={"limit": size, "before": notes[-1]["id"] if more else None})


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
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BadRequest("Field 'endpoint' must be an http(s) URL")
    allowed = {host.casefold() for host in req.ctx.settings.push_device_hosts}
    if parsed.hostname.casefold() not in allowed:
        raise BadRequest("Field 'endpoint' must be on a host this server allows (PUSH_DEVICE_HOSTS)")
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
    store = req.ctx.store
    if len(store.user_devices(req.user["id"])) >= MAX_DEVICES:
        raise BadRequest(f"At most {MAX_DEVICES} devices per user; remove one first")
    device = store.add_device({"id": str(uuid.uuid4()), "user_id": req.user["id"], "platform": platform,
                               "token": token, "endpoint": endpoint,
                               "created_at": views.iso_time(req.ctx.clock())})
    return success(_device(device), "Device registered", status=201)


def _device(device):
    return {key: device.get(key) for key in ("id", "platform", "token", "endpoint", "created_at")}


def get_devices(req):
    """My registered devices."""
    return success([_device(device) for device in req.ctx.store.user_devices(req.user["id"])])


def delete_device(req, device_id):
    """Forget one of my devices."""
    device = req.ctx.store.get_device(device_id)
    if device is None or device["user_id"] != req.user["id"]:
        raise NotFound(f"Device with ID {device_id} not found")
    req.ctx.store.delete_device(device_id)
    return success(message="Device removed")


def get_dead_letters(req):
    """Deliveries that gave up (server admins only: ADMINS)."""
    admins = {name.casefold() for name in req.ctx.settings.admins}
    if req.user["username"].casefold() not in admins:
        raise Forbidden("Only the server's admins may see failed deliveries")
    size = read_limit(req.query)
    jobs = req.ctx.store.dead_push_jobs(limit=size)
    return success([{key: job.get(key) for key in ("id", "url", "attempts", "last_error", "created_at", "payload")}
                    for job in jobs])
