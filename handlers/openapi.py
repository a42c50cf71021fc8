"""The API described as an OpenAPI 3.1 document, and a reference page rendered from it.

``get_openapi`` serves the document at ``{API_PREFIX}/openapi.json``;
``get_docs`` serves a self-contained HTML reference at ``{API_PREFIX}/docs``
(no script, no CDN, no external fonts, a strict Content-Security-Policy).

The document is assembled from two sources. The route table
(``req.ctx.routes``) says which method and path reach which handler, whether
a user is needed and, for chat handlers, which role (``roles.in_chat``).
OPERATIONS says what each handler does, keyed by the handler's name, which is
also the operationId. Answers that follow from the kind of operation are added
here once instead of in every entry: 401 and bearer security for routes that
need a user, 403/404 for chat roles, 400/413/415 for JSON bodies, 503 for
operations that write, 401 and the API key scheme when ``SECRET_KEY_ENABLED``,
429 when rate limiting is on (for the auth endpoints, unless AUTH_RATE_LIMIT_ENABLED=0).

Adding an endpoint therefore means adding its entry to OPERATIONS (a route
without one is left out of the document, with a warning in the log);
``operations()`` lists the entries so that a test can hold them against the
route table. Both answers are built once per app, settings and mount point
(SCRIPT_NAME) and then served from a cache kept on ``req.ctx``.
"""

import base64
import dataclasses
import hashlib
import html
import json
import logging

from store.base import MAX_TERM

from .accounts import CODES_PER_DAY, WRONG_GUESSES_PER_DAY
from .auth import MIN_PASSWORD_LENGTH, THROTTLED_PATHS, USERNAME
from .events import MAX_POLL
from .http import Response
from .keys import (
    ALGORITHMS as KEY_ALGORITHMS,
)
from .keys import (
    BASE64,
    BASE64_12,
    BASE64_32,
    BASE64_64,
    DEVICE_ID,
    MAX_PUBLIC_KEY,
    MAX_WRAPPED_KEY,
    MIN_WRAPPED_KEY,
    base64_chars,
    max_ciphertext_bytes,
)
from .media import MAX_NAME, THUMBNAIL_SIZE
from .search import MAX_QUERY as MAX_SEARCH
from .services.passwords import MAX_PASSWORD_BYTES
from .services.roles import ROLES
from .web import STATIC_TYPES

log = logging.getLogger("oxc.openapi")

OPENAPI_VERSION = "3.1.0"
MAX_LOGIN_USERNAME = 254
MAX_EMAIL = 254
MAX_REFRESH_TOKEN = 512
MAX_ID = 64  # ids in bodies (recipient_id, user_id, reply_to_id, message_id)
#: Some non-whitespace: the handlers trim text fields before checking them.
NOT_BLANK = r"\S"
#: A word of at most MAX_TERM letters or digits: what search can match.
SEARCHABLE = rf"(^|\W)\w{{1,{MAX_TERM}}}(\W|$)"
#: An http(s) URL (letters spelled out in both cases: JSON Schema has no flags).
WEB_URL = r"^$|^[Hh][Tt][Tt][Pp][Ss]?://[^\s/$.?#]\S*$"
_CACHE_LIMIT = 16

ALICE = "550e8400-e29b-41d4-a716-446655440000"
BOB = "6fa459ea-ee8a-3ca4-894e-db77e160355e"
MESSAGE = "550e8400-e29b-41d4-a716-446655440001"
CHAT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
WHEN = "2023-09-15T14:35:12.654321+00:00"
TIME_NOTE = "ISO 8601 time; oxc writes UTC with an offset (records imported from 0xC carry none)."

# =============================================================================
# Schema helpers
# =============================================================================


def ref(name):
    """A JSON reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def string(description, example=None, nullable=False, **constraints):
    """A string property (or null, when ``nullable``) with an example."""
    schema = {"type": ["string", "null"] if nullable else "string", "description": description}
    schema.update(constraints)
    if example is not None:
        schema["examples"] = [example]
    return schema


def integer(description, example=None, **constraints):
    """An integer property with an example."""
    schema = {"type": "integer", "description": description, **constraints}
    if example is not None:
        schema["examples"] = [example]
    return schema


def boolean(description, example=False):
    """A boolean property."""
    return {"type": "boolean", "description": description, "examples": [example]}


def one_of(values, description):
    """A property holding one of ``values``."""
    return {"enum": list(values), "description": description, "examples": [values[0]]}


def array(items, description=None, **constraints):
    """An array of ``items``."""
    schema = {"type": "array", "items": items, **constraints}
    if description:
        schema["description"] = description
    return schema


def maybe(schema):
    """``schema`` or null."""
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties, required=None, description=None, **constraints):
    """An object schema; every property is required unless ``required`` names a subset."""
    schema = {"type": "object"}
    if description:
        schema["description"] = description
    schema["required"] = list(properties) if required is None else list(required)
    schema["properties"] = properties
    schema.update(constraints)
    return schema


def any_present(*names):
    """A constraint that at least one of the properties ``names`` is present (null counts)."""
    return {"anyOf": [{"required": [name]} for name in names]}


def any_given(*names):
    """A constraint that at least one of the properties ``names`` is present and not null."""
    return {"anyOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in names]}


def envelope(data=None, message=None, **extra):
    """0xC's success envelope: ``status``, ``message`` (given, with this example), ``data``, ``extra``."""
    properties = {"status": {"const": "success", "description": 'Always "success" on a 2xx answer.'}}
    if message is not None:
        properties["message"] = string("What was done, for people.", message)
    if data is not None:
        properties["data"] = data
    properties.update(extra)
    return obj(properties)


def page(key, item, paging):
    """The list envelope: ``status``, the items under ``key``, and ``paging``."""
    return envelope(**{key: array(ref(item)), "paging": ref(paging)})


def paging(limit, *cursors):
    """The paging object of a list with these cursors."""
    meaning = {"before": "older", "after": "newer"}
    properties = {"limit": integer("The page size used.", limit, minimum=1)}
    for cursor in cursors:
        properties[cursor] = string(
            f"Pass as ?{cursor}= for the next {meaning[cursor]} page; null when there is none.", None, nullable=True
        )
    return obj(properties, description="Where the neighbouring pages are.")


def content_field(settings, description="The text", nullable=False):
    """A message text: 1 to MAX_MESSAGE_LENGTH characters once trimmed."""
    length = settings.max_message_length
    return string(
        f"{description}: 1 to {length} characters once surrounding whitespace is trimmed "
        f"(MAX_MESSAGE_LENGTH={length}).",
        "Hello, world!",
        nullable=nullable,
        minLength=1,
        maxLength=length,
        pattern=NOT_BLANK,
    )


def id_field(description, example=None, nullable=False):
    """An id given in a body; trimmed, at most MAX_ID characters."""
    return string(description, example, nullable=nullable, minLength=1, maxLength=MAX_ID, pattern=NOT_BLANK)


def new_password_field(description):
    """A password acceptable for a new account or a password change."""
    return string(
        f"{description} At least {MIN_PASSWORD_LENGTH} characters and at most {MAX_PASSWORD_BYTES} "
        "bytes in UTF-8 (bcrypt's limit; longer passwords are refused, never truncated). maxLength "
        "counts characters, so non-ASCII passwords reach the byte limit sooner.",
        "password123",
        minLength=MIN_PASSWORD_LENGTH,
        maxLength=MAX_PASSWORD_BYTES,
    )


def someone():
    """A body naming a user by ``user_id`` or ``username`` (at least one)."""
    return {
        "user_id": id_field("The user's id; wins over username when both are given.", BOB, nullable=True),
        "username": string("The user's name.", None, nullable=True, minLength=1, maxLength=32, pattern=NOT_BLANK),
    }


# =============================================================================
# Components
# =============================================================================


def _account_schemas(settings):
    return {
        "User": obj(
            {
                "id": string("The user's id (a UUID).", ALICE),
                "username": string("The user's name.", "user1"),
                "email": string("The user's e-mail address, if they gave one.", "user1@example.com", nullable=True),
                "email_verified": boolean("Whether the address was verified with a code.", False),
                "created_at": string(f"When the account was made: {TIME_NOTE}", WHEN, nullable=True),
            },
            required=["id", "username", "email", "created_at"],
            description="A user as 0xC showed them.",
        ),
        "Profile": obj(
            {
                "id": string("The user's id (a UUID).", ALICE),
                "username": string("The user's name.", "user1"),
                "full_name": string("The user's full name.", "Ada Lovelace", nullable=True),
                "bio": string("A few words about the user.", "Writes the first programs.", nullable=True),
                "avatar_url": string("An http(s) URL of the user's picture.", None, nullable=True),
                "created_at": string(f"When the account was made: {TIME_NOTE}", WHEN, nullable=True),
                "last_seen": string(
                    "When the user last made an authenticated request (to the minute).", WHEN, nullable=True
                ),
            },
            description="A user's public profile.",
        ),
        "MyProfile": {
            "allOf": [
                ref("Profile"),
                obj(
                    {
                        "email": string("My e-mail address, if I gave one.", "user1@example.com", nullable=True),
                        "email_verified": boolean("Whether my address was verified with a code.", False),
                        "storage": obj(
                            {
                                "attachment_bytes": integer(
                                    "Bytes my attachments hold now (the sum of their sizes; "
                                    "thumbnails are not counted).",
                                    48213,
                                    minimum=0,
                                ),
                                "quota_bytes": {
                                    "anyOf": [
                                        integer(
                                            "The most my attachments may hold "
                                            "(ATTACHMENT_QUOTA_BYTES); an upload past it gets 413.",
                                            settings.attachment_quota_bytes or 1073741824,
                                            minimum=1,
                                        ),
                                        {"type": "null"},
                                    ],
                                    "description": "null: no limit.",
                                },
                            },
                            description="The room my attachments take; deleting one frees its share.",
                        ),
                    }
                ),
            ],
            "description": "My own profile: the public one, my e-mail address and my attachment storage.",
        },
        "Grant": obj(
            {
                "access_token": string(
                    "A JWT to send as 'Authorization: Bearer <token>'.", "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9..."
                ),
                "refresh_token": string(
                    "An opaque token for /auth/refresh and /auth/logout; keep it secret.",
                    "Qm9vdHN0cmFw.d2l0aC1hLXJhbmRvbS10YWls",
                ),
                "token_type": {"const": "Bearer"},
                "expires_in": integer(
                    "Seconds until the access token expires.", settings.access_token_expires * 60, minimum=1
                ),
                "refresh_at": integer("Unix time from which the client should refresh.", 1694790045),
            },
            description="Fresh tokens.",
        ),
        "TokenInfo": obj(
            {
                "user": ref("User"),
                "token_info": obj(
                    {
                        "type": {"const": "access"},
                        "issued_at": integer("Unix time the token was issued.", 1694789445),
                        "expires_at": integer("Unix time the token expires.", 1694790345),
                        "refresh_at": integer("Unix time from which the client should refresh.", 1694790045),
                    }
                ),
            }
        ),
        "DirectoryPaging": paging(20, "after"),
    }


def _message_schemas(settings):
    return {
        "Message": obj(
            {
                "id": string("The message's id (a UUID).", MESSAGE),
                "user_id": string("The sender's id.", ALICE),
                "username": string("The sender's name.", "user1"),
                "content": string("The text of the message.", "Hello, world!"),
                "timestamp": string(f"When it was sent: {TIME_NOTE}", WHEN),
                "recipient_id": string("The recipient's id; null for a public message.", None, nullable=True),
            },
            description="A 0xC message; public when recipient_id is null.",
        ),
        "Paging": paging(50, "before", "after"),
        "OlderPaging": paging(20, "before"),
        "SearchHit": {
            "anyOf": [ref("ChatMessage"), {"allOf": [ref("Message"), obj({"chat_id": {"type": "null"}})]}],
            "description": "A chat message, or a 0xC message (with chat_id null).",
        },
    }


