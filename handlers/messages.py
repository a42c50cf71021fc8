"""0xC's messages: public ones everybody sees, private ones between two users.

A user may see a message they sent, one sent to them, or a public one; any
other id answers 404 exactly as an unknown id does, so ids leak nothing.
Lists are pages: ``limit`` (1-200, default 50) and one of ``before``/``after``
(a message id). Without a cursor the page holds the newest messages. A page is
oldest first, and ``paging.before``/``paging.after`` are the cursors for the
next older/newer page (null when there is nothing there).
"""

import uuid

from .fields import limit as read_limit
from .fields import text
from .http import BadRequest, Forbidden, NotFound, success
from .views import iso_time, public_message


def _visible(message, user_id):
    return message is not None and (
        message.get("recipient_id") is None
        or user_id in (message["user_id"], message["recipient_id"]))


def _page(req, listing, is_listed):
    """Answer one page of ``listing(before=, after=, limit=)``; ``is_listed`` vets cursors."""
    query = req.query
    size = read_limit(query)
    if "before" in query and "after" in query:
        raise BadRequest("Use either 'before' or 'after', not both")
    cursors = {}
    for name in ("before", "after"):
        if name in query:
            anchor = req.ctx.store.get_message(query[name])
            if not is_listed(anchor):
                raise BadRequest(f"Query parameter '{name}' is not a message in this list")
            cursors[name] = anchor["seq"]
    page = listing(limit=size, **cursors)
    items = [public_message(message) for message in page.items]
    older = page.items[0]["id"] if page.older and page.items else None
    newer = page.items[-1]["id"] if page.newer and page.items else None
    if not page.items and page.older:
        older = query.get("after")
    if not page.items and page.newer:
        newer = query.get("before")
    return success(messages=items, paging={"limit": size, "before": older, "after": newer})


def get_messages(req):
    """Messages the current user may see: public, and private to or from them."""
    user_id = req.user["id"]
    return _page(req, lambda **kw: req.ctx.store.visible_messages(user_id, **kw),
                 lambda message: _visible(message, user_id))


def get_my_messages(req):
    """Messages the current user sent."""
    user_id = req.user["id"]
    return _page(req, lambda **kw: req.ctx.store.sent_messages(user_id, **kw),
                 lambda message: message is not None and message["user_id"] == user_id)


def post_message(req):
    """Send a public message, or a private one with ``recipient_id``."""
    body = req.json
    content = text(body, "content", max_length=req.ctx.settings.max_message_length)
    recipient_id = text(body, "recipient_id", required=False, max_length=64)
    if recipient_id is not None and req.ctx.store.get_user(recipient_id) is None:
        raise BadRequest(f"Recipient with ID {recipient_id} not found")
    message = req.ctx.store.add_message({
        "id": str(uuid.uuid4()),
        "user_id": req.user["id"],
        "username": req.user["username"],
        "content": content,
        "timestamp": iso_time(req.ctx.clock()),
        "recipient_id": recipient_id,
    })
    return success(public_message(message), "Message created successfully", status=201)


def _visible_message(req, message_id):
    message = req.ctx.store.get_message(message_id)
    if not _visible(message, req.user["id"]):
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
    req.ctx.store.delete_message(message_id)
    return success(message=f"Message with ID {message_id} deleted successfully")
