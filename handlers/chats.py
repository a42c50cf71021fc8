"""Conversations: direct chats (two people) and groups (owner, admins, members).

A direct chat is found again rather than duplicated: ``POST /chats/direct``
creates it on first contact (optionally with the first message) and answers
the same chat afterwards. Everything inside a chat goes through
``roles.in_chat``; a deleted message stays in history as a tombstone so
replies and cursors keep pointing at something, and its text leaves every
copy (events, notification previews, pushes: ``Hub.retract``).

Every change is decided by a rule of ``roles`` on the records as the store
holds them when it writes (``Store.change_chat``, ``change_chat_message``, and
``add_chat_message``, which also claims the message's attachment), never on
what the handler read earlier: with several processes on one database, that
is what keeps one owner per group and each attachment in one message.
"""

import re
import uuid

from store import ChatChange, Missing
from store import Conflict as StoreConflict

from .http import BadRequest, Forbidden, NotFound, success, views
from .http.fields import limit as read_limit
from .http.fields import text
from .http.paging import page_answer
from .keys import check_envelope
from .services.roles import (
    acting,
    adding,
    changing_role,
    check_message_deletion,
    deleting,
    in_chat,
    removing,
    renaming,
    updating_self,
)

MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_-]{3,32})")
MAX_INITIAL_MEMBERS = 100


def _now(req):
    return views.iso_time(req.ctx.clock())


def _find_user(req, body, required=True):
    """The user a body names by ``user_id`` or ``username`` (400 if unknown)."""
    user_id = text(body, "user_id", required=False, max_length=64)
    username = text(body, "username", required=False, max_length=32)
    if user_id is None and username is None:
        if required:
            raise BadRequest("Missing required field: user_id or username")
        return None
    store = req.ctx.store
    user = store.get_user(user_id) if user_id is not None else store.find_user(username)
    if user is None:
        raise BadRequest(f"User {user_id or username} not found")
    return user


def _tell(req, chat_id, kind, data, audience=None):
    """Publish an event about a chat to its members (or to ``audience``)."""
    hub = req.ctx.events
    hub.publish(kind, data, hub.chat_audience(chat_id) if audience is None else audience, chat_id=chat_id)


def _member_record(user_id, role, now):
    return {"user_id": user_id, "role": role, "joined_at": now, "muted": False, "read_seq": 0, "delivered_seq": 0}


def _summary(req, chat, me):
    """A chat as its member sees it in a list: last message, unread count, role."""
    store = req.ctx.store
    last = store.chat_history(chat["id"], limit=1).items
    members = store.members(chat["id"])
    shown = views.chat(chat, len(members))
    if chat["type"] == "direct":
        peer_id = next((uid for uid in chat["pair"] if uid != me["user_id"]), me["user_id"])
        peer = store.get_user(peer_id)
        shown["peer"] = {"id": peer_id, "username": peer["username"] if peer else None}
    shown.update(
        last_message=views.chat_message(last[0]) if last else None,
        unread_count=store.unread_count(chat["id"], me["user_id"]),
        role=me["role"],
        muted=me.get("muted", False),
    )
    return shown


def _details(req, chat, me):
    store = req.ctx.store
    shown = _summary(req, chat, me)
    shown["members"] = [views.member(m, store.get_user(m["user_id"])) for m in store.members(chat["id"])]
    return shown


# -- chats ------------------------------------------------------------------


def get_chats(req):
    """My chats, newest activity first, each with last message, unread count, role."""
    store, user_id = req.ctx.store, req.user["id"]
    size = read_limit(req.query)
    before = req.query.get("before")
    if before is not None and store.get_member(before, user_id) is None:
        raise BadRequest("Query parameter 'before' is not one of your chats")
    chats, more = store.user_chats(user_id, limit=size, before=before)
    shown = [_summary(req, chat, store.get_member(chat["id"], user_id)) for chat in chats]
    return success(chats=shown, paging={"limit": size, "before": shown[-1]["id"] if more else None})


