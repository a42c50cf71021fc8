"""Access tokens (short-lived JWTs) and refresh tokens (opaque, rotating).

Access tokens are HS256 JWTs with header ``typ: at+jwt`` (RFC 9068) and the
claims ``sub`` (user id), ``sid`` (the refresh-token family they came from),
``iat`` and ``exp``. Verification pins the algorithm, requires the claims
(``sid`` too: every token belongs to a session, which ``auth.authenticate``
checks is still open), checks ``typ`` (PyJWT does not) and checks expiry
against the injected clock. Verified tokens are remembered in a small bounded
cache: signature checking costs ~55 us, which is a large share of a cheap GET.

The signing secret is ``JWT_SECRET_KEY`` or, when that is not set, a random
one generated on first start and kept with the data (``Store.signing_key``),
so no published key ever signs anything.

A stream ticket (``POST /events/ticket``, for EventSource, which cannot send
headers) is a JWT too, with header ``typ: oxc-ticket+jwt``, signed with a key
derived from the secret, valid for a minute and only for the event stream.
Being self-contained, it opens a stream on any process sharing the secret;
its ``jti`` is recorded when it is redeemed (``Store.use_ticket``), so it
opens one stream only.

A refresh token is ``<session id>.<32 random bytes, urlsafe>``; the store
keeps only its SHA-256, in the session (the token family). Each refresh
rotates it; the session keeps the hash of the token it replaced, so that a
replayed, already-rotated token is recognised and its whole family revoked
(RFC 9700, 4.14.2). The session id alone proves nothing: it is readable in
every access token and ticket.
"""

import hashlib
import hmac
import logging
import secrets
from typing import Any

import jwt

ACCESS_TYPE = "at+jwt"
TICKET_TYPE = "oxc-ticket+jwt"
TICKET_TTL = 60  # seconds
LEEWAY = 10  # seconds of clock skew tolerated on exp and iat
CACHE_SIZE = 4096


def token_hash(token):
    """The SHA-256 hex digest under which a refresh token is stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_refresh_token(session_id):
    """A fresh refresh token for the session ``session_id``."""
    return f"{session_id}.{secrets.token_urlsafe(32)}"


def session_of(token):
    """The session id a refresh token names, or None for tokens without one (0xC's)."""
    head, dot, _ = token.partition(".")
    return head if dot else None


class InvalidToken(Exception):
    """The token is malformed, forged, of the wrong kind, or expired."""


class AccessTokens:
    """Issue and verify access tokens signed with ``secret``."""

    def __init__(self, secret, lifetime, refresh_after, clock):
        self._secret = secret
        key = secret if isinstance(secret, bytes) else secret.encode("utf-8")
        self._ticket_key = hmac.new(key, b"oxc stream tickets", hashlib.sha256).digest()
        self.lifetime = lifetime
        self.refresh_after = refresh_after
        self._clock = clock
        self._verified = {}

    def issue(self, user_id, session_id):
        """A new token and its timing: (token, issued_at, expires_at, refresh_at)."""
        issued_at = int(self._clock())
        expires_at = issued_at + self.lifetime
        claims = {
            "sub": user_id,
            "sid": session_id,
            "iat": issued_at,
            "exp": expires_at,
            "jti": secrets.token_urlsafe(8),
        }
        token = jwt.encode(claims, self._secret, algorithm="HS256", headers={"typ": ACCESS_TYPE})
        return token, issued_at, expires_at, self.refresh_at(issued_at, expires_at)

    def refresh_at(self, issued_at, expires_at):
        """When a client should refresh: ``refresh_after`` seconds in, never past expiry."""
        return min(issued_at + self.refresh_after, expires_at)

    def verify(self, token):
        """The claims of a valid, unexpired access token; InvalidToken otherwise."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._verified) >= CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)), None)
            self._verified[token] = claims
        now = self._clock()
        if claims["exp"] + LEEWAY < now:
            raise InvalidToken("Token has expired")
        if claims["iat"] - LEEWAY > now:
            raise InvalidToken("Token is not valid yet")
        return claims

    def issue_ticket(self, user_id, session_id, expires_at):
        """A ticket that opens the event stream for a minute: (ticket, seconds it lasts)."""
        now = int(self._clock())
        claims = {
            "sub": user_id,
            "sid": session_id,
            "exp": min(now + TICKET_TTL, expires_at),
            "end": expires_at,
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self._ticket_key, algorithm="HS256", headers={"typ": TICKET_TYPE}), TICKET_TTL

    def read_ticket(self, ticket):
        """The claims (sub, sid, jti, exp, end) of a valid, live ticket, or None.

        Whether it was used already is the store's to say (``Store.use_ticket``).
        """
        try:
            claims = _claims(ticket, self._ticket_key, TICKET_TYPE, ("exp", "end"))
        except InvalidToken:
            return None
        if claims["exp"] < self._clock() or not isinstance(claims.get("jti"), str):
            return None
        return claims

    def _decode(self, token):
        return _claims(token, self._secret, ACCESS_TYPE, ("exp", "iat"))


def _claims(token, key, kind, times):
    """The claims of an HS256 JWT of header ``typ`` ``kind``: integer ``times``, string ``sub`` and ``sid``.

    Expiry is left to the caller (it has the injected clock); InvalidToken otherwise.
    """
    try:
        decoded = jwt.decode_complete(
            token,
            key,
            algorithms=["HS256"],
            options={"require": [*times, "sub"], "verify_exp": False, "verify_iat": False},
        )
    except jwt.PyJWTError:
        raise InvalidToken("Invalid token") from None
    claims = decoded["payload"]
    if (
        decoded["header"].get("typ") != kind
        or not isinstance(claims.get("sub"), str)
        or not isinstance(claims.get("sid"), str)
        or not all(isinstance(claims.get(name), int) for name in times)
    ):
        raise InvalidToken("Invalid token")
    return claims


def signing_secret(settings: Any, store: Any) -> str:
    """JWT_SECRET_KEY, or else the random key kept with the data (generated on first start).

    Never a published value: with no key configured, the first start generates
    one (``secrets.token_urlsafe(48)``) and the store keeps it, in a file of mode
    0600 under DATA_DIR or in the database, so that tokens outlive a restart and
    every process on one database signs with the same key.
    """
    if settings.jwt_secret_key:
        return settings.jwt_secret_key
    secret, where = store.signing_key(secrets.token_urlsafe(48))
    log = logging.getLogger("oxc")  # a start-up message, under the app's own name
    if where is None:
        log.info(
            "JWT_SECRET_KEY is not set: access tokens are signed with a random key held in memory, "
            "so they end with this process"
        )
    else:
        log.warning(
            "JWT_SECRET_KEY is not set: access tokens are signed with a random key generated on first "
            "start and kept in %s (set JWT_SECRET_KEY to choose one)",
            where,
        )
    return secret
