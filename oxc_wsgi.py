"""oxc: a chat service as one plain WSGI application.

Serve it::

    oxc serve                                  # waitress on HOST:PORT
    waitress-serve oxc_wsgi:application        # or any WSGI server
    python oxc_wsgi.py

Embed it::

    from oxc_wsgi import create_app
    app = create_app(data_dir="/var/lib/chat", api_prefix="/api")

This module is the front door. In order: settings (environment and ``.env``),
the HTTP primitives (Request, the Router, turning answers into WSGI calls),
the route table, ``create_app`` which composes the middleware around the app,
the lazily built module-level ``application``, and ``main``. The handlers live
in ``handlers/``, persistence in ``store/``, the outer layers in
``middleware/``; nothing in them imports this module.
"""

import argparse
import dataclasses
import gc
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
import urllib.parse
from http import HTTPStatus

import middleware
import oxc_client
from handlers import (
    accounts,
    auth,
    chats,
    events,
    keys,
    maintenance,
    media,
    messages,
    notifications,
    openapi,
    search,
    service,
    users,
    web,
)
from handlers.http import (
    STORE_RETRY_AFTER,
    BadRequest,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    Response,
    ServiceUnavailable,
    UnsupportedMediaType,
    json_response,
)
from handlers.services import push
from handlers.services.hub import Hub
from handlers.services.mail import Mailer
from handlers.services.passwords import Passwords
from handlers.services.push import PushWorker
from handlers.services.tokens import AccessTokens
from store import Conflict as StoreConflict
from store import StoreError, StoreUnavailable, open_store

__version__ = "0.1.0"

log = logging.getLogger("oxc")

# =============================================================================
# Settings
# =============================================================================

DEV_JWT_SECRET = "jwt-secret-key-for-0xC-chat-development-only"
DEV_API_KEY = "dev-key-for-0xC-chat"
MIN_SECRET_BYTES = 32
ENVIRONMENTS = ("development", "testing", "production")


class ConfigError(ValueError):
    """A setting has a value oxc cannot run with; the message names it."""


def _boolean(text):
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _integer(low, high=None):
    def parse(text):
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be from {low} to {high}" if high is not None else f"must be at least {low}")
        return value

    return parse


def _origins(text):
    text = text.strip()
    if text == "*":
        return "*"
    return tuple(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip())


def _prefix(text):
    text = text.strip().rstrip("/")
    if text and not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", text):
        raise ValueError("must look like /api (or be empty)")
    return text


def _log_level(text):
    name = text.strip().upper()
    if name not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return name


def _environment(text):
    name = text.strip().lower()
    if name not in ENVIRONMENTS:
        raise ValueError("must be development, testing or production")
    return name


def _string(text):
    return text


DEFAULT_MEDIA_TYPES = (
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "video/mp4",
    "video/webm",
    "audio/mpeg",
    "audio/ogg",
    "audio/wav",
    "audio/webm",
    "application/pdf",
    "text/plain",
    "application/zip",
    "application/octet-stream",
)


def _media_types(text):
    types = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    if not types or not all(re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+*-]+", item) for item in types):
        raise ValueError("must be a comma-separated list of MIME types like image/png")
    return types


def _choice(*allowed):
    def parse(text):
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of: {', '.join(allowed)}")
        return value

    return parse


def _names(text):
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _url(text):
    text = text.strip()
    if text and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise ValueError("must be an http(s) URL")
    if text:
        push.parse_url(text)  # the checks every delivery makes (no user@, no backslash ...)
    return text


def _networks(text):
    names = _names(text)
    push.allowed_networks(names)
    return names


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not 0.05 <= value <= 300:
        raise ValueError("must be from 0.05 to 300 seconds")
    return value


