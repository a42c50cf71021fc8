"""How stored records are shown to clients: each response view declared once, as a list of fields.

Handlers call a view like a function (``views.chat_message(message)``); the
view answers the dict 0xC's clients expect and refuses to carry a key it does
not declare (``UndeclaredField``). ``component_schemas(settings)`` renders
every view as the OpenAPI document's response component of the same name, so
a field cannot be sent undocumented; the test suite holds every answer it gets
against that document with extra keys forbidden (tests/conftest.py).

Adding a field to an answer therefore means adding it to the view's
declaration (name, type, description, example); the document follows.

The views live in three catalogues: ``people`` (users, tokens, 0xC messages,
paging), ``chats`` (chats, members, chat messages, receipts) and ``things``
(attachments, keys, notifications, devices, events, the service); the
vocabulary is in ``declared``.
"""

from __future__ import annotations

from typing import Any

from . import chats, people, things
from .chats import chat, chat_message, details, member, mute, receipts, summary, typing, unread
from .declared import Field, UndeclaredField, View, field
from .people import (
    grant,
    iso_time,
    login,
    message_event,
    message_hit,
    my_profile,
    public_message,
    public_profile,
    public_user,
    sessions_ended,
    token_info,
)
from .things import (
    attachment,
    dead_letter,
    device,
    error,
    event,
    health,
    marked_read,
    notification,
    public_key,
    service,
    thumbnail,
    ticket,
    unhealthy,
    unread_count,
    uploaded,
)

__all__ = [
    "Field",
    "UndeclaredField",
    "View",
    "attachment",
    "chat",
    "chat_message",
    "component_schemas",
    "dead_letter",
    "details",
    "device",
    "error",
    "event",
    "field",
    "grant",
    "health",
    "iso_time",
    "login",
    "marked_read",
    "member",
    "message_event",
    "message_hit",
    "mute",
    "my_profile",
    "notification",
    "public_key",
    "public_message",
    "public_profile",
    "public_user",
    "receipts",
    "service",
    "sessions_ended",
    "summary",
    "thumbnail",
    "ticket",
    "token_info",
    "typing",
    "unhealthy",
    "unread",
    "unread_count",
    "uploaded",
]

#: Every view that is a component of the document, by its component name.
COMPONENTS: dict[str, View] = {
    view.name: view for view in (*people.VIEWS, *chats.VIEWS, *things.VIEWS) if view.name is not None
}


def component_schemas(settings: Any) -> dict[str, dict]:
    """The document's response component schemas, by name, with limits and examples sized by ``settings``.

    They refer to ``Envelope`` (an end-to-end encrypted message), which is a
    request body too and is declared with the request schemas.
    """
    schemas = {name: view.schema(settings) for name, view in COMPONENTS.items()}
    schemas["Event"] = things.event_schema(settings)
    schemas["SearchHit"] = people.search_hit_schema(settings)
    return schemas
