"""What a JSON request body may be: UTF-8, valid JSON, an object, no lone surrogates; NUL replaced.

``Request.json`` (in ``oxc_wsgi``) reads the bytes and hands them here; every way a body
can be wrong becomes a BadRequest with 0xC's wording.
"""

from __future__ import annotations

import json
from typing import Any

from . import BadRequest

#: What a NUL character in received text becomes. PostgreSQL's text cannot hold NUL, so
#: every backend stores U+FFFD (the Unicode replacement character) in its place and both
#: answer alike, instead of one storing it and the other failing.
NUL_REPLACEMENT = "\ufffd"


def json_object(data: bytes) -> dict[str, Any]:
    """The JSON object ``data`` holds; BadRequest for anything else."""
    if not data:
        raise BadRequest("Request body must be a JSON object")
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadRequest("Request body is not valid UTF-8") from None
    except RecursionError:
        raise BadRequest("Request body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("Request body must be a JSON object")
    # Both a lone surrogate and a NUL can only arrive as a \u escape.
    if (b"\\u" in data or b"\\U" in data) and _check_strings(value):
        try:
            value = without_nul(value)
        except RecursionError:
            raise BadRequest("Request body is nested too deeply") from None
    return value


def without_nul(value: Any) -> Any:
    """``value`` with every NUL in its strings (keys too) replaced by NUL_REPLACEMENT."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_REPLACEMENT)
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value


def _check_strings(value: Any) -> bool:
    """Raise BadRequest if any string in ``value`` holds a lone surrogate; True if one holds a NUL."""
    has_nul = False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest("Request body contains an invalid Unicode escape (lone surrogate)") from None
            has_nul = has_nul or "\x00" in item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return has_nul


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
