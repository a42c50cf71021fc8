"""The wire primitives every layer shares: reading Content-Length, writing JSON answers.

Stdlib only, and free of handlers, so that the middleware, the WSGI core and
the handlers all read a length and encode an answer the same way::

    from middleware.wire import InvalidLength, declared_length, json_body

    try:
        length = declared_length(environ)  # None when no length was declared
    except InvalidLength as exc:
        ...  # a 400 carrying str(exc), "Invalid Content-Length"
    body = json_body({"status": "success"})  # compact UTF-8 bytes

The dependency points one way: handlers import from here, never the reverse.
"""

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["JSON_CONTENT_TYPE", "MAX_DECLARED_LENGTH", "InvalidLength", "declared_length", "json_body", "json_headers"]

JSON_CONTENT_TYPE = "application/json; charset=utf-8"

_DIGITS = re.compile(r"[0-9]+")
# More significant digits than this cannot be a length anyone configures; it
# also keeps int() away from its limit on very long digit strings.
_MAX_LENGTH_DIGITS = 18

#: What a declared length too long to be real reads as: above every configurable limit.
MAX_DECLARED_LENGTH = 10**_MAX_LENGTH_DIGITS


class InvalidLength(ValueError):
    """A Content-Length that is not a non-negative decimal integer."""

    def __init__(self) -> None:
        super().__init__("Invalid Content-Length")


def declared_length(environ: Mapping[str, Any]) -> int | None:
    """The request's CONTENT_LENGTH as an int, None when absent or blank.

    Raises InvalidLength for anything but ASCII digits (no sign, no spaces
    inside). A length with more than 18 significant digits reads as
    MAX_DECLARED_LENGTH, so every limit refuses it with a 413 rather than a 400.
    """
    raw = (environ.get("CONTENT_LENGTH") or "").strip()
    if not raw:
        return None
    if not _DIGITS.fullmatch(raw):
        raise InvalidLength()
    significant = raw.lstrip("0") or "0"
    if len(significant) > _MAX_LENGTH_DIGITS:
        return MAX_DECLARED_LENGTH
    return int(significant)


def json_body(payload: Any) -> bytes:
    """``payload`` as compact UTF-8 JSON (no spaces, non-ASCII kept as is)."""
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate cannot be UTF-8; escaped (\udxxx) it is still valid JSON.
        return json.dumps(payload, separators=(",", ":")).encode("ascii")


def json_headers(body: bytes) -> list[tuple[str, str]]:
    """The Content-Type and Content-Length headers of a JSON answer of ``body``."""
    return [("Content-Type", JSON_CONTENT_TYPE), ("Content-Length", str(len(body)))]
