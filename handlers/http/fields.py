"""Reading single fields by hand, for the few checks a declaration cannot make in advance.

Handlers normally get their body checked by their declaration (``declare.py``); these
readers apply the same field kinds, so a field read here answers exactly as a declared
one would (0xC's "Missing required field: x" and friends).
"""

from collections.abc import Mapping
from typing import Any

from .declare import EMAIL, LIMIT, Email, Limit, Text

__all__ = ["EMAIL", "email", "limit", "text"]


def text(
    body: Mapping[str, Any],
    name: str,
    *,
    required: bool = True,
    max_length: int | None = None,
    min_length: int = 1,
    strip: bool = True,
) -> str | None:
    """The string field ``name`` of ``body`` (None if absent and optional)."""
    return Text("", required=required, max_length=max_length, min_length=min_length, strip=strip).read(body, name)


def email(body: Mapping[str, Any], name: str = "email", *, required: bool = False) -> str | None:
    """An e-mail address field, checked for a plausible shape."""
    return Email("", required=required).read(body, name)


def limit(query: Mapping[str, str], default: int = LIMIT.default, maximum: int = LIMIT.maximum) -> int:
    """The ``limit`` query parameter: a whole number from 1 to ``maximum``."""
    return Limit("", default=default, maximum=maximum).read(query)
