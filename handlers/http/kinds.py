"""The field kinds of a declared request body: how each field is checked, and how the document shows it.

Each kind reads one field of a JSON body (``kind.read(body, name)``) and raises
``BadRequest`` with 0xC's messages ("Missing required field: x", "Field 'x' must
be a string" ...); ``kind.schema()`` is the same rule as JSON Schema, so the
document is exactly as strict as the check. ``limits(name)`` lists values that
break a limit and the message each gets, for tests. Import them from ``declare``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from . import BadRequest

#: Ids given in bodies (recipient_id, user_id, reply_to_id, message_id ...).
MAX_ID = 64
#: A plausible e-mail address. No NUL: PostgreSQL text cannot hold one (an address with it was a 500 there).
EMAIL = re.compile(r"^[^@\s\x00]{1,64}@[^@\s\x00]+\.[^@\s\x00]+$")


def _space_class() -> str:
    # What Python's str.strip() and ``\s`` take for whitespace, spelled out: a pattern's ``\s``
    # means less in the document's (ECMA 262) regular expressions.
    spaces = [code for code in range(0x110000) if chr(code).isspace()]
    runs: list[list[int]] = []
    for code in spaces:
        if runs and runs[-1][1] == code - 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "[" + "".join(f"\\u{a:04x}" + (f"-\\u{b:04x}" if b > a else "") for a, b in runs) + "]"


#: Whitespace as a character class of the document's patterns.
SPACE = _space_class()
#: Some non-whitespace: text fields are trimmed before they are checked.
NOT_BLANK = f"[^{SPACE[1:-1]}]"
MAX_EMAIL = 254
#: An http(s) URL. The document spells the letters in both cases (JSON Schema has no flags).
URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)
URL_SCHEMA = f"^{SPACE}*$|^{SPACE}*[Hh][Tt][Tt][Pp][Ss]?://[^{SPACE[1:-1]}/$.?#][^{SPACE[1:-1]}]*{SPACE}*$"

#: A bound: a number, or read from the settings (``setting("max_message_length")``).
Bound = int | Callable[[Any], int] | None


def setting(name: str) -> Callable[[Any], int]:
    """A limit read from the settings field ``name`` when the app is built."""

    def read(settings: Any) -> int:
        return int(getattr(settings, name))

    read.setting_name = name  # type: ignore[attr-defined]
    return read


def _resolve(limit: Bound, settings: Any) -> int | None:
    return limit(settings) if callable(limit) else limit


@dataclasses.dataclass(frozen=True)
class Field:
    """One body field: how it is checked and how the document shows it."""

    description: str
    example: Any = None
    #: True, False, or read from the settings (``lambda settings: settings.require_verified_email``).
    required: Any = False
    #: Schema keywords the checks imply but the kinds do not write (say a pattern's minimum length).
    schema_extra: Mapping[str, Any] | None = None
    #: May be left out, but when given is checked as if required (a change to one of several fields).
    omittable: bool = False

    def resolved(self, settings: Any) -> Field:
        """This field with its limits (and whether it is required) read from ``settings``."""
        if callable(self.required):
            return dataclasses.replace(self, required=bool(self.required(settings)))
        return self

    def read(self, body: Mapping[str, Any], name: str) -> Any:
        """The checked value of ``body[name]``; BadRequest naming the field otherwise."""
        return body.get(name)

    def schema(self) -> dict:
        """The field's JSON Schema."""
        return _described({}, self)

    def limits(self, name: str) -> list[tuple[Any, str]]:
        """(a value over a limit, the message it gets): the checks a test can replay."""
        return []


def _described(schema: dict, field: Field) -> dict:
    schema.update(field.schema_extra or {})
    schema["description"] = field.description
    if field.example is not None:
        schema["examples"] = [field.example]
    return schema


def _string_type(field: Field) -> str | list[str]:
    # An optional field may be null: it reads as absent.
    return "string" if field.required else ["string", "null"]


