"""oxc's settings: every variable declared once, read from the environment and ``.env``.

Each field of :class:`Settings` is one declaration made with :func:`setting`:
its environment variable, the parser that turns text into the value, the
default and the documentation. Everything else is derived from it: reading the
environment (:meth:`Settings.from_environ`), the keyword overrides
``create_app(data_dir=...)`` accepts (the field names), the README's settings
table and ``.env.example`` (a test checks both against the declarations)::

    settings = Settings.from_environ()            # os.environ over ./.env
    settings = dataclasses.replace(settings, port=8080)
    settings.check()                               # ConfigError where unsafe

Stdlib only, apart from the push URL checks every delivery makes.
"""

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

from handlers.services import push

__all__ = [
    "DEV_API_KEY",
    "DEV_JWT_SECRET",
    "ConfigError",
    "Settings",
    "VARIABLES",
    "Variable",
    "env_example_value",
    "read_env_file",
    "readme_table",
]

DEV_JWT_SECRET = "jwt-secret-key-for-0xC-chat-development-only"
DEV_API_KEY = "dev-key-for-0xC-chat"
MIN_SECRET_BYTES = 32
ENVIRONMENTS = ("development", "testing", "production")

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a value oxc cannot run with; the message names it."""


# =============================================================================
# Parsers: text of an environment variable to a value, ValueError saying why not
# =============================================================================


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be from {low} to {high}" if high is not None else f"must be at least {low}")
        return value

    return parse


def _origins(text: str) -> str | tuple[str, ...]:
    text = text.strip()
    if text == "*":
        return "*"
    return tuple(origin.strip().rstrip("/") for origin in text.split(",") if origin.strip())


def _prefix(text: str) -> str:
    text = text.strip().rstrip("/")
    if text and not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", text):
        raise ValueError("must look like /api (or be empty)")
    return text


def _log_level(text: str) -> str:
    name = text.strip().upper()
    if name not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return name


def _environment(text: str) -> str:
    name = text.strip().lower()
    if name not in ENVIRONMENTS:
        raise ValueError("must be development, testing or production")
    return name


def _string(text: str) -> str:
    return text


def _media_types(text: str) -> tuple[str, ...]:
    types = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    if not types or not all(re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+*-]+", item) for item in types):
        raise ValueError("must be a comma-separated list of MIME types like image/png")
    return types


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of: {', '.join(allowed)}")
        return value

    return parse


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _url(text: str) -> str:
    text = text.strip()
    if text and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise ValueError("must be an http(s) URL")
    if text:
        push.parse_url(text)  # the checks every delivery makes (no user@, no backslash ...)
    return text


def _networks(text: str) -> tuple[str, ...]:
    names = _names(text)
    push.allowed_networks(names)
    return names


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not 0.05 <= value <= 300:
        raise ValueError("must be from 0.05 to 300 seconds")
    return value


# =============================================================================
# Declarations
# =============================================================================


class Variable(NamedTuple):
    """One setting as declared: its Settings field, environment name, parser, default and meaning."""

    field: str
    name: str
    parse: Callable[[str], Any]
    default: Any
    doc: str
    unset: str


def setting(name: str, parse: Callable[[str], Any], default: T, doc: str, *, unset: str = "(none)") -> T:
    """Declare a Settings field read from environment variable ``name``.

    ``unset`` is how the documentation shows an empty default.
    """
    metadata = {"name": name, "parse": parse, "doc": doc, "unset": unset}
    field: T = dataclasses.field(default=default, metadata=metadata)
    return field


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


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything configurable. The defaults are 0xC's, except HOST, which is
    loopback so that a development server is not public."""

    environment: str = setting(
        "OXC_ENV",
        _environment,
        "development",
        "development, testing or production. Production refuses to start with a short (< 32 bytes) "
        "`JWT_SECRET_KEY` (an unset one is generated), a default `SECRET_KEY` when the API key is on, or "
        "`BCRYPT_ROUNDS` < 12. `FLASK_ENV` is read when `OXC_ENV` is absent.",
    )
    host: str = setting(
        "HOST",
        _string,
        "127.0.0.1",
        "the address `oxc serve` listens on (0.0.0.0: every interface)",
    )
    port: int = setting(
        "PORT",
        _integer(0, 65535),
        5000,
        "the port `oxc serve` listens on",
    )
    secret_key: str = setting(
        "SECRET_KEY",
        _string,
        DEV_API_KEY,
        "the API key for `X-API-Key`",
    )
    secret_key_enabled: bool = setting(
        "SECRET_KEY_ENABLED",
        _boolean,
        False,
        "require the API key",
    )
    jwt_secret_key: str = setting(
        "JWT_SECRET_KEY",
        _string,
        "",
        "signs access tokens; unset: a random key generated on first start and kept in `DATA_DIR/signing.key`"
        " (mode 0600) or, with `STORE_URL`, in the database (see [Security](#security)). The development "
        "value older `.env.example` files held is refused.",
        unset="(generated)",
    )
    register_enabled: bool = setting(
        "REGISTER_ENABLED",
        _boolean,
        True,
        "allow registration",
    )
    access_token_expires: int = setting(
        "ACCESS_TOKEN_EXPIRES",
        _integer(1, 24 * 60),
        15,
        "access token lifetime, minutes",
    )
    token_refresh_seconds: int = setting(
        "TOKEN_REFRESH_SECONDS",
        _integer(0),
        600,
        "`refresh_at` = issued + this",
    )
    refresh_token_expires: int = setting(
        "REFRESH_TOKEN_EXPIRES",
        _integer(1, 3650),
        30,
        "refresh token lifetime, days",
    )
    refresh_token_rotation: bool = setting(
        "REFRESH_TOKEN_ROTATION",
        _boolean,
        True,
        "rotate refresh tokens (see Tokens)",
    )
    refresh_reuse_grace: int = setting(
        "REFRESH_REUSE_GRACE",
        _integer(0, 300),
        10,
        "seconds a just-retired refresh token is refused without ending the session",
    )
    api_prefix: str = setting(
        "API_PREFIX",
        _prefix,
        "/api",
        "prefix of every API path",
    )
    log_level: str = setting(
        "LOG_LEVEL",
        _log_level,
        "INFO",
        "DEBUG, INFO, WARNING, ERROR, CRITICAL",
    )
    log_format: str = setting(
        "LOG_FORMAT",
        _choice("text", "json"),
        "text",
        "`text`, or `json` for one JSON object per line",
    )
    trusted_proxy: str = setting(
        "TRUSTED_PROXY",
        _string,
        "",
        "address of the reverse proxy in front of oxc (`*`: any); requests from it take their client address "
        "from `X-Forwarded-For`, which is otherwise ignored",
    )
    data_dir: str | os.PathLike[str] | None = setting(
        "DATA_DIR",
        _string,
        "data",
        "where the store lives (with `STORE_URL`: only attachment bytes, in `blobs/`)",
    )
    cors_origins: str | tuple[str, ...] = setting(
        "CORS_ORIGINS",
        _origins,
        "*",
        "`*` or a comma-separated list of exact origins",
    )
    rate_limit_enabled: bool = setting(
        "RATE_LIMIT_ENABLED",
        _boolean,
        False,
        "per-client token-bucket rate limit",
    )
    rate_limit: int = setting(
        "RATE_LIMIT",
        _integer(1),
        100,
        "requests per minute per client address",
    )
    auth_rate_limit: int = setting(
        "AUTH_RATE_LIMIT",
        _integer(1),
        10,
        "requests per minute per client address to the auth endpoints together (register, login, refresh, "
        "verification and reset; with `RATE_LIMIT_ENABLED=1` and `AUTH_RATE_LIMIT_ENABLED=0`: login and "
        "register)",
    )
    auth_rate_limit_enabled: bool = setting(
        "AUTH_RATE_LIMIT_ENABLED",
        _boolean,
        True,
        "throttle the auth endpoints per client (`AUTH_RATE_LIMIT`) even when `RATE_LIMIT_ENABLED=0`; behind "
        "a reverse proxy pass the client address, or every client shares one budget",
    )
    max_message_length: int = setting(
        "MAX_MESSAGE_LENGTH",
        _integer(1, 1_000_000),
        1000,
        "characters in a message",
    )
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES",
        _integer(1024),
        64 * 1024,
        "larger request bodies get 413",
    )
    bcrypt_rounds: int = setting(
        "BCRYPT_ROUNDS",
        _integer(4, 16),
        12,
        "bcrypt cost",
    )
    threads: int = setting(
        "THREADS",
        _integer(1, 1024),
        8,
        "waitress threads for ordinary requests (`oxc serve` adds one per real-time listener)",
    )
    max_connections_per_client: int = setting(
        "MAX_CONNECTIONS_PER_CLIENT",
        _integer(0, 100_000),
        50,
        "connections one client address may hold in `oxc serve` while not being served (still sending a "
        "request, or idle between requests); more are closed at once; 0: no cap (behind a reverse proxy, "
        "which must cap instead)",
    )
    header_timeout: int = setting(
        "HEADER_TIMEOUT",
        _integer(0, 300),
        10,
        "seconds a connection to `oxc serve` has to send a request's headers before it is closed; 0: no deadline",
    )
    compact_min: int = setting(
        "STORE_COMPACT_MIN",
        _integer(10),
        10_000,
        "journal records before a snapshot is considered",
    )
    store_free_space_reserve: int = setting(
        "STORE_FREE_SPACE_RESERVE",
        _integer(0),
        64 * 1024 * 1024,
        "bytes of disk kept free (64 MiB): the journal refuses writes below it, attachment uploads already "
        "below twice as much (503 with `Retry-After`); 0: none",
    )
    store_url: str = setting(
        "STORE_URL",
        _string,
        "",
        "`postgresql://user:password@host:port/database`: keep the store in [PostgreSQL](#postgresql) (needs "
        "the `postgres` extra); none: the JSON store under `DATA_DIR`",
    )
    db_pool_size: int = setting(
        "DB_POOL_SIZE",
        _integer(1, 1000),
        10,
        "PostgreSQL connections held open at most (1-1000)",
    )
    realtime_max_clients: int = setting(
        "REALTIME_MAX_CLIENTS",
        _integer(1, 100_000),
        100,
        "open streams and polls per process; more get 503",
    )
    realtime_max_per_user: int = setting(
        "REALTIME_MAX_PER_USER",
        _integer(1, 100_000),
        5,
        "open streams and polls one user may hold per process; more get 429 with `Retry-After`",
    )
    sse_heartbeat: float = setting(
        "SSE_HEARTBEAT",
        _seconds,
        15.0,
        "seconds between SSE heartbeat comments",
    )
    events_kept: int = setting(
        "EVENTS_KEPT",
        _integer(10, 10_000_000),
        10_000,
        "events kept for resuming; older cursors get 410",
    )
    media_max_bytes: int = setting(
        "MEDIA_MAX_BYTES",
        _integer(1024),
        25 * 1024 * 1024,
        "largest attachment (25 MB); larger files get 413",
    )
    media_types: tuple[str, ...] = setting(
        "MEDIA_ALLOWED_TYPES",
        _media_types,
        DEFAULT_MEDIA_TYPES,
        "comma-separated MIME types an attachment may have (`image/*` allowed); others get 415",
    )
    attachment_quota_bytes: int = setting(
        "ATTACHMENT_QUOTA_BYTES",
        _integer(0),
        1024 * 1024 * 1024,
        "bytes of attachments each user may keep (thumbnails not counted); more gets 413; 0: no limit",
    )
    thumbnail_concurrency: int = setting(
        "THUMBNAIL_CONCURRENCY",
        _integer(1, 64),
        2,
        "thumbnails made at once per process (1-64), each within 128 MiB of memory; an upload waiting 3 s for"
        " a slot is kept without a thumbnail",
    )
    smtp_host: str = setting(
        "SMTP_HOST",
        _string,
        "",
        "the SMTP server for codes; none: codes go to the log in development",
    )
    smtp_port: int = setting(
        "SMTP_PORT",
        _integer(1, 65535),
        587,
        "the SMTP server's port",
    )
    smtp_security: str = setting(
        "SMTP_SECURITY",
        _choice("starttls", "ssl", "none"),
        "starttls",
        "starttls, ssl or none",
    )
    smtp_user: str = setting(
        "SMTP_USER",
        _string,
        "",
        "SMTP login name, if needed",
    )
    smtp_password: str = setting(
        "SMTP_PASSWORD",
        _string,
        "",
        "SMTP password, if needed",
    )
    mail_from: str = setting(
        "MAIL_FROM",
        _string,
        "oxc@localhost",
        "the sender of mail",
    )
    require_verified_email: bool = setting(
        "REQUIRE_VERIFIED_EMAIL",
        _boolean,
        False,
        "unverified users may not log in (and registration needs an e-mail)",
    )
    admins: tuple[str, ...] = setting(
        "ADMINS",
        _names,
        (),
        "comma-separated usernames of the server's admins",
    )
    push_webhook_url: str = setting(
        "PUSH_WEBHOOK_URL",
        _url,
        "",
        "where every notification is POSTed, signed",
    )
    push_webhook_secret: str = setting(
        "PUSH_WEBHOOK_SECRET",
        _string,
        "",
        "the HMAC key for push signatures (16+ characters; required in production with a URL)",
    )
    push_max_attempts: int = setting(
        "PUSH_MAX_ATTEMPTS",
        _integer(1, 100),
        8,
        "tries before a delivery becomes a dead letter",
    )
    push_queue_max: int = setting(
        "PUSH_QUEUE_MAX",
        _integer(1),
        10_000,
        "deliveries waiting at most",
    )
    push_device_hosts: tuple[str, ...] = setting(
        "PUSH_DEVICE_HOSTS",
        _names,
        (),
        "hosts allowed in users' device endpoints",
    )
    push_allowed_addresses: tuple[str, ...] = setting(
        "PUSH_ALLOWED_ADDRESSES",
        _networks,
        (),
        "comma-separated addresses or CIDR networks pushes may reach although they are loopback, private, "
        "link-local, reserved or metadata addresses, on any port; otherwise only public addresses on ports 80"
        " and 443 (this applies to `PUSH_WEBHOOK_URL` too)",
    )
    web_enabled: bool = setting(
        "WEB_UI_ENABLED",
        _boolean,
        True,
        "serve the [web chat page](#web-chat-page) at `/` to browsers and its files under `/static/`",
    )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, env_file: Any = ".env") -> "Settings":
        """Settings from ``environ`` (default os.environ) over a ``.env`` file."""
        environ = os.environ if environ is None else environ
        values = dict(read_env_file(env_file)) if env_file and os.path.exists(env_file) else {}
        values.update(environ)
        if "OXC_ENV" not in values and "FLASK_ENV" in values:
            values["OXC_ENV"] = values["FLASK_ENV"]
        fields = {}
        for variable in VARIABLES:
            if variable.name in values:
                try:
                    fields[variable.field] = variable.parse(values[variable.name])
                except ValueError as exc:
                    raise ConfigError(f"{variable.name} {exc} (got {values[variable.name]!r})") from None
        return cls(**fields)

    def check(self) -> None:
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


def _variables() -> Iterator[Variable]:
    for field in dataclasses.fields(Settings):
        meta = field.metadata
        yield Variable(field.name, meta["name"], meta["parse"], field.default, meta["doc"], meta["unset"])


#: Every setting as declared, in declaration order.
VARIABLES: tuple[Variable, ...] = tuple(_variables())


# =============================================================================
# The .env file and the documentation derived from the declarations
# =============================================================================


def read_env_file(path: Any) -> list[tuple[str, str]]:
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


def env_example_value(variable: Variable, separator: str = ",") -> str:
    """The default of ``variable`` written as its environment text (``.env.example``)."""
    value = variable.default
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return separator.join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def readme_table() -> str:
    """The README's settings table (Markdown), one row per declared variable.

    Each row names the variable and the ``create_app`` keyword that overrides it (the Settings field).
    """
    rows = ["| Variable | `create_app` keyword | Default | Meaning |", "|---|---|---|---|"]
    for variable in VARIABLES:
        shown = env_example_value(variable, separator=", ") or variable.unset
        rows.append(f"| `{variable.name}` | `{variable.field}` | {shown} | {variable.doc} |")
    return "\n".join(rows) + "\n"