def _chat_schemas(settings):
    mention = obj({"user_id": string("The member's id.", BOB), "username": string("Their name.", "bob")})
    chat = {
        "id": string("The chat's id (a UUID).", CHAT),
        "type": one_of(("group", "direct"), "A group, or a direct chat between two users."),
        "name": string("The group's name; null for a direct chat.", "Book club", nullable=True),
        "description": string("What the group is about.", "Monthly reads", nullable=True),
        "created_by": string("The id of the user who made the chat.", ALICE, nullable=True),
        "created_at": string(f"When the chat was made: {TIME_NOTE}", WHEN),
        "member_count": integer("How many members it has.", 2, minimum=0),
    }
    mine = {
        "last_message": maybe(ref("ChatMessage")),
        "unread_count": integer("Messages after my read pointer.", 0, minimum=0),
        "role": one_of(ROLES, "My role in the chat."),
        "muted": boolean("Whether I muted it."),
        "peer": obj(
            {
                "id": string("The other user's id.", BOB),
                "username": string("Their name (null if their account is gone).", "bob", nullable=True),
            },
            description="The other user; only in direct chats.",
        ),
    }
    return {
        "Chat": obj(
            {**chat, **mine},
            required=[*chat, "last_message", "unread_count", "role", "muted"],
            description="A chat as its member sees it in the list.",
        ),
        "ChatDetails": {
            "allOf": [
                ref("Chat"),
                obj(
                    {
                        "members": array(ref("Member")),
                        "message": ref("ChatMessage"),
                    },
                    required=["members"],
                ),
            ],
            "description": ("A chat with its members; after POST /chats/direct with content, also the message sent."),
        },
        "Member": obj(
            {
                "user_id": string("The member's id.", BOB),
                "username": string("Their name (null if their account is gone).", "bob", nullable=True),
                "role": one_of(ROLES, "owner > admin > member."),
                "joined_at": string(f"When they joined: {TIME_NOTE}", WHEN),
            }
        ),
        "ChatMessage": obj(
            {
                "id": string("The message's id (a UUID).", MESSAGE),
                "chat_id": string("The chat's id.", CHAT),
                "user_id": string("The sender's id.", ALICE),
                "username": string("The sender's name.", "user1"),
                "content": string("The text; null once deleted.", "Hello, @bob!", nullable=True),
                "reply_to_id": string("The message this one replies to.", None, nullable=True),
                "mentions": array(mention, "Members named as @username in the text."),
                "created_at": string(f"When it was sent: {TIME_NOTE}", WHEN),
                "edited_at": string("When it was last edited.", None, nullable=True),
                "deleted": boolean("True for a tombstone left by a deletion."),
                "attachment": maybe(ref("Attachment")),
                "encrypted": boolean(
                    "True for an end-to-end encrypted message: content is null, envelope "
                    "holds what only the members' devices can read."
                ),
                "envelope": {
                    "anyOf": [ref("Envelope"), {"type": "null"}],
                    "examples": [None],
                    "description": "The encrypted message, for encrypted messages; null otherwise.",
                },
            },
            description="A message in a chat; a deleted one keeps its place without content.",
        ),
        "ChatPaging": paging(50, "before"),
        "Mute": obj({"chat_id": string("The chat's id.", CHAT), "muted": boolean("Whether it is muted.")}),
        "Unread": obj(
            {
                "chat_id": string("The chat's id.", CHAT),
                "unread_count": integer("Messages after my read pointer.", 0, minimum=0),
            }
        ),
        "Receipts": obj(
            {
                "message_id": string("The message's id.", MESSAGE),
                "receipts": array(
                    obj(
                        {
                            "user_id": string("The member's id.", BOB),
                            "username": string("Their name (null if their account is gone).", "bob", nullable=True),
                            "delivered": boolean("Whether the message reached their device.", True),
                            "read": boolean("Whether they read it."),
                        }
                    ),
                    "One entry per member other than the sender.",
                ),
            }
        ),
    }


EVENT_TYPES = (
    "message.created",
    "message.deleted",
    "chat.created",
    "chat.updated",
    "chat.deleted",
    "member.added",
    "member.removed",
    "member.role_changed",
    "chat.message.created",
    "chat.message.edited",
    "chat.message.deleted",
    "message.read",
    "message.delivered",
    "typing.started",
    "typing.stopped",
    "presence.online",
    "presence.offline",
)


def _event_schemas(settings):
    return {
        "Event": obj(
            {
                "id": string("The event's cursor: pass it as ?since= or Last-Event-ID to resume after it.", "k3J9x-42"),
                "type": string("What happened: " + ", ".join(EVENT_TYPES) + ".", "chat.message.created"),
                "at": string(f"When: {TIME_NOTE}", WHEN),
                "data": {
                    "type": "object",
                    "description": "The subject: a message, chat, member or user "
                    "reference, as the matching endpoint shows it.",
                    "examples": [{"chat_id": CHAT}],
                },
            },
            description="One real-time event.",
        ),
        "Ticket": obj(
            {
                "ticket": string(
                    "Opens GET /events/stream?ticket=... once, for a browser's EventSource.",
                    "cD9yXw3u0b5kJmZ2aGVyZS1hLXRpY2tldA",
                ),
                "expires_in": integer("Seconds the ticket stays valid.", 60, minimum=1),
            }
        ),
        "Typing": obj(
            {"chat_id": string("The chat's id.", CHAT), "typing": boolean("Whether the caller is typing now.", True)}
        ),
        "TypingChange": obj(
            {
                "typing": boolean(
                    "True (the default) while typing, false on stopping; a notice stops by itself after a few seconds.",
                    True,
                )
            },
            required=[],
        ),
    }


def _service_schemas(settings):
    return {
        "Error": obj(
            {
                "status": {"const": "error"},
                "message": string("What went wrong, for people.", "Missing required field: content", minLength=1),
            },
            description="The envelope of every error answer.",
        ),
        "Service": obj(
            {
                "name": string("The service's name.", "oxc"),
                "version": string("The service's version.", "0.1.0"),
                "api_prefix": string("The path prefix of the API.", settings.api_prefix),
            }
        ),
        "Health": obj(
            {
                "store": one_of(("ok", "refusing writes"), "Whether the store accepts writes."),
                "store_problem": string(
                    "Why the store refuses writes (a full disk, a failed write); it "
                    "accepts them again by itself once the cause is gone.",
                    "the disk is nearly full (812 KiB free; the store keeps 65536 KiB in reserve)",
                    nullable=True,
                ),
                "uptime_seconds": {
                    "type": "number",
                    "description": "Seconds since the app started.",
                    "examples": [42.5],
                },
                "version": string("The service's version.", "0.1.0"),
            }
        ),
        "Unhealthy": obj(
            {
                "status": {"const": "error"},
                "message": string("Why the service is unhealthy.", "The store refuses writes"),
                "data": ref("Health"),
            },
            description="The error envelope with the health report in data.",
        ),
    }


def _request_schemas(settings):
    """The bodies operations take; constraints as the handlers check them."""
    return {
        "NewUser": obj(
            {
                "username": string(
                    "3 to 32 letters, digits, '_' or '-'; surrounding whitespace is trimmed. "
                    "Unique, compared without regard to case.",
                    "user1",
                    minLength=3,
                    maxLength=32,
                    pattern=USERNAME.pattern,
                ),
                "password": new_password_field("The new account's password."),
                "email": string(
                    "An e-mail address, unique when given; null or absent for none.",
                    "user1@example.com",
                    nullable=True,
                    format="email",
                    maxLength=MAX_EMAIL,
                ),
            },
            required=["username", "password"],
        ),
        "Credentials": obj(
            {
                "username": string(
                    "The account's name (case does not matter).",
                    "user1",
                    minLength=1,
                    maxLength=MAX_LOGIN_USERNAME,
                    pattern=NOT_BLANK,
                ),
                "password": string(
                    f"The account's password. One over {MAX_PASSWORD_BYTES} UTF-8 bytes can "
                    "match no account and gets 401.",
                    "password123",
                    minLength=1,
                ),
            }
        ),
        "RefreshToken": obj(
            {
                "refresh_token": string(
                    "A refresh token from /auth/login or /auth/refresh.",
                    "Qm9vdHN0cmFw.d2l0aC1hLXJhbmRvbS10YWls",
                    minLength=1,
                    maxLength=MAX_REFRESH_TOKEN,
                ),
            }
        ),
        "NewMessage": obj(
            {
                "content": content_field(settings),
                "recipient_id": id_field(
                    "The id of an existing user to make the message private to them; "
                    "null or absent for a public message.",
                    nullable=True,
                ),
            },
            required=["content"],
        ),
        "NewGroup": obj(
            {
                "name": string(
                    "The group's name, 1 to 100 characters once trimmed.",
                    "Book club",
                    minLength=1,
                    maxLength=100,
                    pattern=NOT_BLANK,
                ),
                "description": string(
                    "What the group is about, at most 1000 characters.", "Monthly reads", nullable=True, maxLength=1000
                ),
                "members": array(
                    {"type": "string"}, "Ids or usernames of existing users to add as members.", maxItems=100
                ),
            },
            required=["name"],
        ),
        "DirectChat": obj(
            {
                **someone(),
                "content": content_field(settings, "A first message to send", nullable=True),
            },
            required=[],
            **any_given("user_id", "username"),
        ),
        "ChatChanges": obj(
            {
                "name": string(
                    "A new name, 1 to 100 characters once trimmed.",
                    "Book club",
                    minLength=1,
                    maxLength=100,
                    pattern=NOT_BLANK,
                ),
                "description": string(
                    "A new description, at most 1000 characters; null to remove it.",
                    "Monthly reads",
                    nullable=True,
                    maxLength=1000,
                ),
            },
            required=[],
            **any_present("name", "description"),
        ),
        "NewMember": obj(
            {
                **someone(),
                "role": {
                    "enum": ["member", "admin", None],
                    "description": "The new member's role (default member); only the owner may add admins.",
                    "examples": ["member"],
                },
            },
            required=[],
            **any_given("user_id", "username"),
        ),
        "RoleChange": obj(
            {
                "role": one_of(
                    ROLES, "The member's new role; 'owner' transfers ownership (the old owner becomes an admin)."
                ),
            }
        ),
        "MuteChange": obj({"muted": boolean("True to mute the chat for myself, false to unmute.", True)}),
        "NewChatMessage": obj(
            {
                "content": content_field(settings, nullable=True),
                "reply_to_id": id_field("The id of a message of this chat to reply to.", nullable=True),
                "attachment_id": id_field(
                    "An attachment uploaded to this chat and not sent yet, to send with this message.", nullable=True
                ),
                "encrypted": maybe(ref("Envelope")),
            },
            required=[],
            **any_given("content", "attachment_id", "encrypted"),
            **{
                "not": {
                    "required": ["content", "encrypted"],
                    "properties": {"content": {"type": "string"}, "encrypted": {"type": "object"}},
                }
            },
        ),
        "ChatMessageEdit": obj({"content": content_field(settings, "The new text")}),
        "Pointer": obj({"message_id": id_field("The id of a message of this chat.", MESSAGE)}),
        "ProfileChanges": obj(
            {
                "full_name": string(
                    "At most 100 characters; empty or null to remove it.", "Ada Lovelace", nullable=True, maxLength=100
                ),
                "bio": string(
                    "At most 500 characters; empty or null to remove it.",
                    "Writes the first programs.",
                    nullable=True,
                    maxLength=500,
                ),
                "avatar_url": string(
                    "An http(s) URL of at most 500 characters; empty or null to remove it.",
                    None,
                    nullable=True,
                    maxLength=500,
                    pattern=WEB_URL,
                ),
                "email": string(
                    "A new e-mail address (null to remove it); needs 'password'.",
                    None,
                    nullable=True,
                    format="email",
                    maxLength=MAX_EMAIL,
                ),
                "password": string("My current password; needed to change the e-mail address.", None),
            },
            required=[],
            **any_present("full_name", "bio", "avatar_url", "email"),
        ),
        "PasswordChange": obj(
            {
                "current_password": string("My current password.", "password123", minLength=1),
                "new_password": new_password_field("The new password."),
            }
        ),
    }