@dataclasses.dataclass(frozen=True)
class Text(Field):
    """A string; trimmed unless ``strip=False``; ``pattern`` (with ``pattern_message``) checked after the lengths."""

    min_length: int = 1
    max_length: Bound = None
    strip: bool = True
    pattern: re.Pattern | None = None
    pattern_message: str = ""
    #: The pattern as the document writes it, when the Python one needs flags.
    schema_pattern: str | None = None
    #: Required unless one of these fields is given (not null); the document says so with ``AnyGiven``.
    required_unless: tuple[str, ...] = ()

    def resolved(self, settings: Any) -> Text:
        field = super().resolved(settings)
        assert isinstance(field, Text)
        max_length = _resolve(self.max_length, settings)
        # A description may name the limit it gets from the settings: "{max_length}".
        description = self.description.replace("{max_length}", str(max_length))
        return dataclasses.replace(field, max_length=max_length, description=description)

    def read(self, body: Mapping[str, Any], name: str) -> str | None:
        if self.required_unless:
            required = all(body.get(other) is None for other in self.required_unless)
            return dataclasses.replace(self, required=required, required_unless=()).read(body, name)
        value = body.get(name)
        if value is None:
            if self.required:
                raise BadRequest(f"Missing required field: {name}")
            return None
        if not isinstance(value, str):
            raise BadRequest(f"Field '{name}' must be a string")
        if self.strip:
            value = value.strip()
        if len(value) < self.min_length:
            if self.required and not value:
                raise BadRequest(f"Missing required field: {name}")
            raise BadRequest(f"Field '{name}' must be at least {self.min_length} characters long")
        max_length = self.max_length
        if max_length is not None and len(value) > max_length:  # type: ignore[operator]
            raise BadRequest(f"Field '{name}' must be at most {max_length} characters long")
        if self.pattern is not None and value and not self.pattern.search(value):
            raise BadRequest(self.pattern_message.format(name=name))
        return value

    def schema(self) -> dict:
        schema: dict = {"type": _string_type(self)}
        if self.min_length:
            schema["minLength"] = self.min_length
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        pattern = self.schema_pattern or (self.pattern.pattern if self.pattern is not None else None)
        if pattern is None and self.strip and self.min_length:
            pattern = NOT_BLANK
        if pattern is not None:
            schema["pattern"] = pattern
        return _described(schema, self)

    def limits(self, name: str) -> list[tuple[Any, str]]:
        checks: list[tuple[Any, str]] = [(12345, f"Field '{name}' must be a string")]
        if self.required:
            checks.append((None, f"Missing required field: {name}"))
        if isinstance(self.max_length, int):  # resolved
            too_long = "x" * (self.max_length + 1)
            checks.append((too_long, f"Field '{name}' must be at most {self.max_length} characters long"))
        return checks


def Id(description: str, example: Any = None, *, required: bool = False) -> Text:
    """An id given in a body: trimmed, 1 to MAX_ID characters."""
    return Text(description, example, required, max_length=MAX_ID)


@dataclasses.dataclass(frozen=True)
class Email(Text):
    """An e-mail address: at most MAX_EMAIL characters of a plausible shape."""

    max_length: Bound = MAX_EMAIL
    pattern: re.Pattern | None = EMAIL
    pattern_message: str = "Field '{name}' must be an e-mail address"

    #: EMAIL as the document writes it: the value is trimmed before it is matched. No ``format: email``:
    #: the check is this pattern, which takes addresses that format refuses.
    schema_pattern: str | None = (
        f"^{SPACE}*[^@\\u0000{SPACE[1:-1]}]{{1,64}}@[^@\\u0000{SPACE[1:-1]}]+\\.[^@\\u0000{SPACE[1:-1]}]+{SPACE}*$"
    )

    def read(self, body: Mapping[str, Any], name: str) -> str | None:
        return super().read(body, name) or None

    def limits(self, name: str) -> list[tuple[Any, str]]:
        return super().limits(name) + [("not an address", f"Field '{name}' must be an e-mail address")]


def Url(description: str, example: Any = None, *, max_length: int = 500) -> Text:
    """An optional http(s) URL; empty reads as absent."""
    return Text(
        description,
        example,
        min_length=0,
        max_length=max_length,
        pattern=URL,
        pattern_message="Field '{name}' must be an http(s) URL",
        schema_pattern=URL_SCHEMA,
    )


