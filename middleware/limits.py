"""Refuse request bodies larger than a configured maximum.

Usage::

    app = BodyLimit(app, max_bytes=1 << 20)
    app = BodyLimit(app, max_bytes=1 << 16, larger=((re.compile(r"/api/chats/[^/]+/attachments"), 25 << 20),))

``larger`` gives some paths (PATH_INFO matching a pattern in full) their own,
usually higher, maximum: uploads need megabytes where JSON needs kilobytes.
The first matching pattern wins.

The primary check is CONTENT_LENGTH: a value that is not a non-negative
integer gets 400 "Invalid Content-Length", one above ``max_bytes`` gets 413
before a byte of the body is read. ``wsgi.input`` is then wrapped so that the
app can never read more than the declared length, and, for bodies without a
declared length, never more than ``max_bytes``: reading past that raises
:class:`BodyTooLarge` (a ValueError), which becomes a 413 if the app lets it
escape. Set the server's own limit too (waitress ``max_request_body_size``).
"""

import re
import sys

from . import error_answer
from .wire import InvalidLength, declared_length


class BodyTooLarge(ValueError):
    """Raised by the wrapped wsgi.input when a body without a declared length exceeds the limit."""


class _LimitedInput:
    """A wsgi.input that returns at most ``limit`` bytes, optionally raising when more arrive."""

    def __init__(self, stream, limit, overflow_raises):
        self._stream = stream
        self._limit = limit
        self._overflow_raises = overflow_raises
        self._consumed = 0

    def _allowance(self, size):
        left = self._limit - self._consumed
        # One byte beyond the limit is requested to find out whether there is more.
        ceiling = left + 1 if self._overflow_raises else left
        if size is None or size < 0 or size > ceiling:
            return ceiling
        return size

    def _account(self, data):
        self._consumed += len(data)
        if self._consumed > self._limit:
            raise BodyTooLarge(f"Request body too large (limit {self._limit} bytes)")
        return data

    def read(self, size=-1):
        """Read up to size bytes (all that is allowed when size is omitted)."""
        allowance = self._allowance(size)
        if allowance <= 0:
            return b""
        return self._account(self._stream.read(allowance))

    def readline(self, size=-1):
        """Read one line, within the limit."""
        allowance = self._allowance(size)
        if allowance <= 0:
            return b""
        return self._account(self._stream.readline(allowance))

    def readlines(self, hint=-1):
        """Read the remaining lines, within the limit."""
        lines = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class BodyLimit:
    """WSGI middleware refusing request bodies above max_bytes."""

    def __init__(self, app, max_bytes, larger=()):
        _check_limit("max_bytes", max_bytes)
        self.app = app
        self.max_bytes = max_bytes
        self.larger = []
        for entry in larger:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise ValueError(f"BodyLimit larger entries must be (pattern, max_bytes) pairs, got {entry!r}")
            pattern, limit = entry
            if isinstance(pattern, str):
                pattern = re.compile(pattern)
            if not isinstance(pattern, re.Pattern) or not isinstance(pattern.pattern, str):
                raise ValueError(f"BodyLimit larger patterns must be regular expressions, got {pattern!r}")
            _check_limit("larger max_bytes", limit)
            self.larger.append((pattern, limit))
        self.larger = tuple(self.larger)

    def _maximum(self, environ):
        path = environ.get("PATH_INFO", "")
        for pattern, limit in self.larger:
            if pattern.fullmatch(path):
                return limit
        return self.max_bytes

    def __call__(self, environ, start_response):
        maximum = self._maximum(environ) if self.larger else self.max_bytes
        too_large = f"Request body too large (limit {maximum} bytes)"
        try:
            declared = declared_length(environ)
        except InvalidLength as exc:
            return error_answer(start_response, 400, str(exc))
        if declared is None:
            limit, overflow_raises = maximum, True
        elif declared > maximum:
            return error_answer(start_response, 413, too_large)
        else:
            limit, overflow_raises = declared, False

        stream = environ.get("wsgi.input")
        if stream is not None:
            environ["wsgi.input"] = _LimitedInput(stream, limit, overflow_raises)
        try:
            return self.app(environ, start_response)
        except BodyTooLarge:
            # exc_info lets this replace a status the app may already have started.
            return error_answer(start_response, 413, too_large, exc_info=sys.exc_info())


def _check_limit(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"BodyLimit {name} must be a positive integer, got {value!r}")
