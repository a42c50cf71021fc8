"""Views of attachments, public keys, notifications, devices, events and the service itself."""

from __future__ import annotations

from typing import Any

from ...services.event_types import EVENT_TYPES
from ...services.thumbnails import THUMBNAIL_SIZE
from .chats import chat_message
from .declared import View, const, field, one_of, ref
from .people import ALICE, CHAT, MESSAGE, TIME_NOTE, WHEN

ATTACHMENT = "3d6f0a8e-2b1c-4f5e-9a7d-0c8b6e4f2a1d"
KEY = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
EXAMPLE_X25519 = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
#: Pixels, or null when not known.
PIXELS = {"anyOf": [{"type": "integer", "description": "Pixels.", "minimum": 0, "examples": [320]}, {"type": "null"}]}


def _key_algorithms(settings: Any) -> list:
    # Declared by the keys endpoint, which imports this package: read when the document is built.
    from ...keys import ALGORITHMS

    return list(ALGORITHMS)


def _notification_kinds(settings: Any) -> list:
    from ...services.notifier import KINDS

    return list(KINDS)


# -- attachments and keys -------------------------------------------------------------------

thumbnail = View(
    "Thumbnail",
    f"A small image (at most {THUMBNAIL_SIZE} px a side) for an image attachment.",
    [
        field(
            "status",
            one_of(("ready", "none")),
            "ready: GET /attachments/{id}/thumbnail serves it; none: there is none, and reason says why.",
            "ready",
        ),
        field(
            "reason",
            "string",
            "Why there is no thumbnail: not an image, Pillow not installed on the server, too many pixels, "
            "decoding would take more memory than the server allows, the server was busy making other "
            "thumbnails, or undecodable.",
            nullable=True,
        ),
        field("content_type", "string", "image/jpeg, or image/png for images with transparency.", "image/jpeg", True),
        field("width", PIXELS, "Its width in pixels."),
        field("height", PIXELS, "Its height in pixels."),
    ],
)


def _attachment(record: dict) -> dict:
    return {
        "id": record["id"],
        "chat_id": record["chat_id"],
        "uploader_id": record["uploader_id"],
        "message_id": record.get("message_id"),
        "name": record["name"],
        "size": record["size"],
        "content_type": record["content_type"],
        "kind": record["kind"],
        "sha256": record["sha256"],
        "width": record.get("width"),
        "height": record.get("height"),
        "thumbnail": thumbnail.check(record["thumbnail"]),
        "created_at": record["created_at"],
    }


#: An attachment's metadata (never where its bytes lie on disk).
attachment = View(
    "Attachment",
    "An uploaded file: its metadata. The bytes are at /attachments/{id}/content.",
    [
        field("id", "string", "The attachment's id (a UUID).", ATTACHMENT),
        field("chat_id", "string", "The chat it belongs to; only its members may see it.", CHAT),
        field("uploader_id", "string", "Who uploaded it.", ALICE),
        field("message_id", "string", "The message it was sent with; null until it is sent.", nullable=True),
        field(
            "name",
            "string",
            "The file's name as given (for showing and saving; never a path on the server).",
            "photo.jpg",
        ),
        field("size", "integer", "Its size in bytes.", 48213, minimum=1),
        field(
            "content_type", "string", "Its MIME type, as declared and checked against its first bytes.", "image/jpeg"
        ),
        field("kind", one_of(("image", "video", "audio", "document", "other")), "What it is, for showing it.", "image"),
        field(
            "sha256",
            "string",
            "The SHA-256 of its bytes (hex); its ETag.",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            pattern="^[0-9a-f]{64}$",
        ),
        field("width", PIXELS, "Its width in pixels, for images and videos whose size is known."),
        field("height", PIXELS, "Its height in pixels, for images and videos whose size is known."),
        field("thumbnail", thumbnail, "Its thumbnail, or why it has none."),
        field("created_at", "string", f"When it was uploaded: {TIME_NOTE}", WHEN),
    ],
    _attachment,
)

#: The attachment just uploaded; with content or send=1, also the message sent.
uploaded = View(
    "UploadedAttachment",
    "The attachment; with content or send=1, also the message sent.",
    [field("message", ref("ChatMessage"), "The message sent with it, if any.", required=False)],
    lambda record, message=None: dict(
        attachment(record), **({"message": chat_message(message)} if message is not None else {})
    ),
    extends=attachment,
)


def _public_key(record: dict) -> dict:
    return {
        "id": record["id"],
        "user_id": record["user_id"],
        "device_id": record["device_id"],
        "algorithm": record["algorithm"],
        "public_key": record["public_key"],
        "fingerprint": record["fingerprint"],
        "created_at": record["created_at"],
        "revoked_at": record.get("revoked_at"),
        "replaces": record.get("replaces"),
        "replaced_by": record.get("replaced_by"),
    }


