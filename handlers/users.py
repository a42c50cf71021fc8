"""People: my profile and password, the user directory, public profiles."""

import re

from store import Conflict as StoreConflict

from . import views
from .auth import check_new_password
from .fields import email, text
from .fields import limit as read_limit
from .http import BadRequest, Forbidden, NotFound, success

URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)


def get_me(req):
    """My profile, e-mail included."""
    return success(views.profile(req.user, private=True))


def patch_me(req):
    """Change my full name, bio, avatar URL or e-mail (the last needs my password and re-verification)."""
    body = req.json
    changes = {}
    for name, limit in (("full_name", 100), ("bio", 500)):
        if name in body:
            changes[name] = text(body, name, required=False, min_length=0, max_length=limit) or None
    if "avatar_url" in body:
        url = text(body, "avatar_url", required=False, min_length=0, max_length=500) or None
        if url is not None and not URL.match(url):
            raise BadRequest("Field 'avatar_url' must be an http(s) URL")
        changes["avatar_url"] = url
    if "email" in body:
        address = email(body)
        password = body.get("password")
        if not isinstance(password, str) or not req.ctx.passwords.verify(password, req.user["password_hash"]):
            raise Forbidden("Changing the e-mail address needs the current 'password'")
        changes["email"] = address
        changes["email_verified"] = False
    if not changes:
        raise BadRequest("Nothing to change: give full_name, bio, avatar_url or email")
    try:
        user = req.ctx.store.update_user(req.user["id"], changes)
    except StoreConflict as exc:
        raise BadRequest(str(exc)) from None
    if changes.get("email"):
        req.ctx.codes.send("verify", user, user["email"])
    return success(views.profile(user, private=True), "Profile updated")


def post_password(req):
    """Change my password; every other session of mine ends."""
    body = req.json
    current = body.get("current_password")
    if not isinstance(current, str) or not current:
        raise BadRequest("Missing required field: current_password")
    new = check_new_password(body, "new_password")
    ctx = req.ctx
    if not ctx.passwords.verify(current, req.user["password_hash"]):
        raise Forbidden("The current password is not correct")
    ctx.store.update_user(req.user["id"], {"password_hash": ctx.passwords.hash(new)})
    ended = ctx.store.delete_user_sessions(req.user["id"], keep=req.claims.get("sid"))
    return success({"other_sessions_ended": ended}, "Password changed")


def get_users(req):
    """The directory: users whose username starts with ``q``, by username."""
    prefix = req.query.get("q", "")
    if len(prefix) > 32:
        raise BadRequest("Query parameter 'q' must be at most 32 characters")
    size = read_limit(req.query, default=20, maximum=100)
    users, more = req.ctx.store.users_by_prefix(prefix, limit=size, after=req.query.get("after"))
    return success(users=[views.profile(user) for user in users],
                   paging={"limit": size, "after": users[-1]["username"] if more else None})


def get_user(req, user_id):
    """A user's public profile, and whether they are online now."""
    user = req.ctx.store.get_user(user_id)
    if user is None:
        raise NotFound(f"User with ID {user_id} not found")
    return success(dict(views.profile(user), online=req.ctx.events.is_online(user_id)))
