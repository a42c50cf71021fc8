"""Conversations: direct chats (two people) and groups (owner, admins, members).

A direct chat is found again rather than duplicated: ``POST /chats/direct``
creates it on first contact (optionally with the first message) and answers
the same chat afterwards. Everything inside a chat goes through
``roles.in_chat``; a deleted message stays in history as a tombstone so
replies and cursors keep pointing at something, and its text leaves every
copy (events, notification previews, pushes: ``Hub.retract``). What sending,
editing and deleting a message mean is ``services.messaging``; this module
reads and checks the request and answers.

Every change is decided by a rule of ``roles`` on the records as the store
holds them when it writes (``Store.change_chat``, ``change_chat_message``, and
``add_chat_message``, which also claims the message's attachment), never on
what the handler read earlier: with several processes on one database, that
is what keeps one owner per group and each attachment in one message.
"""

import re
import uuid

from .http import BadRequest, success, views
from .http.declare import (
    CHAT_PATH,
    LIMIT,
    USER_PATH,
    AnyGiven,
    Flag,
    Id,
    Link,
    Strings,
    Text,
    array,
    endpoint,
    envelope,
    page,
    query,
    ref,
    refuses,
    returns,
)
from .messages import message_text
from .services import messaging
from .services.roles import (
    ROLES,
    adding,
    changing_role,
    deleting,
    in_chat,
    removing,
    renaming,
    updating_self,
)

MAX_INITIAL_MEMBERS = 100
CHAT_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
NO_USER = "the user named is not found"
CHAT_BEFORE = query(
    "ChatBefore",
    "before",
    "The chats after this one in the list (a paging.before value); it must be one of my chats.",
    {"type": "string", "minLength": 1},
)
#: The fields that name another user, in direct chats and new members.
SOMEONE = {
    "user_id": Id("The user's id; wins over username when both are given.", "6fa459ea-ee8a-3ca4-894e-db77e160355e"),
    "username": Text("The user's name.", max_length=32),
}
NAMES_SOMEONE = AnyGiven(("user_id", "username"), "Missing required field: user_id or username")
#: A chat an answer shows feeds every operation on /chats/{chat_id}/...
CHAT_LINKS = (Link("chat_id"),)


def _now(req):
    return views.iso_time(req.ctx.clock())


def _find_user(req, body):
    """The user a checked body names by ``user_id`` or ``username`` (400 if unknown)."""
    user_id, username = body["user_id"], body["username"]
    store = req.ctx.store
    user = store.get_user(user_id) if user_id is not None else store.find_user(username)
    if user is None:
        raise BadRequest(f"User {user_id or username} not found")
    return user


def _member_record(user_id, role, now):
    return {"user_id": user_id, "role": role, "joined_at": now, "muted": False, "read_seq": 0, "delivered_seq": 0}


def _summary(req, chat, me):
    """A chat as its member sees it in a list: last message, unread count, role."""
    store = req.ctx.store
    last = store.chat_history(chat["id"], limit=1).items
    members = store.members(chat["id"])
    peer = None
    if chat["type"] == "direct":
        peer_id = next((uid for uid in chat["pair"] if uid != me["user_id"]), me["user_id"])
        user = store.get_user(peer_id)
        peer = {"id": peer_id, "username": user["username"] if user else None}
    unread = store.unread_count(chat["id"], me["user_id"])
    return views.summary(chat, len(members), me, last[0] if last else None, unread, peer)


def _details(req, chat, me, message=None):
    store = req.ctx.store
    members = [views.member(m, store.get_user(m["user_id"])) for m in store.members(chat["id"])]
    return views.details(_summary(req, chat, me), members, message)


# -- chats ------------------------------------------------------------------


@endpoint(
    "chats",
    "List my chats",
    "My chats, most recent activity first, each with its last message, my unread count and role.",
    answers={
        200: returns(page("chats", "Chat", "ChatPaging"), "One page of chats."),
        400: refuses("'limit' is out of range, or 'before' is not one of my chats."),
    },
    parameters=(LIMIT, CHAT_BEFORE),
)
def get_chats(req):
    """My chats, newest activity first, each with last message, unread count, role."""
    store, user_id = req.ctx.store, req.user["id"]
    size = LIMIT.read(req.query)
    before = req.query.get("before")
    if before is not None and store.get_member(before, user_id) is None:
        raise BadRequest("Query parameter 'before' is not one of your chats")
    chats, more = store.user_chats(user_id, limit=size, before=before)
    shown = [_summary(req, chat, store.get_member(chat["id"], user_id)) for chat in chats]
    return success(chats=shown, paging={"limit": size, "before": shown[-1]["id"] if more else None})


