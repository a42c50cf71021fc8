"""Messages inside a chat: listing, sending, editing and deleting them, and read receipts.

What sending, editing and deleting mean (mentions, attachments, tombstones, telling members)
is ``services.messaging``; this module reads and checks the request and answers. Every handler
acts through ``roles.in_chat``, so a non-member learns nothing, and every change is decided by
the store on the records as it holds them when it writes (see ``handlers/chats.py``).
"""

import dataclasses
from typing import Any

from .http import BadRequest, NotFound, success, views
from .http.declare import (
    CHAT_PATH,
    MESSAGE_PATH,
    AnyGiven,
    Id,
    Link,
    Raw,
    endpoint,
    envelope,
    maybe,
    page,
    ref,
    refuses,
    returns,
)
from .http.paging import page_answer
from .keys import check_envelope, envelope_schema
from .messages import BAD_PAGE, MESSAGE_ID, MESSAGE_LIST, message_text
from .services import messaging
from .services.roles import (
    acting,
    check_message_deletion,
    in_chat,
)

NOT_IN_CHAT = "No such message in this chat."


def _message_in(req, chat, message_id):
    message = req.ctx.store.get_chat_message(message_id)
    if message is None or message["chat_id"] != chat["id"]:
        raise NotFound(f"Message with ID {message_id} not found in this chat")
    return message


def _editable(req, chat, me, message_id):
    # 404 and the reasons a message cannot be edited answer before the new text is read.
    messaging.check_editable(me, _message_in(req, chat, message_id))


POINTER = {"message_id": Id("The id of a message of this chat.", MESSAGE_ID, required=True)}
#: What marking read and marking delivered share: they move one of the caller's pointers.
MOVES_A_POINTER: dict[str, Any] = {
    "answers": {
        200: returns(envelope(ref("Unread")), "The unread count now."),
        400: refuses("message_id is missing or not a string."),
        404: refuses(NOT_IN_CHAT),
    },
    "parameters": (CHAT_PATH,),
    "body": POINTER,
    "body_name": "Pointer",
    "body_example": {"message_id": MESSAGE_ID},
    "writes": True,
}


@in_chat()
@endpoint(
    "chats",
    "List a chat's messages",
    "A page of the chat's history, oldest first, deleted messages as tombstones. Without a "
    "cursor the page holds the newest messages.",
    answers={200: returns(page("messages", "ChatMessage", "Paging"), "One page of messages."), 400: refuses(BAD_PAGE)},
    parameters=(CHAT_PATH,) + MESSAGE_LIST,
)
def get_chat_messages(req, chat, me):
    """A page of a chat's history (tombstones included)."""
    store = req.ctx.store

    def anchor(message_id):
        message = store.get_chat_message(message_id)
        return message if message is not None and message["chat_id"] == chat["id"] else None

    return page_answer(req, lambda **kw: store.chat_history(chat["id"], **kw), anchor, views.chat_message)


@in_chat()
@endpoint(
    "chats",
    "Send a message to a chat",
    "Sends a message, optionally as a reply; members named as @username are listed in mentions.",
    answers={
        201: returns(envelope(ref("ChatMessage"), message="Message created successfully"), "The message was sent."),
        400: refuses(
            "content, attachment_id and encrypted are all missing, content is blank or too long, "
            "content and encrypted are both given, reply_to_id is not a message of this chat, "
            "attachment_id is not an unsent attachment of this chat, or the envelope is malformed "
            "or its sender_key_id is not a live Ed25519 key of the caller."
        ),
    },
    parameters=(CHAT_PATH,),
    body={
        "content": dataclasses.replace(message_text(), required=False, required_unless=("attachment_id", "encrypted")),
        "reply_to_id": Id("The id of a message of this chat to reply to."),
        "attachment_id": Id("An attachment uploaded to this chat and not sent yet, to send with this message."),
        # Checked by keys.check_envelope, which needs the store (the sender's live signing key).
        "encrypted": Raw("An end-to-end encrypted message instead of content.", shape=maybe(ref("Envelope"))),
    },
    constraints=(AnyGiven(("content", "attachment_id", "encrypted"), "Missing required field: content"),),
    body_schema_extra={
        "not": {
            "required": ["content", "encrypted"],
            "properties": {"content": {"type": "string"}, "encrypted": {"type": "object"}},
        }
    },
    body_name="NewChatMessage",
    schemas={"Envelope": envelope_schema},
    links={
        201: (
            Link("message_id", to=("patch_chat_message", "delete_chat_message", "get_receipts")),
            # Marking read or delivered names the message in the body; the chat is the one posted to.
            Link(None, to=("post_read", "post_delivered"), request_body={"message_id": "$response.body#/data/id"}),
        )
    },
    body_example={"content": "Hello, @bob!"},
    writes=True,
)
def post_chat_message(req, chat, me, *, body):
    """Send text, an attachment uploaded to this chat, or an encrypted envelope; maybe as a reply."""
    sealed = check_envelope(req, body["encrypted"]) if body["encrypted"] is not None else None
    attachment = messaging.unsent_attachment(req.ctx, chat, body["attachment_id"])
    content = body["content"]
    if sealed is not None and content is not None:
        raise BadRequest("Give 'content' or 'encrypted', not both: the server must not see an encrypted message's text")
    reply_to_id = body["reply_to_id"]
    if reply_to_id is not None:
        replied = req.ctx.store.get_chat_message(reply_to_id)
        if replied is None or replied["chat_id"] != chat["id"]:
            raise BadRequest("Field 'reply_to_id' is not a message of this chat")
    message = messaging.send(
        req.ctx, chat, me, req.user["username"], content, reply_to_id, attachment=attachment, envelope=sealed
    )
    return success(views.chat_message(message), "Message created successfully", status=201)