def post_group_chat(req):
    """Create a group; the creator becomes its owner."""
    body = req.json
    name = text(body, "name", max_length=100)
    description = text(body, "description", required=False, min_length=0, max_length=1000)
    invited = body.get("members", [])
    if (
        not isinstance(invited, list)
        or len(invited) > MAX_INITIAL_MEMBERS
        or not all(isinstance(entry, str) for entry in invited)
    ):
        raise BadRequest(f"Field 'members' must be a list of at most {MAX_INITIAL_MEMBERS} user ids or usernames")
    store, now = req.ctx.store, _now(req)
    members = {req.user["id"]: _member_record(req.user["id"], "owner", now)}
    for entry in invited:
        user = store.get_user(entry) or store.find_user(entry)
        if user is None:
            raise BadRequest(f"User {entry} not found")
        members.setdefault(user["id"], _member_record(user["id"], "member", now))
    chat = store.create_chat(
        {
            "id": str(uuid.uuid4()),
            "type": "group",
            "name": name,
            "description": description,
            "created_by": req.user["id"],
            "created_at": now,
        },
        list(members.values()),
    )
    shown = _details(req, chat, members[req.user["id"]])
    _tell(req, chat["id"], "chat.created", views.chat(chat, len(members)))
    return success(shown, "Chat created", status=201)


def post_direct_chat(req):
    """Open (or find again) the direct chat with a user; optionally send the first message."""
    body = req.json
    peer = _find_user(req, body)
    if peer["id"] == req.user["id"]:
        raise BadRequest("A direct chat needs another user")
    content = text(body, "content", required=False, max_length=req.ctx.settings.max_message_length)
    now = _now(req)
    store = req.ctx.store
    chat, created = store.direct_chat(
        {
            "id": str(uuid.uuid4()),
            "type": "direct",
            "name": None,
            "description": None,
            "created_by": req.user["id"],
            "created_at": now,
        },
        _member_record(req.user["id"], "member", now),
        _member_record(peer["id"], "member", now),
    )
    me = store.get_member(chat["id"], req.user["id"])
    if created:
        _tell(req, chat["id"], "chat.created", views.chat(chat, 2))
    message = _send(req, chat, me, content, None) if content is not None else None
    data = _details(req, chat, store.get_member(chat["id"], req.user["id"]))
    if message is not None:
        data["message"] = views.chat_message(message)
    return success(data, "Chat created" if created else "Chat found", status=201 if created else 200)


@in_chat()
def get_chat(req, chat, me):
    """A chat's details and members."""
    return success(_details(req, chat, me))


@in_chat("admin", groups_only="be renamed")
def patch_chat(req, chat, me):
    """Rename or re-describe a group."""
    body = req.json
    changes = {}
    if "name" in body:
        changes["name"] = text(body, "name", max_length=100)
    if "description" in body:
        changes["description"] = text(body, "description", required=False, min_length=0, max_length=1000)
    if not changes:
        raise BadRequest("Nothing to change: give 'name' or 'description'")
    chat, members = req.ctx.store.change_chat(chat["id"], [me["user_id"]], renaming(chat["id"], me["user_id"], changes))
    _tell(req, chat["id"], "chat.updated", views.chat(chat, len(req.ctx.store.members(chat["id"]))))
    return success(_details(req, chat, members[me["user_id"]]), "Chat updated")


@in_chat("owner", groups_only="be deleted")
def delete_chat(req, chat, me):
    """Delete a group with its messages (owner only)."""
    audience = req.ctx.events.chat_audience(chat["id"])
    req.ctx.store.change_chat(chat["id"], [me["user_id"]], deleting(chat["id"], me["user_id"]))
    _deleted(req, chat, audience)
    return success(message=f"Chat with ID {chat['id']} deleted successfully")


def _deleted(req, chat, audience):
    # Without chat_id: the hub would check membership of a chat that no longer has any.
    req.ctx.events.publish("chat.deleted", {"chat_id": chat["id"]}, audience)


# -- members ----------------------------------------------------------------


@in_chat()
def get_members(req, chat, me):
    """Everyone in a chat, with their roles."""
    store = req.ctx.store
    return success([views.member(m, store.get_user(m["user_id"])) for m in store.members(chat["id"])])


