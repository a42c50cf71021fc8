"""Notifications: the feed of my notifications, and the devices they are pushed to.

The notifications themselves are made from events by the notifier
(``services.notifier``); these endpoints list them, count them, mark them
read, and register the devices and endpoints push delivers to.

Device endpoints are URLs the server will call, so a user may register one
only on a host the operator allowed (PUSH_DEVICE_HOSTS); anything else would
let users make the server probe internal addresses. The URL is read exactly
as the push worker reads it (``push.parse_url``: no user@, no backslash,
nothing percent-encoded in the host), and an IP address or port that every
delivery would refuse is refused here already; names are checked, by the
addresses they resolve to, at each delivery.
"""

import re
import uuid

from store import Conflict

from .http import BadRequest, Forbidden, NotFound, success, views
from .http.declare import (
    DEVICE_PATH,
    LIMIT,
    NOTIFICATION_PATH,
    AnyGiven,
    Link,
    Text,
    array,
    endpoint,
    envelope,
    integer,
    query,
    ref,
    refuses,
    returns,
)
from .services import push
from .services.notifier import shown

PLATFORMS = ("web", "ios", "android", "desktop", "webhook")
MAX_DEVICES = 20
NOTIFICATION_BEFORE = query(
    "NotificationBefore",
    "before",
    "Notifications older than this one (a paging.before value); it must be one of mine.",
    {"type": "string", "minLength": 1},
)
UNREAD = query(
    "Unread",
    "unread",
    "true for unread notifications only.",
    {"enum": ["true", "false", "1", "0", ""]},
    refusal="Query parameter 'unread' must be true or false",
)
FEED_ANSWERS = {
    200: returns(
        envelope(
            notifications=array(ref("Notification")),
            unread_count=integer("How many are unread.", 3),
            paging=ref("NotificationPaging"),
        ),
        "One page.",
    ),
    400: refuses("'limit' or 'unread' is invalid, or 'before' is not one of my notifications."),
}
FEED_LINKS = (Link("notification_id", "/notifications/0/id"),)


# -- the feed ---------------------------------------------------------------------------


def _feed(req, kind=None):
    store, user_id, query = req.ctx.store, req.user["id"], req.query
    size = LIMIT.read(query)
    unread_only = UNREAD.read(query) in ("1", "true")
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


@endpoint(
    "notifications",
    "My notifications",
    "Mentions, direct messages, additions to groups and role changes, newest first.",
    answers=FEED_ANSWERS,
    parameters=(LIMIT, NOTIFICATION_BEFORE, UNREAD),
    links={200: FEED_LINKS},
)
def get_notifications(req):
    """My notifications, newest first (``unread=true`` for unread only)."""
    return _feed(req)


@endpoint(
    "notifications",
    "My mentions",
    "Only the notifications for mentions of me, newest first.",
    answers=FEED_ANSWERS,
    parameters=(LIMIT, NOTIFICATION_BEFORE, UNREAD),
    links={200: FEED_LINKS},
)
def get_mentions(req):
    """My mention notifications only."""
    return _feed(req, kind="mention")


@endpoint(
    "notifications",
    "How many notifications are unread",
    "The number of my unread notifications.",
    answers={200: returns(envelope(ref("UnreadCount")), "The count.")},
)
def get_notification_count(req):
    """How many of my notifications are unread."""
    return success(views.unread_count.build(unread_count=req.ctx.store.unread_notification_count(req.user["id"])))


@endpoint(
    "notifications",
    "Mark a notification read",
    "Marks one of my notifications read.",
    answers={
        200: returns(envelope(ref("UnreadCount")), "The unread count now."),
        404: refuses("No such notification of mine."),
    },
    parameters=(NOTIFICATION_PATH,),
    writes=True,
)
def post_notification_read(req, notification_id):
    """Mark one of my notifications read."""
    note = req.ctx.store.get_notification(notification_id)
    if note is None or note["user_id"] != req.user["id"]:
        raise NotFound(f"Notification with ID {notification_id} not found")
    req.ctx.store.mark_notifications_read(req.user["id"], [notification_id])
    return success(views.unread_count.build(unread_count=req.ctx.store.unread_notification_count(req.user["id"])))


@endpoint(
    "notifications",
    "Mark every notification read",
    "Marks all my notifications read.",
    answers={200: returns(envelope(ref("MarkedRead")), "Done.")},
    writes=True,
)
def post_notifications_read_all(req):
    """Mark every notification of mine read."""
    changed = req.ctx.store.mark_notifications_read(req.user["id"])
    return success(views.marked_read.build(marked=changed, unread_count=0))


# -- devices ------------------------------------------------------------------------------


