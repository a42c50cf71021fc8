"""What handlers raise and return: the HTTP error family and responses.

These live beside the handlers (not in ``oxc_wsgi``) so that handlers depend
on nothing but this package and the store; ``oxc_wsgi`` is the one place that
turns them into WSGI calls. Bodies are encoded and Content-Length read with
``middleware.wire``, the same primitives the middleware's refusals use.
"""

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from middleware.wire import InvalidLength, declared_length, json_body, json_headers


class HTTPError(Exception):
    """An answer other than success: status, message for the client, extra headers."""

    status = 500

    def __init__(
        self, message: str | None = None, headers: Iterable[tuple[str, str]] | None = None, status: int | None = None
    ) -> None:
        if status is not None:
            self.status = status
        self.message = message or HTTPStatus(self.status).phrase
        self.headers = list(headers or ())
        super().__init__(self.message)


class BadRequest(HTTPError):
    status = 400


class Unauthorized(HTTPError):
    status = 401

    def __init__(self, message: str | None = None, headers: Iterable[tuple[str, str]] | None = None) -> None:
        super().__init__(message, [("WWW-Authenticate", "Bearer")] + list(headers or ()))


class Forbidden(HTTPError):
    status = 403


class NotFound(HTTPError):
    status = 404


class MethodNotAllowed(HTTPError):
    status = 405

    def __init__(self, allowed: Iterable[str]) -> None:
        super().__init__("Method not allowed", [("Allow", ", ".join(sorted(allowed)))])


class Conflict(HTTPError):
    status = 409


class PayloadTooLarge(HTTPError):
    status = 413


class UnsupportedMediaType(HTTPError):
    status = 415


class TooManyRequests(HTTPError):
    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, [("Retry-After", str(max(1, int(retry_after + 0.999))))])


#: Seconds a client waits before retrying a write the store refused (a full or failing disk
#: re-arms by itself within about a second of the cause going away).
STORE_RETRY_AFTER = 10


class ServiceUnavailable(HTTPError):
    status = 503

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, [("Retry-After", str(retry_after))])


def body_length(environ: Mapping[str, Any]) -> int | None:
    """The request's declared Content-Length (None when it declares none); 400 when it is not a number."""
    try:
        return declared_length(environ)
    except InvalidLength as exc:
        raise BadRequest(str(exc)) from None


class Response:
    """A finished answer: status, headers and an iterable of byte strings."""

    def __init__(self, body: Iterable[bytes] = (), status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.status = status
        self.headers = list(headers)
        self.body = body


def json_response(payload: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A Response carrying ``payload`` as UTF-8 JSON."""
    body = json_body(payload)
    return Response([body], status, json_headers(body) + list(headers))


def success(data: Any = None, message: str | None = None, status: int = 200, **extra: Any) -> Response:
    """The 0xC success envelope: ``status``, optional ``message`` and ``data``."""
    payload: dict[str, Any] = {"status": "success"}
    if message is not None:
        payload["message"] = message
    if data is not None:
        payload["data"] = data
    payload.update(extra)
    return json_response(payload, status)