def _parameters():
    def path(name, what):
        return {
            "name": name,
            "in": "path",
            "required": True,
            "description": f"The id of {what}.",
            "schema": {"type": "string", "format": "uuid"},
        }

    def query(name, description, schema, required=False):
        return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}

    def limit(default, maximum):
        return query(
            "limit",
            f"How many per page: 1 to {maximum} (default {default}).",
            {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
        )

    text = {"type": "string", "minLength": 1}
    return {
        "MessageId": path("message_id", "a message"),
        "ChatId": path("chat_id", "a chat"),
        "UserId": path("user_id", "a user"),
        "Limit": limit(50, 200),
        "SmallLimit": limit(20, 100),
        "Before": query(
            "before",
            "The page older than this message (a paging.before value). It must be "
            "a message of this list; not together with 'after'.",
            text,
        ),
        "After": query(
            "after",
            "The page newer than this message (a paging.after value). It must be "
            "a message of this list; not together with 'before'.",
            text,
        ),
        "ChatBefore": query(
            "before", "The chats after this one in the list (a paging.before value); it must be one of my chats.", text
        ),
        "SearchQuery": query(
            "q",
            f"Words to find, at most {MAX_SEARCH} characters; every word must "
            f"occur (case does not matter). Words over {MAX_TERM} characters are "
            "ignored, so at least one must be shorter.",
            {"type": "string", "minLength": 1, "maxLength": MAX_SEARCH, "pattern": SEARCHABLE},
            required=True,
        ),
        "SearchChat": query("chat_id", "Search only this chat (I must be a member).", text),
        "SearchBefore": query(
            "before",
            "Results older than this message (a paging.before value); it must be a message I can search.",
            text,
        ),
        "UsernamePrefix": query(
            "q", "Only users whose name starts with this (case does not matter).", {"type": "string", "maxLength": 32}
        ),
        "UsernameAfter": query(
            "after", "Users whose name sorts after this one (a paging.after value).", {"type": "string"}
        ),
        "Since": query(
            "since",
            "Events after this cursor (an event id or a previous 'next'); empty or absent for events from now on.",
            {"type": "string"},
        ),
        "Timeout": query(
            "timeout",
            f"Seconds to wait for an event: 0 to {MAX_POLL} (default {MAX_POLL}).",
            {"type": "number", "minimum": 0, "maximum": MAX_POLL, "default": MAX_POLL},
        ),
        "LastEventId": {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "description": "Resume after this event id (browsers send it when they reconnect); wins over 'since'.",
            "schema": {"type": "string"},
        },
    }


def _notification_schemas(settings):
    """Accounts (codes by e-mail) and notifications: what they take and answer."""
    code = string("The six-digit code from the e-mail.", "123456", pattern=r"^[0-9]{6}$")
    address = string("An e-mail address.", "user1@example.com", format="email", maxLength=MAX_EMAIL)
    return {
        "EmailAddress": obj({"email": address}),
        "VerificationCode": obj({"email": address, "code": code}),
        "PasswordReset": obj({"email": address, "code": code, "new_password": new_password_field("The new password.")}),
        "SessionsEnded": obj({"sessions_ended": integer("How many sessions ended.", 2, minimum=0)}),
        "Notification": obj(
            {
                "id": string("The notification's id.", MESSAGE),
                "kind": one_of(("mention", "direct_message", "added_to_chat", "role_changed"), "What happened."),
                "chat_id": string("The chat it happened in.", CHAT),
                "chat_name": string("The chat's name (null for a direct chat).", "Book club", nullable=True),
                "message_id": string("The message, for mentions and direct messages.", None, nullable=True),
                "actor_id": string("Who did it.", ALICE, nullable=True),
                "actor_username": string("Their name.", "alice", nullable=True),
                "preview": string("The start of the message; null once it is deleted.", "hey @bob", nullable=True),
                "role": string("The new role, for a role change.", None, nullable=True),
                "created_at": string(f"When: {TIME_NOTE}", WHEN),
                "read": boolean("Whether I marked it read.", False),
            }
        ),
        "NotificationPaging": paging(50, "before"),
        "UnreadCount": obj({"unread_count": integer("How many are unread.", 3, minimum=0)}),
        "MarkedRead": obj(
            {
                "marked": integer("How many changed.", 3, minimum=0),
                "unread_count": integer("How many are unread now.", 0, minimum=0),
            }
        ),
        "NewDevice": obj(
            {
                "platform": one_of(("web", "ios", "android", "desktop", "webhook"), "The kind of device."),
                "token": string(
                    "The platform's push token (FCM, APNs...), passed on to PUSH_WEBHOOK_URL.",
                    "fcm-token",
                    nullable=True,
                    maxLength=4096,
                ),
                "endpoint": string(
                    "An http(s) URL to POST this user's notifications to; its host must be in "
                    "PUSH_DEVICE_HOSTS, written plainly (no user@, backslash or percent-encoded "
                    "host), on port 80 or 443 and a public address unless PUSH_ALLOWED_ADDRESSES "
                    "names it; a name is checked again, by the addresses it resolves to, at each "
                    "delivery.",
                    None,
                    nullable=True,
                    maxLength=500,
                ),
            },
            required=["platform"],
            **any_given("token", "endpoint"),
        ),
        "Device": obj(
            {
                "id": string("The device's id.", MESSAGE),
                "platform": string("The kind of device.", "android"),
                "token": string("The push token.", "fcm-token", nullable=True),
                "endpoint": string("The endpoint URL.", None, nullable=True),
                "created_at": string(f"When it was registered: {TIME_NOTE}", WHEN),
            }
        ),
        "DeadLetter": obj(
            {
                "id": string("The delivery's id (the X-Oxc-Delivery header).", MESSAGE),
                "url": string("Where it was to go (PUSH_WEBHOOK_URL or a device endpoint).", None),
                "attempts": integer("How many times it was tried.", 8, minimum=0),
                "last_error": string(
                    "Why the last try failed; 'refused: ...' when the URL or an address it "
                    "resolved to may not be called (never sent).",
                    "HTTP 503",
                    nullable=True,
                ),
                "created_at": string(f"When it was queued: {TIME_NOTE}", WHEN),
                "payload": {"type": "object", "description": "The JSON it carried."},
            }
        ),
    }


def _notification_parameters():
    return {
        "NotificationId": {
            "name": "notification_id",
            "in": "path",
            "required": True,
            "description": "The id of a notification.",
            "schema": {"type": "string"},
        },
        "DeviceId": {
            "name": "device_id",
            "in": "path",
            "required": True,
            "description": "The id of a device.",
            "schema": {"type": "string"},
        },
        "NotificationBefore": {
            "name": "before",
            "in": "query",
            "required": False,
            "description": "Notifications older than this one (a paging.before value); it must be one of mine.",
            "schema": {"type": "string", "minLength": 1},
        },
        "Unread": {
            "name": "unread",
            "in": "query",
            "required": False,
            "description": "true for unread notifications only.",
            "schema": {"enum": ["true", "false", "1", "0", ""]},
        },
    }


ATTACHMENT = "3d6f0a8e-2b1c-4f5e-9a7d-0c8b6e4f2a1d"
KEY = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
EXAMPLE_X25519 = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="


def _media_schemas(settings):
    """Attachments, public keys and end-to-end encrypted envelopes."""

    def b64(description, pattern, example=None, **constraints):
        return string(description, example, pattern=f"^{pattern}$", **constraints)

    def key_id(description, example=KEY):
        return string(description, example, minLength=1, maxLength=MAX_ID, pattern=NOT_BLANK)

    pixels = {"anyOf": [integer("Pixels.", 320, minimum=0), {"type": "null"}]}
    ciphertext_bytes = max_ciphertext_bytes(settings)
    return {
        "Thumbnail": obj(
            {
                "status": one_of(
                    ("ready", "none"),
                    "ready: GET /attachments/{id}/thumbnail serves it; none: there is none, and reason says why.",
                ),
                "reason": string(
                    "Why there is no thumbnail: not an image, Pillow not installed on the server, "
                    "too many pixels, decoding would take more memory than the server allows, the "
                    "server was busy making other thumbnails, or undecodable.",
                    None,
                    nullable=True,
                ),
                "content_type": string(
                    "image/jpeg, or image/png for images with transparency.", "image/jpeg", nullable=True
                ),
                "width": pixels,
                "height": pixels,
            },
            description=f"A small image (at most {THUMBNAIL_SIZE} px a side) for an image attachment.",
        ),
        "Attachment": obj(
            {
                "id": string("The attachment's id (a UUID).", ATTACHMENT),
                "chat_id": string("The chat it belongs to; only its members may see it.", CHAT),
                "uploader_id": string("Who uploaded it.", ALICE),
                "message_id": string("The message it was sent with; null until it is sent.", None, nullable=True),
                "name": string(
                    "The file's name as given (for showing and saving; never a path on the server).", "photo.jpg"
                ),
                "size": integer("Its size in bytes.", 48213, minimum=1),
                "content_type": string("Its MIME type, as declared and checked against its first bytes.", "image/jpeg"),
                "kind": one_of(("image", "video", "audio", "document", "other"), "What it is, for showing it."),
                "sha256": string(
                    "The SHA-256 of its bytes (hex); its ETag.",
                    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    pattern="^[0-9a-f]{64}$",
                ),
                "width": pixels,
                "height": pixels,
                "thumbnail": ref("Thumbnail"),
                "created_at": string(f"When it was uploaded: {TIME_NOTE}", WHEN),
            },
            description="An uploaded file: its metadata. The bytes are at /attachments/{id}/content.",
        ),
        "UploadedAttachment": {
            "allOf": [ref("Attachment"), obj({"message": ref("ChatMessage")}, required=[])],
            "description": "The attachment; with content or send=1, also the message sent.",
        },
        "Upload": obj(
            {
                "file": {
                    "type": "string",
                    "format": "binary",
                    "description": "The file; the part's Content-Type and filename are its declared type and name.",
                },
                "content": content_field(settings, "A caption; giving one also sends the message"),
                "send": {
                    "enum": ["1", "0", "true", "false", ""],
                    "description": "1 or true: send the message carrying the file now, even without a caption.",
                },
            },
            required=["file"],
            description="A multipart/form-data upload; other parts are ignored.",
        ),
        "NewKey": obj(
            {
                "device_id": string(
                    "Which of my devices the key is for: 1 to 64 letters, digits, '.', '_', ':' or '-'.",
                    "laptop",
                    pattern=f"^{DEVICE_ID}$",
                ),
                "algorithm": one_of(
                    KEY_ALGORITHMS,
                    "x25519 for key agreement, ed25519 for signatures, or "
                    "rsa-oaep-sha256 for clients that insist on RSA.",
                ),
                "public_key": string(
                    "For x25519 and ed25519: the base64 of the raw 32-byte public key. For "
                    "rsa-oaep-sha256: a PEM 'PUBLIC KEY' block or base64 DER "
                    "SubjectPublicKeyInfo of 2048 to 16384 bits. Anything that looks like a "
                    "private key is refused.",
                    EXAMPLE_X25519,
                    minLength=1,
                    maxLength=MAX_PUBLIC_KEY,
                ),
                "replaces": string(
                    "My live key of the same device and algorithm that this one replaces "
                    "(rotation: that one is revoked).",
                    None,
                    nullable=True,
                    minLength=1,
                    maxLength=MAX_ID,
                    pattern=NOT_BLANK,
                ),
            },
            required=["device_id", "algorithm", "public_key"],
        ),
        "PublicKey": obj(
            {
                "id": string("The key's id; name it in envelopes.", KEY),
                "user_id": string("Whose key it is.", ALICE),
                "device_id": string("Which of their devices holds the private half.", "laptop"),
                "algorithm": one_of(KEY_ALGORITHMS, "What it is for."),
                "public_key": string("Base64: the raw 32 bytes, or DER SubjectPublicKeyInfo for RSA.", EXAMPLE_X25519),
                "fingerprint": string(
                    "SHA-256 of the key's bytes (hex), to compare out of band.",
                    "5b1f7c4e6a0d2f3b8c9e1a7d4f6b2c8e0a3d5f7b9c1e3a5d7f9b1c3e5a7d9f1b",
                ),
                "created_at": string(f"When it was published: {TIME_NOTE}", WHEN),
                "revoked_at": string("When it was revoked or replaced; null while current.", None, nullable=True),
                "replaces": string("The key this one replaced.", None, nullable=True),
                "replaced_by": string("The key that replaced this one.", None, nullable=True),
            },
            description="A public key in the directory.",
        ),
        "Envelope": obj(
            {
                "v": {"const": 1, "description": "The envelope format (1)."},
                "sender_key_id": key_id("The sender's live Ed25519 key that signed the envelope."),
                "ephemeral_key": b64(
                    "The sender's one-time X25519 public key (32 bytes), for X25519 wraps.", BASE64_32, EXAMPLE_X25519
                ),
                "nonce": b64("The AES-256-GCM nonce of the ciphertext (12 bytes).", BASE64_12, "AAECAwQFBgcICQoL"),
                "ciphertext": b64(
                    f"The AES-256-GCM ciphertext with its tag: 16 to {ciphertext_bytes} bytes "
                    "(4 per MAX_MESSAGE_LENGTH character, plus 1024).",
                    BASE64,
                    "c2VhbGVkIHdpdGggQUVTLUdDTQ==",
                    minLength=24,
                    maxLength=base64_chars(ciphertext_bytes),
                ),
                "recipients": array(
                    obj(
                        {
                            "key_id": key_id("The recipient device's X25519 or RSA-OAEP key."),
                            "wrapped_key": b64(
                                f"The content key wrapped for that key: {MIN_WRAPPED_KEY} to {MAX_WRAPPED_KEY} bytes.",
                                BASE64,
                                "d3JhcHBlZCBjb250ZW50IGtleQ==",
                                minLength=base64_chars(MIN_WRAPPED_KEY),
                                maxLength=base64_chars(MAX_WRAPPED_KEY),
                            ),
                            "nonce": b64(
                                "The AES-256-GCM nonce of an X25519 wrap (12 bytes).", BASE64_12, "AAECAwQFBgcICQoL"
                            ),
                        },
                        required=["key_id", "wrapped_key"],
                        additionalProperties=False,
                    ),
                    "One content-key wrap per recipient device key (each key once); as many as fit in "
                    f"MAX_BODY_BYTES ({settings.max_body_bytes}).",
                    minItems=1,
                ),
                "signature": b64(
                    "Ed25519 signature (64 bytes) over the envelope and chat id (see oxc_e2e.py).",
                    BASE64_64,
                    "c2lnbmVk" + "A" * 78 + "==",
                ),
            },
            required=["v", "sender_key_id", "nonce", "ciphertext", "recipients", "signature"],
            additionalProperties=False,
            description="An end-to-end encrypted message as its sender's device built it; the server stores "
            "and forwards it without reading it.",
        ),
    }


def _media_parameters(settings):
    def header(name, description):
        return {
            "name": name,
            "in": "header",
            "required": False,
            "description": description,
            "schema": {"type": "string"},
        }

    return {
        "AttachmentId": {
            "name": "attachment_id",
            "in": "path",
            "required": True,
            "description": "The id of an attachment.",
            "schema": {"type": "string", "format": "uuid"},
        },
        "KeyId": {
            "name": "key_id",
            "in": "path",
            "required": True,
            "description": "The id of a public key.",
            "schema": {"type": "string", "format": "uuid"},
        },
        "FileName": {
            "name": "name",
            "in": "query",
            "required": False,
            "description": f"The file's name (at most {MAX_NAME} characters); for a multipart upload it "
            "wins over the part's filename.",
            "schema": {"type": "string", "maxLength": MAX_NAME},
        },
        "Caption": {
            "name": "content",
            "in": "query",
            "required": False,
            "description": "A caption; giving one also sends the message (a multipart field wins).",
            "schema": content_field(settings, "A caption"),
        },
        "Send": {
            "name": "send",
            "in": "query",
            "required": False,
            "description": "1 or true: also send the message carrying the file.",
            "schema": {"enum": ["1", "0", "true", "false", ""]},
        },
        "Range": header(
            "Range",
            "One byte range, e.g. bytes=0-1023 or bytes=-500 (206); several ranges or a "
            "malformed one get the whole file (200).",
        ),
        "IfRange": header("If-Range", "Honour Range only while the ETag is still this one."),
        "IfNoneMatch": header("If-None-Match", "ETags the client holds; 304 when one is current."),
    }


def _web_parameters():
    return {
        "StaticName": {
            "name": "name",
            "in": "path",
            "required": True,
            "description": "The name of one of the web page's files.",
            "schema": {"enum": sorted(STATIC_TYPES)},
        },
        "AssetVersion": {
            "name": "v",
            "in": "query",
            "required": False,
            "description": "The files' version as the page links them; when it is current the "
            "answer may be cached for a year.",
            "schema": {"type": "string"},
        },
    }


def _security_schemes(settings):
    return {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": (
                f"An access token from /auth/login or /auth/refresh, valid for {settings.access_token_expires} minutes."
            ),
        },
        "streamTicket": {
            "type": "apiKey",
            "in": "query",
            "name": "ticket",
            "description": "A ticket from POST /events/ticket; opens the event stream only (EventSource "
            "cannot send an Authorization header).",
        },
        "apiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": (
                "The shared API key. Required on every request except OPTIONS and "
                f"{settings.api_prefix}/health when the server runs with SECRET_KEY_ENABLED=1; "
                + (
                    "this server does."
                    if settings.secret_key_enabled
                    else "this server does not, so the header is ignored."
                )
            ),
        },
    }


