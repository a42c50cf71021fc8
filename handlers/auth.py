"""Registration, login, token refresh and logout; and who a request is from.

Wire format as in 0xC: ``/auth/register``, ``/auth/login``, ``/auth/refresh``,
``/auth/logout``, ``/auth/token-info``. ``authenticate`` is what the router
runs before every handler whose route needs a user.
"""

import hashlib
import hmac
import logging
import secrets

from store import StoreError

from .http import Forbidden, TooManyRequests, Unauthorized, success, views
from .http.declare import Link, Password, Text, endpoint, envelope, obj, ref, returns
from .http.views import public_user
from .services import accounts

# Re-exported: the endpoint modules and the document read these here.
from .services.accounts import MIN_PASSWORD_LENGTH, USERNAME, check_new_password, new_password  # noqa: F401
from .services.passwords import MAX_PASSWORD_BYTES
from .services.tokens import InvalidToken, new_refresh_token, session_of, token_hash

log = logging.getLogger("oxc.auth")

BAD_LOGIN = "Invalid username or password"
BAD_REFRESH = "Invalid or expired refresh token"
SESSION_ENDED = "Session has ended; log in again"
LAST_SEEN_RESOLUTION = 60  # seconds; "last seen" is written at most this often per user
#: Paths (under API_PREFIX) where passwords are checked or codes asked for and guessed. Each client
#: gets AUTH_RATE_LIMIT requests a minute to all of them together (on unless AUTH_RATE_LIMIT_ENABLED=0).
THROTTLED_PATHS = (
    "/auth/register",
    "/auth/login",
    "/auth/refresh",
    "/auth/verify-email",
    "/auth/verify-email/request",
    "/auth/password-reset",
    "/auth/password-reset/request",
)


class LoginThrottle:
    """At most ``failures`` password checks per account within ``window`` seconds; beyond them, 429.

    Each login attempt is counted in the store before its password is checked,
    in one atomic step that also answers the count, so parallel guesses cannot
    all pass a check made before any of them was counted, and every process on
    one database shares the count (the JSON store keeps it in memory: a
    restart forgets it). A successful login clears it. Counts are kept under
    an HMAC of the username, so the store holds no list of names people tried.
    This complements the per-client rate limit: one account attacked from many
    addresses is still protected.
    """

    def __init__(self, store, secret, clock, failures=10, window=900):
        self._store = store
        self._secret = hashlib.sha256(b"oxc login attempts\0" + secret.encode("utf-8")).digest()
        self._clock = clock
        self.failures = failures
        self.window = window

    def _key(self, username):
        name = username.casefold().encode("utf-8", "surrogatepass")
        return "login:" + hmac.new(self._secret, name, hashlib.sha256).hexdigest()

    def reserve(self, username):
        """Count one attempt at ``username``; TooManyRequests once the window holds more than allowed."""
        now = self._clock()
        count, ends = self._store.count_attempt(self._key(username), now, self.window)
        if count > self.failures:
            raise TooManyRequests("Too many failed logins for this account; try again later", ends - now)

    def take_back(self, username):
        """Uncount a reserved attempt whose password was never checked (the server was too busy)."""
        self._store.take_back_attempt(self._key(username))

    def succeeded(self, username):
        """Forget the attempts at ``username``."""
        self._store.clear_attempts(self._key(username))


REFRESH_TOKEN = {
    "refresh_token": Text(
        "A refresh token from /auth/login or /auth/refresh.",
        "Qm9vdHN0cmFw.d2l0aC1hLXJhbmRvbS10YWls",
        required=True,
        max_length=512,
        strip=False,
    )
}
EXAMPLE_REFRESH = {"refresh_token": "Qm9vdHN0cmFw.d2l0aC1hLXJhbmRvbS10YWls"}


def session_is_open(store, session_id, user_id):
    """True while the session (refresh-token family) ``session_id`` of ``user_id`` has not ended.

    Every access token and stream ticket names its session (``sid``), and each
    request and open listener checks it, so a logout, a password change or
    reset, or a revoked family ends them all.
    """
    session = store.get_session(session_id)
    return session is not None and session["user_id"] == user_id


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
    if not session_is_open(store, claims["sid"], user["id"]):
        raise Unauthorized(SESSION_ENDED)
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
    return views.grant.build(
        access_token=token,
        refresh_token=refresh_token,
        token_type="Bearer",
        expires_in=expires_at - issued_at,
        refresh_at=refresh_at,
    )


