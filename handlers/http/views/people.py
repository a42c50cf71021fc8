"""Views of people and 0xC messages: users, profiles, tokens, 0xC's public and private messages, pages."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .declared import View, const, field, ref

ALICE = "550e8400-e29b-41d4-a716-446655440000"
BOB = "6fa459ea-ee8a-3ca4-894e-db77e160355e"
MESSAGE = "550e8400-e29b-41d4-a716-446655440001"
CHAT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
WHEN = "2023-09-15T14:35:12.654321+00:00"
TIME_NOTE = "ISO 8601 time; oxc writes UTC with an offset (records imported from 0xC carry none)."


def iso_time(seconds: float) -> str:
    """An ISO 8601 UTC timestamp with microseconds, as 0xC writes them."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds")


def paging(name: str, limit: int, *cursors: str) -> View:
    """The paging object of a list with these cursors."""
    meaning = {"before": "older", "after": "newer"}
    return View(
        name,
        "Where the neighbouring pages are.",
        [field("limit", "integer", "The page size used.", limit, minimum=1)]
        + [
            field(
                cursor,
                "string",
                f"Pass as ?{cursor}= for the next {meaning[cursor]} page; null when there is none.",
                nullable=True,
            )
            for cursor in cursors
        ],
    )


USER_ID = field("id", "string", "The user's id (a UUID).", ALICE)
USERNAME = field("username", "string", "The user's name.", "user1")
CREATED = field("created_at", "string", f"When the account was made: {TIME_NOTE}", WHEN, nullable=True)


def _public_user(user: dict) -> dict:
    return {
        "id": user["id"],
        "username": user["username"],
        "email": user.get("email"),
        "email_verified": bool(user.get("email_verified")),
        "created_at": user.get("created_at"),
    }


#: A user as anyone may see them (never the password hash).
public_user = View(
    "User",
    "A user as 0xC showed them.",
    [
        USER_ID,
        USERNAME,
        field("email", "string", "The user's e-mail address, if they gave one.", "user1@example.com", nullable=True),
        field("email_verified", "boolean", "Whether the address was verified with a code.", False),
        CREATED,
    ],
    _public_user,
)


def _profile(user: dict, online: bool | None = None) -> dict:
    shown = {
        "id": user["id"],
        "username": user["username"],
        "full_name": user.get("full_name"),
        "bio": user.get("bio"),
        "avatar_url": user.get("avatar_url"),
        "created_at": user.get("created_at"),
        "last_seen": iso_time(user["last_seen"]) if user.get("last_seen") else None,
    }
    if online is not None:
        shown["online"] = online
    return shown


#: A user's public profile; ``online`` is given where the answer says whether they are online now.
public_profile = View(
    "Profile",
    "A user's public profile.",
    [
        USER_ID,
        USERNAME,
        field("full_name", "string", "The user's full name.", "Ada Lovelace", nullable=True),
        field("bio", "string", "A few words about the user.", "Writes the first programs.", nullable=True),
        field("avatar_url", "string", "An http(s) URL of the user's picture.", nullable=True),
        CREATED,
        field(
            "last_seen",
            "string",
            "When the user last made an authenticated request (to the minute).",
            WHEN,
            nullable=True,
        ),
        field(
            "online",
            "boolean",
            "Whether the user is online now (connected to the event stream); only on GET /users/{user_id}.",
            True,
            required=False,
        ),
    ],
    _profile,
)

storage = View(
    None,
    "The room my attachments take; deleting one frees its share.",
    [
        field(
            "attachment_bytes",
            "integer",
            "Bytes my attachments hold now (the sum of their sizes; thumbnails are not counted).",
            48213,
            minimum=0,
        ),
        field(
            "quota_bytes",
            {
                "anyOf": [
                    {
                        "type": "integer",
                        "description": "The most my attachments may hold (ATTACHMENT_QUOTA_BYTES); "
                        "an upload past it gets 413.",
                        "minimum": 1,
                        "examples": [1073741824],
                    },
                    {"type": "null"},
                ]
            },
            "null: no limit.",
        ),
    ],
)


def _my_profile(user: dict, attachment_bytes: int, quota_bytes: int | None) -> dict:
    return dict(
        public_profile(user),
        email=user.get("email"),
        email_verified=bool(user.get("email_verified")),
        storage=storage.build(attachment_bytes=attachment_bytes, quota_bytes=quota_bytes),
    )