def _components(settings):
    """The reusable schemas, parameters and security schemes, sized by ``settings``."""
    schemas = {}
    for part in (
        _service_schemas,
        _account_schemas,
        _message_schemas,
        _chat_schemas,
        _event_schemas,
        _request_schemas,
        _notification_schemas,
        _media_schemas,
    ):
        schemas.update(part(settings))
    parameters = {**_parameters(), **_notification_parameters(), **_media_parameters(settings), **_web_parameters()}
    return {"schemas": schemas, "parameters": parameters, "securitySchemes": _security_schemes(settings)}


# =============================================================================
# Operations: one entry per handler, keyed by operationId
# =============================================================================


@dataclasses.dataclass(frozen=True)
class Reply:
    """One documented answer: why it happens, and its body."""

    description: str
    schema: dict = None
    media_type: str = "application/json"


def returns(schema, description):
    """A success answer whose JSON body is ``schema``."""
    return Reply(description, schema)


def refuses(description):
    """An error answer with the error envelope."""
    return Reply(description, ref("Error"))


@dataclasses.dataclass(frozen=True)
class Operation:
    """What a handler does, for the document: the parts the route table does not know.

    ``body`` names a component schema sent as JSON; ``upload`` is the request
    body's content (media type -> media object) of an operation that takes a
    file instead; ``parameters`` name
    component parameters; ``writes`` adds 503; ``groups_only`` is what a
    direct chat cannot do (400), as given to ``roles.in_chat``; ``security``
    names alternative schemes for a handler that authenticates by itself.
    """

    tag: str
    summary: str
    description: str
    responses: dict
    parameters: tuple = ()
    body: str = None
    body_example: dict = None
    upload: dict = None
    writes: bool = False
    api_key_exempt: bool = False
    groups_only: str = None
    security: tuple = ()


MESSAGE_LIST = ("Limit", "Before", "After")
BAD_PAGE = "'limit' is out of range, 'before' or 'after' names no message of this list, or both are given."
NOT_VISIBLE = "No such message, or the user may not see it."
NOT_IN_CHAT = "No such message in this chat."
EXAMPLE_REFRESH = {"refresh_token": "Qm9vdHN0cmFw.d2l0aC1hLXJhbmRvbS10YWls"}
NO_USER = "the user named is not found"
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

