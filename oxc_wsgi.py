"""oxc: a chat service as one plain WSGI application.

Serve it::

    oxc serve                                  # waitress on HOST:PORT
    waitress-serve oxc_wsgi:application        # or any WSGI server
    python oxc_wsgi.py

Embed it::

    from oxc_wsgi import create_app
    app = create_app(data_dir="/var/lib/chat", api_prefix="/api")

This module is the front door. In order: the HTTP primitives (Request, the
Router, turning answers into WSGI calls), the route table, ``create_app``
which composes the middleware around the app, the lazily built module-level
``application``, and ``main``. Settings are declared in ``oxc_settings`` (and
re-exported here), the command line lives in ``oxc_cli`` (imported only by
``main``, so that the server never imports the client), the handlers in
``handlers/``, persistence in ``store/``, the outer layers in ``middleware/``;
nothing in them imports this module.
"""

import dataclasses
import gc
import logging
import os
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any, Protocol

import middleware
from handlers import (
    accounts,
    auth,
    chat_messages,
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
    body_length,
    declare,
    json_response,
)
from handlers.http.body import json_object, without_nul
from handlers.services.hub import Hub
from handlers.services.mail import Mailer
from handlers.services.notifier import Notifier
from handlers.services.passwords import Passwords
from handlers.services.push import PushWorker
from handlers.services.thumbnails import Thumbnails, imaging, thumbnail_support
from handlers.services.tokens import AccessTokens, signing_secret
from middleware.accesslog import install_default_handler
from oxc_settings import DEV_JWT_SECRET, ConfigError, Settings, read_env_file
from store import StoreLocked, StoreUnavailable, open_store

__version__ = "0.1.0"

# The front door's names; the settings ones live in oxc_settings and are re-exported here.
__all__ = [
    "DEV_JWT_SECRET",
    "App",
    "ConfigError",
    "Request",
    "Route",
    "Router",
    "Settings",
    "create_app",
    "main",
    "read_env_file",
    "routes",
]

log = logging.getLogger("oxc")

#: A WSGI environ, a WSGI start_response, a handler (the request and URL parameters in, data or a Response out).
Environ = dict[str, Any]
StartResponse = Callable[..., Any]
Handler = Callable[..., Any]

# =============================================================================
# Request
# =============================================================================

JSON_TYPES = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")


class Request:
    """A thin, lazy view over the WSGI environ, plus what routing learned."""

    __slots__ = ("environ", "ctx", "user", "claims", "_query", "_json")

    def __init__(self, environ: Environ, ctx: "Context") -> None:
        self.environ = environ
        self.ctx = ctx
        self.user: dict[str, Any] | None = None
        self.claims: dict[str, Any] | None = None
        self._query: dict[str, str] | None = None
        self._json: dict[str, Any] | None = None

    @property
    def method(self) -> str:
        return self.environ["REQUEST_METHOD"].upper()

    @property
    def path(self) -> str:
        return self.environ.get("PATH_INFO") or "/"

    @property
    def script_name(self) -> str:
        return self.environ.get("SCRIPT_NAME", "").rstrip("/")

    @property
    def query(self) -> dict[str, str]:
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
            query: dict[str, str] = {}
            for name, value in pairs:
                query.setdefault(without_nul(name), without_nul(value))
            self._query = query
        return self._query

    def header(self, name: str, default: str | None = None) -> str | None:
        """A request header by its HTTP name."""
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        return self.environ.get(key, default)

    def body(self) -> bytes:
        """The raw body: exactly CONTENT_LENGTH bytes."""
        length = body_length(self.environ)
        if not length:
            return b""
        data = self.environ["wsgi.input"].read(length)
        if len(data) < length:
            raise BadRequest("Request body is shorter than its Content-Length")
        return data

    @property
    def json(self) -> dict[str, Any]:
        """The body as a JSON object, with every way it can be wrong a 4xx."""
        if self._json is None:
            media_type = self.environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
            if not JSON_TYPES.match(media_type):
                raise UnsupportedMediaType("Content-Type must be application/json")
            data = self.body()
            if not data:
                raise BadRequest("Request body must be a JSON object")
            self._json = json_object(data)
        return self._json


# =============================================================================
# Router
# =============================================================================


class Route:
    """One line of the route table."""

    __slots__ = ("method", "template", "handler", "auth", "pattern")

    def __init__(self, method: str, template: str, handler: Handler, auth: bool) -> None:
        self.method = method
        self.template = template
        self.handler = handler
        self.auth = auth
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", re.escape(template).replace(r"\{", "{").replace(r"\}", "}"))
        self.pattern = re.compile(regex + r"\Z")

    @property
    def name(self) -> str:
        return self.handler.__name__


