"""Registration, login, token refresh and logout; and who a request is from.

Wire format as in 0xC: ``/auth/register``, ``/auth/login``, ``/auth/refresh``,
``/auth/logout``, ``/auth/token-info``. ``authenticate`` is what the router
runs before every handler whose route needs a user.
"""

import logging
import re
import secrets
import threading
import uuid

from store import Conflict as StoreConflict
from store import StoreError

from .fields import email, text
from .http import BadRequest, Forbidden, TooManyRequests, Unauthorized, success
from .passwords import MAX_PASSWORD_BYTES
from .tokens import InvalidToken, new_refresh_token, session_of, token_hash
from .views import iso_time, public_user

log = logging.getLogger("oxc.auth")

USERNAME = re.compile(r"^[A-Za-z0-9_-]{3,32}$")
MIN_PASSWORD_LENGTH = 8
BAD_LOGIN = "Invalid username or password"
BAD_REFRESH = "Invalid or expired refresh token"
LAST_SEEN_RESOLUTION = 60  # seconds; "last seen" is written at most this often per user


class LoginThrottle:
    """Counts failed logins per account; too many within ``window`` seconds -> 429.

    This complements the per-client rate limit: one account attacked from many
    addresses is still protected.
    """

    def __init__(self, clock, failures=10, window=900):
        self._clock = clock
        self.failures = failures
        self.window = window
        self._lock = threading.Lock()
        self._seen = {}

    def check(self, username):
        """Raise TooManyRequests while ``username`` is locked out."""
        key = username.casefold()
        with self._lock:
            count, since = self._seen.get(key, (0, 0.0))
            wait = since + self.window - self._clock()
            if count >= self.failures and wait > 0:
                raise TooManyRequests("Too many failed logins for this account; try again later", wait)

    def failed(self, username):
        """Count one failure against ``username``."""
        key, now = username.casefold(), self._clock()
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: v for k, v in self._seen.items() if v[1] + self.window > now}
            count, since = self._seen.get(key, (0, now))
            if since + self.window <= now:
                count, since = 0, now
            self._seen[key] = (count + 1, since)

    def succeeded(self, username):
        """Forget the failures of ``username``."""
        with self._lock:
            self._seen.pop(username.casefold(), None)


def _password(body, name="password"):
    value = body.get(name)
    if value is None or value == "":
        raise BadRequest(f"Missing required field: {name}")
    if not isinstance(value, str):
        raise BadRequest(f"Field '{name}' must be a string")
    return value