#: (field, environment variable, parser, default). The defaults are 0xC's,
#: except HOST, which is loopback so that a development server is not public.
VARIABLES = (
    ("environment", "OXC_ENV", _environment, "development"),
    ("host", "HOST", _string, "127.0.0.1"),
    ("port", "PORT", _integer(0, 65535), 5000),
    ("secret_key", "SECRET_KEY", _string, DEV_API_KEY),
    ("secret_key_enabled", "SECRET_KEY_ENABLED", _boolean, False),
    ("jwt_secret_key", "JWT_SECRET_KEY", _string, ""),
    ("register_enabled", "REGISTER_ENABLED", _boolean, True),
    ("access_token_expires", "ACCESS_TOKEN_EXPIRES", _integer(1, 24 * 60), 15),
    ("token_refresh_seconds", "TOKEN_REFRESH_SECONDS", _integer(0), 600),
    ("refresh_token_expires", "REFRESH_TOKEN_EXPIRES", _integer(1, 3650), 30),
    ("refresh_token_rotation", "REFRESH_TOKEN_ROTATION", _boolean, True),
    ("refresh_reuse_grace", "REFRESH_REUSE_GRACE", _integer(0, 300), 10),
    ("api_prefix", "API_PREFIX", _prefix, "/api"),
    ("log_level", "LOG_LEVEL", _log_level, "INFO"),
    ("data_dir", "DATA_DIR", _string, "data"),
    ("cors_origins", "CORS_ORIGINS", _origins, "*"),
    ("rate_limit_enabled", "RATE_LIMIT_ENABLED", _boolean, False),
    ("rate_limit", "RATE_LIMIT", _integer(1), 100),
    ("auth_rate_limit", "AUTH_RATE_LIMIT", _integer(1), 10),
    ("auth_rate_limit_enabled", "AUTH_RATE_LIMIT_ENABLED", _boolean, True),
    ("max_message_length", "MAX_MESSAGE_LENGTH", _integer(1, 1_000_000), 1000),
    ("max_body_bytes", "MAX_BODY_BYTES", _integer(1024), 64 * 1024),
    ("bcrypt_rounds", "BCRYPT_ROUNDS", _integer(4, 16), 12),
    ("threads", "THREADS", _integer(1, 1024), 8),
    ("max_connections_per_client", "MAX_CONNECTIONS_PER_CLIENT", _integer(0, 100_000), 50),
    ("header_timeout", "HEADER_TIMEOUT", _integer(0, 300), 10),
    ("compact_min", "STORE_COMPACT_MIN", _integer(10), 10_000),
    ("store_free_space_reserve", "STORE_FREE_SPACE_RESERVE", _integer(0), 64 * 1024 * 1024),
    ("store_url", "STORE_URL", _string, ""),
    ("db_pool_size", "DB_POOL_SIZE", _integer(1, 1000), 10),
    ("realtime_max_clients", "REALTIME_MAX_CLIENTS", _integer(1, 100_000), 100),
    ("realtime_max_per_user", "REALTIME_MAX_PER_USER", _integer(1, 100_000), 5),
    ("sse_heartbeat", "SSE_HEARTBEAT", _seconds, 15.0),
    ("events_kept", "EVENTS_KEPT", _integer(10, 10_000_000), 10_000),
    ("media_max_bytes", "MEDIA_MAX_BYTES", _integer(1024), 25 * 1024 * 1024),
    ("media_types", "MEDIA_ALLOWED_TYPES", _media_types, DEFAULT_MEDIA_TYPES),
    ("attachment_quota_bytes", "ATTACHMENT_QUOTA_BYTES", _integer(0), 1024 * 1024 * 1024),
    ("thumbnail_concurrency", "THUMBNAIL_CONCURRENCY", _integer(1, 64), 2),
    ("smtp_host", "SMTP_HOST", _string, ""),
    ("smtp_port", "SMTP_PORT", _integer(1, 65535), 587),
    ("smtp_security", "SMTP_SECURITY", _choice("starttls", "ssl", "none"), "starttls"),
    ("smtp_user", "SMTP_USER", _string, ""),
    ("smtp_password", "SMTP_PASSWORD", _string, ""),
    ("mail_from", "MAIL_FROM", _string, "oxc@localhost"),
    ("require_verified_email", "REQUIRE_VERIFIED_EMAIL", _boolean, False),
    ("admins", "ADMINS", _names, ()),
    ("push_webhook_url", "PUSH_WEBHOOK_URL", _url, ""),
    ("push_webhook_secret", "PUSH_WEBHOOK_SECRET", _string, ""),
    ("push_max_attempts", "PUSH_MAX_ATTEMPTS", _integer(1, 100), 8),
    ("push_queue_max", "PUSH_QUEUE_MAX", _integer(1), 10_000),
    ("push_device_hosts", "PUSH_DEVICE_HOSTS", _names, ()),
    ("push_allowed_addresses", "PUSH_ALLOWED_ADDRESSES", _networks, ()),
    ("web_enabled", "WEB_UI_ENABLED", _boolean, True),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything configurable; see VARIABLES for the environment names."""

    environment: str = "development"
    host: str = "127.0.0.1"
    port: int = 5000
    secret_key: str = DEV_API_KEY
    secret_key_enabled: bool = False
    jwt_secret_key: str = ""  # empty: a random key generated on first start and kept with the data
    register_enabled: bool = True
    access_token_expires: int = 15
    token_refresh_seconds: int = 600
    refresh_token_expires: int = 30
    refresh_token_rotation: bool = True
    refresh_reuse_grace: int = 10
    api_prefix: str = "/api"
    log_level: str = "INFO"
    data_dir: object = "data"
    cors_origins: object = "*"
    rate_limit_enabled: bool = False
    rate_limit: int = 100
    auth_rate_limit: int = 10
    auth_rate_limit_enabled: bool = True
    max_message_length: int = 1000
    max_body_bytes: int = 64 * 1024
    bcrypt_rounds: int = 12
    threads: int = 8
    max_connections_per_client: int = 50
    header_timeout: int = 10
    compact_min: int = 10_000
    store_free_space_reserve: int = 64 * 1024 * 1024
    store_url: str = ""
    db_pool_size: int = 10
    realtime_max_clients: int = 100
    realtime_max_per_user: int = 5
    sse_heartbeat: float = 15.0
    events_kept: int = 10_000
    media_max_bytes: int = 25 * 1024 * 1024
    media_types: tuple = DEFAULT_MEDIA_TYPES
    attachment_quota_bytes: int = 1024 * 1024 * 1024
    thumbnail_concurrency: int = 2
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: str = "starttls"
    smtp_user: str = ""
    smtp_password: str = ""
    mail_from: str = "oxc@localhost"
    require_verified_email: bool = False
    admins: tuple = ()
    push_webhook_url: str = ""
    push_webhook_secret: str = ""
    push_max_attempts: int = 8
    push_queue_max: int = 10_000
    push_device_hosts: tuple = ()
    push_allowed_addresses: tuple = ()
    web_enabled: bool = True

    @classmethod
    def from_environ(cls, environ=None, env_file=".env"):
        """Settings from ``environ`` (default os.environ) over a ``.env`` file."""
        environ = os.environ if environ is None else environ
        values = dict(read_env_file(env_file)) if env_file and os.path.exists(env_file) else {}
        values.update(environ)
        if "OXC_ENV" not in values and "FLASK_ENV" in values:
            values["OXC_ENV"] = values["FLASK_ENV"]
        fields = {}
        for field, name, parse, _ in VARIABLES:
            if name in values:
                try:
                    fields[field] = parse(values[name])
                except ValueError as exc:
                    raise ConfigError(f"{name} {exc} (got {values[name]!r})") from None
        return cls(**fields)

    def check(self):
        """Raise ConfigError for settings that are unsafe where they are used."""
        if self.jwt_secret_key == DEV_JWT_SECRET:
            # Published in 0xC's and older oxc's .env.example: anyone could sign tokens with it.
            raise ConfigError(
                "JWT_SECRET_KEY is the published development value; remove it (oxc then "
                "generates a key and keeps it with the data) or set a random one"
            )
        if self.environment != "production":
            return
        if self.jwt_secret_key and len(self.jwt_secret_key.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"JWT_SECRET_KEY must be at least {MIN_SECRET_BYTES} random bytes in production, "
                "or left unset to have one generated (try: python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))')"
            )
        if self.secret_key_enabled and (self.secret_key == DEV_API_KEY or len(self.secret_key) < 16):
            raise ConfigError("SECRET_KEY must be set to a private value of 16+ characters in production")
        if self.bcrypt_rounds < 12:
            raise ConfigError("BCRYPT_ROUNDS must be at least 12 in production")
        if self.push_webhook_url and len(self.push_webhook_secret) < 16:
            raise ConfigError("PUSH_WEBHOOK_SECRET must be set (16+ characters) when PUSH_WEBHOOK_URL is")


def read_env_file(path):
    """(name, value) pairs of a ``.env`` file: NAME=value, # comments, quotes."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export ") :].lstrip()
            name, sep, value = line.partition("=")
            name = name.strip()
            if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ConfigError(f"{path}:{number}: expected NAME=value")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                quote, value = value[0], value[1:-1]
                if quote == '"':
                    value = value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
            elif " #" in value:
                value = value.split(" #", 1)[0].rstrip()
            pairs.append((name, value))
    return pairs


# =============================================================================
# Request
# =============================================================================

JSON_TYPES = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _check_strings(value):
    """Raise BadRequest if any string in ``value`` holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest("Request body contains an invalid Unicode escape (lone surrogate)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class Request:
    """A thin, lazy view over the WSGI environ, plus what routing learned."""

    __slots__ = ("environ", "ctx", "user", "claims", "_query", "_json")

    def __init__(self, environ, ctx):
        self.environ = environ
        self.ctx = ctx
        self.user = None
        self.claims = None
        self._query = None
        self._json = None

    @property
    def method(self):
        return self.environ["REQUEST_METHOD"].upper()

    @property
    def path(self):
        return self.environ.get("PATH_INFO") or "/"

    @property
    def script_name(self):
        return self.environ.get("SCRIPT_NAME", "").rstrip("/")

    @property
    def query(self):
        """The query string as a dict of first values."""
        if self._query is None:
            raw = self.environ.get("QUERY_STRING", "")
            try:
                pairs = urllib.parse.parse_qsl(
                    raw,
                    keep_blank_values=True,
                    strict_parsing=False,
                    encoding="utf-8",
                    errors="strict",
                    max_num_fields=50,
                )
            except (ValueError, UnicodeDecodeError):
                raise BadRequest("Malformed query string") from None
            query = {}
            for name, value in pairs:
                query.setdefault(name, value)
            self._query = query
        return self._query

    def header(self, name, default=None):
        """A request header by its HTTP name."""
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        return self.environ.get(key, default)

    def body(self):
        """The raw body: exactly CONTENT_LENGTH bytes."""
        try:
            length = int(self.environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise BadRequest("Invalid Content-Length") from None
        if length <= 0:
            return b""
        data = self.environ["wsgi.input"].read(length)
        if len(data) < length:
            raise BadRequest("Request body is shorter than its Content-Length")
        return data

    @property
    def json(self):
        """The body as a JSON object, with every way it can be wrong a 4xx."""
        if self._json is None:
            media_type = self.environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
            if not JSON_TYPES.match(media_type):
                raise UnsupportedMediaType("Content-Type must be application/json")
            data = self.body()
            if not data:
                raise BadRequest("Request body must be a JSON object")
            try:
                value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
            except UnicodeDecodeError:
                raise BadRequest("Request body is not valid UTF-8") from None
            except RecursionError:
                raise BadRequest("Request body is nested too deeply") from None
            except ValueError as exc:
                raise BadRequest(f"Request body is not valid JSON: {exc}") from None
            if not isinstance(value, dict):
                raise BadRequest("Request body must be a JSON object")
            if b"\\u" in data or b"\\U" in data:
                _check_strings(value)
            self._json = value
        return self._json


# =============================================================================
# Router
# =============================================================================


class Route:
    """One line of the route table."""

    __slots__ = ("method", "template", "handler", "auth", "pattern")

    def __init__(self, method, template, handler, auth):
        self.method = method
        self.template = template
        self.handler = handler
        self.auth = auth
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
        self.pattern = re.compile(regex + r"\Z")

    @property
    def name(self):
        return self.handler.__name__


class Router:
    """Matches (method, path) against templates like ``/messages/{message_id}``."""

    def __init__(self, routes):
        self.routes = list(routes)
        # Most paths are literal; a dict finds them without trying every regex.
        # The others are filed by their number of segments and the literal
        # segments they start with, so a request tries only a few regexes.
        self._literal = {}
        self._patterns = {}
        for route in self.routes:
            if "{" in route.template:
                self._patterns.setdefault(self._shape(route.template), []).append(route)
            else:
                self._literal.setdefault(route.template, []).append(route)

    @staticmethod
    def _shape(template):
        segments = template.split("/")
        head = []
        for segment in segments[:3]:
            if "{" in segment:
                break
            head.append(segment)
        return len(segments), tuple(head)

    def _pattern_candidates(self, path):
        count = path.count("/") + 1
        segments = path.split("/", 3)[:3]
        for depth in range(len(segments), -1, -1):
            yield from self._patterns.get((count, tuple(segments[:depth])), ())

    def match(self, method, path):
        """The route and URL parameters; NotFound or MethodNotAllowed otherwise."""
        candidates = [(route, {}) for route in self._literal.get(path, ())]
        if not candidates:
            for route in self._pattern_candidates(path):
                found = route.pattern.match(path)
                if found:
                    candidates.append((route, found.groupdict()))
        if not candidates:
            raise NotFound(f"No such endpoint: {path}")
        wanted = "GET" if method == "HEAD" else method
        for route, params in candidates:
            if route.method == wanted:
                return route, params
        raise MethodNotAllowed({route.method for route, _ in candidates} | {"OPTIONS"})


# =============================================================================
# The application
# =============================================================================


def signing_secret(settings, store):
    """JWT_SECRET_KEY, or else the random key kept with the data (generated on first start).

    Never a published value: with no key configured, the first start generates
    one (``secrets.token_urlsafe(48)``) and the store keeps it, in a file of mode
    0600 under DATA_DIR or in the database, so that tokens outlive a restart and
    every process on one database signs with the same key.
    """
    if settings.jwt_secret_key:
        return settings.jwt_secret_key
    secret, where = store.signing_key(secrets.token_urlsafe(48))
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


class Context:
    """What handlers reach through ``req.ctx``: settings, store and services."""

    def __init__(self, settings, store, clock, version):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.version = version
        self.started_at = clock()
        self.passwords = Passwords(settings.bcrypt_rounds, concurrency=max(1, min(4, settings.threads // 2)))
        secret = signing_secret(settings, store)
        self.tokens = AccessTokens(secret, settings.access_token_expires * 60, settings.token_refresh_seconds, clock)
        self.login_throttle = auth.LoginThrottle(store, secret, clock)
        self.mailer = Mailer(settings)
        self.codes = accounts.Codes(store, secret, clock, self.mailer)
        self.events = Hub(
            store,
            clock,
            capacity=settings.events_kept,
            max_listeners=settings.realtime_max_clients,
            max_per_user=settings.realtime_max_per_user,
        )
        self.thumbnails = media.Thumbnails(settings.thumbnail_concurrency)
        self.push = PushWorker(store, settings, clock)
        self.notifier = notifications.Notifier(self, self.push)
        self.events.subscribe(self.notifier)
        if store.next_push_time() is not None:
            self.push.start()  # deliveries queued before a restart


class App:
    """The WSGI application proper: route, authenticate, call, answer."""

    def __init__(self, ctx, router):
        self.ctx = ctx
        self.router = router

    def __call__(self, environ, start_response):
        req = Request(environ, self.ctx)
        try:
            route, params = self.router.match(req.method, req.path)
            if route.auth:
                req.user = auth.authenticate(req)
            answer = route.handler(req, **params)
            if not isinstance(answer, Response):
                answer = json_response(answer)
            # Nothing leaves that shows a write the disk has not kept yet.
            self.ctx.store.sync()
        except HTTPError as exc:
            return middleware.error_answer(start_response, exc.status, exc.message, exc.headers)
        except StoreUnavailable as exc:
            error = ServiceUnavailable(str(exc), retry_after=STORE_RETRY_AFTER)
            return middleware.error_answer(start_response, error.status, error.message, error.headers)
        except Exception:
            log.exception("unhandled error in %s %s", req.method, req.path)
            return middleware.error_answer(start_response, 500, "Internal server error")
        start_response(STATUS_LINES[answer.status], answer.headers)
        if req.method == "HEAD":
            close = getattr(answer.body, "close", None)
            if close is not None:
                close()
            return []
        return answer.body

    def close(self):
        """End event streams, stop pushing and close the store (flushing it)."""
        self.ctx.events.close()
        self.ctx.notifier.close()
        self.ctx.push.close()
        self.ctx.store.close()


STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


# =============================================================================
# Routes and composition
# =============================================================================


def routes(prefix):
    """The whole route table: (method, path, handler, needs a user)."""
    p = prefix
    return [
        Route("GET", "/", service.get_root, False),
        Route("GET", "/static/{name}", web.get_static, False),
        Route("GET", f"{p}/health", service.get_health, False),
        Route("GET", f"{p}/openapi.json", openapi.get_openapi, False),
        Route("GET", f"{p}/docs", openapi.get_docs, False),
        Route("POST", f"{p}/auth/register", auth.post_register, False),
        Route("POST", f"{p}/auth/login", auth.post_login, False),
        Route("POST", f"{p}/auth/refresh", auth.post_refresh, False),
        Route("POST", f"{p}/auth/logout", auth.post_logout, False),
        Route("GET", f"{p}/auth/token-info", auth.get_token_info, True),
        Route("POST", f"{p}/auth/verify-email/request", accounts.post_verification_request, False),
        Route("POST", f"{p}/auth/verify-email", accounts.post_verification, False),
        Route("POST", f"{p}/auth/password-reset/request", accounts.post_password_reset_request, False),
        Route("POST", f"{p}/auth/password-reset", accounts.post_password_reset, False),
        Route("GET", f"{p}/messages", messages.get_messages, True),
        Route("POST", f"{p}/messages", messages.post_message, True),
        Route("GET", f"{p}/messages/me", messages.get_my_messages, True),
        Route("GET", f"{p}/messages/{{message_id}}", messages.get_message, True),
        Route("DELETE", f"{p}/messages/{{message_id}}", messages.delete_message, True),
        Route("GET", f"{p}/chats", chats.get_chats, True),
        Route("POST", f"{p}/chats/group", chats.post_group_chat, True),
        Route("POST", f"{p}/chats/direct", chats.post_direct_chat, True),
        Route("GET", f"{p}/chats/{{chat_id}}", chats.get_chat, True),
        Route("PATCH", f"{p}/chats/{{chat_id}}", chats.patch_chat, True),
        Route("DELETE", f"{p}/chats/{{chat_id}}", chats.delete_chat, True),
        Route("GET", f"{p}/chats/{{chat_id}}/members", chats.get_members, True),
        Route("POST", f"{p}/chats/{{chat_id}}/members", chats.post_member, True),
        Route("PATCH", f"{p}/chats/{{chat_id}}/members/{{user_id}}", chats.patch_member, True),
        Route("DELETE", f"{p}/chats/{{chat_id}}/members/{{user_id}}", chats.delete_member, True),
        Route("PUT", f"{p}/chats/{{chat_id}}/mute", chats.put_mute, True),
        Route("GET", f"{p}/chats/{{chat_id}}/messages", chats.get_chat_messages, True),
        Route("POST", f"{p}/chats/{{chat_id}}/messages", chats.post_chat_message, True),
        Route("PATCH", f"{p}/chats/{{chat_id}}/messages/{{message_id}}", chats.patch_chat_message, True),
        Route("DELETE", f"{p}/chats/{{chat_id}}/messages/{{message_id}}", chats.delete_chat_message, True),
        Route("GET", f"{p}/chats/{{chat_id}}/messages/{{message_id}}/receipts", chats.get_receipts, True),
        Route("POST", f"{p}/chats/{{chat_id}}/read", chats.post_read, True),
        Route("POST", f"{p}/chats/{{chat_id}}/delivered", chats.post_delivered, True),
        Route("POST", f"{p}/chats/{{chat_id}}/typing", events.post_typing, True),
        Route("GET", f"{p}/events", events.get_events, True),
        Route("GET", f"{p}/events/stream", events.get_event_stream, False),
        Route("POST", f"{p}/events/ticket", events.post_stream_ticket, True),
        # -- media and public keys ---------------------------------------------
        Route("POST", f"{p}/chats/{{chat_id}}/attachments", media.post_attachment, True),
        Route("GET", f"{p}/attachments/{{attachment_id}}", media.get_attachment, True),
        Route("DELETE", f"{p}/attachments/{{attachment_id}}", media.delete_attachment, True),
        Route("GET", f"{p}/attachments/{{attachment_id}}/content", media.get_attachment_content, True),
        Route("GET", f"{p}/attachments/{{attachment_id}}/thumbnail", media.get_attachment_thumbnail, True),
        Route("POST", f"{p}/keys", keys.post_key, True),
        Route("GET", f"{p}/keys/me", keys.get_my_keys, True),
        Route("GET", f"{p}/keys/{{key_id}}", keys.get_key, True),
        Route("DELETE", f"{p}/keys/{{key_id}}", keys.delete_key, True),
        Route("GET", f"{p}/users/{{user_id}}/keys", keys.get_user_keys, True),
        # -- accounts and notifications ------------------------------------------
        Route("GET", f"{p}/notifications", notifications.get_notifications, True),
        Route("GET", f"{p}/notifications/count", notifications.get_notification_count, True),
        Route("GET", f"{p}/notifications/mentions", notifications.get_mentions, True),
        Route("POST", f"{p}/notifications/read-all", notifications.post_notifications_read_all, True),
        Route("POST", f"{p}/notifications/{{notification_id}}/read", notifications.post_notification_read, True),
        Route("GET", f"{p}/devices", notifications.get_devices, True),
        Route("POST", f"{p}/devices", notifications.post_device, True),
        Route("DELETE", f"{p}/devices/{{device_id}}", notifications.delete_device, True),
        Route("GET", f"{p}/admin/push/dead-letters", notifications.get_dead_letters, True),
        Route("POST", f"{p}/admin/compact", maintenance.post_compact, True),
        Route("GET", f"{p}/search", search.get_search, True),
        Route("GET", f"{p}/users", users.get_users, True),
        Route("GET", f"{p}/users/me", users.get_me, True),
        Route("PATCH", f"{p}/users/me", users.patch_me, True),
        Route("POST", f"{p}/users/me/password", users.post_password, True),
        Route("GET", f"{p}/users/{{user_id}}", users.get_user, True),
    ]


def create_app(settings=None, *, clock=time.time, store=None, **overrides):
    """A ready WSGI app: the handlers wrapped in oxc's middleware.

    Args:
        settings: a Settings; by default read from the environment and ``.env``.
        clock: the time source for tokens and timestamps (tests inject one).
        store: an open Store to use instead of opening ``settings.data_dir``.
        overrides: Settings fields to replace, e.g. ``data_dir=tmp_path``.
    """
    settings = settings or Settings.from_environ()
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
    settings.check()
    if store is None:
        data_dir = None if settings.data_dir is None else os.fspath(settings.data_dir)
        store = open_store(
            data_dir,
            compact_min=settings.compact_min,
            url=settings.store_url or None,
            pool_size=settings.db_pool_size,
            reserve=settings.store_free_space_reserve,
        )
    ctx = Context(settings, store, clock, __version__)
    router = Router(routes(settings.api_prefix))
    ctx.routes = router.routes
    app = core = App(ctx, router)
    # Innermost first; CORS sits outside every refusal so browsers can read them.
    uploads = re.compile(re.escape(settings.api_prefix) + r"/chats/[^/]+/attachments")
    app = middleware.BodyLimit(
        app, settings.max_body_bytes, larger=((uploads, settings.media_max_bytes + media.UPLOAD_OVERHEAD),)
    )
    log.log(logging.INFO if media.imaging() else logging.WARNING, "attachments: %s", media.thumbnail_support())
    if settings.secret_key_enabled:
        stream = f"{settings.api_prefix}/events/stream"
        app = middleware.ApiKey(
            app,
            [settings.secret_key],
            exempt_paths=(f"{settings.api_prefix}/health",),
            exempt_if=lambda environ: (
                environ.get("PATH_INFO") == stream and "ticket=" in environ.get("QUERY_STRING", "")
            ),
        )
    if settings.rate_limit_enabled or settings.auth_rate_limit_enabled:
        # The auth endpoints get the strict budget whenever either is on; the rest only with RATE_LIMIT_ENABLED.
        strict = (
            (settings.api_prefix + path for path in auth.THROTTLED_PATHS)
            if settings.auth_rate_limit_enabled
            else (f"{settings.api_prefix}/auth/login", f"{settings.api_prefix}/auth/register")
        )
        app = middleware.RateLimit(
            app,
            middleware.RateLimitPolicy(
                per_minute=settings.rate_limit if settings.rate_limit_enabled else None,
                strict_per_minute=settings.auth_rate_limit,
                strict_paths=tuple(strict),
            ),
        )
    app = middleware.Cors(app, settings.cors_origins)
    app = middleware.AccessLog(app)
    app.core = core
    return app


def __getattr__(name):
    # ``application`` is built on first use, so importing this module (for
    # create_app, in tests) never opens ./data.
    if name == "application":
        with _application_lock:
            if "application" not in globals():
                globals()["application"] = create_app()
                settle_heap()
        return globals()["application"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_application_lock = threading.Lock()


# =============================================================================
# Command line
# =============================================================================


def settle_heap():
    """Exempt everything loaded so far from cyclic garbage collection.

    The store keeps one dict per record for the life of the process. Left to
    the collector, every full collection walks all of them, so the cost of a
    request would grow with the store; frozen, they are never scanned.
    """
    gc.collect()
    gc.freeze()


def configure_logging(level):
    """One format for oxc's, waitress's and the access log's lines."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )


def waitress_options(settings):
    """waitress settings that keep real-time listeners from starving other requests.

    Each open stream or long-poll holds a worker thread, so there are
    REALTIME_MAX_CLIENTS threads for listeners plus THREADS for everything
    else (the app refuses listeners beyond the first number). Disconnects are
    only noticed with ``channel_request_lookahead``; ``poll`` lifts select's
    limit of 1024 descriptors.
    """
    return {
        "host": settings.host,
        "port": settings.port,
        "threads": settings.threads + settings.realtime_max_clients,
        "connection_limit": max(100, 2 * settings.realtime_max_clients + 100),
        "channel_request_lookahead": 1,
        "asyncore_use_poll": True,
        "channel_timeout": 30,
        "max_request_body_size": max(settings.max_body_bytes, settings.media_max_bytes + media.UPLOAD_OVERHEAD),
        "clear_untrusted_proxy_headers": True,
        "ident": "oxc",
    }


def serve(settings):
    """Serve with waitress (guarded against slow clients: ``oxc_server``) until SIGTERM or SIGINT."""
    import oxc_server

    app = create_app(settings)
    settle_heap()
    server = oxc_server.create_server(
        app,
        per_client=settings.max_connections_per_client,
        header_timeout=settings.header_timeout,
        **waitress_options(settings),
    )

    def stop(signum, frame):
        log.info("received %s: finishing requests in flight", signal.Signals(signum).name)
        app.core.ctx.events.close()  # open streams end now instead of holding their threads
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = os.path.abspath(os.fspath(settings.data_dir))
    host, port = server.effective_host, server.effective_port
    log.info("oxc %s listening on http://%s:%s%s/ (data in %s)", __version__, host, port, settings.api_prefix, where)
    print(f"oxc listening on http://{host}:{port} (data in {where})", flush=True)
    try:
        server.run()
    finally:
        app.core.close()
        log.info("oxc stopped; store closed")


def _admin_password(args):
    if args.password_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass("New password: ")
    if first != getpass.getpass("Again: "):
        raise ValueError("the passwords differ")
    return first


def _show_progress(done, total, name):
    print(f"\r{done}/{total} {name[:60]:<60}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def admin(args, settings):
    """The ``oxc admin`` commands: they act on DATA_DIR while no server runs on it."""
    import uuid

    from handlers.http import HTTPError
    from handlers.http.fields import text
    from handlers.http.views import iso_time
    from store import backup, read_legacy

    data_dir = os.fspath(settings.data_dir)
    action = args.action
    if settings.store_url and action in ("backup", "restore", "compact"):
        print(
            f"oxc: admin {action} acts on a JSON data directory; with STORE_URL use pg_dump (or oxc migrate-store)",
            file=sys.stderr,
        )
        return 1
    try:
        if action == "backup":
            count = backup.backup(data_dir, args.file, progress=_show_progress)
            print(f"backed up {count} files of {data_dir} to {args.file}")
            return 0
        if action == "restore":
            count = backup.restore(args.file, data_dir, replace=args.force, progress=_show_progress)
            print(f"restored {count} files into {data_dir}")
            return 0
    except (FileExistsError, ValueError) as exc:
        print(f"oxc: {exc}", file=sys.stderr)
        return 1
    if action in ("verify", "repair"):
        return check_data(action, data_dir, blobs_only=bool(settings.store_url))
    store = open_store(data_dir, compact_min=settings.compact_min, url=settings.store_url or None, pool_size=2)
    try:
        if action == "compact":
            store.compact()
            print(f"compacted {data_dir}")
        elif action == "import-0xc":
            users, messages, sessions = read_legacy(args.source)
            if store.find_user(users[0]["username"]) if users else False:
                print("oxc: the data directory already holds these users", file=sys.stderr)
                return 1
            store.import_legacy((users, messages, sessions))
            print(f"imported {len(users)} users, {len(messages)} messages, {len(sessions)} sessions")
        else:
            passwords = Passwords(settings.bcrypt_rounds)
            password = auth.check_new_password({"password": _admin_password(args)})
            if action == "create-user":
                username = text({"username": args.username}, "username", max_length=32)
                if not auth.USERNAME.match(username):
                    raise HTTPError("usernames are 3 to 32 letters, digits, '_' or '-'", status=400)
                store.create_user(
                    {
                        "id": str(uuid.uuid4()),
                        "username": username,
                        "email": args.email,
                        "password_hash": passwords.hash(password),
                        "created_at": iso_time(time.time()),
                    }
                )
                print(f"created {username}")
            else:
                user = store.find_user(args.username)
                if user is None:
                    print(f"oxc: no user {args.username}", file=sys.stderr)
                    return 1
                store.update_user(user["id"], {"password_hash": passwords.hash(password)})
                ended = store.delete_user_sessions(user["id"])
                print(f"password of {user['username']} reset; {ended} sessions ended")
        return 0
    except (HTTPError, StoreConflict, ValueError) as exc:
        print(f"oxc: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    finally:
        store.close()


def check_data(action, data_dir, blobs_only):
    """``oxc admin verify`` (exit 1 when anything is damaged) and ``oxc admin repair``."""
    from store import integrity

    if not os.path.isdir(data_dir):
        print(f"oxc: {data_dir} is not a directory", file=sys.stderr)
        return 1
    if action == "verify":
        damage = integrity.verify(data_dir, blobs_only=blobs_only)
        for row in damage:
            print(f"damaged: {row}")
        what = "attachment blobs" if blobs_only else "journal, snapshot and attachment blobs"
        print(
            f"{len(damage)} damaged in {data_dir} ({what} checked)"
            if damage
            else f"no damage in {data_dir} ({what} checked)"
        )
        return 1 if damage else 0
    if blobs_only:
        print("oxc: with STORE_URL, repair acts on no database; verify lists damaged blobs", file=sys.stderr)
        return 1
    lost = integrity.repair(data_dir)
    print(
        f"repaired {data_dir}: {len(lost)} records or files could not be kept"
        if lost
        else f"no damage in {data_dir}; nothing changed"
    )
    return 0


def migrate(args, settings):
    """``oxc migrate [--show]`` and ``oxc migrate-store --from SRC --to DST``."""
    try:
        from store import postgres, transfer
    except ImportError as exc:
        print(f"oxc: PostgreSQL needs psycopg 3: pip install 'oxc[postgres]' ({exc})", file=sys.stderr)
        return 1
    if args.command == "migrate-store":
        blobs = args.blobs or os.path.join(os.fspath(settings.data_dir), "blobs")
        counts = transfer.copy_store(args.source, args.destination, blob_dir=blobs, progress=_show_progress)
        print(
            f"copied {sum(counts.values())} records ({', '.join(f'{n} {t}' for t, n in counts.items() if n)}) "
            f"to {'the database' if transfer.is_url(args.destination) else args.destination}"
        )
        return 0
    if not postgres.is_url(settings.store_url):
        print("oxc: migrate needs STORE_URL=postgresql://...", file=sys.stderr)
        return 1
    if not args.show:
        for version, name in postgres.migrate(settings.store_url):
            print(f"applied {version:04d}_{name}")
    version, newest = postgres.current_version(settings.store_url)
    print(f"schema version {version} (this oxc's newest: {newest})")
    return 0


def build_parser():
    """The command line: serve, admin actions, and the client commands of oxc_client."""
    parser = argparse.ArgumentParser(prog="oxc", description="oxc chat service and client")
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="serve the API with waitress (the default)")
    serve_parser.add_argument("--host")
    serve_parser.add_argument("--port", type=int)
    serve_parser.add_argument("--data-dir")
    serve_parser.add_argument("--threads", type=int)
    admin_parser = commands.add_parser("admin", help="act on a data directory while its server is stopped")
    admin_parser.add_argument("--data-dir")
    actions = admin_parser.add_subparsers(dest="action", required=True)
    for name, help in (("create-user", "create an account"), ("reset-password", "set a user's password")):
        sub = actions.add_parser(name, help=help)
        sub.add_argument("username")
        sub.add_argument("--password-stdin", action="store_true")
        if name == "create-user":
            sub.add_argument("--email")
    actions.add_parser("compact", help="write a fresh snapshot and drop the journal")
    actions.add_parser(
        "verify",
        help="check every journal record, the snapshot and every attachment's "
        "bytes; exit 1 if anything is damaged (safe while the server runs)",
    )
    actions.add_parser(
        "repair",
        help="make a damaged store open again, keeping a copy of every damaged "
        "file and naming every record it could not keep (the server must be stopped)",
    )
    sub = actions.add_parser("backup", help="write the whole store to a .tar.gz file")
    sub.add_argument("file")
    sub = actions.add_parser("restore", help="replace the store with a backup")
    sub.add_argument("file")
    sub.add_argument("--force", action="store_true", help="replace an existing store")
    sub = actions.add_parser("import-0xc", help="import an existing 0xC data directory")
    sub.add_argument("source")
    migrate_parser = commands.add_parser("migrate", help="create or upgrade the PostgreSQL schema at STORE_URL")
    migrate_parser.add_argument("--show", action="store_true", help="only show the schema version")
    move_parser = commands.add_parser(
        "migrate-store", help="copy a whole store between a data directory and PostgreSQL (either way)"
    )
    move_parser.add_argument(
        "--from", dest="source", required=True, metavar="SRC", help="a data directory or a postgresql:// URL"
    )
    move_parser.add_argument(
        "--to",
        dest="destination",
        required=True,
        metavar="DST",
        help="an empty data directory or an empty postgresql:// database",
    )
    move_parser.add_argument(
        "--blobs", help="where the PostgreSQL side keeps attachment bytes (default: DATA_DIR/blobs)"
    )
    oxc_client.add_client_commands(commands, [oxc_client.client_options(argparse.ArgumentParser(add_help=False))])
    return parser


def main(argv=None):
    """``oxc [serve|admin ...|register|login|send|tail -f|...]``; with no command, serve."""
    args = build_parser().parse_args(argv)
    if args.command in oxc_client.CLIENT_COMMANDS:
        return oxc_client.run_client_command(args)
    try:
        settings = Settings.from_environ()
        overrides = {name: getattr(args, name, None) for name in ("host", "port", "data_dir", "threads")}
        settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        settings.check()
    except ConfigError as exc:
        print(f"oxc: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        if args.command == "admin":
            return admin(args, settings)
        if args.command in ("migrate", "migrate-store"):
            return migrate(args, settings)
        serve(settings)
    except StoreError as exc:
        print(f"oxc: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"oxc: {exc}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