@in_chat("admin", groups_only="gain members")
def post_member(req, chat, me):
    """Add a user to a group (as a member, or as an admin when the owner says so)."""
    body = req.json
    user = _find_user(req, body)
    role = text(body, "role", required=False, max_length=10) or "member"
    if role not in ("member", "admin"):
        raise BadRequest("Field 'role' must be 'member' or 'admin'")
    record = _member_record(user["id"], role, _now(req))
    _, members = req.ctx.store.change_chat(
        chat["id"], [me["user_id"], user["id"]], adding(chat["id"], me["user_id"], record, user["username"])
    )
    record = members[user["id"]]
    _tell(req, chat["id"], "member.added", dict(views.member(record, user), chat_id=chat["id"], by=me["user_id"]))
    return success(views.member(record, user), "Member added", status=201)


def _target(req, chat, user_id):
    """400 unless ``user_id`` is a member when the request starts (409 if they leave while it runs)."""
    if req.ctx.store.get_member(chat["id"], user_id) is None:
        raise BadRequest(f"User {user_id} is not a member of this chat")


@in_chat(groups_only="lose members")
def delete_member(req, chat, me, user_id):
    """Remove a member (admins and owner), or leave (anyone)."""
    _target(req, chat, user_id)
    audience = req.ctx.events.chat_audience(chat["id"])
    left, _ = req.ctx.store.change_chat(
        chat["id"], [me["user_id"], user_id], removing(chat["id"], me["user_id"], user_id)
    )
    if left is None:
        _deleted(req, chat, audience)
        return success(message="You left the chat; it had no other members and was deleted")
    _tell(req, chat["id"], "member.removed", {"chat_id": chat["id"], "user_id": user_id, "by": me["user_id"]}, audience)
    return success(message="Member removed" if user_id != me["user_id"] else "You left the chat")


@in_chat("owner", groups_only="have roles")
def patch_member(req, chat, me, user_id):
    """Change a member's role; making someone owner transfers ownership."""
    _target(req, chat, user_id)
    role = text(req.json, "role", max_length=10)
    _, members = req.ctx.store.change_chat(
        chat["id"], [me["user_id"], user_id], changing_role(chat["id"], me["user_id"], user_id, role)
    )
    changed = [members[user_id]] + ([members[me["user_id"]]] if role == "owner" else [])
    for record in changed:
        _tell(
            req,
            chat["id"],
            "member.role_changed",
            {"chat_id": chat["id"], "user_id": record["user_id"], "role": record["role"], "by": me["user_id"]},
        )
    return success(views.member(changed[0], req.ctx.store.get_user(user_id)), "Role changed")


@in_chat()
def put_mute(req, chat, me):
    """Mute or unmute a chat for myself."""
    muted = req.json.get("muted")
    if not isinstance(muted, bool):
        raise BadRequest("Field 'muted' must be true or false")
    req.ctx.store.change_chat(
        chat["id"], [me["user_id"]], updating_self(chat["id"], me["user_id"], lambda mine: dict(mine, muted=muted))
    )
    return success({"chat_id": chat["id"], "muted": muted})


# -- messages in a chat -------------------------------------------------------


def _mentions(req, chat, content):
    """Members named as @username in ``content``, in order, once each."""
    found = []
    for name in MENTION.findall(content):
        user = req.ctx.store.find_user(name)
        if user and user["id"] not in found and req.ctx.store.get_member(chat["id"], user["id"]):
            found.append(user["id"])
    return found