def start_session(req, user):
    """A new refresh-token family for ``user`` and the tokens that go with it.

    Only while the user's password hash is still the one in ``user``: a login
    that lost a race with a password change or reset gets 401, not a session
    that outlives the change.
    """
    now = req.ctx.clock()
    session_id = secrets.token_urlsafe(12)
    refresh_token = new_refresh_token(session_id)
    started = req.ctx.store.add_session(
        {
            "id": session_id,
            "user_id": user["id"],
            "token_hash": token_hash(refresh_token),
            "previous_hash": None,
            "rotated_at": None,
            "created_at": now,
            "expires_at": now + req.ctx.settings.refresh_token_expires * 86400,
        },
        password_hash=user["password_hash"],
    )
    if started is None:
        raise Unauthorized(BAD_LOGIN)
    return _grant(req, user, session_id, refresh_token)


def _registration_enabled(req):
    if not req.ctx.settings.register_enabled:
        raise Forbidden("Registration is disabled")


@endpoint(
    "auth",
    "Register a user",
    "Creates an account. The password is stored as a bcrypt hash. An e-mail address that is "
    "already an account's gets its owner a mail saying so. With REQUIRE_VERIFIED_EMAIL=1 the "
    "answer is then the same as for a new address (the new account never gets the address, so "
    "it cannot be verified or used); otherwise it is 400.",
    answers={201: returns(envelope(ref("User"), message="User registered successfully"), "The account was created.")},
    refusals={
        400: "A field is missing or invalid, the password is over "
        f"{MAX_PASSWORD_BYTES} bytes, the username is taken, or (with REQUIRE_VERIFIED_EMAIL=0) "
        "the e-mail address is.",
        403: "Registration is turned off on this server (REGISTER_ENABLED=0).",
        429: "The server is busy hashing passwords; retry after Retry-After.",
    },
    body=accounts.NEW_ACCOUNT,
    body_name="NewUser",
    body_example={"username": "user1", "password": "password123", "email": "user1@example.com"},
    links={201: (Link("user_id"), Link(None, to=("post_login",), request_body="$request.body"))},
    writes=True,
    before=_registration_enabled,
)
def post_register(req, *, body):
    """Create an account (0xC: 201 with the new user)."""
    user = accounts.create_account(req.ctx, body["username"], body["password"], body["email"])
    return success(public_user(user), "User registered successfully", status=201)


@endpoint(
    "auth",
    "Log in",
    "Checks a username and password and answers an access token and a refresh token. "
    "Too many failures for one account lock it out for a while (429).",
    answers={
        200: returns(
            envelope({"allOf": [ref("Grant"), obj({"user": ref("User")})]}, message="Login successful"),
            "Logged in.",
        )
    },
    refusals={
        400: "A field is missing or not a string.",
        401: "Unknown username or wrong password (one answer for both).",
        403: "The account's e-mail address is not verified yet (REQUIRE_VERIFIED_EMAIL=1).",
        429: "Too many failed logins for this account, or the server is busy checking "
        "passwords; retry after Retry-After.",
    },
    body={
        "username": Text("The account's name (case does not matter).", "user1", required=True, max_length=254),
        "password": Password(
            f"The account's password. One over {MAX_PASSWORD_BYTES} UTF-8 bytes can match no account and gets 401.",
            "password123",
            required=True,
        ),
    },
    body_name="Credentials",
    body_example={"username": "user1", "password": "password123"},
    links={200: (Link("user_id", "/data/user/id"),)},
    writes=True,
)
def post_login(req, *, body):
    """Check a username and password; answer an access and a refresh token."""
    username, password = body["username"], body["password"]
    ctx = req.ctx
    ctx.login_throttle.reserve(username)
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise Unauthorized(BAD_LOGIN)
    user = ctx.store.find_user(username)
    stored = user["password_hash"] if user else None
    try:
        verified = ctx.passwords.verify(password, stored)
    except TooManyRequests:
        ctx.login_throttle.take_back(username)
        raise
    if not verified:
        raise Unauthorized(BAD_LOGIN)
    ctx.login_throttle.succeeded(username)
    if ctx.settings.require_verified_email and not user.get("email_verified"):
        raise Forbidden("Verify your e-mail address first (POST /auth/verify-email)")
    changes = {"last_seen": ctx.clock()}
    if ctx.passwords.needs_rehash(stored):
        changes["password_hash"] = ctx.passwords.hash(password)
    # Over the hash just checked only: a rehash must not undo a password change made meanwhile.
    user = ctx.store.update_user(user["id"], changes, expected={"password_hash": stored})
    if user is None:
        raise Unauthorized(BAD_LOGIN)
    return success(views.login.build(start_session(req, user), user=public_user(user)), "Login successful")


