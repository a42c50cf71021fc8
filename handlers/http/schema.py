"""JSON Schema helpers for declared answers: ``envelope(ref("User"), message=...)`` and friends.

Stdlib only; ``declare`` re-exports them so that an endpoint module imports its whole
vocabulary from one place.
"""

from __future__ import annotations

from typing import Any


def ref(name: str) -> dict:
    """A JSON reference to the component schema ``name``."""
    return {"$ref": f"#/components/schemas/{name}"}


def string(description: str, example: Any = None, nullable: bool = False, **constraints: Any) -> dict:
    """A string property (or null, when ``nullable``) with an example."""
    schema: dict = {"type": ["string", "null"] if nullable else "string", "description": description}
    schema.update(constraints)
    if example is not None:
        schema["examples"] = [example]
    return schema


def integer(description: str, example: Any = None, **constraints: Any) -> dict:
    """An integer property with an example."""
    schema: dict = {"type": "integer", "description": description, **constraints}
    if example is not None:
        schema["examples"] = [example]
    return schema


def boolean(description: str, example: bool = False) -> dict:
    """A boolean property."""
    return {"type": "boolean", "description": description, "examples": [example]}


def one_of(values: tuple | list, description: str) -> dict:
    """A property holding one of ``values``."""
    return {"enum": list(values), "description": description, "examples": [values[0]]}


def array(items: dict, description: str | None = None, **constraints: Any) -> dict:
    """An array of ``items``."""
    schema: dict = {"type": "array", "items": items, **constraints}
    if description:
        schema["description"] = description
    return schema


def maybe(schema: dict) -> dict:
    """``schema`` or null."""
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict, required: list | None = None, description: str | None = None, **constraints: Any) -> dict:
    """An object schema; every property is required unless ``required`` names a subset."""
    schema: dict = {"type": "object"}
    if description:
        schema["description"] = description
    schema["required"] = list(properties) if required is None else list(required)
    schema["properties"] = properties
    schema.update(constraints)
    return schema


def envelope(data: dict | None = None, message: str | None = None, **extra: Any) -> dict:
    """0xC's success envelope: ``status``, ``message`` (given, with this example), ``data``, ``extra``."""
    properties: dict = {"status": {"const": "success", "description": 'Always "success" on a 2xx answer.'}}
    if message is not None:
        properties["message"] = string("What was done, for people.", message)
    if data is not None:
        properties["data"] = data
    properties.update(extra)
    return obj(properties)


def page(key: str, item: str, paging: str) -> dict:
    """The list envelope: ``status``, the items under ``key``, and ``paging``."""
    parts: dict[str, Any] = {key: array(ref(item)), "paging": ref(paging)}
    return envelope(**parts)