def check_new_password(body, name="password"):
    """A password acceptable for a new account or a password change."""
    password = _password(body, name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequest(f"Field '{name}' must be at least {MIN_PASSWORD_LENGTH} characters long")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise BadRequest(f"Field '{name}' must be at most {MAX_PASSWORD_BYTES} bytes long")
    return password


def authenticate(req):
    """The user behind the request's bearer token; Unauthorized otherwise."""
    header = req.environ.get("HTTP_AUTHORIZATION")
    if not header:
        raise Unauthorized("Authentication token is missing")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    try:
        claims = req.ctx.tokens.verify(token)
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from None
    store = req.ctx.store
    user = store.get_user(claims["sub"])
    if user is None:
        raise Unauthorized("User no longer exists")
    if claims.get("sid") is not None and store.get_session(claims["sid"]) is None:
        raise Unauthorized("Session has ended; log in again")
    req.claims = claims
    now = req.ctx.clock()
    if now - user.get("last_seen", 0) >= LAST_SEEN_RESOLUTION:
        try:
            user = store.touch_user(user["id"], now) or user
        except StoreError:
            pass  # "last seen" is best effort; a store refusing writes must not refuse reads
    return user


def _grant(req, user, session_id, refresh_token):
    token, issued_at, expires_at, refresh_at = req.ctx.tokens.issue(user["id"], session_id)
    return {
        "access_token": token,
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": expires_at - issued_at,
        "refresh_at": refresh_at,
    }


def start_session(req, user):
    """A new refresh-token family for ``user`` and the tokens that go with it."""
    now = req.ctx.clock()
    session_id = secrets.token_urlsafe(12)
    refresh_token = new_refresh_token(session_id)
    req.ctx.store.add_session({
        "id": session_id,
        "user_id": user["id"],
        "token_hash": token_hash(refresh_token),
        "previous_hash": None,
        "rotated_at": None,
        "created_at": now,
        "expires_at": now + req.ctx.settings.refresh_token_expires * 86400,
    })
    return _grant(req, user, session_id, refresh_token)


def post_register(req):
    """Create an account (0xC: 201 with the new user)."""
    if not req.ctx.settings.register_enabled:
        raise Forbidden("Registration is disabled")
    body = req.json
    username = text(body, "username", max_length=32)
    if not USERNAME.match(username):
        raise BadRequest("Field 'username' must be 3 to 32 letters, digits, '_' or '-'")
    password = check_new_password(body)
    address = email(body, required=req.ctx.settings.require_verified_email)
    user = {
        "id": str(uuid.uuid4()),
        "username": username,
        "email": address,
        "password_hash": req.ctx.passwords.hash(password),
        "created_at": iso_time(req.ctx.clock()),
    }
    try:
        req.ctx.store.create_user(user)
    except StoreConflict as exc:
        raise BadRequest(str(exc)) from None
    if address:
        req.ctx.codes.send("verify", user, address)
    return success(public_user(user), "User registered successfully", status=201)


def post_login(req):
    """Check a username and password; answer an access and a refresh token."""
    body = req.json
    username = text(body, "username", max_length=254)
    password = _password(body)
    ctx = req.ctx
    ctx.login_throttle.check(username)
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        ctx.login_throttle.failed(username)
        raise Unauthorized(BAD_LOGIN)
    user = ctx.store.find_user(username)
    if not ctx.passwords.verify(password, user["password_hash"] if user else None):
        ctx.login_throttle.failed(username)
        raise Unauthorized(BAD_LOGIN)
    ctx.login_throttle.succeeded(username)
    if ctx.settings.require_verified_email and not user.get("email_verified"):
        raise Forbidden("Verify your e-mail address first (POST /auth/verify-email)")
    changes = {"last_seen": ctx.clock()}
    if ctx.passwords.needs_rehash(user["password_hash"]):
        changes["password_hash"] = ctx.passwords.hash(password)
    user = ctx.store.update_user(user["id"], changes)
    return success(dict(start_session(req, user), user=public_user(user)), "Login successful")


def _refresh_session(req, presented):
    """The live session a presented refresh token belongs to; revokes on replay."""
    store, now = req.ctx.store, req.ctx.clock()
    digest = token_hash(presented)
    session = store.find_session(digest)
    if session is None:
        session_id = session_of(presented)
        family = store.get_session(session_id) if session_id else None
        if family is None:
            raise Unauthorized(BAD_REFRESH)
        grace = req.ctx.settings.refresh_reuse_grace
        if family["previous_hash"] == digest and now - family["rotated_at"] <= grace:
            # Two refreshes racing from one client: the loser is refused, not punished.
            raise Unauthorized("Refresh token has already been used")
        store.delete_session(session_id)
        log.warning("refresh token replayed for user %s: session revoked", family["user_id"])
        raise Unauthorized("Refresh token was already used; the session has been revoked")
    if session["expires_at"] is not None and session["expires_at"] < now:
        store.delete_session(session["id"])
        raise Unauthorized(BAD_REFRESH)
    return session, digest


def post_refresh(req):
    """Trade a refresh token for a new access token (and, rotating, a new refresh token)."""
    presented = text(req.json, "refresh_token", max_length=512, strip=False)
    session, digest = _refresh_session(req, presented)
    user = req.ctx.store.get_user(session["user_id"])
    if user is None:
        raise Unauthorized(BAD_REFRESH)
    refresh_token = presented
    if req.ctx.settings.refresh_token_rotation:
        refresh_token = new_refresh_token(session["id"])
        now = req.ctx.clock()
        expires_at = now + req.ctx.settings.refresh_token_expires * 86400
        if req.ctx.store.rotate_session(session["id"], digest, token_hash(refresh_token), now, expires_at) is None:
            raise Unauthorized("Refresh token has already been used")
    return success(_grant(req, user, session["id"], refresh_token), "Token refreshed successfully")


def post_logout(req):
    """End the session a refresh token belongs to."""
    presented = text(req.json, "refresh_token", max_length=512, strip=False)
    session = req.ctx.store.find_session(token_hash(presented))
    if session is None:
        raise Unauthorized(BAD_REFRESH)
    req.ctx.store.delete_session(session["id"])
    return success(message="Logged out successfully")


def get_token_info(req):
    """The current user and the timing of the access token in use."""
    claims = req.claims
    return success({
        "user": public_user(req.user),
        "token_info": {
            "type": "access",
            "issued_at": claims["iat"],
            "expires_at": claims["exp"],
            "refresh_at": req.ctx.tokens.refresh_at(claims["iat"], claims["exp"]),
        },
    })
