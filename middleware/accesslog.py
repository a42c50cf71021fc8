"""Give every request an id, log one line per answer, and turn crashes into 500s.

Usage, as the outermost layer::

    app = AccessLog(app)                      # logs to logging.getLogger("oxc.access")
    app = AccessLog(app, logger=my_logger)

The request id is the incoming ``X-Request-ID`` when it is 1-64 characters of
``[A-Za-z0-9._-]``, otherwise a fresh random one. It is stored in
``environ["oxc.request_id"]`` for inner layers and handlers, and sent back as
``X-Request-ID``.

When the answer's body has been sent and closed, one INFO line is logged
with the status, the bytes of the body, the duration, the client address and
(when the app authenticated one) the user id::

    GET /api/chats 200 512B 3.1ms client=203.0.113.9 user=u_1f3a rid=5f0c2a9e1b7d4c36

The client is REMOTE_ADDR, or the last ``X-Forwarded-For`` entry when the
request comes from ``trusted_proxy`` (an address, or ``*`` for any); the app
names the user in ``environ["oxc.user_id"]``. The same facts ride on the
record as ``record.oxc`` (a dict), so that :class:`JsonFormatter` writes them
as fields.

The path is SCRIPT_NAME + PATH_INFO without the query string, which may hold
secrets such as stream tickets; characters outside printable ASCII are
percent-encoded so that a path cannot forge log lines.

An exception that escapes the app before its answer has started is logged
with its traceback and answered with a 500 envelope that leaks nothing.
Only Exception is caught: KeyboardInterrupt and SystemExit go through.

Logging wherever oxc runs: :func:`install_default_handler` gives the ``oxc``
logger a stderr handler at LOG_LEVEL, as Flask does for its app logger, only
when no handler up its chain would take its records (the host configured no
logging when the app is created); otherwise oxc's records flow into the
host's handlers, at the levels the host chose.
:func:`formatter` is the one format of both (``text`` or ``json``).
"""

import datetime
import json
import logging
import re
import secrets
import sys
import time
from urllib.parse import quote

from . import error_answer

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# RFC 3986 pchar and "/" are left readable; everything else is percent-encoded.
_LOG_SAFE = "/:@!$&'()*+,;=-._~"


def _loggable(text):
    return quote(text, safe=_LOG_SAFE, encoding="latin-1", errors="backslashreplace")


class _Exchange:
    """The state of one request/answer pair, shared by the app call and the body wrapper."""

    def __init__(self, access_log, environ, start_response, request_id, started_at):
        self._access_log = access_log
        self._environ = environ
        self._start_response = start_response
        self.request_id = request_id
        self._started_at = started_at
        self.status_code = None
        self.sent_bytes = 0
        self._logged = False

    def start_response(self, status, headers, exc_info=None):
        self.status_code = int(status.split(" ", 1)[0])
        for name, value in headers:
            if name.lower() == "content-length" and value.isdigit():
                self.sent_bytes = int(value)  # what a file wrapper sends, never counted chunk by chunk
        headers = [(name, value) for name, value in headers if name.lower() != "x-request-id"]
        headers.append(("X-Request-ID", self.request_id))
        if exc_info is None:
            return self._start_response(status, headers)
        return self._start_response(status, headers, exc_info)

    def describe(self):
        method = _loggable(self._environ.get("REQUEST_METHOD", "-"))
        path = _loggable(self._environ.get("SCRIPT_NAME", "") + self._environ.get("PATH_INFO", "")) or "/"
        return method, path

    def log_exception(self, what):
        method, path = self.describe()
        self._access_log.logger.exception("%s in %s %s rid=%s", what, method, path, self.request_id)

    def fail(self):
        """Log the exception being handled and start a 500 answer in place of the app's."""
        self.log_exception("Unhandled exception")
        # Passing exc_info lets the server replace a status the app already
        # started, or re-raise if headers already went out.
        exc_info = sys.exc_info() if self.status_code is not None else None
        try:
            return error_answer(self.start_response, 500, "Internal server error", exc_info=exc_info)
        finally:
            exc_info = None

    def log_once(self):
        if self._logged:
            return
        self._logged = True
        if not self._access_log.logger.isEnabledFor(logging.INFO):
            return  # formatting the line costs more than the rest of a cheap request
        duration_ms = (self._access_log.clock() - self._started_at) * 1000
        method, path = self.describe()
        status = "-" if self.status_code is None else self.status_code
        client = _loggable(self.client())
        user = self._environ.get("oxc.user_id")
        user_part = "" if user is None else f" user={_loggable(str(user))}"
        fields = {
            "method": method,
            "path": path,
            "status": self.status_code,
            "bytes": self.sent_bytes,
            "duration_ms": round(duration_ms, 1),
            "client": client,
            "user": user,
            "request_id": self.request_id,
        }
        self._access_log.logger.info(
            "%s %s %s %dB %.1fms client=%s%s rid=%s",
            method,
            path,
            status,
            self.sent_bytes,
            duration_ms,
            client,
            user_part,
            self.request_id,
            extra={"oxc": fields},
        )

    def client(self):
        """REMOTE_ADDR, or the address the trusted proxy says it forwarded for."""
        remote = self._environ.get("REMOTE_ADDR") or "-"
        trusted = self._access_log.trusted_proxy
        forwarded = self._environ.get("HTTP_X_FORWARDED_FOR", "")
        if forwarded and trusted and (trusted == "*" or remote == trusted):
            # Each proxy appends the address it heard from: the last entry is the one ours vouches for.
            return forwarded.rsplit(",", 1)[-1].strip() or remote
        return remote