#: A published public key; ``revoked_at`` is set once it must no longer be used.
public_key = View(
    "PublicKey",
    "A public key in the directory.",
    [
        field("id", "string", "The key's id; name it in envelopes.", KEY),
        field("user_id", "string", "Whose key it is.", ALICE),
        field("device_id", "string", "Which of their devices holds the private half.", "laptop"),
        field("algorithm", {}, "What it is for.", "x25519", enum=_key_algorithms),
        field("public_key", "string", "Base64: the raw 32 bytes, or DER SubjectPublicKeyInfo for RSA.", EXAMPLE_X25519),
        field(
            "fingerprint",
            "string",
            "SHA-256 of the key's bytes (hex), to compare out of band.",
            "5b1f7c4e6a0d2f3b8c9e1a7d4f6b2c8e0a3d5f7b9c1e3a5d7f9b1c3e5a7d9f1b",
        ),
        field("created_at", "string", f"When it was published: {TIME_NOTE}", WHEN),
        field("revoked_at", "string", "When it was revoked or replaced; null while current.", nullable=True),
        field("replaces", "string", "The key this one replaced.", nullable=True),
        field("replaced_by", "string", "The key that replaced this one.", nullable=True),
    ],
    _public_key,
)

# -- notifications and devices ----------------------------------------------------------------

NOTIFICATION_FIELDS = [
    field("id", "string", "The notification's id.", MESSAGE),
    field("kind", {}, "What happened.", "mention", enum=_notification_kinds),
    field("chat_id", "string", "The chat it happened in.", CHAT),
    field("chat_name", "string", "The chat's name (null for a direct chat).", "Book club", nullable=True),
    field("message_id", "string", "The message, for mentions and direct messages.", nullable=True),
    field("actor_id", "string", "Who did it.", ALICE, nullable=True),
    field("actor_username", "string", "Their name.", "alice", nullable=True),
    field("preview", "string", "The start of the message; null once it is deleted.", "hey @bob", nullable=True),
    field("role", "string", "The new role, for a role change.", nullable=True),
    field("created_at", "string", f"When: {TIME_NOTE}", WHEN),
    field("read", "boolean", "Whether I marked it read.", False),
]

#: A notification as its user sees it.
notification = View(
    "Notification",
    None,
    NOTIFICATION_FIELDS,
    lambda note: {f.name: note.get(f.name) for f in NOTIFICATION_FIELDS},
)

unread_count = View("UnreadCount", None, [field("unread_count", "integer", "How many are unread.", 3, minimum=0)])
marked_read = View(
    "MarkedRead",
    None,
    [
        field("marked", "integer", "How many changed.", 3, minimum=0),
        field("unread_count", "integer", "How many are unread now.", 0, minimum=0),
    ],
)

DEVICE_FIELDS = [
    field("id", "string", "The device's id.", MESSAGE),
    field("platform", "string", "The kind of device.", "android"),
    field("token", "string", "The push token.", "fcm-token", nullable=True),
    field("endpoint", "string", "The endpoint URL.", nullable=True),
    field("created_at", "string", f"When it was registered: {TIME_NOTE}", WHEN),
]

#: A registered device (its push token or endpoint).
device = View("Device", None, DEVICE_FIELDS, lambda record: {f.name: record.get(f.name) for f in DEVICE_FIELDS})

DEAD_LETTER_FIELDS = [
    field("id", "string", "The delivery's id (the X-Oxc-Delivery header).", MESSAGE),
    field("url", "string", "Where it was to go (PUSH_WEBHOOK_URL or a device endpoint)."),
    field("attempts", "integer", "How many times it was tried.", 8, minimum=0),
    field(
        "last_error",
        "string",
        "Why the last try failed; 'refused: ...' when the URL or an address it resolved to may not be called "
        "(never sent).",
        "HTTP 503",
        nullable=True,
    ),
    field("created_at", "string", f"When it was queued: {TIME_NOTE}", WHEN),
    field("payload", "object", "The JSON it carried."),
]

#: A push delivery that gave up.
dead_letter = View(
    "DeadLetter", None, DEAD_LETTER_FIELDS, lambda job: {f.name: job.get(f.name) for f in DEAD_LETTER_FIELDS}
)

# -- events -------------------------------------------------------------------------------------

ticket = View(
    "Ticket",
    None,
    [
        field(
            "ticket",
            "string",
            "Opens GET /events/stream?ticket=... once, for a browser's EventSource.",
            "cD9yXw3u0b5kJmZ2aGVyZS1hLXRpY2tldA",
        ),
        field("expires_in", "integer", "Seconds the ticket stays valid.", 60, minimum=1),
    ],
)


