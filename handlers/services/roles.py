"""Who may do what in a chat: the one place where roles are enforced.

Every chat handler is wrapped in ``in_chat(role)``, which turns the URL's
``chat_id`` into the chat and the caller's membership, answering 404 for an
unknown chat, 403 for a non-member (who learns nothing more) and 403 for a
member below ``role``. That check is read at the start of the request; every
change to a chat is decided again, on the records as they are when it is
written, by a rule below that the store runs inside one atomic operation
(``Store.change_chat``, ``Store.change_chat_message``). So two requests never
both act on what the other is about to change: a caller demoted meanwhile
gets 403, one who is no longer a member 409, and a member who left while a
request about them ran 409.

Roles rank owner > admin > member. A chat always has exactly one owner;
ownership moves only by transfer, which promotes and demotes in one write.
"""

import functools

from store import ChatChange

from ..http import BadRequest, Conflict, Forbidden, NotFound

RANK = {"member": 0, "admin": 1, "owner": 2}
ROLES = tuple(RANK)


def _check_rank(me, role):
    if RANK[me["role"]] < RANK[role]:
        raise Forbidden(f"Only the chat's {'owner' if role == 'owner' else 'admins and owner'} may do this")


def in_chat(role="member", groups_only=None):
    """Decorate a handler ``f(req, chat, me, **params)`` to need ``role`` in the chat.

    ``groups_only`` names what direct chats cannot do ("gain members"): asked of
    a direct chat, the answer is 400 whatever the caller's role.
    """

    def decorate(handler):
        @functools.wraps(handler)
        def guarded(req, chat_id, **params):
            chat = req.ctx.store.get_chat(chat_id)
            if chat is None:
                raise NotFound(f"Chat with ID {chat_id} not found")
            me = req.ctx.store.get_member(chat_id, req.user["id"])
            if me is None:
                raise Forbidden("You are not a member of this chat")
            if groups_only and chat["type"] != "group":
                raise BadRequest(f"Direct chats cannot {groups_only}")
            _check_rank(me, role)
            return handler(req, chat, me, **params)

        guarded.required_role = role
        return guarded

    return decorate


# -- rules on fresh records (run inside the store's atomic operations) -----------


def acting(chat_id, chat, me, role="member"):
    """The caller's membership ``me`` as it is now, if it still allows ``role``: 404, 409 or 403 otherwise."""
    if chat is None:
        raise NotFound(f"Chat with ID {chat_id} not found")
    if me is None:
        raise Conflict("You are no longer a member of this chat")
    _check_rank(me, role)
    return me


def _still_member(target, user_id):
    if target is None:
        raise Conflict(f"User {user_id} is no longer a member of this chat")
    return target


def check_removal(me, target):
    """May ``me`` remove the member ``target``? Members may always leave."""
    if me["user_id"] == target["user_id"]:
        return
    if RANK[me["role"]] < RANK["admin"]:
        raise Forbidden("Only the chat's admins and owner may remove other members")
    if RANK[target["role"]] >= RANK[me["role"]]:
        raise Forbidden(f"An {me['role']} cannot remove the chat's {target['role']}")


def check_role_change(me, target, role):
    """May ``me`` give ``target`` the role ``role``? Only the owner changes roles."""
    if role not in RANK:
        raise BadRequest(f"Field 'role' must be one of: {', '.join(ROLES)}")
    if me["role"] != "owner":
        raise Forbidden("Only the chat's owner may change roles")
    if target["user_id"] == me["user_id"]:
        raise BadRequest("The owner keeps their role until they transfer ownership to another member")


def may_moderate(me):
    """True when ``me`` may delete other members' messages."""
    return RANK[me["role"]] >= RANK["admin"]


def check_message_deletion(me, message):
    """May ``me`` delete ``message``? Its author may, and the chat's admins and owner."""
    if message["user_id"] != me["user_id"] and not may_moderate(me):
        raise Forbidden("Only the author or the chat's admins and owner may delete a message")


def renaming(chat_id, caller_id, changes):
    """The decision (for ``Store.change_chat``) to apply ``changes`` to a group: admins and owner."""

    def decide(chat, members, count):
        acting(chat_id, chat, members[caller_id], "admin")
        return ChatChange(chat=changes)

    return decide


def deleting(chat_id, caller_id):
    """The decision to delete a group with everything in it: the owner only."""

    def decide(chat, members, count):
        acting(chat_id, chat, members[caller_id], "owner")
        return ChatChange(delete=True)

    return decide


def adding(chat_id, caller_id, record, name):
    """The decision to add the member ``record`` (named ``name``): admins add members, the owner admins too."""

    def decide(chat, members, count):
        me = acting(chat_id, chat, members[caller_id], "admin")
        if record["role"] == "admin" and me["role"] != "owner":
            raise Forbidden("Only the chat's owner may add admins")
        if members[record["user_id"]] is not None:
            raise BadRequest(f"User {name} is already a member of this chat")
        return ChatChange(members={record["user_id"]: record})

    return decide


def removing(chat_id, caller_id, user_id):
    """The decision to remove ``user_id`` (or, when it is the caller, to leave).

    The owner leaves only as the last member, and the group goes with them.
    """

    def decide(chat, members, count):
        me = acting(chat_id, chat, members[caller_id])
        target = _still_member(members[user_id], user_id)
        check_removal(me, target)
        if target["role"] == "owner" and count > 1:
            raise BadRequest("The owner must transfer ownership before leaving")
        return ChatChange(members={user_id: None})

    return decide


def changing_role(chat_id, caller_id, user_id, role):
    """The decision to give ``user_id`` the role ``role``; 'owner' transfers ownership (the owner becomes an admin)."""

    def decide(chat, members, count):
        me = acting(chat_id, chat, members[caller_id], "owner")
        target = _still_member(members[user_id], user_id)
        check_role_change(me, target, role)
        updates = {user_id: dict(target, role=role)}
        if role == "owner":
            updates[caller_id] = dict(me, role="admin")
        return ChatChange(members=updates)

    return decide


def updating_self(chat_id, caller_id, update):
    """The decision to change the caller's own membership: ``update(record)`` gives the new one (None: none)."""

    def decide(chat, members, count):
        record = update(acting(chat_id, chat, members[caller_id]))
        return None if record is None else ChatChange(members={caller_id: record})

    return decide
