"""E-mail verification and password reset with one-time codes.

A code is six digits, valid ``CODE_TTL`` seconds, good for ``MAX_ATTEMPTS``
guesses, and stored only as an HMAC (a copy of the data directory reveals no
code). Each guess, the right one too, is counted by the store before it is
compared, in one atomic step (``spend_code``), and a right code is used up by
a delete that only one caller wins: parallel guesses, in any number of
processes, get ``MAX_ATTEMPTS`` comparisons and one redemption between them.
Asking for a code answers the same whether or not the address belongs to
anyone, and each address may ask once per ``RESEND_AFTER`` seconds, existing
or not (counted in the store, so across processes too), so neither the answer
nor its timing tells who has an account. A password reset ends every session
of the account.
"""

import hashlib
import hmac
import secrets

from .auth import check_new_password
from .fields import email, text
from .http import BadRequest, TooManyRequests, success

CODE_TTL = 15 * 60
MAX_ATTEMPTS = 5
RESEND_AFTER = 60
BAD_CODE = "Invalid or expired code"
PURPOSES = {
    "verify": ("Your oxc verification code", "Your code to verify this e-mail address is {code}.\n"
               "It expires in 15 minutes. If you did not ask for it, ignore this message."),
    "reset": ("Your oxc password reset code", "Your code to reset your oxc password is {code}.\n"
              "It expires in 15 minutes. If you did not ask for it, ignore this message; "
              "your password stays as it is."),
}


class Codes:
    """Issue and check one-time codes per (purpose, user), kept in the store as HMACs."""

    def __init__(self, store, secret, clock, mailer):
        self._store = store
        self._key = hashlib.sha256(b"oxc one-time codes\0" + secret.encode("utf-8")).digest()
        self._clock = clock
        self._mailer = mailer

    def _digest(self, purpose, user_id, code):
        return hmac.new(self._key, f"{purpose}:{user_id}:{code}".encode(), hashlib.sha256).hexdigest()

    def throttle(self, address):
        """429 if ``address`` asked for a code less than RESEND_AFTER seconds ago."""
        now = self._clock()
        key = "code:" + self._digest("ask", "", address.casefold())
        count, ends = self._store.count_attempt(key, now, RESEND_AFTER)
        if count > 1:
            raise TooManyRequests("A code was sent to this address a moment ago; try again later", ends - now)

    def send(self, purpose, user, address):
        """Make a new code for ``user`` and mail it to ``address``."""
        code = f"{secrets.randbelow(10**6):06d}"
        self._store.put_code({
            "id": f"{purpose}:{user['id']}", "user_id": user["id"], "purpose": purpose, "email": address,
            "code_hash": self._digest(purpose, user["id"], code), "attempts": 0,
            "expires_at": self._clock() + CODE_TTL,
        })
        subject, body = PURPOSES[purpose]
        self._mailer.send(address, subject, body.format(code=code))

    def check(self, purpose, user, address, code):
        """True (and the code is used up) when ``code`` is right; every guess is counted first."""
        record = self._store.spend_code(f"{purpose}:{user['id']}", self._clock(), MAX_ATTEMPTS)
        if record is None:
            return False
        if record["email"].casefold() != address.casefold():
            self._store.delete_code(record["id"], record["code_hash"])
            return False
        if not hmac.compare_digest(record["code_hash"], self._digest(purpose, user["id"], code)):
            return False
        return self._store.delete_code(record["id"], record["code_hash"])


def _code(body):
    code = text(body, "code", max_length=6)
    if not (code.isascii() and code.isdigit() and len(code) == 6):
        raise BadRequest("Field 'code' must be six digits")
    return code


def post_verification_request(req):
    """Send a verification code to an address awaiting verification."""
    address = email(req.json, required=True)
    req.ctx.codes.throttle(address)
    user = req.ctx.store.find_user_by_email(address)
    if user is not None and not user.get("email_verified"):
        req.ctx.codes.send("verify", user, user["email"])
    return success(message="If that address belongs to an account awaiting verification, a code is on its way")


def post_verification(req):
    """Verify an e-mail address with the code sent to it."""
    body = req.json
    address = email(body, required=True)
    code = _code(body)
    user = req.ctx.store.find_user_by_email(address)
    if user is None or not req.ctx.codes.check("verify", user, address, code):
        raise BadRequest(BAD_CODE)
    # Only while the account still has the address the code went to.
    if req.ctx.store.update_user(user["id"], {"email_verified": True}, expected={"email": user["email"]}) is None:
        raise BadRequest(BAD_CODE)
    return success(message="E-mail address verified")


def post_password_reset_request(req):
    """Send a password reset code (the answer is the same for unknown addresses)."""
    address = email(req.json, required=True)
    req.ctx.codes.throttle(address)
    user = req.ctx.store.find_user_by_email(address)
    if user is not None:
        req.ctx.codes.send("reset", user, user["email"])
    return success(message="If that address belongs to an account, a code is on its way")


def post_password_reset(req):
    """Set a new password with a reset code; every session of the account ends."""
    body = req.json
    address = email(body, required=True)
    code = _code(body)
    password = check_new_password(body, "new_password")
    ctx = req.ctx
    user = ctx.store.find_user_by_email(address)
    if user is None or not ctx.codes.check("reset", user, address, code):
        raise BadRequest(BAD_CODE)
    # Reading the code proves the address is the user's, while it still is.
    changes = {"password_hash": ctx.passwords.hash(password), "email_verified": True}
    if ctx.store.update_user(user["id"], changes, expected={"email": user["email"]}) is None:
        raise BadRequest(BAD_CODE)
    ended = ctx.store.delete_user_sessions(user["id"])
    return success({"sessions_ended": ended}, "Password changed; log in with the new password")
