"""Reading and checking fields of a JSON request body and of the query string.

Each reader raises ``BadRequest`` with a message naming the field, so every
handler answers bad input the same way (0xC's "Missing required field: x").
"""

import re

from . import BadRequest

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def text(body, name, *, required=True, max_length=None, min_length=1, strip=True):
    """The string field ``name`` of ``body`` (None if absent and optional)."""
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"Missing required field: {name}")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"Field '{name}' must be a string")
    if strip:
        value = value.strip()
    if len(value) < min_length:
        if required and not value:
            raise BadRequest(f"Missing required field: {name}")
        raise BadRequest(f"Field '{name}' must be at least {min_length} characters long")
    if max_length is not None and len(value) > max_length:
        raise BadRequest(f"Field '{name}' must be at most {max_length} characters long")
    return value


def email(body, name="email", *, required=False):
    """An e-mail address field, checked for a plausible shape."""
    value = text(body, name, required=required, max_length=254)
    if value and not EMAIL.match(value):
        raise BadRequest(f"Field '{name}' must be an e-mail address")
    return value or None


def limit(query, default=50, maximum=200):
    """The ``limit`` query parameter: a whole number from 1 to ``maximum``."""
    raw = query.get("limit")
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"Query parameter 'limit' must be a whole number from 1 to {maximum}")
    return int(raw)