def _endpoint(req, url):
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


@endpoint(
    "notifications",
    "Register a push device",
    "A platform token (passed to PUSH_WEBHOOK_URL with each notification), an endpoint URL on an allowed "
    "host (POSTed each notification, signed), or both. At most 20 per user.",
    answers={
        201: returns(envelope(ref("Device"), message="Device registered"), "Registered."),
        400: refuses(
            "The platform is unknown, neither token nor endpoint is given, the endpoint is not a "
            "plain http(s) URL on an allowed host (it carries a user@, a backslash, a percent-encoded "
            "host or control characters), its address is loopback, private, link-local, multicast, "
            "reserved or a cloud metadata address, or its port is not 80 or 443 (unless "
            "PUSH_ALLOWED_ADDRESSES allows them), or I have 20 devices already."
        ),
    },
    body={
        "platform": Text(
            "The kind of device.",
            "web",
            required=True,
            max_length=20,
            pattern=re.compile(r"\A(?:" + "|".join(PLATFORMS) + r")\Z"),
            pattern_message=f"Field 'platform' must be one of: {', '.join(PLATFORMS)}",
            schema_extra={"enum": list(PLATFORMS)},
        ),
        "token": Text(
            "The platform's push token (FCM, APNs...), passed on to PUSH_WEBHOOK_URL.", "fcm-token", max_length=4096
        ),
        "endpoint": Text(
            "An http(s) URL to POST this user's notifications to; its host must be in "
            "PUSH_DEVICE_HOSTS, written plainly (no user@, backslash or percent-encoded "
            "host), on port 80 or 443 and a public address unless PUSH_ALLOWED_ADDRESSES "
            "names it; a name is checked again, by the addresses it resolves to, at each "
            "delivery.",
            max_length=500,
        ),
    },
    constraints=(AnyGiven(("token", "endpoint"), "Give a device 'token', an 'endpoint' URL, or both"),),
    body_name="NewDevice",
    links={201: (Link("device_id"),)},
    body_example={"platform": "android", "token": "fcm-token"},
    writes=True,
)
def post_device(req, *, body):
    """Register a device for push: a platform token, an endpoint URL, or both."""
    platform, token = body["platform"], body["token"]
    url = _endpoint(req, body["endpoint"])
    try:
        device = req.ctx.store.add_device(
            {
                "id": str(uuid.uuid4()),
                "user_id": req.user["id"],
                "platform": platform,
                "token": token,
                "endpoint": url,
                "created_at": views.iso_time(req.ctx.clock()),
            },
            limit=MAX_DEVICES,
        )
    except Conflict:  # counted by the store in the write, so concurrent registrations cannot pass the cap
        raise BadRequest(f"At most {MAX_DEVICES} devices per user; remove one first") from None
    return success(views.device(device), "Device registered", status=201)


@endpoint(
    "notifications",
    "My push devices",
    "The devices I registered for push.",
    answers={200: returns(envelope(array(ref("Device"))), "The devices.")},
)
def get_devices(req):
    """My registered devices."""
    return success([views.device(device) for device in req.ctx.store.user_devices(req.user["id"])])


@endpoint(
    "notifications",
    "Remove a push device",
    "Forgets one of my devices.",
    answers={200: returns(envelope(message="Device removed"), "Removed."), 404: refuses("No such device of mine.")},
    parameters=(DEVICE_PATH,),
    writes=True,
)
def delete_device(req, device_id):
    """Forget one of my devices."""
    device = req.ctx.store.get_device(device_id)
    if device is None or device["user_id"] != req.user["id"] or not req.ctx.store.delete_device(device_id):
        raise NotFound(f"Device with ID {device_id} not found")
    return success(message="Device removed")


@endpoint(
    "notifications",
    "Failed push deliveries (admins)",
    "Deliveries that gave up after PUSH_MAX_ATTEMPTS tries or found the queue full, newest first. Only "
    "for the users named in ADMINS.",
    answers={
        200: returns(envelope(array(ref("DeadLetter"))), "The dead letters."),
        400: refuses("'limit' is out of range."),
        403: refuses("I am not one of the server's admins."),
    },
    parameters=(LIMIT,),
)
def get_dead_letters(req):
    """Deliveries that gave up (server admins only: ADMINS)."""
    admins = {name.casefold() for name in req.ctx.settings.admins}
    if req.user["username"].casefold() not in admins:
        raise Forbidden("Only the server's admins may see failed deliveries")
    size = LIMIT.read(req.query)
    jobs = req.ctx.store.dead_push_jobs(limit=size)
    return success([views.dead_letter(job) for job in jobs])
