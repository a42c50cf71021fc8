"""People: my profile and password, the user directory, public profiles."""

import re

from store import Conflict as StoreConflict

from .auth import check_new_password
from .http import BadRequest, Forbidden, NotFound, success, views
from .http.fields import email, text
from .http.fields import limit as read_limit

URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)


def my_profile(req, user):
    """My profile as I see it: e-mail, and the room my attachments take and may take."""
    quota = req.ctx.settings.attachment_quota_bytes
    storage = {"attachment_bytes": req.ctx.store.attachment_usage(user["id"]), "quota_bytes": quota or None}
    return dict(views.profile(user, private=True), storage=storage)


def get_me(req):
    """My profile, e-mail and attachment storage included."""
    return success(my_profile(req, req.user))


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
    # An address change stands on the password just checked; not on one changed meanwhile.
    expected = {"password_hash": req.user["password_hash"]} if "email" in changes else None
    try:
        user = req.ctx.store.update_user(req.user["id"], changes, expected=expected)
    except StoreConflict as exc:
        raise BadRequest(str(exc)) from None
    if user is None:
        raise Forbidden("Changing the e-mail address needs the current 'password'")
    if changes.get("email"):
        req.ctx.codes.send("verify", user, user["email"])
    return success(my_profile(req, user), "Profile updated")


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
    # Over the hash just checked only: of two changes racing from one current password, one wins.
    if (
        ctx.store.update_user(
            req.user["id"],
            {"password_hash": ctx.passwords.hash(new)},
            expected={"password_hash": req.user["password_hash"]},
        )
        is None
    ):
        raise Forbidden("The current password is not correct")
    ended = ctx.store.delete_user_sessions(req.user["id"], keep=req.claims.get("sid"))
    return success({"other_sessions_ended": ended}, "Password changed")


def get_users(req):
    """The directory: users whose username starts with ``q``, by username."""
    prefix = req.query.get("q", "")
    if len(prefix) > 32:
        raise BadRequest("Query parameter 'q' must be at most 32 characters")
    size = read_limit(req.query, default=20, maximum=100)
    users, more = req.ctx.store.users_by_prefix(prefix, limit=size, after=req.query.get("after"))
    return success(
        users=[views.profile(user) for user in users],
        paging={"limit": size, "after": users[-1]["username"] if more else None},
    )


def get_user(req, user_id):
    """A user's public profile, and whether they are online now."""
    user = req.ctx.store.get_user(user_id)
    if user is None:
        raise NotFound(f"User with ID {user_id} not found")
    return success(dict(views.profile(user), online=req.ctx.events.is_online(user_id)))