OPERATIONS = {
    # -- service and docs -----------------------------------------------------
    "get_root": Operation(
        "service",
        "Service name and version",
        "Answers while the service runs; 0xC answered the same at /. With WEB_UI_ENABLED=1 (the default), a "
        "request whose Accept header names text/html and ranks it above application/json (a browser's) gets "
        "the web chat page instead, as text/html with a strict Content-Security-Policy; the answer varies "
        "by Accept.",
        {200: returns(envelope(ref("Service"), message="oxc chat API is running"), "The service is running.")},
    ),
    "get_health": Operation(
        "service",
        "Health check",
        "200 while the store accepts writes, 503 once it refuses them (for load balancers). "
        "Needs no API key even when one is required elsewhere.",
        {
            200: returns(envelope(ref("Health")), "Healthy."),
            503: returns(ref("Unhealthy"), "The store refuses writes."),
        },
        api_key_exempt=True,
    ),
    "get_openapi": Operation(
        "docs",
        "This OpenAPI document",
        "The OpenAPI 3.1 document describing every operation, as plain JSON (not in an envelope).",
        {
            200: returns(
                {
                    "type": "object",
                    "required": ["openapi", "info", "paths"],
                    "examples": [
                        {"openapi": OPENAPI_VERSION, "paths": {}, "info": {"title": "oxc chat API", "version": "0.1.0"}}
                    ],
                },
                "The document.",
            )
        },
    ),
    "get_docs": Operation(
        "docs",
        "API reference page",
        "This document rendered as a self-contained HTML page.",
        {200: Reply("The page.", {"type": "string"}, "text/html")},
    ),
    # -- auth -------------------------------------------------------------------
    "post_register": Operation(
        "auth",
        "Register a user",
        "Creates an account. The password is stored as a bcrypt hash. An e-mail address that is "
        "already an account's gets its owner a mail saying so. With REQUIRE_VERIFIED_EMAIL=1 the "
        "answer is then the same as for a new address (the new account never gets the address, so "
        "it cannot be verified or used); otherwise it is 400.",
        {
            201: returns(envelope(ref("User"), message="User registered successfully"), "The account was created."),
            400: refuses(
                "A field is missing or invalid, the password is over "
                f"{MAX_PASSWORD_BYTES} bytes, the username is taken, or (with REQUIRE_VERIFIED_EMAIL=0) "
                "the e-mail address is."
            ),
            429: refuses("The server is busy hashing passwords; retry after Retry-After."),
        },
        body="NewUser",
        writes=True,
        body_example={"username": "user1", "password": "password123", "email": "user1@example.com"},
    ),
    "post_login": Operation(
        "auth",
        "Log in",
        "Checks a username and password and answers an access token and a refresh token. "
        "Too many failures for one account lock it out for a while (429).",
        {
            200: returns(
                envelope({"allOf": [ref("Grant"), obj({"user": ref("User")})]}, message="Login successful"),
                "Logged in.",
            ),
            400: refuses("A field is missing or not a string."),
            401: refuses("Unknown username or wrong password (one answer for both)."),
            429: refuses(
                "Too many failed logins for this account, or the server is busy checking "
                "passwords; retry after Retry-After."
            ),
        },
        body="Credentials",
        writes=True,
        body_example={"username": "user1", "password": "password123"},
    ),
    "post_refresh": Operation(
        "auth",
        "Refresh the access token",
        "Trades a refresh token for a new access token and, with rotation on, a new refresh "
        "token. Presenting an already rotated token again revokes the whole session.",
        {
            200: returns(envelope(ref("Grant"), message="Token refreshed successfully"), "New tokens."),
            400: refuses("refresh_token is missing or not a string."),
            401: refuses("The refresh token is unknown, expired, already used or revoked."),
        },
        body="RefreshToken",
        body_example=EXAMPLE_REFRESH,
        writes=True,
    ),
    "post_logout": Operation(
        "auth",
        "Log out",
        "Ends the session the refresh token belongs to; its tokens stop working.",
        {
            200: returns(envelope(message="Logged out successfully"), "Logged out."),
            400: refuses("refresh_token is missing or not a string."),
            401: refuses("The refresh token is unknown or already ended."),
        },
        body="RefreshToken",
        body_example=EXAMPLE_REFRESH,
        writes=True,
    ),
    "get_token_info": Operation(
        "auth",
        "Current user and token timing",
        "Who the access token belongs to, and when it was issued, expires and should be refreshed.",
        {200: returns(envelope(ref("TokenInfo")), "The user and the token's timing.")},
    ),
    # -- 0xC messages -----------------------------------------------------------
    "get_messages": Operation(
        "messages",
        "List visible messages",
        "Public messages and private ones to or from the current user, a page at a time, oldest "
        "first. Without a cursor the page holds the newest messages.",
        {200: returns(page("messages", "Message", "Paging"), "One page of messages."), 400: refuses(BAD_PAGE)},
        parameters=MESSAGE_LIST,
    ),
    "post_message": Operation(
        "messages",
        "Send a message",
        "Sends a public message, or a private one when recipient_id names a user.",
        {
            201: returns(envelope(ref("Message"), message="Message created successfully"), "The message was sent."),
            400: refuses("content is missing, blank or too long, or recipient_id names no user."),
        },
        body="NewMessage",
        body_example={"content": "Hello, world!"},
        writes=True,
    ),
    "get_my_messages": Operation(
        "messages",
        "List messages I sent",
        "Messages the current user sent, paged like the list of visible messages.",
        {200: returns(page("messages", "Message", "Paging"), "One page of messages."), 400: refuses(BAD_PAGE)},
        parameters=MESSAGE_LIST,
    ),
    "get_message": Operation(
        "messages",
        "Get a message",
        "One message, if the current user sent it, received it, or it is public.",
        {200: returns(envelope(ref("Message")), "The message."), 404: refuses(NOT_VISIBLE)},
        parameters=("MessageId",),
    ),
    "delete_message": Operation(
        "messages",
        "Delete a message",
        "Deletes a message the current user sent.",
        {
            200: returns(
                envelope(message=f"Message with ID {MESSAGE} deleted successfully"), "The message was deleted."
            ),
            403: refuses("The user may see the message but did not send it."),
            404: refuses(NOT_VISIBLE),
        },
        parameters=("MessageId",),
        writes=True,
    ),
    # -- chats ------------------------------------------------------------------
    "get_chats": Operation(
        "chats",
        "List my chats",
        "My chats, most recent activity first, each with its last message, my unread count and role.",
        {
            200: returns(page("chats", "Chat", "ChatPaging"), "One page of chats."),
            400: refuses("'limit' is out of range, or 'before' is not one of my chats."),
        },
        parameters=("Limit", "ChatBefore"),
    ),
    "post_group_chat": Operation(
        "chats",
        "Create a group",
        "Creates a group chat; the creator becomes its owner and the users named become members.",
        {
            201: returns(envelope(ref("ChatDetails"), message="Chat created"), "The group was created."),
            400: refuses("A field is missing or invalid, or a member named is not a user."),
        },
        body="NewGroup",
        body_example={"name": "Book club", "description": "Monthly reads"},
        writes=True,
    ),
    "post_direct_chat": Operation(
        "chats",
        "Open a direct chat",
        "Opens the direct chat with a user, or finds the one that exists; with content, also sends the first message.",
        {
            200: returns(envelope(ref("ChatDetails"), message="Chat found"), "The chat already existed."),
            201: returns(envelope(ref("ChatDetails"), message="Chat created"), "The chat was created."),
            400: refuses(
                f"Neither user_id nor username is given, {NO_USER}, it is the caller, or content is blank or too long."
            ),
        },
        body="DirectChat",
        body_example={"username": "bob", "content": "Hi Bob!"},
        writes=True,
    ),
    "get_chat": Operation(
        "chats",
        "Get a chat",
        "A chat's details and its members.",
        {200: returns(envelope(ref("ChatDetails")), "The chat.")},
        parameters=("ChatId",),
    ),
    "patch_chat": Operation(
        "chats",
        "Change a group",
        "Renames a group or changes its description.",
        {
            200: returns(envelope(ref("ChatDetails"), message="Chat updated"), "The group was changed."),
            400: refuses("Neither name nor description is given, or one is invalid."),
        },
        parameters=("ChatId",),
        body="ChatChanges",
        body_example={"name": "Book club"},
        writes=True,
        groups_only="be renamed",
    ),
    "delete_chat": Operation(
        "chats",
        "Delete a group",
        "Deletes a group with all its messages.",
        {200: returns(envelope(message=f"Chat with ID {CHAT} deleted successfully"), "The group is gone.")},
        parameters=("ChatId",),
        writes=True,
        groups_only="be deleted",
    ),
    "get_members": Operation(
        "chats",
        "List a chat's members",
        "Everyone in the chat, with their roles.",
        {200: returns(envelope(array(ref("Member"))), "The members.")},
        parameters=("ChatId",),
    ),
    "post_member": Operation(
        "chats",
        "Add a member",
        "Adds a user to a group as a member, or as an admin when the owner asks.",
        {
            201: returns(envelope(ref("Member"), message="Member added"), "The user is now a member."),
            400: refuses(
                f"Neither user_id nor username is given, {NO_USER}, the role is not member or "
                "admin, or the user is a member already."
            ),
            403: refuses("An admin asked to add an admin."),
        },
        parameters=("ChatId",),
        body="NewMember",
        body_example={"username": "bob"},
        writes=True,
        groups_only="gain members",
    ),
    "patch_member": Operation(
        "chats",
        "Change a member's role",
        "Gives a member another role; giving 'owner' transfers ownership and makes the old owner an admin.",
        {
            200: returns(envelope(ref("Member"), message="Role changed"), "The role was changed."),
            400: refuses("The user is not a member, the role is invalid, or the owner named themselves."),
            409: refuses("The member named left the chat while the request ran."),
        },
        parameters=("ChatId", "UserId"),
        body="RoleChange",
        body_example={"role": "admin"},
        writes=True,
        groups_only="have roles",
    ),
    "delete_member": Operation(
        "chats",
        "Remove a member or leave",
        "Removes a member (admins and owner, of lower roles only), or leaves when the user is the "
        "caller. An owner may leave only as the last member; the group is then deleted.",
        {
            200: returns(envelope(message="Member removed"), "The member is gone."),
            400: refuses("The user is not a member, or the owner tries to leave others behind."),
            403: refuses("The caller may not remove that member."),
            409: refuses("The member named left the chat while the request ran."),
        },
        parameters=("ChatId", "UserId"),
        writes=True,
        groups_only="lose members",
    ),
    "put_mute": Operation(
        "chats",
        "Mute or unmute a chat",
        "Mutes or unmutes the chat for the caller only.",
        {200: returns(envelope(ref("Mute")), "The new setting."), 400: refuses("muted is not true or false.")},
        parameters=("ChatId",),
        body="MuteChange",
        body_example={"muted": True},
        writes=True,
    ),
    "get_chat_messages": Operation(
        "chats",
        "List a chat's messages",
        "A page of the chat's history, oldest first, deleted messages as tombstones. Without a "
        "cursor the page holds the newest messages.",
        {200: returns(page("messages", "ChatMessage", "Paging"), "One page of messages."), 400: refuses(BAD_PAGE)},
        parameters=("ChatId",) + MESSAGE_LIST,
    ),
    "post_chat_message": Operation(
        "chats",
        "Send a message to a chat",
        "Sends a message, optionally as a reply; members named as @username are listed in mentions.",
        {
            201: returns(envelope(ref("ChatMessage"), message="Message created successfully"), "The message was sent."),
            400: refuses(
                "content, attachment_id and encrypted are all missing, content is blank or too long, "
                "content and encrypted are both given, reply_to_id is not a message of this chat, "
                "attachment_id is not an unsent attachment of this chat, or the envelope is malformed "
                "or its sender_key_id is not a live Ed25519 key of the caller."
            ),
        },
        parameters=("ChatId",),
        body="NewChatMessage",
        body_example={"content": "Hello, @bob!"},
        writes=True,
    ),
    "patch_chat_message": Operation(
        "chats",
        "Edit a message",
        "Changes the text of the caller's own message and records when (edited_at).",
        {
            200: returns(envelope(ref("ChatMessage"), message="Message updated"), "The edited message."),
            400: refuses("content is missing, blank or too long, or the message is deleted or encrypted."),
            403: refuses("The caller did not write the message."),
            404: refuses(NOT_IN_CHAT),
        },
        parameters=("ChatId", "MessageId"),
        body="ChatMessageEdit",
        body_example={"content": "Hello!"},
        writes=True,
    ),
    "delete_chat_message": Operation(
        "chats",
        "Delete a message",
        "Deletes a message (its author, or an admin or the owner), leaving a tombstone.",
        {
            200: returns(
                envelope(message=f"Message with ID {MESSAGE} deleted successfully"), "The message is now a tombstone."
            ),
            400: refuses("The message is already deleted."),
            403: refuses("The caller neither wrote the message nor moderates the chat."),
            404: refuses(NOT_IN_CHAT),
        },
        parameters=("ChatId", "MessageId"),
        writes=True,
    ),
    "get_receipts": Operation(
        "chats",
        "Delivery and read receipts",
        "Which of the other members have received and read a message.",
        {200: returns(envelope(ref("Receipts")), "One receipt per other member."), 404: refuses(NOT_IN_CHAT)},
        parameters=("ChatId", "MessageId"),
    ),
    "post_read": Operation(
        "chats",
        "Mark read",
        "Moves the caller's read (and delivered) pointer up to a message; it never moves back.",
        {
            200: returns(envelope(ref("Unread")), "The unread count now."),
            400: refuses("message_id is missing or not a string."),
            404: refuses(NOT_IN_CHAT),
        },
        parameters=("ChatId",),
        body="Pointer",
        body_example={"message_id": MESSAGE},
        writes=True,
    ),
    "post_delivered": Operation(
        "chats",
        "Mark delivered",
        "Records that messages up to this one reached the caller's device; it never moves back.",
        {
            200: returns(envelope(ref("Unread")), "The unread count now."),
            400: refuses("message_id is missing or not a string."),
            404: refuses(NOT_IN_CHAT),
        },
        parameters=("ChatId",),
        body="Pointer",
        body_example={"message_id": MESSAGE},
        writes=True,
    ),
    # -- real time --------------------------------------------------------------
    "post_typing": Operation(
        "events",
        "Say I am typing",
        "Tells the chat's members that the caller is typing (typing: true) or stopped; a notice "
        "stops by itself after a few seconds.",
        {200: returns(envelope(ref("Typing")), "The notice now."), 400: refuses("typing is not true or false.")},
        parameters=("ChatId",),
        body="TypingChange",
        body_example={"typing": True},
    ),
    "get_events": Operation(
        "events",
        "Wait for events (long-poll)",
        f"Answers the caller's events after 'since' as soon as there are any, or none after "
        f"'timeout' seconds (at most {MAX_POLL}). Pass 'next' as 'since' to go on.",
        {
            200: returns(
                envelope(
                    events=array(ref("Event")), next=string("The cursor to pass as 'since' next time.", "k3J9x-42")
                ),
                "The events (maybe none).",
            ),
            400: refuses(f"timeout is not a number from 0 to {MAX_POLL}."),
            401: refuses("The session ended while the poll waited (a logout, a password change or reset)."),
            410: refuses(
                "The cursor is from an earlier run of the server or too old: resync through the "
                "list endpoints and start again without one."
            ),
            429: refuses(
                "The caller already holds REALTIME_MAX_PER_USER open streams and polls on this "
                "process; close one or retry after Retry-After."
            ),
            503: refuses("Too many open event listeners; retry after Retry-After."),
        },
        parameters=("Since", "Timeout"),
        writes=True,
    ),
    "get_event_stream": Operation(
        "events",
        "Stream events (Server-Sent Events)",
        "The caller's events as text/event-stream ('id:' and 'data:' lines, heartbeat comments), "
        "until the access token or ticket it was opened with expires, or its session ends (a logout, "
        "a password change or reset: the stream then closes within seconds and delivers nothing "
        "more). Authenticate with the bearer token or with ?ticket= from POST /events/ticket; a "
        "ticket opens one stream.",
        {
            200: Reply("The stream.", {"type": "string"}, "text/event-stream"),
            401: refuses(
                "The access token or the ticket is missing, invalid or expired, the ticket was "
                "used already, or the session has ended."
            ),
            410: refuses("The cursor is from an earlier run of the server or too old."),
            429: refuses(
                "The caller already holds REALTIME_MAX_PER_USER open streams and polls on this "
                "process; close one or retry after Retry-After."
            ),
            503: refuses("Too many open event listeners; retry after Retry-After."),
        },
        parameters=("Since", "LastEventId"),
        security=("bearerAuth", "streamTicket"),
    ),
    "post_stream_ticket": Operation(
        "events",
        "Get an event-stream ticket",
        "A short-lived ticket that opens GET /events/stream once, for a browser's EventSource, "
        "which cannot send headers. It opens nothing else; get a new one for each connection.",
        {201: returns(envelope(ref("Ticket")), "The ticket.")},
    ),
    # -- search -----------------------------------------------------------------
    "get_search": Operation(
        "search",
        "Search messages",
        "Messages the caller may see (chats, public and own private 0xC messages) that hold every "
        "word of q, newest first.",
        {
            200: returns(page("messages", "SearchHit", "OlderPaging"), "One page of results."),
            400: refuses(
                "q is missing, too long or without a word, 'limit' is out of range, or "
                "'before' is not a message the caller can search."
            ),
            403: refuses("chat_id names a chat the caller is not a member of."),
            404: refuses("chat_id names no chat."),
        },
        parameters=("SearchQuery", "SmallLimit", "SearchChat", "SearchBefore"),
    ),
    # -- users ------------------------------------------------------------------
    "get_users": Operation(
        "users",
        "Find users",
        "The user directory: users whose name starts with q, by name.",
        {
            200: returns(page("users", "Profile", "DirectoryPaging"), "One page of users."),
            400: refuses("q is over 32 characters or 'limit' is out of range."),
        },
        parameters=("UsernamePrefix", "SmallLimit", "UsernameAfter"),
    ),
    "get_me": Operation(
        "users",
        "My profile",
        "The caller's own profile, e-mail address and attachment storage (bytes used, quota) included.",
        {200: returns(envelope(ref("MyProfile")), "My profile.")},
    ),
    "patch_me": Operation(
        "users",
        "Change my profile",
        "Changes my full name, bio, avatar URL or e-mail address; the e-mail needs my password.",
        {
            200: returns(envelope(ref("MyProfile"), message="Profile updated"), "The changed profile."),
            400: refuses("Nothing to change, a field is invalid, or the e-mail address is taken."),
            403: refuses("The e-mail address changes but 'password' is missing or wrong."),
            429: refuses("The server is busy checking passwords; retry after Retry-After."),
        },
        body="ProfileChanges",
        body_example={"full_name": "Ada Lovelace"},
        writes=True,
    ),
    "post_password": Operation(
        "users",
        "Change my password",
        "Changes my password; every other session of mine ends.",
        {
            200: returns(
                envelope(
                    obj({"other_sessions_ended": integer("How many sessions ended.", 1, minimum=0)}),
                    message="Password changed",
                ),
                "The password was changed.",
            ),
            400: refuses("current_password is missing, or the new password is too short or too long."),
            403: refuses("The current password is not correct."),
            429: refuses("The server is busy checking passwords; retry after Retry-After."),
        },
        body="PasswordChange",
        body_example={"current_password": "password123", "new_password": "a longer passphrase"},
        writes=True,
    ),
    "get_user": Operation(
        "users",
        "A user's profile",
        "Anyone's public profile.",
        {200: returns(envelope(ref("Profile")), "The profile."), 404: refuses("No such user.")},
        parameters=("UserId",),
    ),
    # -- accounts and notifications --
    "post_verification_request": Operation(
        "accounts",
        "Send an e-mail verification code",
        "Mails a six-digit code to the address if it belongs to an account awaiting verification. The "
        "answer, and the work behind it, is the same for any address; each address may ask once a "
        f"minute and {CODES_PER_DAY} times a day.",
        {
            200: returns(
                envelope(message="If that address belongs to an account awaiting verification, a code is on its way"),
                "Asked.",
            ),
            400: refuses("email is missing or not an e-mail address."),
            429: refuses(f"This address asked a moment ago, or {CODES_PER_DAY} times today; retry after Retry-After."),
        },
        body="EmailAddress",
        body_example={"email": "user1@example.com"},
        writes=True,
    ),
    "post_verification": Operation(
        "accounts",
        "Verify an e-mail address",
        "Checks the code mailed to the address (15 minutes, five guesses; "
        f"{WRONG_GUESSES_PER_DAY} wrong guesses a day per address) and marks it verified.",
        {
            200: returns(envelope(message="E-mail address verified"), "Verified."),
            400: refuses("A field is missing or malformed, or the code is wrong, used up or expired."),
            429: refuses(f"{WRONG_GUESSES_PER_DAY} wrong codes for this address today; retry after Retry-After."),
        },
        body="VerificationCode",
        body_example={"email": "user1@example.com", "code": "123456"},
        writes=True,
    ),
    "post_password_reset_request": Operation(
        "accounts",
        "Send a password reset code",
        "Mails a six-digit code to the address if it belongs to an account. The answer, and the work "
        f"behind it, is the same for any address; each address may ask once a minute and {CODES_PER_DAY} "
        "times a day.",
        {
            200: returns(envelope(message="If that address belongs to an account, a code is on its way"), "Asked."),
            400: refuses("email is missing or not an e-mail address."),
            429: refuses(f"This address asked a moment ago, or {CODES_PER_DAY} times today; retry after Retry-After."),
        },
        body="EmailAddress",
        body_example={"email": "user1@example.com"},
        writes=True,
    ),
    "post_password_reset": Operation(
        "accounts",
        "Reset a password with a code",
        "Sets a new password with the mailed code (15 minutes, five guesses; "
        f"{WRONG_GUESSES_PER_DAY} wrong guesses a day per address); every session of the account ends.",
        {
            200: returns(
                envelope(ref("SessionsEnded"), message="Password changed; log in with the new password"), "Changed."
            ),
            400: refuses("A field is missing or invalid, or the code is wrong, used up or expired."),
            429: refuses(
                f"{WRONG_GUESSES_PER_DAY} wrong codes for this address today, or the server is busy "
                "hashing passwords; retry after Retry-After."
            ),
        },
        body="PasswordReset",
        writes=True,
        body_example={"email": "user1@example.com", "code": "123456", "new_password": "a new password"},
    ),
    "get_notifications": Operation(
        "notifications",
        "My notifications",
        "Mentions, direct messages, additions to groups and role changes, newest first.",
        FEED_ANSWERS,
        parameters=("Limit", "NotificationBefore", "Unread"),
    ),
    "get_mentions": Operation(
        "notifications",
        "My mentions",
        "Only the notifications for mentions of me, newest first.",
        FEED_ANSWERS,
        parameters=("Limit", "NotificationBefore", "Unread"),
    ),
    "get_notification_count": Operation(
        "notifications",
        "How many notifications are unread",
        "The number of my unread notifications.",
        {200: returns(envelope(ref("UnreadCount")), "The count.")},
    ),
    "post_notification_read": Operation(
        "notifications",
        "Mark a notification read",
        "Marks one of my notifications read.",
        {
            200: returns(envelope(ref("UnreadCount")), "The unread count now."),
            404: refuses("No such notification of mine."),
        },
        parameters=("NotificationId",),
        writes=True,
    ),
    "post_notifications_read_all": Operation(
        "notifications",
        "Mark every notification read",
        "Marks all my notifications read.",
        {200: returns(envelope(ref("MarkedRead")), "Done.")},
        writes=True,
    ),
    "get_devices": Operation(
        "notifications",
        "My push devices",
        "The devices I registered for push.",
        {200: returns(envelope(array(ref("Device"))), "The devices.")},
    ),
    "post_device": Operation(
        "notifications",
        "Register a push device",
        "A platform token (passed to PUSH_WEBHOOK_URL with each notification), an endpoint URL on an allowed "
        "host (POSTed each notification, signed), or both. At most 20 per user.",
        {
            201: returns(envelope(ref("Device"), message="Device registered"), "Registered."),
            400: refuses(
                "The platform is unknown, neither token nor endpoint is given, the endpoint is not a "
                "plain http(s) URL on an allowed host (it carries a user@, a backslash, a percent-encoded "
                "host or control characters), its address is loopback, private, link-local, multicast, "
                "reserved or a cloud metadata address, or its port is not 80 or 443 (unless "
                "PUSH_ALLOWED_ADDRESSES allows them), or I have 20 devices already."
            ),
        },
        body="NewDevice",
        body_example={"platform": "android", "token": "fcm-token"},
        writes=True,
    ),
    "delete_device": Operation(
        "notifications",
        "Remove a push device",
        "Forgets one of my devices.",
        {200: returns(envelope(message="Device removed"), "Removed."), 404: refuses("No such device of mine.")},
        parameters=("DeviceId",),
        writes=True,
    ),
    "get_dead_letters": Operation(
        "notifications",
        "Failed push deliveries (admins)",
        "Deliveries that gave up after PUSH_MAX_ATTEMPTS tries or found the queue full, newest first. Only "
        "for the users named in ADMINS.",
        {
            200: returns(envelope(array(ref("DeadLetter"))), "The dead letters."),
            400: refuses("'limit' is out of range."),
            403: refuses("I am not one of the server's admins."),
        },
        parameters=("Limit",),
    ),
    "post_compact": Operation(
        "service",
        "Compact the store now (admins)",
        "Rewrites what the store keeps on disk while the server runs, so that the text of deleted messages "
        "leaves it now rather than at the next automatic compaction: the JSON store writes a fresh snapshot "
        "and drops its journal; PostgreSQL rewrites the tables that hold message text (VACUUM FULL, which "
        "locks each one while it runs). Answers once done. Only for the users named in ADMINS.",
        {
            200: returns(
                envelope(
                    obj(
                        {
                            "seconds": {
                                "type": "number",
                                "minimum": 0,
                                "examples": [0.42],
                                "description": "How long the compaction took.",
                            }
                        }
                    ),
                    message="Store compacted",
                ),
                "Compacted.",
            ),
            403: refuses("I am not one of the server's admins."),
        },
        writes=True,
    ),
    # -- media and keys --
    "post_attachment": Operation(
        "media",
        "Upload an attachment",
        "Uploads a file into the chat. The body is the file itself, with its Content-Type (and ?name=), or "
        "multipart/form-data with a 'file' part (its Content-Type and filename count) and optional 'content' "
        "and 'send' fields. The file's first bytes must agree with the declared type, and the type must be "
        "allowed (MEDIA_ALLOWED_TYPES). A caption (content) or send=1 also sends the message carrying the "
        "file; otherwise send it later with attachment_id. Images get a thumbnail when the server has Pillow.",
        {
            201: returns(envelope(ref("UploadedAttachment"), message="Attachment uploaded"), "Stored."),
            400: refuses(
                "The file is empty or missing, the multipart body is malformed, content is blank or too "
                "long, send is not 1/0/true/false, or Content-Length is invalid."
            ),
            413: refuses(
                "The file is over MEDIA_MAX_BYTES, or it would take my attachments past my quota "
                "(ATTACHMENT_QUOTA_BYTES; the message says so, and /users/me shows the use and the "
                "limit): delete some attachments first."
            ),
            415: refuses(
                "The file's type is not allowed (MEDIA_ALLOWED_TYPES), or its bytes do not match the "
                "declared type (the message names both)."
            ),
            503: refuses(
                "The server's disk is full, or too full to keep the file without eating into the "
                "store's free-space reserve; retry after Retry-After."
            ),
        },
        parameters=("ChatId", "FileName", "Caption", "Send"),
        writes=True,
        upload={
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": ref("Upload"),
                "encoding": {"file": {"contentType": "application/octet-stream"}},
            },
        },
    ),
    "get_attachment": Operation(
        "media",
        "An attachment's metadata",
        "Name, size, type, kind, image size and thumbnail state. Only for members of its chat.",
        {
            200: returns(envelope(ref("Attachment")), "The metadata."),
            403: refuses("The caller is not a member of the attachment's chat."),
            404: refuses("No such attachment."),
        },
        parameters=("AttachmentId",),
    ),
    "delete_attachment": Operation(
        "media",
        "Delete an attachment",
        "Deletes an attachment (its uploader, or an admin or the owner of its chat). The message it was sent "
        "with loses it (and becomes a tombstone if nothing else was in it); the bytes go once nothing refers "
        "to them.",
        {
            200: returns(envelope(message=f"Attachment with ID {ATTACHMENT} deleted successfully"), "Deleted."),
            403: refuses("The caller is not a member of the chat, or neither uploaded it nor moderates the chat."),
            404: refuses("No such attachment."),
            409: refuses("The caller stopped being a member of the chat while the request ran."),
        },
        parameters=("AttachmentId",),
        writes=True,
    ),
    "get_attachment_content": Operation(
        "media",
        "Download an attachment",
        "The file's bytes with its Content-Type, Content-Length, Content-Disposition and ETag (its SHA-256). "
        "If-None-Match answers 304; one byte Range answers 206 (audio and video players seek with it).",
        {
            200: Reply("The whole file.", {"type": "string", "format": "binary"}, "*/*"),
            206: Reply(
                "The range asked for (Content-Range says which).", {"type": "string", "format": "binary"}, "*/*"
            ),
            304: Reply("The client's copy (If-None-Match) is current; no body."),
            403: refuses("The caller is not a member of the attachment's chat."),
            404: refuses("No such attachment."),
            416: refuses("The range starts past the end (Content-Range: bytes */size)."),
            500: refuses(
                "Attachment data is damaged: the server's copy no longer matches its SHA-256, so it "
                "is not sent (the server's log names it)."
            ),
        },
        parameters=("AttachmentId", "Range", "IfRange", "IfNoneMatch"),
    ),
    "get_attachment_thumbnail": Operation(
        "media",
        "An attachment's thumbnail",
        f"A JPEG (or PNG, with transparency) of at most {THUMBNAIL_SIZE} px a side, for images; ETag, "
        "If-None-Match and Range as for the content.",
        {
            200: Reply("The thumbnail.", {"type": "string", "format": "binary"}, "image/*"),
            206: Reply("The range asked for.", {"type": "string", "format": "binary"}, "image/*"),
            304: Reply("The client's copy (If-None-Match) is current; no body."),
            403: refuses("The caller is not a member of the attachment's chat."),
            404: refuses("No such attachment, or it has no thumbnail (the message says why)."),
            416: refuses("The range starts past the end."),
            500: refuses("The thumbnail's data is damaged (its bytes no longer match its SHA-256)."),
        },
        parameters=("AttachmentId", "Range", "IfRange", "IfNoneMatch"),
    ),
    "post_key": Operation(
        "keys",
        "Publish a public key",
        "Publishes one public key of one of my devices. A device has one live key per algorithm: to rotate, "
        "publish the new one with replaces (the old one is revoked). The server never takes private keys.",
        {
            201: returns(envelope(ref("PublicKey"), message="Key published"), "Published."),
            400: refuses(
                "A field is invalid: the device id, the algorithm, a key of the wrong length or "
                "format, not on the curve, low-order, RSA under 2048 bits, something that looks like a "
                "private key, or replaces naming no live key of mine for the same device and algorithm."
            ),
            409: refuses(
                "The key is already published, the device already has a live key of that algorithm "
                "(rotate with replaces), or I have too many live keys."
            ),
        },
        body="NewKey",
        body_example={"device_id": "laptop", "algorithm": "x25519", "public_key": EXAMPLE_X25519},
        writes=True,
    ),
    "get_my_keys": Operation(
        "keys",
        "My keys",
        "Every key I published, revoked ones included (with revoked_at), oldest first.",
        {200: returns(envelope(array(ref("PublicKey"))), "My keys.")},
    ),
    "get_key": Operation(
        "keys",
        "A key by id",
        "Any user's key, current or revoked: to verify the signature of an older message.",
        {200: returns(envelope(ref("PublicKey")), "The key."), 404: refuses("No such key.")},
        parameters=("KeyId",),
    ),
    "delete_key": Operation(
        "keys",
        "Revoke a key",
        "Revokes one of my keys: it is no longer listed as current, but stays readable by id.",
        {
            200: returns(envelope(ref("PublicKey"), message="Key revoked"), "Revoked."),
            400: refuses("The key is already revoked."),
            403: refuses("The key is someone else's."),
            404: refuses("No such key."),
        },
        parameters=("KeyId",),
        writes=True,
    ),
    "get_user_keys": Operation(
        "keys",
        "A user's current keys",
        "The keys a user's devices hold now (not revoked): encrypt to their X25519 (or RSA-OAEP) keys, "
        "verify with their Ed25519 keys.",
        {200: returns(envelope(array(ref("PublicKey"))), "The current keys."), 404: refuses("No such user.")},
        parameters=("UserId",),
    ),
    # -- web page --
    "get_static": Operation(
        "web",
        "A file of the web chat page",
        "The web chat page's script, style sheet and icon (the page itself is GET / for browsers), with "
        "Content-Type, ETag and Cache-Control: immutable for a year when v is current, revalidated "
        "otherwise. If-None-Match naming the current ETag answers 304. Only these names exist: there is no "
        "other path to the server's files. 404 when WEB_UI_ENABLED=0.",
        {
            200: Reply("The file.", {"type": "string"}, "*/*"),
            304: Reply("The client's copy is current (no body)."),
            404: refuses("No such file, or the web page is turned off."),
        },
        parameters=("StaticName", "AssetVersion", "IfNoneMatch"),
    ),
}

