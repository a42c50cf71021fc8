"""Who may do what in a chat: the one place where roles are enforced.

Every chat handler is wrapped in ``in_chat(role)``, which turns the URL's
``chat_id`` into the chat and the caller's membership, answering 404 for an
unknown chat, 403 for a non-member (who learns nothing more) and 403 for a
member below ``role``. The finer rules about acting on another member live
here too, so no handler re-implements them.

Roles rank owner > admin > member. A chat always has exactly one owner;
ownership moves only by transfer.
"""

import functools

from .http import BadRequest, Forbidden, NotFound

RANK = {"member": 0, "admin": 1, "owner": 2}
ROLES = tuple(RANK)


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
            if RANK[me["role"]] < RANK[role]:
                raise Forbidden(f"Only the chat's {'owner' if role == 'owner' else 'admins and owner'} may do this")
            return handler(req, chat, me, **params)
        guarded.required_role = role
        return guarded
    return decorate


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
