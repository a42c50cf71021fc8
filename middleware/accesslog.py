"""Give every request an id, log one line per answer, and turn crashes into 500s.

Usage, as the outermost layer::

    app = AccessLog(app)                      # logs to logging.getLogger("oxc.access")
    app = AccessLog(app, logger=my_logger)

The request id is the incoming ``X-Request-ID`` when it is 1-64 characters of
``[A-Za-z0-9._-]``, otherwise a fresh random one. It is stored in
``environ["oxc.request_id"]`` for inner layers and handlers, and sent back as
``X-Request-ID``.

When the answer's body has been sent and closed, one INFO line is logged::

    GET /api/chats 200 3.1ms rid=5f0c2a9e1b7d4c36

The path is SCRIPT_NAME + PATH_INFO without the query string, which may hold
secrets such as stream tickets; characters outside printable ASCII are
percent-encoded so that a path cannot forge log lines.

An exception that escapes the app before its answer has started is logged
with its traceback and answered with a 500 envelope that leaks nothing.
Only Exception is caught: KeyboardInterrupt and SystemExit go through.
"""

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
        self._logged = False

    def start_response(self, status, headers, exc_info=None):
        self.status_code = int(status.split(" ", 1)[0])
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
        self._access_log.logger.info("%s %s %s %.1fms rid=%s", method, path, status, duration_ms, self.request_id)


class _LoggedBody:
    """Wraps the answer's iterable so that close() reaches it and the log line comes last."""

    def __init__(self, body, exchange):
        self._body = body
        self._exchange = exchange
        self._sent_bytes = False

    def __iter__(self):
        try:
            for chunk in self._body:
                if chunk:
                    self._sent_bytes = True
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

    def __init__(self, app, logger=None, clock=time.perf_counter):
        if logger is None:
            logger = logging.getLogger("oxc.access")
        if not (callable(getattr(logger, "info", None)) and callable(getattr(logger, "exception", None))):
            raise ValueError("AccessLog logger must be a logging.Logger or have info() and exception()")
        if not callable(clock):
            raise ValueError("AccessLog clock must be callable")
        self.app = app
        self.logger = logger
        self.clock = clock

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
