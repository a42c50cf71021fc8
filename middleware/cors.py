"""Let browsers on other origins call the API (CORS, as in the Fetch standard).

Usage::

    app = Cors(app, origins=("https://chat.example", "http://localhost:5173"))
    app = Cors(app, origins="*")

Any answer of the wrapped app to a request from an allowed Origin gets
``Access-Control-Allow-Origin`` and ``Access-Control-Expose-Headers``; that
includes 401/413/429 refusals of inner middleware and 500s started with
``exc_info``. With an allow-list the exact origin is echoed and every answer
carries ``Vary: Origin``, so that a shared cache never hands one origin's
answer to another. ``*`` is never combined with credentials; the service
authenticates with headers, not cookies, so credentials mode is not offered.

A preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered
here with 204 and never reaches the app, so it needs no API key and spends no
rate-limit token. A preflight from an origin that is not allowed also gets a
bare 204, without any allow header: the browser then blocks the real request.

Only ``start_response`` is wrapped, never the body, so streamed answers such as
server-sent events pass through as they are produced.
"""

import re

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, X-API-Key, Last-Event-ID, X-Request-ID"
EXPOSED_HEADERS = "Retry-After, RateLimit, RateLimit-Policy, X-Request-ID, ETag, Content-Disposition, Content-Range"
PREFLIGHT_MAX_AGE = "600"

# A serialised origin: scheme "://" host [":" port], nothing after. Hosts are
# DNS names (punycode for IDNs, as browsers send them), IPv4 or bracketed IPv6.
_ORIGIN = re.compile(
    r"[a-z][a-z0-9+.-]*://"
    r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])"
    r"(?::[0-9]{1,5})?"
)


def _checked_origin(origin):
    if not isinstance(origin, str):
        raise ValueError(f"CORS origin {origin!r} must be a string")
    if origin == "*":
        raise ValueError("CORS origins: pass origins='*' on its own, not inside a list")
    normalised = origin.lower()
    if not _ORIGIN.fullmatch(normalised):
        raise ValueError(
            f"CORS origin {origin!r} must look like scheme://host[:port], with no path, query or trailing slash"
        )
    return normalised


def _with_vary_origin(headers):
    vary_seen = False
    merged = []
    for name, value in headers:
        if not vary_seen and name.lower() == "vary":
            vary_seen = True
            tokens = {token.strip().lower() for token in value.split(",")}
            if "*" not in tokens and "origin" not in tokens:
                value = f"{value}, Origin"
        merged.append((name, value))
    if not vary_seen:
        merged.append(("Vary", "Origin"))
    return merged


class Cors:
    """WSGI middleware adding CORS headers and answering preflights."""

    def __init__(self, app, origins):
        if isinstance(origins, str) and origins != "*":
            raise ValueError("CORS origins must be '*' or an iterable of origins, not a single origin string")
        if origins == "*":
            allowed = None
        else:
            allowed = frozenset(_checked_origin(origin) for origin in origins)
            if not allowed:
                raise ValueError("CORS origins must not be empty; pass '*' to allow every origin")
        self.app = app
        self.origins = "*" if allowed is None else allowed

    def _allow_origin_value(self, origin):
        """Return the Access-Control-Allow-Origin value for origin, or None when it is not allowed."""
        if self.origins == "*":
            return "*"
        return origin if origin in self.origins else None

    def _decorate(self, headers, allow_origin):
        headers = list(headers)
        if self.origins != "*":
            headers = _with_vary_origin(headers)
        if allow_origin is not None:
            headers.append(("Access-Control-Allow-Origin", allow_origin))
            headers.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
        return headers

    def __call__(self, environ, start_response):
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:
            if self.origins == "*":
                return self.app(environ, start_response)
            allow_origin = None
        else:
            allow_origin = self._allow_origin_value(origin)

        if (
            origin is not None
            and environ.get("REQUEST_METHOD") == "OPTIONS"
            and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
        ):
            headers = [] if self.origins == "*" else [("Vary", "Origin")]
            if allow_origin is not None:
                headers += [
                    ("Access-Control-Allow-Origin", allow_origin),
                    ("Access-Control-Allow-Methods", ALLOWED_METHODS),
                    ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
                    ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
                ]
            start_response("204 No Content", headers)
            return []

        def start_with_cors(status, response_headers, exc_info=None):
            headers = self._decorate(response_headers, allow_origin)
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return self.app(environ, start_with_cors)