@in_chat()
@endpoint(
    "chats",
    "Edit a message",
    "Changes the text of the caller's own message and records when (edited_at).",
    answers={
        200: returns(envelope(ref("ChatMessage"), message="Message updated"), "The edited message."),
        400: refuses("content is missing, blank or too long, or the message is deleted or encrypted."),
        403: refuses("The caller did not write the message."),
        404: refuses(NOT_IN_CHAT),
    },
    parameters=(CHAT_PATH, MESSAGE_PATH),
    body={"content": message_text("The new text")},
    body_name="ChatMessageEdit",
    before=_editable,
    body_example={"content": "Hello!"},
    writes=True,
)
def patch_chat_message(req, chat, me, message_id, *, body):
    """Edit my own message; ``edited_at`` records when."""
    message = messaging.edit(req.ctx, chat, me, message_id, body["content"])
    return success(views.chat_message(message), "Message updated")


@in_chat()
@endpoint(
    "chats",
    "Delete a message",
    "Deletes a message (its author, or an admin or the owner), leaving a tombstone.",
    answers={
        200: returns(
            envelope(message=f"Message with ID {MESSAGE_ID} deleted successfully"), "The message is now a tombstone."
        ),
        400: refuses("The message is already deleted."),
        403: refuses("The caller neither wrote the message nor moderates the chat."),
        404: refuses(NOT_IN_CHAT),
    },
    parameters=(CHAT_PATH, MESSAGE_PATH),
    writes=True,
)
def delete_chat_message(req, chat, me, message_id):
    """Delete a message (its author, or an admin or the owner), leaving a tombstone."""
    message = _message_in(req, chat, message_id)
    messaging.tombstone(req.ctx, chat, message, me["user_id"], rule=check_message_deletion)
    return success(message=f"Message with ID {message_id} deleted successfully")


def _advance(req, chat, me, kind, message_id):
    message = _message_in(req, chat, message_id)
    acting(chat["id"], *messaging.advance_pointer(req.ctx, chat["id"], me, message, kind))
    unread = req.ctx.store.unread_count(chat["id"], me["user_id"])
    return success(views.unread.build(chat_id=chat["id"], unread_count=unread))


@in_chat()
@endpoint(
    "chats",
    "Mark read",
    "Moves the caller's read (and delivered) pointer up to a message; it never moves back.",
    **MOVES_A_POINTER,
)
def post_read(req, chat, me, *, body):
    """Mark the chat read up to a message (the pointer never moves back)."""
    return _advance(req, chat, me, "read", body["message_id"])


@in_chat()
@endpoint(
    "chats",
    "Mark delivered",
    "Records that messages up to this one reached the caller's device; it never moves back.",
    **MOVES_A_POINTER,
)
def post_delivered(req, chat, me, *, body):
    """Record that messages up to this one reached my device."""
    return _advance(req, chat, me, "delivered", body["message_id"])


@in_chat()
@endpoint(
    "chats",
    "Delivery and read receipts",
    "Which of the other members have received and read a message.",
    answers={200: returns(envelope(ref("Receipts")), "One receipt per other member."), 404: refuses(NOT_IN_CHAT)},
    parameters=(CHAT_PATH, MESSAGE_PATH),
)
def get_receipts(req, chat, me, message_id):
    """Who, among the other members, has received and read a message."""
    message = _message_in(req, chat, message_id)
    store = req.ctx.store
    others = [record for record in store.members(chat["id"]) if record["user_id"] != message["user_id"]]
    return success(views.receipts(message, [(record, store.get_user(record["user_id"])) for record in others]))
