"""Creating accounts and setting passwords: one implementation for the API and the command line.

``POST /auth/register`` and ``oxc admin create-user`` both call
:func:`create_account`; ``POST /users/me/password`` and ``oxc admin
reset-password`` both call :func:`set_password`. The fields a new account is
made of are declared here (:data:`NEW_ACCOUNT`), so the endpoint's declaration,
its OpenAPI schema and the command line check the same things with the same
0xC messages::

    values = read_fields(NEW_ACCOUNT, {"username": name, "password": secret, "email": None}, settings)
    user = create_account(ctx, **values)

``ctx`` is anything with ``settings``, ``store``, ``passwords``, ``clock`` and
``codes`` (None: no mail is sent, as from the command line).
"""

import re
import uuid
from collections.abc import Mapping
from typing import Any

from store import Conflict as StoreConflict

from ..http import BadRequest
from ..http.declare import Email, Field, Password, Text
from ..http.views import iso_time
from .passwords import MAX_PASSWORD_BYTES

__all__ = [
    "EMAIL_TAKEN",
    "MIN_PASSWORD_LENGTH",
    "NEW_ACCOUNT",
    "USERNAME",
    "check_new_password",
    "create_account",
    "new_password",
    "read_fields",
    "set_password",
]

USERNAME = re.compile(r"^[A-Za-z0-9_-]{3,32}$")
MIN_PASSWORD_LENGTH = 8
EMAIL_TAKEN = "Email already registered"


def new_password(description: str) -> Password:
    """A password acceptable for a new account or a password change."""
    return Password(
        f"{description} At least {MIN_PASSWORD_LENGTH} characters and at most {MAX_PASSWORD_BYTES} "
        "bytes in UTF-8 (bcrypt's limit; longer passwords are refused, never truncated). maxLength "
        "counts characters, so non-ASCII passwords reach the byte limit sooner.",
        "password123",
        required=True,
        min_length=MIN_PASSWORD_LENGTH,
        max_bytes=MAX_PASSWORD_BYTES,
    )


def check_new_password(body: Mapping[str, Any], name: str = "password") -> str:
    """A password acceptable for a new account or a password change (for callers without a declaration)."""
    return new_password("").read(body, name)


#: The fields of a new account, as ``POST /auth/register`` declares them.
NEW_ACCOUNT: dict[str, Field] = {
    "username": Text(
        "3 to 32 letters, digits, '_' or '-'; surrounding whitespace is trimmed. "
        "Unique, compared without regard to case.",
        "user1",
        required=True,
        max_length=32,
        pattern=USERNAME,
        pattern_message="Field 'username' must be 3 to 32 letters, digits, '_' or '-'",
        schema_extra={"minLength": 3},
    ),
    "password": new_password("The new account's password."),
    "email": Email(
        "An e-mail address, unique when given; null or absent for none (required with REQUIRE_VERIFIED_EMAIL=1).",
        "user1@example.com",
        required=lambda settings: settings.require_verified_email,
    ),
}


def read_fields(fields: Mapping[str, Field], values: Mapping[str, Any], settings: Any) -> dict[str, Any]:
    """``values`` checked field by field, as a declaration checks a request body (BadRequest otherwise)."""
    return {name: field.resolved(settings).read(values, name) for name, field in fields.items()}


def create_account(ctx: Any, username: str, password: str, email: str | None = None) -> dict[str, Any]:
    """Create the account ``username`` (values already read with NEW_ACCOUNT); the user as the registrant sees it.

    An address that is already someone's gets its owner a notice (when ``ctx.codes`` is set)
    and a BadRequest(EMAIL_TAKEN); with REQUIRE_VERIFIED_EMAIL the account is created without
    the address instead, so the answer does not tell whose address it is. BadRequest too when
    the username is taken.
    """
    settings, store, codes = ctx.settings, ctx.store, ctx.codes
    user = {
        "id": str(uuid.uuid4()),
        "username": username,
        "email": email,
        "password_hash": ctx.passwords.hash(password),
        "created_at": iso_time(ctx.clock()),
    }
    owner = store.find_user_by_email(email) if email else None
    if owner is None:
        try:
            store.create_user(user)
        except StoreConflict as exc:
            owner = store.find_user_by_email(email) if email else None
            if owner is None:  # the username is taken (usernames are public anyway)
                raise BadRequest(str(exc)) from None
    if owner is not None:
        # The address is someone else's: its owner hears of it. With verification required an account
        # is unusable until its address is verified, so the registrant gets the account they asked for,
        # without the address, and the very answer a new address gets; see README "Security".
        if codes is not None:
            codes.registration(None, owner, email)
        if not settings.require_verified_email:
            raise BadRequest(EMAIL_TAKEN)
        try:
            store.create_user(dict(user, email=None))
        except StoreConflict as exc:
            raise BadRequest(str(exc)) from None
    elif email and codes is not None:
        codes.registration(user, None, email)
    return user


def set_password(
    ctx: Any,
    user: Mapping[str, Any],
    password: str,
    *,
    expected_hash: str | None = None,
    keep_session: str | None = None,
) -> int | None:
    """Give ``user`` the (already checked) ``password`` and end their sessions but ``keep_session``.

    With ``expected_hash`` the change is made only over that hash (of two changes racing
    from one current password, one wins); None is returned when it no longer holds.
    Otherwise the number of sessions ended.
    """
    expected = {"password_hash": expected_hash} if expected_hash is not None else None
    if ctx.store.update_user(user["id"], {"password_hash": ctx.passwords.hash(password)}, expected=expected) is None:
        return None
    ended: int = ctx.store.delete_user_sessions(user["id"], keep=keep_session)
    return ended
