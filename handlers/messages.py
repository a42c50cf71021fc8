"""0xC's messages: public ones everybody sees, private ones between two users.

A user may see a message they sent, one sent to them, or a public one; any
other id answers 404 exactly as an unknown id does, so ids leak nothing.
Lists are pages (see ``paging.py``); without a cursor a page holds the newest
messages.
"""

import uuid

from .http import BadRequest, Forbidden, NotFound, success
from .http.fields import text
from .http.paging import page_answer
from .http.views import iso_time, public_message


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


def get_messages(req):
    """Messages the current user may see: public, and private to or from them."""
    user_id, store = req.user["id"], req.ctx.store
    return page_answer(
        req,
        lambda **kw: store.visible_messages(user_id, **kw),
        lambda message_id: _listed(store.get_message(message_id), visible_to, user_id),
        public_message,
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


def post_message(req):
    """Send a public message, or a private one with ``recipient_id``."""
    body = req.json
    content = text(body, "content", max_length=req.ctx.settings.max_message_length)
    recipient_id = text(body, "recipient_id", required=False, max_length=64)
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


def get_message(req, message_id):
    """One message, if the current user may see it."""
    return success(public_message(_visible_message(req, message_id)))


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
