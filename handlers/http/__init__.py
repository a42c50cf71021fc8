"""What handlers raise and return: the HTTP error family and responses.

These live beside the handlers (not in ``oxc_wsgi``) so that handlers depend
on nothing but this package and the store; ``oxc_wsgi`` re-exports them and is
the one place that turns them into bytes on the wire.
"""

import json
from http import HTTPStatus


class HTTPError(Exception):
    """An answer other than success: status, message for the client, extra headers."""

    status = 500

    def __init__(self, message=None, headers=None, status=None):
        if status is not None:
            self.status = status
        self.message = message or HTTPStatus(self.status).phrase
        self.headers = list(headers or ())
        super().__init__(self.message)


class BadRequest(HTTPError):
    status = 400


class Unauthorized(HTTPError):
    status = 401

    def __init__(self, message=None, headers=None):
        super().__init__(message, [("WWW-Authenticate", "Bearer")] + list(headers or ()))


class Forbidden(HTTPError):
    status = 403


class NotFound(HTTPError):
    status = 404


class MethodNotAllowed(HTTPError):
    status = 405

    def __init__(self, allowed):
        super().__init__("Method not allowed", [("Allow", ", ".join(sorted(allowed)))])


class Conflict(HTTPError):
    status = 409


class PayloadTooLarge(HTTPError):
    status = 413


class UnsupportedMediaType(HTTPError):
    status = 415


class TooManyRequests(HTTPError):
    status = 429

    def __init__(self, message, retry_after):
        super().__init__(message, [("Retry-After", str(max(1, int(retry_after + 0.999))))])


#: Seconds a client waits before retrying a write the store refused (a full or failing disk
#: re-arms by itself within about a second of the cause going away).
STORE_RETRY_AFTER = 10


class ServiceUnavailable(HTTPError):
    status = 503

    def __init__(self, message, retry_after=5):
        super().__init__(message, [("Retry-After", str(retry_after))])


class Response:
    """A finished answer: status, headers and an iterable of byte strings."""

    def __init__(self, body=(), status=200, headers=()):
        self.status = status
        self.headers = list(headers)
        self.body = body


def json_response(payload, status=200, headers=()):
    """A Response carrying ``payload`` as UTF-8 JSON."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(
        [body],
        status,
        [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))] + list(headers),
    )


def success(data=None, message=None, status=200, **extra):
    """The 0xC success envelope: ``status``, optional ``message`` and ``data``."""
    payload = {"status": "success"}
    if message is not None:
        payload["message"] = message
    if data is not None:
        payload["data"] = data
    payload.update(extra)
    return json_response(payload, status)