#: My own profile: the public one, my e-mail address and my attachment storage.
my_profile = View(
    "MyProfile",
    "My own profile: the public one, my e-mail address and my attachment storage.",
    [
        field("email", "string", "My e-mail address, if I gave one.", "user1@example.com", nullable=True),
        field("email_verified", "boolean", "Whether my address was verified with a code.", False),
        field("storage", storage, "The room my attachments take; deleting one frees its share."),
    ],
    _my_profile,
    extends=public_profile,
)

#: Fresh tokens.
grant = View(
    "Grant",
    "Fresh tokens.",
    [
        field(
            "access_token",
            "string",
            "A JWT to send as 'Authorization: Bearer <token>'.",
            "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9...",
        ),
        field(
            "refresh_token",
            "string",
            "An opaque token for /auth/refresh and /auth/logout; keep it secret.",
            "Qm9vdHN0cmFw.d2l0aC1hLXJhbmRvbS10YWls",
        ),
        field("token_type", const("Bearer"), "Always Bearer."),
        field(
            "expires_in",
            "integer",
            "Seconds until the access token expires.",
            lambda settings: settings.access_token_expires * 60,
            minimum=1,
        ),
        field("refresh_at", "integer", "Unix time from which the client should refresh.", 1694790045),
    ],
)

#: Fresh tokens and the user they are for (what a login answers).
login = View(
    "Login",
    "Fresh tokens and the user who logged in.",
    [field("user", public_user, "Who logged in.")],
    extends=grant,
)

token_info = View(
    "TokenInfo",
    "The current user and the timing of the access token in use.",
    [
        field("user", public_user, "Whose token it is."),
        field(
            "token_info",
            View(
                None,
                None,
                [
                    field("type", const("access"), "Always access."),
                    field("issued_at", "integer", "Unix time the token was issued.", 1694789445),
                    field("expires_at", "integer", "Unix time the token expires.", 1694790345),
                    field("refresh_at", "integer", "Unix time from which the client should refresh.", 1694790045),
                ],
            ),
            "The token's timing.",
        ),
    ],
)

sessions_ended = View(
    "SessionsEnded", None, [field("sessions_ended", "integer", "How many sessions ended.", 2, minimum=0)]
)


def _public_message(message: dict) -> dict:
    return {
        "id": message["id"],
        "user_id": message["user_id"],
        "username": message["username"],
        "content": message["content"],
        "timestamp": message["timestamp"],
        "recipient_id": message.get("recipient_id"),
    }


MESSAGE_FIELDS = [
    field("id", "string", "The message's id (a UUID).", MESSAGE),
    field("user_id", "string", "The sender's id.", ALICE),
    field("username", "string", "The sender's name.", "user1"),
    field("content", "string", "The text of the message.", "Hello, world!"),
    field("timestamp", "string", f"When it was sent: {TIME_NOTE}", WHEN),
    field("recipient_id", "string", "The recipient's id; null for a public message.", nullable=True),
]

#: A message in 0xC's shape; ``recipient_id`` is null for public messages.
public_message = View("Message", "A 0xC message; public when recipient_id is null.", MESSAGE_FIELDS, _public_message)

#: A 0xC message as a message.created event carries it: its text is null once the message is deleted.
message_event = View(
    "MessageEvent",
    "A 0xC message in a message.created event; content is null once the message was deleted.",
    [
        f if f.name != "content" else field("content", "string", "The text; null once deleted.", "Hi", nullable=True)
        for f in MESSAGE_FIELDS
    ],
)

#: A 0xC message found by search (``chat_id`` null tells it from a chat message).
message_hit = View(
    None,
    None,
    [field("chat_id", {"type": "null"}, "Null: a 0xC message, not a chat message.")],
    lambda message: dict(public_message(message), chat_id=None),
    extends=public_message,
)

PAGINGS = [
    paging("DirectoryPaging", 20, "after"),
    paging("Paging", 50, "before", "after"),
    paging("OlderPaging", 20, "before"),
    paging("ChatPaging", 50, "before"),
    paging("NotificationPaging", 50, "before"),
]

VIEWS: list[View] = [public_user, public_profile, my_profile, grant, login, token_info, sessions_ended]
VIEWS += [public_message, message_event, *PAGINGS]


def search_hit_schema(settings: Any) -> dict:
    """A chat message, or a 0xC message (with chat_id null)."""
    return {
        "anyOf": [ref("ChatMessage"), message_hit.schema(settings)],
        "description": "A chat message, or a 0xC message (with chat_id null).",
    }
