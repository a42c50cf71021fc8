"""What it means to send, edit, delete and read a chat message, and telling the chat about it.

Endpoint modules (``chats.py``, ``media.py``, ``events.py``) read and check
the request, then call these with the app context (``req.ctx``): each
function writes through the store with a decision made on the records as
they are when written (``Store.add_chat_message``, ``change_chat_message``,
``change_chat``), then publishes the event that tells the chat's members.

A deleted message stays in history as a tombstone so replies and cursors
keep pointing at something; its text leaves every copy (the event log,
notification previews, push jobs: ``Hub.retract``). An attachment joins one
message only: the store claims it in the write that adds the message.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from store import ChatChange, Missing
from store import Conflict as StoreConflict

from ..http import BadRequest, Forbidden, NotFound, views
from .roles import acting

#: A record as the store holds it (a chat, a membership, a message, an attachment).
Record = dict[str, Any]

MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_-]{3,32})")
ALREADY_SENT = "Field 'attachment_id' names an attachment already sent with a message"
#: What each kind of receipt moves: reading a message also means it was delivered.
POINTERS = {"read": ("read_seq", "delivered_seq"), "delivered": ("delivered_seq",)}


def _now(ctx: Any) -> str:
    return views.iso_time(ctx.clock())


def tell(ctx: Any, chat_id: str, kind: str, data: Record, audience: Iterable[str] | None = None) -> None:
    """Publish an event about a chat to its members (or to ``audience``)."""
    hub = ctx.events
    hub.publish(kind, data, hub.chat_audience(chat_id) if audience is None else audience, chat_id=chat_id)


def mentions(ctx: Any, chat_id: str, content: str) -> list[Record]:
    """Members named as @username in ``content``, in order, once each, as ``{user_id, username}``."""
    store, found = ctx.store, []
    for name in MENTION.findall(content):
        user = store.find_user(name)
        if user and user["id"] not in found and store.get_member(chat_id, user["id"]):
            found.append(user["id"])
    return [{"user_id": uid, "username": store.get_user(uid)["username"]} for uid in found]


def send(
    ctx: Any,
    chat: Record,
    me: Record,
    username: str,
    content: str | None,
    reply_to_id: str | None = None,
    attachment: Record | None = None,
    envelope: Record | None = None,
) -> Record:
    """Store and announce ``me``'s message; ``attachment`` (an unsent one of this chat) joins it, once.

    The store claims the attachment in the write that adds the message, so of
    two messages naming it one is sent and the other refused (400).
    """
    store = ctx.store
    record = {
        "id": str(uuid.uuid4()),
        "chat_id": chat["id"],
        "user_id": me["user_id"],
        "username": username,
        "content": content,
        "reply_to_id": reply_to_id,
        "mentions": mentions(ctx, chat["id"], content) if content is not None else [],
        "created_at": _now(ctx),
        "edited_at": None,
        "deleted": False,
    }
    if envelope is not None:
        record.update(encrypted=True, envelope=envelope)
    if attachment is not None:
        record.update(
            attachment_id=attachment["id"], attachment=views.attachment(dict(attachment, message_id=record["id"]))
        )
    try:
        message = store.add_chat_message(record)
    except Missing:
        acting(chat["id"], store.get_chat(chat["id"]), None)  # the caller left, or the chat is gone
        raise
    except StoreConflict:
        if attachment is None:
            raise
        unsent_attachment(ctx, chat, attachment["id"])  # says what became of it
        raise BadRequest(ALREADY_SENT) from None
    tell(ctx, chat["id"], "chat.message.created", views.chat_message(message))
    return message


def unsent_attachment(ctx: Any, chat: Record, attachment_id: str | None) -> Record | None:
    """The unsent attachment ``attachment_id`` of this chat (400 otherwise); None for no id."""
    if attachment_id is None:
        return None
    attachment = ctx.store.get_attachment(attachment_id)
    if attachment is None or attachment["chat_id"] != chat["id"]:
        raise BadRequest("Field 'attachment_id' is not an attachment of this chat")
    if attachment.get("message_id") is not None:
        raise BadRequest(ALREADY_SENT)
    return attachment


def check_editable(me: Record, message: Record) -> None:
    """May ``me`` edit ``message``'s text? Only its author, while it is neither deleted nor encrypted."""
    if message["user_id"] != me["user_id"]:
        raise Forbidden("Only the author may edit a message")
    if message.get("deleted"):
        raise BadRequest("A deleted message cannot be edited")
    if message.get("encrypted"):
        raise BadRequest("An encrypted message cannot be edited as text; delete it and send another")


