"""E-mail verification and password reset with one-time codes.

A code is six digits, valid ``CODE_TTL`` seconds, good for ``MAX_ATTEMPTS``
guesses, and stored only as an HMAC (a copy of the data directory reveals no
code). Each guess, the right one too, is counted by the store before it is
compared, in one atomic step (``spend_code``), and a right code is used up by
a delete that only one caller wins: parallel guesses, in any number of
processes, get ``MAX_ATTEMPTS`` comparisons and one redemption between them.

New codes would give new guesses, so the day is capped too, per address and
per purpose (verification and reset each have their own): an address may ask
once per ``RESEND_AFTER`` seconds and ``CODES_PER_DAY`` times a day, and
``WRONG_GUESSES_PER_DAY`` wrong guesses a day end its guessing until the day
is over (429 with Retry-After). Every count is one atomic ``count_attempt``
in the store, so every process on one database shares it; a guess is counted
before it is compared and a right one is given back. Twenty guesses a day
against a million codes: one chance in 50,000 a day.

Nothing tells who has an account: asking for a code, and guessing one, do the
same work and give the same answer for every address. An address with no
account (or, for verification, none awaiting it) gets its counts, a store
write of a decoy code (kept under one of ``DECOY_SLOTS`` ids, so decoys never
pile up), and a guess against that decoy, which never matches; only the mail
is missing. A password reset ends every session of the account.
"""

import hashlib
import hmac
import re
import secrets
from typing import Any

from .auth import new_password
from .http import BadRequest, TooManyRequests, success, views
from .http.declare import Email, Text, endpoint, envelope, ref, returns

CODE_TTL = 15 * 60
MAX_ATTEMPTS = 5
RESEND_AFTER = 60
DAY = 24 * 60 * 60
CODES_PER_DAY = 10  # per address and purpose; a person who lost two mails still has eight to go
WRONG_GUESSES_PER_DAY = 20  # per address and purpose; far more typos than anyone makes
DECOY_SLOTS = 1024
BAD_CODE = "Invalid or expired code"
PURPOSES = {
    "verify": (
        "Your oxc verification code",
        "Your code to verify this e-mail address is {code}.\n"
        "It expires in 15 minutes. If you did not ask for it, ignore this message.",
    ),
    "reset": (
        "Your oxc password reset code",
        "Your code to reset your oxc password is {code}.\n"
        "It expires in 15 minutes. If you did not ask for it, ignore this message; "
        "your password stays as it is.",
    ),
}

TAKEN_NOTICE = (
    "Someone tried to register with your e-mail address",
    "Someone just tried to register a new oxc account with this e-mail address. It already "
    "belongs to your account, so no other account got it, and nothing about your account "
    "changed.\nIf it was you: log in instead, or reset your password if you forgot it.",
)