TAGS = {
    "service": "The service itself.",
    "docs": "This documentation.",
    "auth": "Accounts and tokens.",
    "messages": "0xC's public and private messages.",
    "chats": "Direct chats and groups, their members and messages.",
    "events": "Real-time events: long-poll, Server-Sent Events, typing notices.",
    "search": "Finding messages by their words.",
    "users": "Profiles and the user directory.",
    "accounts": "E-mail verification and password reset with mailed codes.",
    "notifications": "The notification feed and push devices.",
    "media": "Attachments: upload, metadata, download, thumbnails.",
    "keys": "The public-key directory for end-to-end encryption (the server never sees a private key).",
    "web": "The web chat page's files.",
}
ROLE_NAMES = {
    "member": "a member of the chat",
    "admin": "an admin or the owner of the chat",
    "owner": "the owner of the chat",
}


def operations():
    """The operationIds documented, in order; each must be a handler in the route table."""
    return tuple(OPERATIONS)


# =============================================================================
# The document
# =============================================================================

RESPONSE_HEADERS = {
    401: {
        "WWW-Authenticate": {
            "description": "'Bearer' when the access token was the problem.",
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
}


def _replies(route, entry, settings, parameters):
    """Every answer the operation can give: status -> list of Reply."""
    replies = {}
    for status, reply in entry.responses.items():
        replies.setdefault(status, []).append(reply)

    def add(status, description):
        replies.setdefault(status, []).append(refuses(description))

    role = getattr(route.handler, "required_role", None)
    if role is not None:
        add(404, "No such chat.")
        add(403, f"The caller is not {ROLE_NAMES[role]}.")
        if entry.writes:
            add(409, "The caller stopped being a member of the chat while the request ran.")
    if entry.groups_only:
        add(400, f"The chat is a direct chat, which cannot {entry.groups_only}.")
    if entry.body:
        add(400, "The body is not a JSON object (malformed, not UTF-8, NaN, a lone surrogate ...).")
        add(413, f"The body is over {settings.max_body_bytes} bytes (MAX_BODY_BYTES).")
        add(415, "Content-Type is not application/json.")
    if any(parameters[name]["in"] == "query" for name in entry.parameters):
        add(400, "The query string is malformed.")
    if route.auth:
        add(401, "The access token is missing, malformed, expired, or its session has ended.")
    if settings.secret_key_enabled and not entry.api_key_exempt:
        add(401, "The X-API-Key header is missing or wrong.")
    if settings.rate_limit_enabled:
        add(429, "Too many requests from this client; retry after Retry-After.")
    elif settings.auth_rate_limit_enabled and route.template.endswith(THROTTLED_PATHS):
        add(
            429,
            f"Too many requests from this client to the auth endpoints ({settings.auth_rate_limit} a "
            "minute, AUTH_RATE_LIMIT); retry after Retry-After.",
        )
    if entry.writes:
        add(503, "The store refuses writes (a disk failure); retry after Retry-After.")
    return replies


def _response(status, replies):
    reasons = [reply.description for reply in replies]
    response = {"description": reasons[0] if len(reasons) == 1 else "\n".join(f"- {r}" for r in reasons)}
    if replies[0].schema is not None:
        response["content"] = {replies[0].media_type: {"schema": replies[0].schema}}
    if status in RESPONSE_HEADERS:
        response["headers"] = RESPONSE_HEADERS[status]
    return response


def _security(route, entry, settings):
    """Alternative requirements: the entry's own schemes, or bearer when the route needs a user."""
    alternatives = [[name] for name in entry.security] or [["bearerAuth"] if route.auth else []]
    if settings.secret_key_enabled and not entry.api_key_exempt:
        alternatives = [names + ["apiKey"] for names in alternatives]
    return [{name: [] for name in names} for names in alternatives if names]


def _operation(route, entry, settings, components):
    description = entry.description
    role = getattr(route.handler, "required_role", None)
    if role is not None:
        description += f" The caller must be {ROLE_NAMES[role]}."
    operation = {
        "operationId": route.name,
        "tags": [entry.tag],
        "summary": entry.summary,
        "description": description,
        "security": _security(route, entry, settings),
    }
    if entry.parameters:
        operation["parameters"] = [{"$ref": f"#/components/parameters/{name}"} for name in entry.parameters]
    if entry.body:
        media = {"schema": ref(entry.body)}
        if entry.body_example is not None:
            media["example"] = entry.body_example
        operation["requestBody"] = {"required": True, "content": {"application/json": media}}
    elif entry.upload:
        operation["requestBody"] = {"required": True, "content": entry.upload}
    replies = _replies(route, entry, settings, components["parameters"])
    operation["responses"] = {str(status): _response(status, replies[status]) for status in sorted(replies)}
    return operation


def _info(settings, version):
    prefix = settings.api_prefix
    api_key = (
        "This server requires the X-API-Key header on every request except OPTIONS and "
        f"{prefix}/health (SECRET_KEY_ENABLED=1)."
        if settings.secret_key_enabled
        else "This server does not require an API key (SECRET_KEY_ENABLED=0); with it on, every "
        f"request except OPTIONS and {prefix}/health needs the X-API-Key header."
    )
    auth_paths = "the auth endpoints" if settings.auth_rate_limit_enabled else "login and registration"
    rate = (
        f"Rate limiting is on: {settings.rate_limit} requests a minute per client, "
        f"{settings.auth_rate_limit} for {auth_paths}; beyond that 429."
        if settings.rate_limit_enabled
        else f"Each client may make {settings.auth_rate_limit} requests a minute to the auth endpoints (register, "
        "login, refresh, verification and reset); beyond that 429. Other requests are not rate limited."
        if settings.auth_rate_limit_enabled
        else "Rate limiting is off on this server."
    )
    return {
        "title": "oxc chat API",
        "version": version,
        "summary": "Public and private chat messages with JWT authentication.",
        "description": "\n\n".join(
            [
                'Every answer is JSON. A success is `{"status": "success", "message"?, "data"}` or, '
                'for lists, `{"status": "success", "messages": [...], "paging": {...}}`; an error is '
                '`{"status": "error", "message": "..."}`.',
                f"Register at {prefix}/auth/register, log in at {prefix}/auth/login, then send "
                "`Authorization: Bearer <access_token>`. Refresh with the refresh token before "
                "`refresh_at`; a refresh token is single-use when rotation is on.",
                api_key,
                rate,
                f"Messages hold 1 to {settings.max_message_length} characters (MAX_MESSAGE_LENGTH). "
                "Text fields are trimmed of surrounding whitespace before they are checked; unknown "
                "query parameters and body fields are ignored. Other methods on a known path answer "
                "405 with an Allow header.",
            ]
        ),
        "license": {"name": "MIT", "identifier": "MIT"},
    }


def build_document(settings, routes, version, script_name=""):
    """The OpenAPI document for ``routes`` under ``settings``, served below ``script_name``."""
    components = _components(settings)
    paths = {}
    for route in routes:
        entry = OPERATIONS.get(route.name)
        if entry is None:
            log.warning("route %s %s has no OpenAPI entry for %s", route.method, route.template, route.name)
            continue
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route, entry, settings, components)
    used_tags = {entry.tag for entry in OPERATIONS.values()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": _info(settings, version),
        "servers": [{"url": script_name or "/", "description": "This server."}],
        "tags": [{"name": name, "description": text} for name, text in TAGS.items() if name in used_tags],
        "paths": paths,
        "components": components,
    }


def _cached(req, kind, build):
    """``build()`` once per app, kind and mount point; later calls get the cached value."""
    cache = getattr(req.ctx, "openapi_cache", None)
    if cache is None:
        cache = req.ctx.openapi_cache = {}
    key = (kind, req.script_name)
    value = cache.get(key)
    if value is None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()  # SCRIPT_NAME comes from the server's setup; a churn here is odd, not hostile
        value = cache[key] = build()
    return value


def document(req):
    """The OpenAPI document (a dict) as this request's app and mount point serve it."""
    return _cached(
        req, "document", lambda: build_document(req.ctx.settings, req.ctx.routes, req.ctx.version, req.script_name)
    )


def get_openapi(req):
    """The OpenAPI 3.1 document, as plain JSON."""
    body = _cached(
        req, "json", lambda: json.dumps(document(req), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    )
    return Response(
        [body], 200, [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))]
    )


