"""The vocabulary of response views: a view is a declared list of fields and the function that fills it.

A ``View`` is called like the function it wraps (``views.public_user(user)``)
and answers the dict that function built, after checking it against the
declaration: a key the view does not declare, or a required one it left out,
raises ``UndeclaredField`` instead of reaching a client undocumented. The same
declaration renders the view's JSON Schema for the OpenAPI document
(``View.schema(settings)``), so what is sent and what is documented are one list.

A field's example or constraints may depend on the settings (a limit such as
ACCESS_TOKEN_EXPIRES): give a callable taking the settings, and it is resolved
when the document is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..schema import ref

__all__ = ["Field", "UndeclaredField", "View", "array", "const", "field", "one_of", "ref"]

#: A value in a declaration that may depend on the settings: the value itself, or a function of them.
Resolvable = Any


class UndeclaredField(AssertionError):
    """A view was filled with a key it does not declare, or without one it requires (a programming error)."""


def resolve(value: Resolvable, settings: Any) -> Any:
    """``value``, or what it answers for ``settings`` when it is callable."""
    return value(settings) if callable(value) else value


@dataclasses.dataclass(frozen=True)
class Field:
    """One key of a view.

    ``type`` is a JSON Schema type name ("string", "integer", "number",
    "boolean", "object"), a schema (an enum, an array, a $ref), or a View
    (a component by reference when it has a name, inline otherwise).
    """

    name: str
    type: Any
    description: str
    example: Resolvable = None
    nullable: bool = False
    required: bool = True
    constraints: Mapping[str, Resolvable] = dataclasses.field(default_factory=dict)

    def schema(self, settings: Any) -> dict:
        """This field's JSON Schema, with its description and example."""
        constraints = {key: resolve(value, settings) for key, value in self.constraints.items()}
        if isinstance(self.type, str):
            schema: dict = {
                "type": [self.type, "null"] if self.nullable else self.type,
                "description": self.description,
            }
            schema.update(constraints)
        else:
            inner = self.type.reference(settings) if isinstance(self.type, View) else dict(self.type)
            inner.update(constraints)
            if self.nullable:
                schema = {"anyOf": [inner, {"type": "null"}], "description": self.description}
            else:
                schema = {**inner, "description": self.description}
        example = resolve(self.example, settings)
        if example is not None or self.nullable:
            schema["examples"] = [example]
        return schema


def field(
    name: str,
    type: Any,
    description: str,
    example: Resolvable = None,
    nullable: bool = False,
    required: bool = True,
    **constraints: Resolvable,
) -> Field:
    """A declared field; keyword arguments are JSON Schema constraints (minimum, pattern...)."""
    return Field(name, type, description, example, nullable, required, constraints)


def one_of(values: Sequence[Any]) -> dict:
    """A type holding one of ``values``."""
    return {"enum": list(values)}


def const(value: Any) -> dict:
    """A type holding exactly ``value``."""
    return {"const": value}


def array(items: Any, **constraints: Any) -> dict:
    """An array type of ``items`` (a View, a schema or a type name)."""
    if isinstance(items, View):
        items = items.reference(None)
    elif isinstance(items, str):
        items = {"type": items}
    return {"type": "array", "items": items, **constraints}


class View:
    """A declared response object: its fields, and the function that fills them from store records.

    ``extends`` names a view whose fields come first (rendered as ``allOf`` with
    it, as the document always showed such views); ``fill`` takes whatever the
    view is called with and answers the dict; without one, the view is built
    from keyword arguments (``VIEW.build(a=1, b=2)``).
    """

    def __init__(
        self,
        name: str | None,
        description: str | None,
        fields: Sequence[Field],
        fill: Callable[..., dict] | None = None,
        extends: View | None = None,
        **constraints: Any,
    ) -> None:
        self.name = name
        self.description = description
        self.own_fields = tuple(fields)
        self.extends = extends
        self.fill = fill
        self.constraints = constraints
        every = (extends.fields if extends else ()) + self.own_fields
        self.fields: tuple[Field, ...] = every
        self.names = frozenset(f.name for f in every)
        self.required = frozenset(f.name for f in every if f.required)
        if len(self.names) != len(every):
            raise ValueError(f"view {name}: a field is declared twice")

    def __repr__(self) -> str:
        return f"<View {self.name or 'inline'}: {', '.join(f.name for f in self.fields)}>"

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        """The view of what ``fill`` is given, checked against the declaration."""
        if self.fill is None:
            return self.build(*args, **kwargs)
        return self.check(self.fill(*args, **kwargs))

    def build(self, values: Mapping[str, Any] | None = None, **more: Any) -> dict:
        """The view of these values: declared keys in declared order, checked."""
        given = {**(values or {}), **more}
        return self.check({f.name: given[f.name] for f in self.fields if f.name in given} | _extra(given, self))

    def check(self, shown: dict) -> dict:
        """``shown`` itself, once it holds every required key and nothing undeclared."""
        undeclared = shown.keys() - self.names
        missing = self.required - shown.keys()
        if undeclared or missing:
            raise UndeclaredField(
                f"view {self.name or 'inline'}: "
                + "; ".join(
                    part
                    for part in (
                        f"undeclared {sorted(undeclared)}" if undeclared else "",
                        f"missing {sorted(missing)}" if missing else "",
                    )
                    if part
                )
            )
        return shown

    def reference(self, settings: Any) -> dict:
        """How another schema points at this view: a $ref when it is a component, else its schema inline."""
        return ref(self.name) if self.name else self.schema(settings)

    def _object(self, fields: Sequence[Field], settings: Any, description: str | None) -> dict:
        schema: dict = {"type": "object"}
        if description:
            schema["description"] = description
        schema["required"] = [f.name for f in fields if f.required]
        schema["properties"] = {f.name: f.schema(settings) for f in fields}
        schema.update(self.constraints)
        return schema

    def schema(self, settings: Any) -> dict:
        """This view's JSON Schema, sized by ``settings``."""
        if self.extends is None:
            return self._object(self.fields, settings, self.description)
        own = self._object(self.own_fields, settings, None)
        schema: dict = {"allOf": [self.extends.reference(settings), own]}
        if self.description:
            schema["description"] = self.description
        return schema


def _extra(given: Mapping[str, Any], view: View) -> dict:
    """The keys of ``given`` that ``view`` does not declare (kept so that ``check`` names them)."""
    return {key: value for key, value in given.items() if key not in view.names}