def _send(req, chat, me, content, reply_to_id, attachment=None, envelope=None):
    """Store and announce a message; ``attachment`` (an unsent one of this chat) joins it, once.

    The store claims the attachment in the write that adds the message, so of
    two messages naming it one is sent and the other refused (400).
    """
    store = req.ctx.store
    mentions = _mentions(req, chat, content) if content is not None else []
    record = {
        "id": str(uuid.uuid4()),
        "chat_id": chat["id"],
        "user_id": me["user_id"],
        "username": req.user["username"],
        "content": content,
        "reply_to_id": reply_to_id,
        "mentions": [{"user_id": uid, "username": store.get_user(uid)["username"]} for uid in mentions],
        "created_at": _now(req),
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
        _attachment_in(req, chat, attachment["id"])  # says what became of it
        raise BadRequest(ALREADY_SENT) from None
    _tell(req, chat["id"], "chat.message.created", views.chat_message(message))
    return message


def _attachment_in(req, chat, attachment_id):
    """The unsent attachment ``attachment_id`` of this chat (400 otherwise)."""
    if attachment_id is None:
        return None
    attachment = req.ctx.store.get_attachment(attachment_id)
    if attachment is None or attachment["chat_id"] != chat["id"]:
        raise BadRequest("Field 'attachment_id' is not an attachment of this chat")
    if attachment.get("message_id") is not None:
        raise BadRequest(ALREADY_SENT)
    return attachment


ALREADY_SENT = "Field 'attachment_id' names an attachment already sent with a message"


def _tombstone_of(message, by, now):
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


def _tombstone(req, chat, message, by, rule=None):
    """Turn a message into a tombstone, once; its attachment (and, unshared, its bytes) goes with it.

    Decided on the message and ``by``'s membership as they are when written:
    of two deletes, the second gets 400. ``rule(member, message)`` adds a check.
    """
    now = _now(req)

    def decide(current, member):
        if current is None or current["chat_id"] != chat["id"]:
            raise NotFound(f"Message with ID {message['id']} not found in this chat")
        acting(chat["id"], chat, member)
        if rule is not None:
            rule(member, current)
        if current.get("deleted"):
            raise BadRequest("The message is already deleted")
        return _tombstone_of(current, by, now)

    message = req.ctx.store.change_chat_message(message["id"], by, decide)
    _retract(req, chat["id"], message)
    return message


def _retract(req, chat_id, message):
    """Announce a tombstone once the message's text is scrubbed from the event log, notifications and pushes."""
    hub = req.ctx.events
    hub.retract("chat.message.deleted", views.chat_message(message), hub.chat_audience(chat_id), chat_id=chat_id)


def detach_attachment(req, chat, me, attachment):
    """Take a sent ``attachment`` out of its message, deleting it; False if it was gone already.

    One write changes the message and deletes the attachment record: the
    message becomes a tombstone when nothing else would be left of it.
    """
    now, outcome = _now(req), []

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

    message = req.ctx.store.change_chat_message(attachment["message_id"], me["user_id"], decide)
    if outcome == ["orphan"]:
        return req.ctx.store.delete_attachment(attachment["id"])
    if outcome == ["chat.message.deleted"]:
        _retract(req, chat["id"], message)
    elif outcome:
        _tell(req, chat["id"], outcome[0], views.chat_message(message))
    return bool(outcome)


def _message_in(req, chat, message_id):
    message = req.ctx.store.get_chat_message(message_id)
    if message is None or message["chat_id"] != chat["id"]:
        raise NotFound(f"Message with ID {message_id} not found in this chat")
    return message


@in_chat()
def get_chat_messages(req, chat, me):
    """A page of a chat's history (tombstones included)."""
    store = req.ctx.store

    def anchor(message_id):
        message = store.get_chat_message(message_id)
        return message if message is not None and message["chat_id"] == chat["id"] else None

    return page_answer(req, lambda **kw: store.chat_history(chat["id"], **kw), anchor, views.chat_message)


@in_chat()
def post_chat_message(req, chat, me):
    """Send text, an attachment uploaded to this chat, or an encrypted envelope; maybe as a reply."""
    body = req.json
    envelope = check_envelope(req, body["encrypted"]) if body.get("encrypted") is not None else None
    attachment = _attachment_in(req, chat, text(body, "attachment_id", required=False, max_length=64))
    content = text(
        body,
        "content",
        required=envelope is None and attachment is None,
        max_length=req.ctx.settings.max_message_length,
    )
    if envelope is not None and content is not None:
        raise BadRequest("Give 'content' or 'encrypted', not both: the server must not see an encrypted message's text")
    reply_to_id = text(body, "reply_to_id", required=False, max_length=64)
    if reply_to_id is not None:
        replied = req.ctx.store.get_chat_message(reply_to_id)
        if replied is None or replied["chat_id"] != chat["id"]:
            raise BadRequest("Field 'reply_to_id' is not a message of this chat")
    message = _send(req, chat, me, content, reply_to_id, attachment=attachment, envelope=envelope)
    return success(views.chat_message(message), "Message created successfully", status=201)


@in_chat()
def patch_chat_message(req, chat, me, message_id):
    """Edit my own message; ``edited_at`` records when."""
    message = _message_in(req, chat, message_id)
    _editable(me, message)
    content = text(req.json, "content", max_length=req.ctx.settings.max_message_length)
    changes = {
        "content": content,
        "mentions": [
            {"user_id": uid, "username": req.ctx.store.get_user(uid)["username"]}
            for uid in _mentions(req, chat, content)
        ],
        "edited_at": _now(req),
    }

    def decide(current, member):
        if current is None:
            raise NotFound(f"Message with ID {message_id} not found in this chat")
        _editable(acting(chat["id"], chat, member), current)  # a delete may have come first
        return changes

    message = req.ctx.store.change_chat_message(message_id, me["user_id"], decide)
    _tell(req, chat["id"], "chat.message.edited", views.chat_message(message))
    return success(views.chat_message(message), "Message updated")


def _editable(me, message):
    if message["user_id"] != me["user_id"]:
        raise Forbidden("Only the author may edit a message")
    if message.get("deleted"):
        raise BadRequest("A deleted message cannot be edited")
    if message.get("encrypted"):
        raise BadRequest("An encrypted message cannot be edited as text; delete it and send another")


@in_chat()
def delete_chat_message(req, chat, me, message_id):
    """Delete a message (its author, or an admin or the owner), leaving a tombstone."""
    message = _message_in(req, chat, message_id)
    _tombstone(req, chat, message, me["user_id"], rule=check_message_deletion)
    return success(message=f"Message with ID {message_id} deleted successfully")


#: What each kind of receipt moves: reading a message also means it was delivered.
POINTERS = {"read": ("read_seq", "delivered_seq"), "delivered": ("delivered_seq",)}


def advance_pointer(ctx, chat_id, member, message, kind):
    """Move a member's ``kind`` pointer up to ``message`` (never back) and tell the chat.

    Decided on the membership as it is when written, so of two concurrent
    moves the higher one stays. Returns (chat, membership) afterwards: None
    for one that ended meanwhile, and then nothing is written.
    """
    user_id, fields, moved = member["user_id"], POINTERS[kind], []

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
        ctx.events.publish(
            f"message.{kind}",
            {"chat_id": chat_id, "user_id": user_id, "message_id": message["id"]},
            ctx.events.chat_audience(chat_id),
            chat_id=chat_id,
        )
    return chat, members[user_id]


def _advance(req, chat, me, kind):
    message = _message_in(req, chat, text(req.json, "message_id", max_length=64))
    acting(chat["id"], *advance_pointer(req.ctx, chat["id"], me, message, kind))
    return success({"chat_id": chat["id"], "unread_count": req.ctx.store.unread_count(chat["id"], me["user_id"])})


@in_chat()
def post_read(req, chat, me):
    """Mark the chat read up to a message (the pointer never moves back)."""
    return _advance(req, chat, me, "read")


@in_chat()
def post_delivered(req, chat, me):
    """Record that messages up to this one reached my device."""
    return _advance(req, chat, me, "delivered")


@in_chat()
def get_receipts(req, chat, me, message_id):
    """Who, among the other members, has received and read a message."""
    message = _message_in(req, chat, message_id)
    store = req.ctx.store
    receipts = []
    for record in store.members(chat["id"]):
        if record["user_id"] == message["user_id"]:
            continue
        user = store.get_user(record["user_id"])
        receipts.append(
            {
                "user_id": record["user_id"],
                "username": user["username"] if user else None,
                "delivered": record.get("delivered_seq", 0) >= message["seq"],
                "read": record.get("read_seq", 0) >= message["seq"],
            }
        )
    return success({"message_id": message_id, "receipts": receipts})