# =============================================================================
# The reference page
# =============================================================================

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:62rem;padding:1rem 1.5rem;color:#1d1d1f}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ccd;margin-top:2.5rem}
h3{font-size:1.05rem;margin:0}
article{border:1px solid #dde;border-radius:6px;margin:1rem 0;padding:.8rem 1rem}
code,pre{font:13px/1.4 ui-monospace,monospace}pre{background:#f4f4f8;padding:.6rem;overflow:auto}
table{border-collapse:collapse;width:100%;margin:.4rem 0}td,th{border-bottom:1px solid #e4e4ea;padding:.3rem;
text-align:left;vertical-align:top}.method{display:inline-block;min-width:4.2rem;font-weight:700}
.get{color:#0a6b2b}.post{color:#0b4fa8}.delete{color:#a11}.patch{color:#8a5a00}.put{color:#6b3fa0}
.muted{color:#667}nav li{margin:.1rem 0}
"""
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


def _e(value):
    return html.escape(str(value), quote=True)


def _resolve(schema, components):
    while isinstance(schema, dict) and "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 2)[-2]][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def example_of(schema, components):
    """An example value for ``schema``, from its ``examples`` and those of its parts."""
    schema = _resolve(schema, components)
    if "examples" in schema:
        return schema["examples"][0]
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema and "properties" not in schema:
        return example_of(schema["anyOf"][0], components)
    if "allOf" in schema:
        merged = {}
        for part in schema["allOf"]:
            merged.update(example_of(part, components))
        return merged
    kind = schema.get("type")
    if "properties" in schema:
        return {name: example_of(value, components) for name, value in schema["properties"].items()}
    if kind == "array":
        return [example_of(schema.get("items", {}), components)]
    if isinstance(kind, list) and "null" in kind:
        return None
    return {"string": "text", "integer": 0, "number": 0, "boolean": False}.get(kind, {})


def describe(schema, components):
    """A short human description of a schema's type and constraints."""
    name = schema["$ref"].rsplit("/", 1)[-1] if "$ref" in schema else None
    schema = _resolve(schema, components)
    kind = schema.get("type", "object" if "properties" in schema else "")
    parts = [name or (" or ".join(kind) if isinstance(kind, list) else kind)]
    if "const" in schema:
        parts = [json.dumps(schema["const"])]
    if "enum" in schema:
        parts = [" | ".join(json.dumps(value) for value in schema["enum"])]
    labels = (
        ("format", "format {}"),
        ("minLength", "min {} chars"),
        ("maxLength", "max {} chars"),
        ("minimum", "min {}"),
        ("maximum", "max {}"),
        ("default", "default {}"),
        ("pattern", "pattern {}"),
    )
    parts += [label.format(schema[key]) for key, label in labels if key in schema]
    return ", ".join(part for part in parts if part)


def _fields_table(schema, components):
    schema = _resolve(schema, components)
    required = set(schema.get("required", ()))
    rows = "".join(
        f"<tr><td><code>{_e(name)}</code></td><td>{_e(describe(field, components))}</td>"
        f"<td>{'required' if name in required else 'optional'}</td>"
        f"<td>{_e(_resolve(field, components).get('description', ''))}</td></tr>"
        for name, field in schema.get("properties", {}).items()
    )
    return f"<table><tr><th>Field</th><th>Type</th><th></th><th>Notes</th></tr>{rows}</table>"


def _pretty(value):
    return f"<pre>{_e(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _render_operation(method, path, operation, components):
    parts = [
        f'<article id="{_e(operation["operationId"])}">',
        f'<h3><span class="method {method}">{method.upper()}</span> <code>{_e(path)}</code></h3>',
        f"<p><strong>{_e(operation['summary'])}</strong> "
        f'<span class="muted">({_e(operation["operationId"])})</span></p>',
        f"<p>{_e(operation['description'])}</p>",
    ]
    schemes = " or ".join(" + ".join(requirement) for requirement in operation["security"])
    parts.append(f'<p class="muted">Authentication: {_e(schemes or "none")}</p>')
    parameters = [_resolve(parameter, components) for parameter in operation.get("parameters", ())]
    if parameters:
        rows = "".join(
            f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
            f"<td>{_e(describe(p['schema'], components))}</td>"
            f"<td>{'required' if p.get('required') else 'optional'}</td><td>{_e(p['description'])}</td></tr>"
            for p in parameters
        )
        parts.append(
            "<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Type</th><th></th>"
            f"<th>Notes</th></tr>{rows}</table>"
        )
    if "requestBody" in operation:
        content = operation["requestBody"]["content"]
        parts.append(f'<h4>Request body <span class="muted">{_e(" or ".join(content))}</span></h4>')
        for media in content.values():
            if "properties" in _resolve(media["schema"], components):
                parts.append(_fields_table(media["schema"], components))
        if "application/json" in content:
            media = content["application/json"]
            parts.append(_pretty(media.get("example", example_of(media["schema"], components))))
    parts.append("<h4>Responses</h4><table><tr><th>Status</th><th>When</th><th>Body</th></tr>")
    for status, response in operation["responses"].items():
        content = response.get("content", {})
        body = ""
        if content.get("application/json", {}).get("schema") == ref("Error"):
            body = '<code>{"status": "error", "message": "..."}</code>'
        elif "application/json" in content:
            body = _pretty(example_of(content["application/json"]["schema"], components))
        elif content:
            body = _e(", ".join(content))
        when = "<br>".join(_e(line.lstrip("- ")) for line in response["description"].splitlines())
        parts.append(f"<tr><td><strong>{_e(status)}</strong></td><td>{when}</td><td>{body}</td></tr>")
    parts.append("</table></article>")
    return "".join(parts)


def render_page(doc):
    """The reference page (HTML) for the OpenAPI document ``doc``."""
    components = doc["components"]
    by_tag = {tag["name"]: [] for tag in doc["tags"]}
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            by_tag.setdefault(operation["tags"][0], []).append((method, path, operation))
    info = doc["info"]
    base = doc["servers"][0]["url"].rstrip("/")
    nav, sections = [], []
    descriptions = {tag["name"]: tag.get("description", "") for tag in doc["tags"]}
    for tag, entries in by_tag.items():
        if not entries:
            continue
        links = "".join(
            f'<li><a href="#{_e(op["operationId"])}">{method.upper()} {_e(base + path)}</a></li>'
            for method, path, op in entries
        )
        nav.append(f'<li><a href="#tag-{_e(tag)}">{_e(tag)}</a><ul>{links}</ul></li>')
        articles = "".join(_render_operation(method, base + path, op, components) for method, path, op in entries)
        sections.append(
            f'<section id="tag-{_e(tag)}"><h2>{_e(tag)}</h2><p>{_e(descriptions.get(tag, ""))}</p>{articles}</section>'
        )
    intro = "".join(f"<p>{_e(paragraph)}</p>" for paragraph in info["description"].split("\n\n"))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(info['title'])} reference</title><style>{STYLE}</style></head><body>"
        f'<header><h1>{_e(info["title"])}</h1><p class="muted">Version {_e(info["version"])}. '
        f'Base URL <code>{_e(base or "/")}</code>. Machine-readable: <a href="openapi.json">openapi.json</a> '
        f"(OpenAPI {_e(doc['openapi'])}).</p>{intro}</header>"
        f"<nav><h2>Endpoints</h2><ul>{''.join(nav)}</ul></nav><main>{''.join(sections)}</main>"
        "</body></html>"
    )


def get_docs(req):
    """The API reference as a self-contained HTML page."""
    body = _cached(req, "html", lambda: render_page(document(req)).encode("utf-8"))
    return Response([body], 200, PAGE_HEADERS + [("Content-Length", str(len(body)))])
