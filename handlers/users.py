"""People: my profile and password, the user directory, public profiles."""

from store import Conflict as StoreConflict

from .http import BadRequest, Forbidden, NotFound, success, views
from .http.declare import (
    SMALL_LIMIT,
    USER_PATH,
    AnyGiven,
    Email,
    Link,
    Password,
    Raw,
    Text,
    Url,
    endpoint,
    envelope,
    integer,
    obj,
    page,
    query,
    ref,
    returns,
)
from .services import accounts
from .services.accounts import new_password

MAX_PREFIX = 32
USERNAME_PREFIX = query(
    "UsernamePrefix",
    "q",
    "Only users whose name starts with this (case does not matter).",
    {"type": "string", "maxLength": MAX_PREFIX},
)
USERNAME_AFTER = query(
    "UsernameAfter", "after", "Users whose name sorts after this one (a paging.after value).", {"type": "string"}
)


def my_profile(req, user):
    """My profile as I see it: e-mail, and the room my attachments take and may take."""
    quota = req.ctx.settings.attachment_quota_bytes
    return views.my_profile(user, req.ctx.store.attachment_usage(user["id"]), quota or None)


@endpoint(
    "users",
    "My profile",
    "The caller's own profile, e-mail address and attachment storage (bytes used, quota) included.",
    answers={200: returns(envelope(ref("MyProfile")), "My profile.")},
    links={200: (Link("user_id"),)},
)
def get_me(req):
    """My profile, e-mail and attachment storage included."""
    return success(my_profile(req, req.user))


@endpoint(
    "users",
    "Change my profile",
    "Changes my full name, bio, avatar URL or e-mail address; the e-mail needs my password.",
    answers={200: returns(envelope(ref("MyProfile"), message="Profile updated"), "The changed profile.")},
    refusals={
        400: "Nothing to change, a field is invalid, or the e-mail address is taken.",
        403: "The e-mail address changes but 'password' is missing or wrong.",
        429: "The server is busy checking passwords; retry after Retry-After.",
    },
    body={
        "full_name": Text(
            "At most 100 characters; empty or null to remove it.", "Ada Lovelace", min_length=0, max_length=100
        ),
        "bio": Text(
            "At most 500 characters; empty or null to remove it.",
            "Writes the first programs.",
            min_length=0,
            max_length=500,
        ),
        "avatar_url": Url("An http(s) URL of at most 500 characters; empty or null to remove it."),
        "email": Email("A new e-mail address (null to remove it); needs 'password'."),
        # Checked against the account, not as a field: anything but the right password is 403.
        "password": Raw("My current password; needed to change the e-mail address.", shape={"type": "string"}),
    },
    constraints=(
        AnyGiven(
            ("full_name", "bio", "avatar_url", "email"),
            "Nothing to change: give full_name, bio, avatar_url or email",
            present_only=True,
        ),
    ),
    body_name="ProfileChanges",
    body_example={"full_name": "Ada Lovelace"},
    writes=True,
)
def patch_me(req, *, body):
    """Change my full name, bio, avatar URL or e-mail (the last needs my password and re-verification)."""
    raw = req.json
    changes = {name: body[name] or None for name in ("full_name", "bio", "avatar_url") if name in raw}
    if "email" in raw:
        password = body["password"]
        if not isinstance(password, str) or not req.ctx.passwords.verify(password, req.user["password_hash"]):
            raise Forbidden("Changing the e-mail address needs the current 'password'")
        changes["email"] = body["email"]
        changes["email_verified"] = False
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


@endpoint(
    "users",
    "Change my password",
    "Changes my password; every other session of mine ends.",
    answers={
        200: returns(
            envelope(
                obj({"other_sessions_ended": integer("How many sessions ended.", 1, minimum=0)}),
                message="Password changed",
            ),
            "The password was changed.",
        )
    },
    refusals={
        400: "current_password is missing, or the new password is too short or too long.",
        403: "The current password is not correct.",
        429: "The server is busy checking passwords; retry after Retry-After.",
    },
    body={
        "current_password": Password(
            "My current password.",
            "password123",
            required=True,
            # Anything but a non-empty string reads as missing, as 0xC answered.
            message="Missing required field: {name}",
        ),
        "new_password": new_password("The new password."),
    },
    body_name="PasswordChange",
    body_example={"current_password": "password123", "new_password": "a longer passphrase"},
    writes=True,
)
def post_password(req, *, body):
    """Change my password; every other session of mine ends."""
    current, new = body["current_password"], body["new_password"]
    ctx = req.ctx
    if not ctx.passwords.verify(current, req.user["password_hash"]):
        raise Forbidden("The current password is not correct")
    # Over the hash just checked only: of two changes racing from one current password, one wins.
    ended = accounts.set_password(
        ctx, req.user, new, expected_hash=req.user["password_hash"], keep_session=req.claims.get("sid")
    )
    if ended is None:
        raise Forbidden("The current password is not correct")
    return success({"other_sessions_ended": ended}, "Password changed")


@endpoint(
    "users",
    "Find users",
    "The user directory: users whose name starts with q, by name.",
    answers={200: returns(page("users", "Profile", "DirectoryPaging"), "One page of users.")},
    refusals={400: "q is over 32 characters or 'limit' is out of range."},
    parameters=(USERNAME_PREFIX, SMALL_LIMIT, USERNAME_AFTER),
    links={200: (Link("user_id", "/users/0/id"),)},
)
def get_users(req):
    """The directory: users whose username starts with ``q``, by username."""
    prefix = USERNAME_PREFIX.read(req.query) or ""
    size = SMALL_LIMIT.read(req.query)
    users, more = req.ctx.store.users_by_prefix(prefix, limit=size, after=req.query.get("after"))
    return success(
        users=[views.public_profile(user) for user in users],
        paging={"limit": size, "after": users[-1]["username"] if more else None},
    )


@endpoint(
    "users",
    "A user's profile",
    "Anyone's public profile.",
    answers={200: returns(envelope(ref("Profile")), "The profile.")},
    refusals={404: "No such user."},
    parameters=(USER_PATH,),
)
def get_user(req, user_id):
    """A user's public profile, and whether they are online now."""
    user = req.ctx.store.get_user(user_id)
    if user is None:
        raise NotFound(f"User with ID {user_id} not found")
    return success(views.public_profile(user, online=req.ctx.events.is_online(user_id)))