class _LoggedBody:
    """Wraps the answer's iterable so that close() reaches it and the log line comes last."""

    def __init__(self, body, exchange):
        self._body = body
        self._exchange = exchange
        self._sent_bytes = False

    def __iter__(self):
        counted = 0
        try:
            for chunk in self._body:
                if chunk:
                    self._sent_bytes = True
                    counted += len(chunk)
                    self._exchange.sent_bytes = counted
                yield chunk
        except Exception:
            # Apps written as generators call start_response only when iterated,
            # so a crash here may still come before any header was sent.
            if self._sent_bytes:
                self._exchange.log_exception("Exception while sending the answer")
                raise
            yield from self._exchange.fail()

    def close(self):
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._exchange.log_once()


class AccessLog:
    """WSGI middleware assigning request ids, logging answers and catching crashes."""

    def __init__(self, app, logger=None, clock=time.perf_counter, trusted_proxy=""):
        if logger is None:
            logger = logging.getLogger("oxc.access")
        if not (callable(getattr(logger, "info", None)) and callable(getattr(logger, "exception", None))):
            raise ValueError("AccessLog logger must be a logging.Logger or have info() and exception()")
        if not callable(clock):
            raise ValueError("AccessLog clock must be callable")
        if not isinstance(trusted_proxy, str):
            raise ValueError("AccessLog trusted_proxy must be an address, '*' or ''")
        self.app = app
        self.logger = logger
        self.clock = clock
        self.trusted_proxy = trusted_proxy.strip()

    def __call__(self, environ, start_response):
        started_at = self.clock()
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else secrets.token_hex(8)
        environ["oxc.request_id"] = request_id
        exchange = _Exchange(self, environ, start_response, request_id, started_at)
        try:
            body = self.app(environ, exchange.start_response)
        except Exception:
            body = exchange.fail()
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(wrapper, type) and isinstance(body, wrapper):
            # Wrapping a file wrapper would hide it from the server, which then
            # could not send the file itself; log now, with the headers decided.
            exchange.log_once()
            return body
        return _LoggedBody(body, exchange)


# =============================================================================
# Where oxc's records go
# =============================================================================

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the access fields, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "oxc", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ensure_ascii keeps every line one line, whatever a message holds.
        return json.dumps(entry, ensure_ascii=True, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for LOG_FORMAT (``text`` or ``json``)."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


class DefaultHandler(logging.StreamHandler):
    """The handler oxc installs when the host configured none: lines to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        # Looked up at each line, so a stderr replaced later (a test, a daemon) is honoured.
        self.stream = sys.stderr
        super().emit(record)


def _has_handler(logger: logging.Logger) -> bool:
    """Whether a handler up the chain (the last-resort one aside) takes the logger's records."""
    level = logger.getEffectiveLevel()
    current: logging.Logger | None = logger
    while current is not None:
        if any(handler.level <= level for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def install_default_handler(logger: logging.Logger, level: str, log_format: str) -> bool:
    """Give ``logger`` a stderr handler at ``level`` unless the host's logging already takes its records.

    Decided afresh at each call (each create_app): a handler installed before
    is re-tuned, or taken away once the host has handlers of its own. Returns
    whether oxc's handler is in place.
    """
    ours = [handler for handler in logger.handlers if isinstance(handler, DefaultHandler)]
    for handler in ours:
        logger.removeHandler(handler)
    if ours:
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    if _has_handler(logger):
        return False
    handler = ours[0] if ours else DefaultHandler()
    handler.setFormatter(formatter(log_format))
    logger.addHandler(handler)
    logger.setLevel(level)
    # Not also handed up: waitress's serve() calls logging.basicConfig() after the app is built, and
    # every line would be printed twice. A host that wants oxc's records configures logging first.
    logger.propagate = False
    return True
