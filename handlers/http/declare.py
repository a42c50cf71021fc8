"""Endpoint declarations: one per handler, read both by validation and by the OpenAPI document.

Adding an endpoint
------------------
1. Write the handler in the endpoint module of its resource (``handlers/<resource>.py``),
   named verb_noun, with its declaration right above it (under ``@in_chat`` if it acts in a chat)::

       @in_chat("admin")
       @endpoint(
           "chats",
           "Pin a message",
           "Pins a message of the chat for everyone in it.",
           parameters=(CHAT_PATH,),
           body={"message_id": Id("The id of a message of this chat.", MESSAGE_ID, required=True)},
           body_name="Pin",
           body_example={"message_id": MESSAGE_ID},
           answers={200: returns(envelope(ref("ChatDetails"), message="Pinned"), "The message is pinned.")},
           refusals={400: "message_id is not a message of this chat."},
           writes=True,
       )
       def post_pin(req, chat, me, *, body):
           message = find(req, chat, body["message_id"])  # rules that need the store stay here
           ...

   The handler gets the checked body as ``body``: every declared field, None when absent and
   optional. The field kinds (``kinds.py``, imported from here) say their limits once and answer
   with 0xC's messages: ``Text`` (trimmed; lengths, a pattern with its own message), ``Email``,
   ``Id``, ``Url``, ``Password``, ``Choice``, ``Flag``, ``Match``, ``Strings``, and ``Raw``
   (documented, checked by the handler). A limit from the settings is ``setting("name")``,
   read when ``create_app`` builds the app. Cross-field rules are ``constraints``
   (``AnyGiven``); ``before`` is a check that must answer before the body is read. Path,
   query and header parameters are ``Param`` objects (``CHAT_PATH``, ``LIMIT`` ...;
   ``LIMIT.read(req.query)`` reads one). ``links`` say which answer field feeds which path
   parameter of later operations, so that stateful fuzzers can follow ids.
2. Add one line to the route table in ``oxc_wsgi.routes``.
3. Add tests: the behaviour in ``tests/test_<resource>.py``. ``tests/test_openapi.py`` checks
   on its own that the route has a declaration and that each declared limit answers 400 with
   its declared message; the drift check in ``tests/conftest.py`` holds every answer to the
   declared views.

Answers that follow from the route are added by the document's renderer (``openapi.py``), not
declared: 401 and bearer security without a user, 403/404 for chat roles, 400/413/415 for a
JSON body, 503 for writes, the API key, 429. Answer schemas come from the views
(``views.component_schemas``); ``ref``, ``envelope`` and the other helpers of ``schema.py``
(re-exported here) compose them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from . import BadRequest
from .kinds import (
    EMAIL,
    MAX_EMAIL,
    MAX_ID,
    NOT_BLANK,
    SPACE,
    URL,
    URL_SCHEMA,
    Bound,
    Choice,
    Email,
    Field,
    Flag,
    Id,
    Match,
    Password,
    Raw,
    Strings,
    Text,
    Url,
    setting,
)
from .schema import array, boolean, envelope, integer, maybe, obj, one_of, page, ref, string

__all__ = [
    "ATTACHMENT_PATH",
    "CHAT_PATH",
    "DEVICE_PATH",
    "EMAIL",
    "IF_NONE_MATCH",
    "KEY_PATH",
    "LIMIT",
    "MAX_EMAIL",
    "MAX_ID",
    "MESSAGE_PATH",
    "NOT_BLANK",
    "NOTIFICATION_PATH",
    "SMALL_LIMIT",
    "SPACE",
    "URL",
    "URL_SCHEMA",
    "USER_PATH",
    "AnyGiven",
    "Bound",
    "Choice",
    "Email",
    "Endpoint",
    "Field",
    "Flag",
    "Id",
    "Limit",
    "Link",
    "Match",
    "Param",
    "Password",
    "Raw",
    "Reply",
    "Strings",
    "Text",
    "Url",
    "array",
    "boolean",
    "declaration_of",
    "endpoint",
    "envelope",
    "header",
    "integer",
    "maybe",
    "obj",
    "one_of",
    "page",
    "path_id",
    "query",
    "ref",
    "refuses",
    "resolve_routes",
    "resolved",
    "returns",
    "setting",
    "string",
]


# =============================================================================
# Parameters (path, query, header)
# =============================================================================


@dataclasses.dataclass(frozen=True)
class Param:
    """A path, query or header parameter; the document shows it as the component ``component``.

    ``schema`` is a JSON Schema, or a field kind (sized by the settings when the document is built).
    """

    component: str
    name: str
    where: str
    description: str
    schema: Mapping[str, Any] | Field = dataclasses.field(default_factory=dict)
    required: bool = False
    #: What a value outside the declared choices or range is told (0xC-style, one sentence).
    refusal: str = ""

    def read(self, query: Mapping[str, str]) -> Any:
        """This query parameter's value, checked against its declared schema (its default when absent).

        Numbers come back as float; everything else as the string sent. Rules that need the
        store (a cursor naming a message one may see) stay with the handler.
        """
        schema = self.schema if isinstance(self.schema, Mapping) else {}
        raw = query.get(self.name)
        if raw is None:
            if self.required:
                raise BadRequest(f"Missing required query parameter: {self.name}")
            return schema.get("default")
        if "enum" in schema and raw not in schema["enum"]:
            raise BadRequest(self.refusal or f"Query parameter '{self.name}' must be one of {schema['enum']}")
        if schema.get("type") == "number":
            try:
                number = float(raw)
            except ValueError:
                number = float("nan")
            if not schema.get("minimum", number) <= number <= schema.get("maximum", number):  # NaN fails too
                raise BadRequest(self.refusal or f"Query parameter '{self.name}' must be a number")
            return number
        maximum = schema.get("maxLength")
        if maximum is not None and len(raw) > maximum:
            raise BadRequest(f"Query parameter '{self.name}' must be at most {maximum} characters")
        return raw

    def document(self, settings: Any) -> dict:
        """The parameter object of the document."""
        schema = self.schema
        if isinstance(schema, Field):
            schema = schema.resolved(settings).schema()
        return {
            "name": self.name,
            "in": self.where,
            "required": self.required or self.where == "path",
            "description": self.description,
            "schema": dict(schema),
        }


@dataclasses.dataclass(frozen=True)
class Limit(Param):
    """The ``limit`` query parameter of a list: a whole number from 1 to ``maximum``."""

    name: str = "limit"
    where: str = "query"
    description: str = ""
    default: int = 50
    maximum: int = 200

    def read(self, query: Mapping[str, str]) -> int:
        """The page size asked for; BadRequest unless a whole number from 1 to ``maximum``."""
        raw = query.get(self.name)
        if raw is None:
            return self.default
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= self.maximum:
            raise BadRequest(f"Query parameter 'limit' must be a whole number from 1 to {self.maximum}")
        return int(raw)

    def document(self, settings: Any) -> dict:
        return dict(
            super().document(settings),
            description=f"How many per page: 1 to {self.maximum} (default {self.default}).",
            schema={"type": "integer", "minimum": 1, "maximum": self.maximum, "default": self.default},
        )


def path_id(component: str, name: str, what: str, *, uuid: bool = True) -> Param:
    """The path parameter ``name``: the id of ``what``."""
    return Param(
        component,
        name,
        "path",
        f"The id of {what}.",
        {"type": "string", "format": "uuid"} if uuid else {"type": "string"},
    )


def query(
    component: str,
    name: str,
    description: str,
    schema: Mapping[str, Any] | Field,
    *,
    required: bool = False,
    refusal: str = "",
) -> Param:
    """A query parameter (``refusal``: what a value outside its choices or range is told)."""
    return Param(component, name, "query", description, schema, required, refusal)


def header(component: str, name: str, description: str) -> Param:
    """An optional request header that changes the answer."""
    return Param(component, name, "header", description, {"type": "string"})


#: The ids in the API's paths; an endpoint's declaration lists the ones its path has.
CHAT_PATH = path_id("ChatId", "chat_id", "a chat")
MESSAGE_PATH = path_id("MessageId", "message_id", "a message")
USER_PATH = path_id("UserId", "user_id", "a user")
ATTACHMENT_PATH = path_id("AttachmentId", "attachment_id", "an attachment")
KEY_PATH = path_id("KeyId", "key_id", "a public key")
NOTIFICATION_PATH = path_id("NotificationId", "notification_id", "a notification", uuid=False)
DEVICE_PATH = path_id("DeviceId", "device_id", "a device", uuid=False)
#: Page sizes: most lists, and the directory and search.
LIMIT = Limit("Limit")
SMALL_LIMIT = Limit("SmallLimit", default=20, maximum=100)
IF_NONE_MATCH = header("IfNoneMatch", "If-None-Match", "ETags the client holds; 304 when one is current.")


# =============================================================================
# Cross-field rules
# =============================================================================


@dataclasses.dataclass(frozen=True)
class AnyGiven:
    """At least one of ``names`` is present and not null (``present_only``: present, null counts)."""

    names: tuple[str, ...]
    message: str
    present_only: bool = False

    def check(self, raw: Mapping[str, Any]) -> None:
        """BadRequest unless the rule holds of the raw body."""
        if self.present_only:
            held = any(name in raw for name in self.names)
        else:
            held = any(raw.get(name) is not None for name in self.names)
        if not held:
            raise BadRequest(self.message)

    def schema(self) -> dict:
        if self.present_only:
            return {"anyOf": [{"required": [name]} for name in self.names]}
        return {"anyOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in self.names]}


# =============================================================================
# The declaration
# =============================================================================


@dataclasses.dataclass(frozen=True)
class Reply:
    """One documented answer: why it happens, and its body."""

    description: str
    schema: dict | None = None
    media_type: str = "application/json"


def returns(schema: dict, description: str) -> Reply:
    """A success answer whose JSON body is ``schema``."""
    return Reply(description, schema)


def refuses(description: str) -> Reply:
    """An error answer with the error envelope."""
    return Reply(description, ref("Error"))


@dataclasses.dataclass(frozen=True)
class Link:
    """An id an answer produces: ``source`` (a JSON pointer into the body) feeds path parameter ``parameter``.

    ``to`` names the operations fed; by default every operation whose path has ``{parameter}``.
    """

    parameter: str | None
    source: str = "/data/id"
    to: tuple[str, ...] = ()
    #: Instead of a parameter: the target's request body, runtime expressions inside
    #: (``{"message_id": "$response.body#/data/id"}``).
    request_body: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class Endpoint:
    """What one handler takes, answers and refuses; see the module docstring for how to write one.

    ``parameters`` are its path, query and header parameters (``Param``);
    ``body`` maps field names to kinds, shown in the document as the component ``body_name``;
    ``answers``/``refusals`` are status -> Reply / reason; ``groups_only`` is what a
    direct chat cannot do, as given to ``roles.in_chat``; ``security`` names
    alternative schemes for a handler that authenticates by itself; ``upload`` is
    the request body's content of an operation that takes a file instead of JSON;
    ``before(req, *args, **params)`` runs before the body is read (a check that must answer first).
    """

    tag: str
    summary: str
    description: str
    answers: Mapping[int, Reply] = dataclasses.field(default_factory=dict)
    refusals: Mapping[int, str] = dataclasses.field(default_factory=dict)
    parameters: tuple[Param, ...] = ()
    body: Mapping[str, Field] | None = None
    body_name: str | None = None
    body_example: Mapping[str, Any] | None = None
    constraints: tuple[AnyGiven, ...] = ()
    body_schema_extra: Mapping[str, Any] | None = None
    links: Mapping[int, tuple[Link, ...]] = dataclasses.field(default_factory=dict)
    #: Component schemas the body refers to by name, built from the settings (``ref("Envelope")``).
    schemas: Mapping[str, Callable[[Any], dict]] = dataclasses.field(default_factory=dict)
    upload: Mapping[str, Any] | None = None
    writes: bool = False
    api_key_exempt: bool = False
    groups_only: str | None = None
    security: tuple[str, ...] = ()
    before: Callable[..., None] | None = None

    def __call__(self, handler: Callable) -> Callable:
        """Decorate ``handler``: it gets the checked body as ``body=`` and carries this declaration."""
        declaration = self

        def declared(req: Any, *args: Any, **params: Any) -> Any:
            if declaration.before is not None:
                declaration.before(req, *args, **params)
            if declaration.body is not None:
                params["body"] = resolved(req, declaration).read(req.json)
            return handler(req, *args, **params)

        declared.__name__ = handler.__name__
        declared.__qualname__ = handler.__qualname__
        declared.__doc__ = handler.__doc__
        declared.__module__ = handler.__module__
        declared.__wrapped__ = handler  # type: ignore[attr-defined]
        declared.declaration = declaration  # type: ignore[attr-defined]
        return declared

    @property
    def responses(self) -> dict[int, Reply]:
        """Every declared answer: status -> Reply (a refusal gets the error envelope)."""
        replies: dict[int, Reply] = dict(self.answers)
        for status, reason in self.refusals.items():
            replies[status] = refuses(reason)
        return replies

    def resolve(self, settings: Any) -> Endpoint:
        """This declaration with every limit read from ``settings``."""
        if self.body is None:
            return self
        return dataclasses.replace(self, body={name: field.resolved(settings) for name, field in self.body.items()})

    def read(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The checked fields of a (resolved) declaration's body, in declared order."""
        values = {
            name: None if field.omittable and name not in raw else field.read(raw, name)
            for name, field in (self.body or {}).items()
        }
        for rule in self.constraints:
            rule.check(raw)
        return values

    def body_schema(self) -> dict:
        """The request body's JSON Schema (of a resolved declaration)."""
        fields = self.body or {}
        schema = obj(
            {name: field.schema() for name, field in fields.items()},
            required=[name for name, field in fields.items() if field.required and not field.omittable],
        )
        if len(self.constraints) == 1:
            schema.update(self.constraints[0].schema())
        elif self.constraints:
            schema["allOf"] = [rule.schema() for rule in self.constraints]
        schema.update(self.body_schema_extra or {})
        return schema


endpoint = Endpoint  # ``@endpoint(...)`` reads as what it is


def resolved(req: Any, declaration: Endpoint) -> Endpoint:
    """``declaration`` resolved against the app's settings (once per app; kept on ``req.ctx``)."""
    cache = req.ctx.__dict__.setdefault("declarations", {})
    found = cache.get(declaration)
    if found is None:
        found = cache[declaration] = declaration.resolve(req.ctx.settings)
    return found


def declaration_of(handler: Callable) -> Endpoint | None:
    """The declaration of a route's handler, if it has one."""
    return getattr(handler, "declaration", None)


def resolve_routes(routes: list, settings: Any) -> dict[Endpoint, Endpoint]:
    """Every route's declaration resolved against ``settings`` (``create_app`` keeps this on the context)."""
    table = {}
    for route in routes:
        declaration = declaration_of(route.handler)
        if declaration is not None:
            table[declaration] = declaration.resolve(settings)
    return table