def _about(*names: str) -> View:
    """An inline event payload of these fields (ids, mostly)."""
    said = {
        "chat_id": field("chat_id", "string", "The chat's id.", CHAT),
        "user_id": field("user_id", "string", "The user's id.", ALICE),
        "message_id": field("message_id", "string", "The message's id.", MESSAGE),
        "id": field("id", "string", "The message's id.", MESSAGE),
        "by": field("by", "string", "Who did it.", ALICE),
        "username": field("username", "string", "The user's name.", "alice"),
        "role": field("role", "string", "The new role.", "admin"),
        "last_seen": field("last_seen", "string", f"When they were last seen: {TIME_NOTE}", WHEN),
    }
    return View(None, None, [said[name] for name in names])


#: Each event type's data, as the matching endpoint shows its subject.
EVENT_DATA: dict[str, Any] = {
    "message.created": ref("MessageEvent"),
    "message.deleted": _about("id"),
    "chat.created": ref("ChatInfo"),
    "chat.updated": ref("ChatInfo"),
    "chat.deleted": _about("chat_id"),
    "member.added": {"allOf": [ref("Member"), _about("chat_id", "by").schema(None)]},
    "member.removed": _about("chat_id", "user_id", "by"),
    "member.role_changed": _about("chat_id", "user_id", "role", "by"),
    "chat.message.created": ref("ChatMessage"),
    "chat.message.edited": ref("ChatMessage"),
    "chat.message.deleted": ref("ChatMessage"),
    "message.read": _about("chat_id", "user_id", "message_id"),
    "message.delivered": _about("chat_id", "user_id", "message_id"),
    "typing.started": _about("chat_id", "user_id", "username"),
    "typing.stopped": _about("chat_id", "user_id", "username"),
    "presence.online": _about("user_id"),
    "presence.offline": _about("user_id", "last_seen"),
    "notification.created": ref("Notification"),
}
assert EVENT_DATA.keys() == EVENT_TYPES.keys(), "every declared event type has its data declared"

EVENT_FIELDS = [
    field("id", "string", "The event's cursor: pass it as ?since= or Last-Event-ID to resume after it.", "k3J9x-42"),
    field("type", one_of(tuple(EVENT_TYPES)), "What happened: " + ", ".join(EVENT_TYPES) + ".", "chat.message.created"),
    field("at", "string", f"When: {TIME_NOTE}", WHEN),
    field("data", {"type": "object"}, "The subject, as the matching endpoint shows it; its shape follows the type."),
]

#: One real-time event: ``event(cursor, type, at, data)``.
event = View(
    "Event",
    "One real-time event.",
    EVENT_FIELDS,
    lambda cursor, type, at, data: {"id": cursor, "type": type, "at": at, "data": data},
)


def event_schema(settings: Any) -> dict:
    """The Event component: the envelope above, with each type's data."""
    schema = event.schema(settings)
    variants = []
    for name, data in EVENT_DATA.items():
        shape = data.schema(settings) if isinstance(data, View) else data
        variants.append(
            {
                "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                "then": {"properties": {"data": shape}},
            }
        )
    schema["allOf"] = variants
    return schema


# -- the service ------------------------------------------------------------------------------

service = View(
    "Service",
    None,
    [
        field("name", "string", "The service's name.", "oxc"),
        field("version", "string", "The service's version.", "0.1.0"),
        field("api_prefix", "string", "The path prefix of the API.", lambda settings: settings.api_prefix),
    ],
)

health = View(
    "Health",
    None,
    [
        field("store", one_of(("ok", "refusing writes")), "Whether the store accepts writes.", "ok"),
        field(
            "store_problem",
            "string",
            "Why the store refuses writes (a full disk, a failed write); it accepts them again by itself once "
            "the cause is gone.",
            "the disk is nearly full (812 KiB free; the store keeps 65536 KiB in reserve)",
            nullable=True,
        ),
        field("uptime_seconds", "number", "Seconds since the app started.", 42.5),
        field("version", "string", "The service's version.", "0.1.0"),
        field(
            "notifications_pending",
            "integer",
            "Chat messages still waiting for their notifications (counted up to 1000); null while the store "
            "refuses writes (not asked then, so that the answer comes at once).",
            0,
            nullable=True,
            minimum=0,
        ),
    ],
)

error = View(
    "Error",
    "The envelope of every error answer.",
    [
        field("status", const("error"), "Always error."),
        field("message", "string", "What went wrong, for people.", "Missing required field: content", minLength=1),
    ],
)

unhealthy = View(
    "Unhealthy",
    "The error envelope with the health report in data.",
    [
        field("status", const("error"), "Always error."),
        field("message", "string", "Why the service is unhealthy.", "The store refuses writes"),
        field("data", health, "The health report."),
    ],
)

VIEWS = [thumbnail, attachment, uploaded, public_key, notification, unread_count, marked_read, device, dead_letter]
VIEWS += [ticket, service, health, error, unhealthy]