class Codes:
    """Issue and check one-time codes per (purpose, user), kept in the store as HMACs."""

    def __init__(self, store, secret, clock, mailer):
        self._store = store
        self._key = hashlib.sha256(b"oxc one-time codes\0" + secret.encode("utf-8")).digest()
        self._clock = clock
        self._mailer = mailer

    def _digest(self, purpose, user_id, code):
        return hmac.new(self._key, f"{purpose}:{user_id}:{code}".encode(), hashlib.sha256).hexdigest()

    def _counter(self, kind, purpose, address):
        # An HMAC, so that the store keeps no list of the addresses people asked about.
        return "code:" + self._digest(kind, purpose, address.casefold())

    def _record_id(self, purpose, user, address):
        if user is not None:
            return f"{purpose}:{user['id']}"
        slot = int(self._digest("decoy", purpose, address.casefold())[:8], 16) % DECOY_SLOTS
        return f"{purpose}:decoy-{slot}"

    def _count(self, kind, purpose, address, window, allowed, message):
        now = self._clock()
        count, ends = self._store.count_attempt(self._counter(kind, purpose, address), now, window)
        if count > allowed:
            raise TooManyRequests(message, ends - now)

    def throttle(self, purpose, address):
        """429 if ``address`` asked for a ``purpose`` code within RESEND_AFTER seconds, or too often today."""
        self._count(
            "ask", purpose, address, RESEND_AFTER, 1, "A code was sent to this address a moment ago; try again later"
        )
        self._count(
            "day",
            purpose,
            address,
            DAY,
            CODES_PER_DAY,
            "This address was sent as many codes today as a day allows; try again later",
        )

    def send(self, purpose, user, address):
        """Make a new code for ``user`` and mail it to ``address``; with ``user`` None, the same work but no mail."""
        code = f"{secrets.randbelow(10**6):06d}"
        owner = None if user is None else user["id"]
        self._store.put_code(
            {
                "id": self._record_id(purpose, user, address),
                "user_id": owner,
                "purpose": purpose,
                # A decoy keeps no address, only what makes it look like a code record.
                "email": address if user is not None else self._digest("nobody", purpose, address.casefold()),
                "code_hash": self._digest(purpose, owner, code),
                "attempts": 0,
                "expires_at": self._clock() + CODE_TTL,
            }
        )
        subject, body = PURPOSES[purpose]
        if user is not None:
            self._mailer.send(address, subject, body.format(code=code))

    def registration(self, user, owner, address):
        """After registering ``user`` with ``address``: mail them a code; or, if ``owner`` has it, tell the owner.

        Both do the same store work (a count, a code record); the owner hears of
        at most CODES_PER_DAY such attempts a day, so nobody can flood a mailbox.
        """
        kind = "registered" if owner is None else "notice"  # counted either way, for the same work
        count, _ = self._store.count_attempt(self._counter(kind, "verify", address), self._clock(), DAY)
        self.send("verify", user if owner is None else None, address)
        if owner is not None and count <= CODES_PER_DAY:
            self._mailer.send(owner["email"], *TAKEN_NOTICE)

    def check(self, purpose, user, address, code):
        """True (and the code is used up) when ``code`` is ``user``'s; every guess is counted first.

        With ``user`` None (no such account) the guess costs the same and is wrong.
        Beyond WRONG_GUESSES_PER_DAY wrong guesses at ``address`` today: TooManyRequests.
        """
        self._count(
            "guess",
            purpose,
            address,
            DAY,
            WRONG_GUESSES_PER_DAY,
            "Too many wrong codes for this address today; try again later",
        )
        record = self._store.spend_code(self._record_id(purpose, user, address), self._clock(), MAX_ATTEMPTS)
        if record is None:
            return False
        if user is None:  # a decoy: the same comparison, never a match
            hmac.compare_digest(record["code_hash"], self._digest(purpose, None, code))
            return False
        if record["email"].casefold() != address.casefold():
            self._store.delete_code(record["id"], record["code_hash"])
            return False
        if not hmac.compare_digest(record["code_hash"], self._digest(purpose, user["id"], code)):
            return False
        if not self._store.delete_code(record["id"], record["code_hash"]):
            return False
        self._store.take_back_attempt(self._counter("guess", purpose, address))  # it was not a wrong one
        return True


ADDRESS = Email("An e-mail address.", "user1@example.com", required=True)
CODE = Text(
    "The six-digit code from the e-mail.",
    "123456",
    required=True,
    max_length=6,
    pattern=re.compile(r"\A[0-9]{6}\Z"),
    pattern_message="Field '{name}' must be six digits",
    schema_pattern=r"^[0-9]{6}$",
)

#: What asking for a verification code and asking for a reset code share: one address in,
#: the same refusals (the answer never says whether the address has an account).
ASKS_FOR_A_CODE: dict[str, Any] = {
    "refusals": {
        400: "email is missing or not an e-mail address.",
        429: f"This address asked a moment ago, or {CODES_PER_DAY} times today; retry after Retry-After.",
    },
    "body": {"email": ADDRESS},
    "body_name": "EmailAddress",
    "body_example": {"email": "user1@example.com"},
    "writes": True,
}


def _awaiting_verification(store, address):
    user = store.find_user_by_email(address)
    return user if user is not None and not user.get("email_verified") else None