@dataclasses.dataclass(frozen=True)
class Password(Field):
    """A password, taken as given (never trimmed). ``new`` adds the limits of a password being set."""

    min_length: int = 1
    max_bytes: int | None = None
    #: When given, the one answer to anything but a non-empty string.
    message: str | None = None

    def read(self, body: Mapping[str, Any], name: str) -> str:
        value = body.get(name)
        if self.message is not None and (not isinstance(value, str) or not value):
            raise BadRequest(self.message.format(name=name))
        if value is None or value == "":
            raise BadRequest(f"Missing required field: {name}")
        if not isinstance(value, str):
            raise BadRequest(f"Field '{name}' must be a string")
        if len(value) < self.min_length:
            raise BadRequest(f"Field '{name}' must be at least {self.min_length} characters long")
        if self.max_bytes is not None and len(value.encode("utf-8")) > self.max_bytes:
            raise BadRequest(f"Field '{name}' must be at most {self.max_bytes} bytes long")
        return value

    def schema(self) -> dict:
        schema: dict = {"type": "string", "minLength": self.min_length}
        if self.max_bytes is not None:
            # maxLength counts characters; the byte limit is in the description.
            schema["maxLength"] = self.max_bytes
        return _described(schema, self)

    def limits(self, name: str) -> list[tuple[Any, str]]:
        checks: list[tuple[Any, str]] = [("", f"Missing required field: {name}")]
        if self.min_length > 1:
            checks.append(
                ("x" * (self.min_length - 1), f"Field '{name}' must be at least {self.min_length} characters long")
            )
        if self.max_bytes is not None:
            checks.append(("é" * self.max_bytes, f"Field '{name}' must be at most {self.max_bytes} bytes long"))
        return checks


@dataclasses.dataclass(frozen=True)
class Choice(Field):
    """One of ``values`` (null reads as absent unless required)."""

    values: tuple = ()
    message: str = ""

    def read(self, body: Mapping[str, Any], name: str) -> Any:
        value = body.get(name)
        if value is None and not self.required:
            return None
        if value not in self.values:
            raise BadRequest(self.message.format(name=name))
        return value

    def schema(self) -> dict:
        values = list(self.values) + ([] if self.required else [None])
        return _described({"enum": values}, self)

    def limits(self, name: str) -> list[tuple[Any, str]]:
        return [("no such choice", self.message.format(name=name))]


@dataclasses.dataclass(frozen=True)
class Flag(Field):
    """True or false."""

    message: str = "Field '{name}' must be true or false"
    #: The value when the field is absent (a given null is then refused).
    default: bool | None = None

    def read(self, body: Mapping[str, Any], name: str) -> bool | None:
        if name not in body and self.default is not None:
            return self.default
        value = body.get(name)
        if value is None and not self.required and self.default is None:
            return None
        if not isinstance(value, bool):
            raise BadRequest(self.message.format(name=name))
        return value

    def schema(self) -> dict:
        if self.default is not None:
            return _described({"type": "boolean", "default": self.default}, self)
        return _described({"type": "boolean" if self.required else ["boolean", "null"]}, self)

    def limits(self, name: str) -> list[tuple[Any, str]]:
        return [("yes", self.message.format(name=name))]


@dataclasses.dataclass(frozen=True)
class Strings(Field):
    """A list of at most ``max_items`` strings; absent reads as empty, anything else gets ``message``."""

    max_items: int = 0
    message: str = ""

    def read(self, body: Mapping[str, Any], name: str) -> list[str]:
        value = body.get(name, [])
        if not isinstance(value, list) or len(value) > self.max_items or not all(isinstance(v, str) for v in value):
            raise BadRequest(self.message.format(name=name))
        return value

    def schema(self) -> dict:
        return _described({"type": "array", "items": {"type": "string"}, "maxItems": self.max_items}, self)

    def limits(self, name: str) -> list[tuple[Any, str]]:
        message = self.message.format(name=name)
        return [(None, message), (["x"] * (self.max_items + 1), message), ([1], message)]


@dataclasses.dataclass(frozen=True)
class Match(Field):
    """A string, taken as given, that matches ``pattern`` whole; one ``message`` for anything else."""

    pattern: str = ""
    message: str = ""

    def read(self, body: Mapping[str, Any], name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str) or not re.fullmatch(self.pattern, value):
            raise BadRequest(self.message.format(name=name))
        return value

    def schema(self) -> dict:
        return _described({"type": "string", "pattern": f"^(?:{self.pattern})$"}, self)

    def limits(self, name: str) -> list[tuple[Any, str]]:
        return [(None, self.message.format(name=name)), ("\n", self.message.format(name=name))]


@dataclasses.dataclass(frozen=True)
class Raw(Field):
    """A field passed to the handler as given: its checks need the store or are the handler's.

    ``shape`` is its JSON Schema (without the description).
    """

    shape: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def schema(self) -> dict:
        return _described(dict(self.shape), self)
