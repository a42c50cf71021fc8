"""WSGI middleware for oxc: the layers that wrap the application at its edges.

Each layer is a small class that wraps ``self.app``, checks and freezes its
configuration when it is built, passes requests it does not care about through
untouched, and refuses the others with the project's JSON error envelope
``{"status": "error", "message": ...}`` rendered by :func:`error_answer`
(with :mod:`middleware.wire`, where the app's answers are encoded too).

Compose once, in ``create_app``, outermost first::

    app = AccessLog(
        Cors(
            RateLimit(
                ApiKey(BodyLimit(app, max_bytes=1 << 20), keys, exempt_paths=("/api/health",)),
                RateLimitPolicy(per_minute=100, strict_paths=("/auth/login", "/auth/register")),
            ),
            origins=("https://chat.example",),
        )
    )

AccessLog outermost gives every answer a request id and a log line; Cors next
so that 401, 413 and 429 refusals carry the CORS headers and preflights are
answered before anything asks for a key or spends a token; RateLimit outside
ApiKey so that guessing keys is throttled too.
"""

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from .wire import json_body, json_headers

__all__ = [
    "AccessLog",
    "ApiKey",
    "BodyLimit",
    "BodyTooLarge",
    "Cors",
    "RateLimit",
    "RateLimitPolicy",
    "TokenBucket",
    "error_answer",
]


def error_answer(
    start_response: Callable[..., Any],
    status_code: int,
    message: str,
    headers: Iterable[tuple[str, str]] = (),
    *,
    exc_info: Any = None,
) -> list[bytes]:
    """Start a JSON error answer and return its body as a one-item list."""
    body = json_body({"status": "error", "message": message})
    status = f"{status_code} {HTTPStatus(status_code).phrase}"
    response_headers = [*json_headers(body), *headers]
    if exc_info is None:
        start_response(status, response_headers)
    else:
        start_response(status, response_headers, exc_info)
    return [body]


# The submodules import error_answer from this package, so it must exist first.
from .accesslog import AccessLog  # noqa: E402
from .apikey import ApiKey  # noqa: E402
from .cors import Cors  # noqa: E402
from .limits import BodyLimit, BodyTooLarge  # noqa: E402
from .ratelimit import RateLimit, RateLimitPolicy, TokenBucket  # noqa: E402