def _refresh_session(req, presented):
    """The live session a presented refresh token belongs to; revokes on replay.

    A replay is the family's own token, already rotated away (its hash is the
    session's ``previous_hash``). Anything else naming a session, say its id
    (readable in every access token) with made-up bytes, is only refused: it
    must not let anyone end someone else's session.
    """
    store, now = req.ctx.store, req.ctx.clock()
    digest = token_hash(presented)
    session = store.find_session(digest)
    if session is None:
        session_id = session_of(presented)
        family = store.get_session(session_id) if session_id else None
        if (
            family is None
            or not family.get("previous_hash")
            or not hmac.compare_digest(family["previous_hash"], digest)
        ):
            raise Unauthorized(BAD_REFRESH)
        if now - family["rotated_at"] <= req.ctx.settings.refresh_reuse_grace:
            # Two refreshes racing from one client: the loser is refused, not punished.
            raise Unauthorized("Refresh token has already been used")
        store.delete_session(session_id)
        log.warning("refresh token replayed for user %s: session revoked", family["user_id"])
        raise Unauthorized("Refresh token was already used; the session has been revoked")
    if session["expires_at"] is not None and session["expires_at"] < now:
        store.delete_session(session["id"])
        raise Unauthorized(BAD_REFRESH)
    return session, digest


@endpoint(
    "auth",
    "Refresh the access token",
    "Trades a refresh token for a new access token and, with rotation on, a new refresh "
    "token. Presenting an already rotated token again revokes the whole session.",
    answers={200: returns(envelope(ref("Grant"), message="Token refreshed successfully"), "New tokens.")},
    refusals={
        400: "refresh_token is missing or not a string.",
        401: "The refresh token is unknown, expired, already used or revoked.",
    },
    body=REFRESH_TOKEN,
    body_name="RefreshToken",
    body_example=EXAMPLE_REFRESH,
    writes=True,
)
def post_refresh(req, *, body):
    """Trade a refresh token for a new access token (and, rotating, a new refresh token)."""
    presented = body["refresh_token"]
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


@endpoint(
    "auth",
    "Log out",
    "Ends the session the refresh token belongs to; its tokens stop working.",
    answers={200: returns(envelope(message="Logged out successfully"), "Logged out.")},
    refusals={
        400: "refresh_token is missing or not a string.",
        401: "The refresh token is unknown or already ended.",
    },
    body=REFRESH_TOKEN,
    body_name="RefreshToken",
    body_example=EXAMPLE_REFRESH,
    writes=True,
)
def post_logout(req, *, body):
    """End the session a refresh token belongs to."""
    presented = body["refresh_token"]
    session = req.ctx.store.find_session(token_hash(presented))
    if session is None:
        raise Unauthorized(BAD_REFRESH)
    req.ctx.store.delete_session(session["id"])
    return success(message="Logged out successfully")


@endpoint(
    "auth",
    "Current user and token timing",
    "Who the access token belongs to, and when it was issued, expires and should be refreshed.",
    answers={200: returns(envelope(ref("TokenInfo")), "The user and the token's timing.")},
)
def get_token_info(req):
    """The current user and the timing of the access token in use."""
    claims = req.claims
    return success(
        views.token_info.build(
            user=public_user(req.user),
            token_info={
                "type": "access",
                "issued_at": claims["iat"],
                "expires_at": claims["exp"],
                "refresh_at": req.ctx.tokens.refresh_at(claims["iat"], claims["exp"]),
            },
        )
    )
