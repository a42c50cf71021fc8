"""0xC's messages: public ones everybody sees, private ones between two users.

A user may see a message they sent, one sent to them, or a public one; any
other id answers 404 exactly as an unknown id does, so ids leak nothing.
Lists are pages (see ``paging.py``); without a cursor a page holds the newest
messages.
"""

import uuid

from .http import BadRequest, Forbidden, NotFound, success
from .http.declare import LIMIT, MESSAGE_PATH, Id, Link, Text, endpoint, envelope, page, query, ref, returns, setting
from .http.paging import page_answer
from .http.views import iso_time, public_message

MESSAGE_ID = "550e8400-e29b-41d4-a716-446655440001"
CURSOR = {"type": "string", "minLength": 1}
BEFORE = query(
    "Before",
    "before",
    "The page older than this message (a paging.before value). It must be "
    "a message of this list; not together with 'after'.",
    CURSOR,
)
AFTER = query(
    "After",
    "after",
    "The page newer than this message (a paging.after value). It must be "
    "a message of this list; not together with 'before'.",
    CURSOR,
)
MESSAGE_LIST = (LIMIT, BEFORE, AFTER)
BAD_PAGE = "'limit' is out of range, 'before' or 'after' names no message of this list, or both are given."
NOT_VISIBLE = "No such message, or the user may not see it."
LISTED_IDS = (Link("message_id", "/messages/0/id", to=("get_message", "delete_message")),)


def message_text(description: str = "The text", *, required: bool = True) -> Text:
    """A message's text: 1 to MAX_MESSAGE_LENGTH characters once trimmed."""
    return Text(
        f"{description}: 1 to {{max_length}} characters once surrounding whitespace is trimmed "
        "(MAX_MESSAGE_LENGTH={max_length}).",
        "Hello, world!",
        required=required,
        max_length=setting("max_message_length"),
    )


def visible_to(message, user_id):
    """True when ``user_id`` may see the 0xC ``message``: public, or sent by or to them."""
    return message is not None and (
        message.get("recipient_id") is None or user_id in (message["user_id"], message["recipient_id"])
    )


def _audience(message):
    """Who hears of a message: everyone, or the two people of a private one."""
    if message.get("recipient_id") is None:
        return None
    return {message["user_id"], message["recipient_id"]}


def _sent_by(message, user_id):
    return message is not None and message["user_id"] == user_id


def _listed(message, rule, user_id):
    return message if rule(message, user_id) else None


@endpoint(
    "messages",
    "List visible messages",
    "Public messages and private ones to or from the current user, a page at a time, oldest "
    "first. Without a cursor the page holds the newest messages.",
    answers={200: returns(page("messages", "Message", "Paging"), "One page of messages.")},
    refusals={400: BAD_PAGE},
    parameters=MESSAGE_LIST,
    links={200: LISTED_IDS},
)
def get_messages(req):
    """Messages the current user may see: public, and private to or from them."""
    user_id, store = req.user["id"], req.ctx.store
    return page_answer(
        req,
        lambda **kw: store.visible_messages(user_id, **kw),
        lambda message_id: _listed(store.get_message(message_id), visible_to, user_id),
        public_message,
    )


@endpoint(
    "messages",
    "List messages I sent",
    "Messages the current user sent, paged like the list of visible messages.",
    answers={200: returns(page("messages", "Message", "Paging"), "One page of messages.")},
    refusals={400: BAD_PAGE},
    parameters=MESSAGE_LIST,
    links={200: LISTED_IDS},
)
def get_my_messages(req):
    """Messages the current user sent."""
    user_id, store = req.user["id"], req.ctx.store
    return page_answer(
        req,
        lambda **kw: store.sent_messages(user_id, **kw),
        lambda message_id: _listed(store.get_message(message_id), _sent_by, user_id),
        public_message,
    )


@endpoint(
    "messages",
    "Send a message",
    "Sends a public message, or a private one when recipient_id names a user.",
    answers={201: returns(envelope(ref("Message"), message="Message created successfully"), "The message was sent.")},
    refusals={400: "content is missing, blank or too long, or recipient_id names no user."},
    body={
        "content": message_text(),
        "recipient_id": Id(
            "The id of an existing user to make the message private to them; null or absent for a public message."
        ),
    },
    body_name="NewMessage",
    body_example={"content": "Hello, world!"},
    links={201: (Link("message_id", to=("get_message", "delete_message")),)},
    writes=True,
)
def post_message(req, *, body):
    """Send a public message, or a private one with ``recipient_id``."""
    content, recipient_id = body["content"], body["recipient_id"]
    if recipient_id is not None and req.ctx.store.get_user(recipient_id) is None:
        raise BadRequest(f"Recipient with ID {recipient_id} not found")
    message = req.ctx.store.add_message(
        {
            "id": str(uuid.uuid4()),
            "user_id": req.user["id"],
            "username": req.user["username"],
            "content": content,
            "timestamp": iso_time(req.ctx.clock()),
            "recipient_id": recipient_id,
        }
    )
    req.ctx.events.publish("message.created", public_message(message), _audience(message))
    return success(public_message(message), "Message created successfully", status=201)


def _visible_message(req, message_id):
    message = req.ctx.store.get_message(message_id)
    if not visible_to(message, req.user["id"]):
        raise NotFound(f"Message with ID {message_id} not found")
    return message


@endpoint(
    "messages",
    "Get a message",
    "One message, if the current user sent it, received it, or it is public.",
    answers={200: returns(envelope(ref("Message")), "The message.")},
    refusals={404: NOT_VISIBLE},
    parameters=(MESSAGE_PATH,),
)
def get_message(req, message_id):
    """One message, if the current user may see it."""
    return success(public_message(_visible_message(req, message_id)))


@endpoint(
    "messages",
    "Delete a message",
    "Deletes a message the current user sent.",
    answers={
        200: returns(envelope(message=f"Message with ID {MESSAGE_ID} deleted successfully"), "The message was deleted.")
    },
    refusals={403: "The user may see the message but did not send it.", 404: NOT_VISIBLE},
    parameters=(MESSAGE_PATH,),
    writes=True,
)
def delete_message(req, message_id):
    """Delete a message the current user sent."""
    message = _visible_message(req, message_id)
    if message["user_id"] != req.user["id"]:
        raise Forbidden(f"Message with ID {message_id} not found or you do not have permission to delete it")
    if req.ctx.store.delete_message(message_id) is None:  # another delete came first
        raise NotFound(f"Message with ID {message_id} not found")
    # Its text leaves the event log before the deletion is announced.
    req.ctx.events.retract("message.deleted", {"id": message_id}, _audience(message))
    return success(message=f"Message with ID {message_id} deleted successfully")