@endpoint(
    "accounts",
    "Send an e-mail verification code",
    "Mails a six-digit code to the address if it belongs to an account awaiting verification. The "
    "answer, and the work behind it, is the same for any address; each address may ask once a "
    f"minute and {CODES_PER_DAY} times a day.",
    answers={
        200: returns(
            envelope(message="If that address belongs to an account awaiting verification, a code is on its way"),
            "Asked.",
        )
    },
    **ASKS_FOR_A_CODE,
)
def post_verification_request(req, *, body):
    """Send a verification code to an address awaiting verification (the same answer and work for any address)."""
    address = body["email"]
    req.ctx.codes.throttle("verify", address)
    user = _awaiting_verification(req.ctx.store, address)
    req.ctx.codes.send("verify", user, address if user is None else user["email"])
    return success(message="If that address belongs to an account awaiting verification, a code is on its way")


@endpoint(
    "accounts",
    "Verify an e-mail address",
    "Checks the code mailed to the address (15 minutes, five guesses; "
    f"{WRONG_GUESSES_PER_DAY} wrong guesses a day per address) and marks it verified.",
    answers={200: returns(envelope(message="E-mail address verified"), "Verified.")},
    refusals={
        400: "A field is missing or malformed, or the code is wrong, used up or expired.",
        429: f"{WRONG_GUESSES_PER_DAY} wrong codes for this address today; retry after Retry-After.",
    },
    body={"email": ADDRESS, "code": CODE},
    body_name="VerificationCode",
    body_example={"email": "user1@example.com", "code": "123456"},
    writes=True,
)
def post_verification(req, *, body):
    """Verify an e-mail address with the code sent to it."""
    address, code = body["email"], body["code"]
    user = _awaiting_verification(req.ctx.store, address)
    if not req.ctx.codes.check("verify", user, address, code):
        raise BadRequest(BAD_CODE)
    # Only while the account still has the address the code went to.
    if req.ctx.store.update_user(user["id"], {"email_verified": True}, expected={"email": user["email"]}) is None:
        raise BadRequest(BAD_CODE)
    return success(message="E-mail address verified")


@endpoint(
    "accounts",
    "Send a password reset code",
    "Mails a six-digit code to the address if it belongs to an account. The answer, and the work "
    f"behind it, is the same for any address; each address may ask once a minute and {CODES_PER_DAY} "
    "times a day.",
    answers={200: returns(envelope(message="If that address belongs to an account, a code is on its way"), "Asked.")},
    **ASKS_FOR_A_CODE,
)
def post_password_reset_request(req, *, body):
    """Send a password reset code (the same answer and work for any address)."""
    address = body["email"]
    req.ctx.codes.throttle("reset", address)
    user = req.ctx.store.find_user_by_email(address)
    req.ctx.codes.send("reset", user, address if user is None else user["email"])
    return success(message="If that address belongs to an account, a code is on its way")


@endpoint(
    "accounts",
    "Reset a password with a code",
    "Sets a new password with the mailed code (15 minutes, five guesses; "
    f"{WRONG_GUESSES_PER_DAY} wrong guesses a day per address); every session of the account ends.",
    answers={
        200: returns(
            envelope(ref("SessionsEnded"), message="Password changed; log in with the new password"), "Changed."
        )
    },
    refusals={
        400: "A field is missing or invalid, or the code is wrong, used up or expired.",
        429: f"{WRONG_GUESSES_PER_DAY} wrong codes for this address today, or the server is busy "
        "hashing passwords; retry after Retry-After.",
    },
    body={"email": ADDRESS, "code": CODE, "new_password": new_password("The new password.")},
    body_name="PasswordReset",
    body_example={"email": "user1@example.com", "code": "123456", "new_password": "a new password"},
    writes=True,
)
def post_password_reset(req, *, body):
    """Set a new password with a reset code; every session of the account ends."""
    address, code, password = body["email"], body["code"], body["new_password"]
    ctx = req.ctx
    # Hashed before the code is spent: a server too busy to hash (429) must not use up a right code.
    password_hash = ctx.passwords.hash(password)
    user = ctx.store.find_user_by_email(address)
    if not ctx.codes.check("reset", user, address, code):
        raise BadRequest(BAD_CODE)
    # Reading the code proves the address is the user's, while it still is.
    changes = {"password_hash": password_hash, "email_verified": True}
    if ctx.store.update_user(user["id"], changes, expected={"email": user["email"]}) is None:
        raise BadRequest(BAD_CODE)
    ended = ctx.store.delete_user_sessions(user["id"])
    return success(views.sessions_ended.build(sessions_ended=ended), "Password changed; log in with the new password")