@endpoint(
    "chats",
    "Create a group",
    "Creates a group chat; the creator becomes its owner and the users named become members.",
    answers={
        201: returns(envelope(ref("ChatDetails"), message="Chat created"), "The group was created."),
        400: refuses("A field is missing or invalid, or a member named is not a user."),
    },
    body={
        "name": Text("The group's name, 1 to 100 characters once trimmed.", "Book club", required=True, max_length=100),
        "description": Text(
            "What the group is about, at most 1000 characters.", "Monthly reads", min_length=0, max_length=1000
        ),
        "members": Strings(
            "Ids or usernames of existing users to add as members.",
            max_items=MAX_INITIAL_MEMBERS,
            message=f"Field 'members' must be a list of at most {MAX_INITIAL_MEMBERS} user ids or usernames",
        ),
    },
    body_name="NewGroup",
    links={201: CHAT_LINKS},
    body_example={"name": "Book club", "description": "Monthly reads"},
    writes=True,
)
def post_group_chat(req, *, body):
    """Create a group; the creator becomes its owner."""
    name, description, invited = body["name"], body["description"], body["members"]
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
    messaging.tell(req.ctx, chat["id"], "chat.created", views.chat(chat, len(members)))
    return success(shown, "Chat created", status=201)


@endpoint(
    "chats",
    "Open a direct chat",
    "Opens the direct chat with a user, or finds the one that exists; with content, also sends the first message.",
    answers={
        200: returns(envelope(ref("ChatDetails"), message="Chat found"), "The chat already existed."),
        201: returns(envelope(ref("ChatDetails"), message="Chat created"), "The chat was created."),
        400: refuses(
            f"Neither user_id nor username is given, {NO_USER}, it is the caller, or content is blank or too long."
        ),
    },
    body={**SOMEONE, "content": message_text("A first message to send", required=False)},
    constraints=(NAMES_SOMEONE,),
    body_name="DirectChat",
    links={200: CHAT_LINKS, 201: CHAT_LINKS},
    body_example={"username": "bob", "content": "Hi Bob!"},
    writes=True,
)
def post_direct_chat(req, *, body):
    """Open (or find again) the direct chat with a user; optionally send the first message."""
    peer = _find_user(req, body)
    if peer["id"] == req.user["id"]:
        raise BadRequest("A direct chat needs another user")
    content = body["content"]
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
        messaging.tell(req.ctx, chat["id"], "chat.created", views.chat(chat, 2))
    message = messaging.send(req.ctx, chat, me, req.user["username"], content) if content is not None else None
    data = _details(req, chat, store.get_member(chat["id"], req.user["id"]), message)
    return success(data, "Chat created" if created else "Chat found", status=201 if created else 200)


@in_chat()
@endpoint(
    "chats",
    "Get a chat",
    "A chat's details and its members.",
    answers={200: returns(envelope(ref("ChatDetails")), "The chat.")},
    parameters=(CHAT_PATH,),
)
def get_chat(req, chat, me):
    """A chat's details and members."""
    return success(_details(req, chat, me))


@in_chat("admin", groups_only="be renamed")
@endpoint(
    "chats",
    "Change a group",
    "Renames a group or changes its description.",
    answers={
        200: returns(envelope(ref("ChatDetails"), message="Chat updated"), "The group was changed."),
        400: refuses("Neither name nor description is given, or one is invalid."),
    },
    parameters=(CHAT_PATH,),
    body={
        "name": Text(
            "A new name, 1 to 100 characters once trimmed.", "Book club", required=True, omittable=True, max_length=100
        ),
        "description": Text(
            "A new description, at most 1000 characters; null to remove it.",
            "Monthly reads",
            min_length=0,
            max_length=1000,
        ),
    },
    constraints=(AnyGiven(("name", "description"), "Nothing to change: give 'name' or 'description'", True),),
    body_name="ChatChanges",
    body_example={"name": "Book club"},
    writes=True,
    groups_only="be renamed",
)
def patch_chat(req, chat, me, *, body):
    """Rename or re-describe a group."""
    changes = {name: body[name] for name in ("name", "description") if name in req.json}
    chat, members = req.ctx.store.change_chat(chat["id"], [me["user_id"]], renaming(chat["id"], me["user_id"], changes))
    messaging.tell(req.ctx, chat["id"], "chat.updated", views.chat(chat, len(req.ctx.store.members(chat["id"]))))
    return success(_details(req, chat, members[me["user_id"]]), "Chat updated")


@in_chat("owner", groups_only="be deleted")
@endpoint(
    "chats",
    "Delete a group",
    "Deletes a group with all its messages.",
    answers={200: returns(envelope(message=f"Chat with ID {CHAT_ID} deleted successfully"), "The group is gone.")},
    parameters=(CHAT_PATH,),
    writes=True,
    groups_only="be deleted",
)
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
@endpoint(
    "chats",
    "List a chat's members",
    "Everyone in the chat, with their roles.",
    answers={200: returns(envelope(array(ref("Member"))), "The members.")},
    parameters=(CHAT_PATH,),
)
def get_members(req, chat, me):
    """Everyone in a chat, with their roles."""
    store = req.ctx.store
    return success([views.member(m, store.get_user(m["user_id"])) for m in store.members(chat["id"])])


