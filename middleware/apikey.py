"""Require a shared API key in the X-API-Key header of every request.

Usage::

    app = ApiKey(app, keys=["k-2024-a", "k-2024-b"], exempt_paths=("/api/health",),
                 exempt_if=lambda environ: ...)

Several keys may be accepted at once so that a key can be rotated without
downtime. OPTIONS requests pass through (browsers send CORS preflights without
custom headers), as do requests whose PATH_INFO is exactly one of
``exempt_paths`` and requests for which ``exempt_if(environ)`` is true (the
app uses it for event streams opened with a ticket, which only a caller that
had the key could get: a browser's EventSource cannot send the header). A
missing key and a wrong key both get 401 with the JSON error envelope.
"""

import hashlib
import hmac

from . import error_answer


def _digest(raw):
    return hashlib.sha256(raw).digest()


def _presented_bytes(value):
    # PEP 3333 servers decode header bytes as latin-1, so encoding back gives the
    # bytes the client sent; a non-conforming server may hand over any str, and
    # such a key must still end in a plain 401, never an encoding error.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


class ApiKey:
    """WSGI middleware refusing requests that lack an accepted X-API-Key."""

    def __init__(self, app, keys, exempt_paths=(), exempt_if=None):
        if isinstance(keys, (str, bytes)):
            raise ValueError("ApiKey keys must be an iterable of key strings, not a single string")
        keys = tuple(keys)
        if not keys:
            raise ValueError("ApiKey needs at least one accepted key")
        for key in keys:
            if not isinstance(key, str) or not key:
                raise ValueError("ApiKey keys must be non-empty strings")
            if not all("\x21" <= char <= "\x7e" for char in key):
                raise ValueError("ApiKey keys must be printable ASCII without spaces")
        if isinstance(exempt_paths, (str, bytes)):
            raise ValueError("ApiKey exempt_paths must be an iterable of paths, not a single string")
        exempt_paths = frozenset(exempt_paths)
        for path in exempt_paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"ApiKey exempt path {path!r} must be a string starting with '/'")
        if exempt_if is not None and not callable(exempt_if):
            raise ValueError("ApiKey exempt_if must be a callable taking the environ")
        self.app = app
        self.exempt_paths = exempt_paths
        self.exempt_if = exempt_if
        # Comparing fixed-length digests keeps the comparison time independent
        # of the keys' lengths as well as of their contents.
        self._accepted_digests = tuple(_digest(key.encode("ascii")) for key in keys)

    def __call__(self, environ, start_response):
        if (
            environ.get("REQUEST_METHOD") == "OPTIONS"
            or environ.get("PATH_INFO", "") in self.exempt_paths
            or (self.exempt_if is not None and self.exempt_if(environ))
        ):
            return self.app(environ, start_response)
        presented = environ.get("HTTP_X_API_KEY", "")
        if not presented:
            return error_answer(start_response, 401, "API key is missing")
        presented_digest = _digest(_presented_bytes(presented))
        accepted = False
        # No early exit: which accepted key matched must not show in the timing.
        for accepted_digest in self._accepted_digests:
            accepted |= hmac.compare_digest(presented_digest, accepted_digest)
        if not accepted:
            return error_answer(start_response, 401, "Invalid API key")
        return self.app(environ, start_response)