def edit(ctx: Any, chat: Record, me: Record, message_id: str, content: str) -> Record:
    """Replace the text of ``me``'s message and announce it; ``edited_at`` records when.

    Checked again on the message and membership as they are when written: a
    delete or a departure may have come first.
    """
    changes = {"content": content, "mentions": mentions(ctx, chat["id"], content), "edited_at": _now(ctx)}

    def decide(current, member):
        if current is None:
            raise NotFound(f"Message with ID {message_id} not found in this chat")
        check_editable(acting(chat["id"], chat, member), current)
        return changes

    message = ctx.store.change_chat_message(message_id, me["user_id"], decide)
    tell(ctx, chat["id"], "chat.message.edited", views.chat_message(message))
    return message


def _tombstone_of(message: Record, by: str, now: str) -> Record:
    """The changes that make ``message`` a tombstone (the store drops its attachment with them)."""
    return {
        "deleted": True,
        "content": None,
        "mentions": [],
        "deleted_by": by,
        "deleted_at": now,
        **({"attachment": None} if "attachment" in message else {}),
        **({"envelope": None} if "envelope" in message else {}),
    }


def tombstone(
    ctx: Any, chat: Record, message: Record, by: str, rule: Callable[[Record, Record], None] | None = None
) -> Record:
    """Turn a message into a tombstone, once; its attachment (and, unshared, its bytes) goes with it.

    Decided on the message and ``by``'s membership as they are when written:
    of two deletes, the second gets 400. ``rule(member, message)`` adds a check.
    """
    now = _now(ctx)

    def decide(current, member):
        if current is None or current["chat_id"] != chat["id"]:
            raise NotFound(f"Message with ID {message['id']} not found in this chat")
        acting(chat["id"], chat, member)
        if rule is not None:
            rule(member, current)
        if current.get("deleted"):
            raise BadRequest("The message is already deleted")
        return _tombstone_of(current, by, now)

    message = ctx.store.change_chat_message(message["id"], by, decide)
    _retract(ctx, chat["id"], message)
    return message


def _retract(ctx: Any, chat_id: str, message: Record) -> None:
    """Announce a tombstone once the message's text is scrubbed from the event log, notifications and pushes."""
    hub = ctx.events
    hub.retract("chat.message.deleted", views.chat_message(message), hub.chat_audience(chat_id), chat_id=chat_id)


def detach_attachment(ctx: Any, chat: Record, me: Record, attachment: Record) -> bool:
    """Take a sent ``attachment`` out of its message, deleting it; False if it was gone already.

    One write changes the message and deletes the attachment record: the
    message becomes a tombstone when nothing else would be left of it.
    """
    now = _now(ctx)
    outcome: list[str] = []

    def decide(message, member):
        outcome.clear()
        if message is None:
            outcome.append("orphan")  # its message never reached the store (data from older versions)
            return None
        if message.get("deleted") or message.get("attachment_id") != attachment["id"]:
            return None  # it went with its message already
        acting(chat["id"], chat, member)
        if message.get("content") is None and not message.get("encrypted"):
            outcome.append("chat.message.deleted")
            return _tombstone_of(message, me["user_id"], now)
        outcome.append("chat.message.edited")
        return {"attachment": None, "attachment_id": None}

    message = ctx.store.change_chat_message(attachment["message_id"], me["user_id"], decide)
    if outcome == ["orphan"]:
        return ctx.store.delete_attachment(attachment["id"])
    if outcome == ["chat.message.deleted"]:
        _retract(ctx, chat["id"], message)
    elif outcome:
        tell(ctx, chat["id"], outcome[0], views.chat_message(message))
    return bool(outcome)


def advance_pointer(
    ctx: Any, chat_id: str, member: Record, message: Record, kind: str
) -> tuple[Record | None, Record | None]:
    """Move a member's ``kind`` pointer up to ``message`` (never back) and tell the chat.

    Decided on the membership as it is when written, so of two concurrent
    moves the higher one stays. Returns (chat, membership) afterwards: None
    for one that ended meanwhile, and then nothing is written.
    """
    user_id, fields = member["user_id"], POINTERS[kind]
    moved: list[bool] = []

    def decide(chat, members, count):
        mine = members[user_id]
        moved.clear()
        if chat is None or mine is None:
            return None
        changes = {name: max(mine.get(name, 0), message["seq"]) for name in fields}
        if changes == {name: mine.get(name, 0) for name in fields}:
            return None
        moved.append(True)
        return ChatChange(members={user_id: dict(mine, **changes)})

    chat, members = ctx.store.change_chat(chat_id, [user_id], decide)
    if moved:
        tell(ctx, chat_id, f"message.{kind}", {"chat_id": chat_id, "user_id": user_id, "message_id": message["id"]})
    return chat, members[user_id]