@in_chat("admin", groups_only="gain members")
@endpoint(
    "chats",
    "Add a member",
    "Adds a user to a group as a member, or as an admin when the owner asks.",
    answers={
        201: returns(envelope(ref("Member"), message="Member added"), "The user is now a member."),
        400: refuses(
            f"Neither user_id nor username is given, {NO_USER}, the role is not member or "
            "admin, or the user is a member already."
        ),
        403: refuses("An admin asked to add an admin."),
    },
    parameters=(CHAT_PATH,),
    body={
        **SOMEONE,
        "role": Text(
            "The new member's role (default member); only the owner may add admins.",
            "member",
            max_length=10,
            pattern=re.compile(r"\A(?:member|admin)\Z"),
            pattern_message="Field 'role' must be 'member' or 'admin'",
            schema_extra={"enum": ["member", "admin", None]},
        ),
    },
    constraints=(NAMES_SOMEONE,),
    body_name="NewMember",
    links={201: (Link("user_id", "/data/user_id", to=("patch_member", "delete_member")),)},
    body_example={"username": "bob"},
    writes=True,
    groups_only="gain members",
)
def post_member(req, chat, me, *, body):
    """Add a user to a group (as a member, or as an admin when the owner says so)."""
    user = _find_user(req, body)
    role = body["role"] or "member"
    record = _member_record(user["id"], role, _now(req))
    _, members = req.ctx.store.change_chat(
        chat["id"], [me["user_id"], user["id"]], adding(chat["id"], me["user_id"], record, user["username"])
    )
    record = members[user["id"]]
    messaging.tell(
        req.ctx, chat["id"], "member.added", dict(views.member(record, user), chat_id=chat["id"], by=me["user_id"])
    )
    return success(views.member(record, user), "Member added", status=201)


def _target(req, chat, user_id):
    """400 unless ``user_id`` is a member when the request starts (409 if they leave while it runs)."""
    if req.ctx.store.get_member(chat["id"], user_id) is None:
        raise BadRequest(f"User {user_id} is not a member of this chat")


@in_chat(groups_only="lose members")
@endpoint(
    "chats",
    "Remove a member or leave",
    "Removes a member (admins and owner, of lower roles only), or leaves when the user is the "
    "caller. An owner may leave only as the last member; the group is then deleted.",
    answers={
        200: returns(envelope(message="Member removed"), "The member is gone."),
        400: refuses("The user is not a member, or the owner tries to leave others behind."),
        403: refuses("The caller may not remove that member."),
        409: refuses("The member named left the chat while the request ran."),
    },
    parameters=(CHAT_PATH, USER_PATH),
    writes=True,
    groups_only="lose members",
)
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
    messaging.tell(
        req.ctx,
        chat["id"],
        "member.removed",
        {"chat_id": chat["id"], "user_id": user_id, "by": me["user_id"]},
        audience,
    )
    return success(message="Member removed" if user_id != me["user_id"] else "You left the chat")


@in_chat("owner", groups_only="have roles")
@endpoint(
    "chats",
    "Change a member's role",
    "Gives a member another role; giving 'owner' transfers ownership and makes the old owner an admin.",
    answers={
        200: returns(envelope(ref("Member"), message="Role changed"), "The role was changed."),
        400: refuses("The user is not a member, the role is invalid, or the owner named themselves."),
        409: refuses("The member named left the chat while the request ran."),
    },
    parameters=(CHAT_PATH, USER_PATH),
    body={
        "role": Text(
            "The member's new role; 'owner' transfers ownership (the old owner becomes an admin).",
            ROLES[0],
            required=True,
            max_length=10,
            schema_extra={"enum": list(ROLES)},
        )
    },
    body_name="RoleChange",
    body_example={"role": "admin"},
    writes=True,
    groups_only="have roles",
)
def patch_member(req, chat, me, user_id, *, body):
    """Change a member's role; making someone owner transfers ownership."""
    _target(req, chat, user_id)
    role = body["role"]
    _, members = req.ctx.store.change_chat(
        chat["id"], [me["user_id"], user_id], changing_role(chat["id"], me["user_id"], user_id, role)
    )
    changed = [members[user_id]] + ([members[me["user_id"]]] if role == "owner" else [])
    for record in changed:
        messaging.tell(
            req.ctx,
            chat["id"],
            "member.role_changed",
            {"chat_id": chat["id"], "user_id": record["user_id"], "role": record["role"], "by": me["user_id"]},
        )
    return success(views.member(changed[0], req.ctx.store.get_user(user_id)), "Role changed")


@in_chat()
@endpoint(
    "chats",
    "Mute or unmute a chat",
    "Mutes or unmutes the chat for the caller only.",
    answers={200: returns(envelope(ref("Mute")), "The new setting."), 400: refuses("muted is not true or false.")},
    parameters=(CHAT_PATH,),
    body={"muted": Flag("True to mute the chat for myself, false to unmute.", True, required=True)},
    body_name="MuteChange",
    body_example={"muted": True},
    writes=True,
)
def put_mute(req, chat, me, *, body):
    """Mute or unmute a chat for myself."""
    muted = body["muted"]
    req.ctx.store.change_chat(
        chat["id"], [me["user_id"]], updating_self(chat["id"], me["user_id"], lambda mine: dict(mine, muted=muted))
    )
    return success(views.mute.build(chat_id=chat["id"], muted=muted))


# -- messages in a chat -------------------------------------------------------