class Router:
    """Matches (method, path) against templates like ``/messages/{message_id}``."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)
        # Most paths are literal; a dict finds them without trying every regex.
        # The others are filed by their number of segments and the literal
        # segments they start with, so a request tries only a few regexes.
        self._literal: dict[str, list[Route]] = {}
        self._patterns: dict[tuple[int, tuple[str, ...]], list[Route]] = {}
        for route in self.routes:
            if "{" in route.template:
                self._patterns.setdefault(self._shape(route.template), []).append(route)
            else:
                self._literal.setdefault(route.template, []).append(route)

    @staticmethod
    def _shape(template: str) -> tuple[int, tuple[str, ...]]:
        segments = template.split("/")
        head = []
        for segment in segments[:3]:
            if "{" in segment:
                break
            head.append(segment)
        return len(segments), tuple(head)

    def _pattern_candidates(self, path: str) -> Iterator[Route]:
        count = path.count("/") + 1
        segments = path.split("/", 3)[:3]
        for depth in range(len(segments), -1, -1):
            yield from self._patterns.get((count, tuple(segments[:depth])), ())

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route and URL parameters; NotFound or MethodNotAllowed otherwise."""
        if "\x00" in path:  # no id holds one, and PostgreSQL cannot even be asked about it
            raise NotFound("No such endpoint")
        candidates: list[tuple[Route, dict[str, str]]] = [(route, {}) for route in self._literal.get(path, ())]
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


class Context:
    """What handlers reach through ``req.ctx``: settings, store and services."""

    def __init__(self, settings: Settings, store: Any, clock: Callable[[], float], version: str) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.version = version
        self.routes: list[Route] = []  # the route table, set by create_app (the document is made from it)
        self.declarations: dict[Any, Any] = {}  # each route's declaration, resolved by create_app
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
        self.thumbnails = Thumbnails(settings.thumbnail_concurrency)
        self.push = PushWorker(store, settings, clock)
        self.notifier = Notifier(self, self.push)
        self.events.subscribe(self.notifier)
        if store.next_push_time() is not None:
            self.push.start()  # deliveries queued before a restart


class App:
    """The WSGI application proper: route, authenticate, call, answer."""

    def __init__(self, ctx: Context, router: Router) -> None:
        self.ctx = ctx
        self.router = router

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        req = Request(environ, self.ctx)
        try:
            script_name = environ.get("SCRIPT_NAME", "")
            if not environ.get("PATH_INFO") and script_name and not script_name.endswith("/"):
                # Mounted at /chat and asked for /chat: the page's relative links only work from /chat/.
                answer: Any = mount_point_redirect(environ)
            else:
                route, params = self.router.match(req.method, req.path)
                if route.auth:
                    req.user = auth.authenticate(req)
                    environ["oxc.user_id"] = req.user["id"]  # for the access line
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

    def close(self) -> None:
        """End event streams, stop pushing and close the store (flushing it)."""
        self.ctx.events.close()
        self.ctx.notifier.close()
        self.ctx.push.close()
        self.ctx.store.close()


STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


def mount_point_redirect(environ: Environ) -> Response:
    """308 from the mount point itself (SCRIPT_NAME, empty PATH_INFO) to SCRIPT_NAME + "/", query kept."""
    # WSGI strings are bytes decoded as latin-1: quote those bytes, not the characters.
    location = urllib.parse.quote(environ["SCRIPT_NAME"].encode("latin-1"), safe="/!$&'()*+,;=:@") + "/"
    if environ.get("QUERY_STRING"):
        location += "?" + environ["QUERY_STRING"]
    return json_response({"status": "success", "message": f"Moved to {location}"}, 308, [("Location", location)])


# =============================================================================
# Routes and composition
# =============================================================================


def routes(prefix: str) -> list[Route]:
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
        Route("GET", f"{p}/chats/{{chat_id}}/messages", chat_messages.get_chat_messages, True),
        Route("POST", f"{p}/chats/{{chat_id}}/messages", chat_messages.post_chat_message, True),
        Route("PATCH", f"{p}/chats/{{chat_id}}/messages/{{message_id}}", chat_messages.patch_chat_message, True),
        Route("DELETE", f"{p}/chats/{{chat_id}}/messages/{{message_id}}", chat_messages.delete_chat_message, True),
        Route("GET", f"{p}/chats/{{chat_id}}/messages/{{message_id}}/receipts", chat_messages.get_receipts, True),
        Route("POST", f"{p}/chats/{{chat_id}}/read", chat_messages.post_read, True),
        Route("POST", f"{p}/chats/{{chat_id}}/delivered", chat_messages.post_delivered, True),
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


class OxcApp(Protocol):
    """What create_app returns: a WSGI callable, with the App inside the middleware as ``core``."""

    core: App

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]: ...


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], float] = time.time,
    store: Any = None,
    **overrides: Any,
) -> OxcApp:
    """A ready WSGI app: the handlers wrapped in oxc's middleware.

    Args:
        settings: a Settings; by default read from the environment and ``.env``.
        clock: the time source for tokens and timestamps (tests inject one).
        store: an open Store to use instead of opening ``settings.data_dir``.
        overrides: Settings fields to replace, e.g. ``data_dir=tmp_path`` (any other name is a TypeError).
    """
    settings = settings or Settings.from_environ()
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
    settings.check()
    # Before anything logs: under a server that configured no logging (waitress-serve, gunicorn) this is
    # what makes the start-up warnings, the access lines and the development codes visible.
    install_default_handler(log, settings.log_level, settings.log_format)
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
    # Each endpoint's declared limits read from these settings once, here (not at import).
    ctx.declarations = declare.resolve_routes(router.routes, settings)
    core = App(ctx, router)
    app: Any = core
    # Innermost first; CORS sits outside every refusal so browsers can read them.
    uploads = re.compile(re.escape(settings.api_prefix) + r"/chats/[^/]+/attachments")
    app = middleware.BodyLimit(
        app, settings.max_body_bytes, larger=((uploads, settings.media_max_bytes + media.UPLOAD_OVERHEAD),)
    )
    log.log(logging.INFO if imaging() else logging.WARNING, "attachments: %s", thumbnail_support())
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
    app = middleware.AccessLog(app, trusted_proxy=settings.trusted_proxy)
    log_start_up(settings)
    app.core = core
    return app


def data_location(settings: Settings) -> str:
    """Where the data lives, for people: the database URL without its password, or DATA_DIR's full path."""
    if settings.store_url:
        url = urllib.parse.urlsplit(settings.store_url)
        if url.password is not None:
            host = url.netloc.rsplit("@", 1)[1]
            url = url._replace(netloc=f"{url.username or ''}:***@{host}")
        return f"database {urllib.parse.urlunsplit(url)}"
    if settings.data_dir is None:
        return "memory (nothing is kept)"
    return os.path.abspath(os.fspath(settings.data_dir))


def log_start_up(settings: Settings) -> None:
    """Say where to go (the paths, relative to wherever the server puts the app) and what to watch."""
    page = "the chat page at /, " if settings.web_enabled else ""
    log.info(
        "oxc %s ready: %sthe API at %s/, its docs at %s/docs; data in %s",
        __version__,
        page,
        settings.api_prefix,
        settings.api_prefix,
        data_location(settings),
    )
    if settings.environment == "development":
        log.warning(
            "OXC_ENV is development (the default): verification codes may go to this log and weak settings "
            "are allowed; set OXC_ENV=production to serve real users"
        )


def __getattr__(name: str) -> Any:
    # ``application`` is built on first use, so importing this module (for
    # create_app, in tests) never opens ./data.
    if name == "application":
        with _application_lock:
            if "application" not in globals():
                try:
                    globals()["application"] = create_app()
                except StoreLocked as exc:
                    # Typically a second worker of gunicorn -w N: one line, and an exit status that
                    # makes gunicorn give up (WORKER_BOOT_ERROR) instead of respawning it.
                    print(f"oxc: {exc}", file=sys.stderr, flush=True)
                    raise SystemExit(3) from None
                settle_heap()
        return globals()["application"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_application_lock = threading.Lock()


# =============================================================================
# Process helpers and the command line (in oxc_cli)
# =============================================================================


def settle_heap() -> None:
    """Exempt everything loaded so far from cyclic garbage collection.

    The store keeps one dict per record for the life of the process. Left to
    the collector, every full collection walks all of them, so the cost of a
    request would grow with the store; frozen, they are never scanned.
    """
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    """The ``oxc`` command (serve, admin, migrate, the client commands): see oxc_cli."""
    # Imported here: the command line brings the client, which the server never needs.
    import oxc_cli

    return oxc_cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
