"""The reference page: the OpenAPI document rendered as one self-contained HTML page.

``render_page(doc)`` is all there is to it: no script, no CDN, no external fonts,
and a strict Content-Security-Policy (``PAGE_HEADERS``) that admits only the page's
own style sheet by its hash. ``handlers.openapi.get_docs`` serves it.
"""

import base64
import hashlib
import html
import json

from .http.declare import ref

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:62rem;padding:1rem 1.5rem;color:#1d1d1f}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ccd;margin-top:2.5rem}
h3{font-size:1.05rem;margin:0}
article{border:1px solid #dde;border-radius:6px;margin:1rem 0;padding:.8rem 1rem}
code,pre{font:13px/1.4 ui-monospace,monospace}pre{background:#f4f4f8;padding:.6rem;overflow:auto}
table{border-collapse:collapse;width:100%;margin:.4rem 0}td,th{border-bottom:1px solid #e4e4ea;padding:.3rem;
text-align:left;vertical-align:top}.method{display:inline-block;min-width:4.2rem;font-weight:700}
.get{color:#0a6b2b}.post{color:#0b4fa8}.delete{color:#a11}.patch{color:#8a5a00}.put{color:#6b3fa0}
.muted{color:#667}nav li{margin:.1rem 0}
"""
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


def _e(value):
    return html.escape(str(value), quote=True)


def _resolve(schema, components):
    while isinstance(schema, dict) and "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 2)[-2]][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def example_of(schema, components):
    """An example value for ``schema``, from its ``examples`` and those of its parts."""
    schema = _resolve(schema, components)
    if "examples" in schema:
        return schema["examples"][0]
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema and "properties" not in schema:
        return example_of(schema["anyOf"][0], components)
    if "allOf" in schema and "properties" not in schema:
        merged = {}
        for part in schema["allOf"]:
            merged.update(example_of(part, components))
        return merged
    kind = schema.get("type")
    if "properties" in schema:
        example = {name: example_of(value, components) for name, value in schema["properties"].items()}
        for rule in schema.get("allOf", ()):  # if/then: the parts that follow from the example's own values
            condition = rule.get("if", {}).get("properties", {})
            if "then" in rule and all(example.get(k) == v.get("const") for k, v in condition.items()):
                for name, value in rule["then"].get("properties", {}).items():
                    example[name] = example_of(value, components)
        return example
    if kind == "array":
        return [example_of(schema.get("items", {}), components)]
    if isinstance(kind, list) and "null" in kind:
        return None
    return {"string": "text", "integer": 0, "number": 0, "boolean": False}.get(kind, {})


def describe(schema, components):
    """A short human description of a schema's type and constraints."""
    name = schema["$ref"].rsplit("/", 1)[-1] if "$ref" in schema else None
    schema = _resolve(schema, components)
    kind = schema.get("type", "object" if "properties" in schema else "")
    parts = [name or (" or ".join(kind) if isinstance(kind, list) else kind)]
    if "const" in schema:
        parts = [json.dumps(schema["const"])]
    if "enum" in schema:
        parts = [" | ".join(json.dumps(value) for value in schema["enum"])]
    labels = (
        ("format", "format {}"),
        ("minLength", "min {} chars"),
        ("maxLength", "max {} chars"),
        ("minimum", "min {}"),
        ("maximum", "max {}"),
        ("default", "default {}"),
        ("pattern", "pattern {}"),
    )
    parts += [label.format(schema[key]) for key, label in labels if key in schema]
    return ", ".join(part for part in parts if part)


def _fields_table(schema, components):
    schema = _resolve(schema, components)
    required = set(schema.get("required", ()))
    rows = "".join(
        f"<tr><td><code>{_e(name)}</code></td><td>{_e(describe(field, components))}</td>"
        f"<td>{'required' if name in required else 'optional'}</td>"
        f"<td>{_e(_resolve(field, components).get('description', ''))}</td></tr>"
        for name, field in schema.get("properties", {}).items()
    )
    return f"<table><tr><th>Field</th><th>Type</th><th></th><th>Notes</th></tr>{rows}</table>"


def _pretty(value):
    return f"<pre>{_e(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _render_operation(method, path, operation, components):
    parts = [
        f'<article id="{_e(operation["operationId"])}">',
        f'<h3><span class="method {method}">{method.upper()}</span> <code>{_e(path)}</code></h3>',
        f"<p><strong>{_e(operation['summary'])}</strong> "
        f'<span class="muted">({_e(operation["operationId"])})</span></p>',
        f"<p>{_e(operation['description'])}</p>",
    ]
    schemes = " or ".join(" + ".join(requirement) for requirement in operation["security"])
    parts.append(f'<p class="muted">Authentication: {_e(schemes or "none")}</p>')
    parameters = [_resolve(parameter, components) for parameter in operation.get("parameters", ())]
    if parameters:
        rows = "".join(
            f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
            f"<td>{_e(describe(p['schema'], components))}</td>"
            f"<td>{'required' if p.get('required') else 'optional'}</td><td>{_e(p['description'])}</td></tr>"
            for p in parameters
        )
        parts.append(
            "<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Type</th><th></th>"
            f"<th>Notes</th></tr>{rows}</table>"
        )
    if "requestBody" in operation:
        content = operation["requestBody"]["content"]
        parts.append(f'<h4>Request body <span class="muted">{_e(" or ".join(content))}</span></h4>')
        for media in content.values():
            if "properties" in _resolve(media["schema"], components):
                parts.append(_fields_table(media["schema"], components))
        if "application/json" in content:
            media = content["application/json"]
            parts.append(_pretty(media.get("example", example_of(media["schema"], components))))
    parts.append("<h4>Responses</h4><table><tr><th>Status</th><th>When</th><th>Body</th></tr>")
    for status, response in operation["responses"].items():
        content = response.get("content", {})
        body = ""
        if content.get("application/json", {}).get("schema") == ref("Error"):
            body = '<code>{"status": "error", "message": "..."}</code>'
        elif "application/json" in content:
            body = _pretty(example_of(content["application/json"]["schema"], components))
        elif content:
            body = _e(", ".join(content))
        when = "<br>".join(_e(line.lstrip("- ")) for line in response["description"].splitlines())
        parts.append(f"<tr><td><strong>{_e(status)}</strong></td><td>{when}</td><td>{body}</td></tr>")
    parts.append("</table></article>")
    return "".join(parts)


def render_page(doc):
    """The reference page (HTML) for the OpenAPI document ``doc``."""
    components = doc["components"]
    by_tag = {tag["name"]: [] for tag in doc["tags"]}
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            by_tag.setdefault(operation["tags"][0], []).append((method, path, operation))
    info = doc["info"]
    base = doc["servers"][0]["url"].rstrip("/")
    nav, sections = [], []
    descriptions = {tag["name"]: tag.get("description", "") for tag in doc["tags"]}
    for tag, entries in by_tag.items():
        if not entries:
            continue
        links = "".join(
            f'<li><a href="#{_e(op["operationId"])}">{method.upper()} {_e(base + path)}</a></li>'
            for method, path, op in entries
        )
        nav.append(f'<li><a href="#tag-{_e(tag)}">{_e(tag)}</a><ul>{links}</ul></li>')
        articles = "".join(_render_operation(method, base + path, op, components) for method, path, op in entries)
        sections.append(
            f'<section id="tag-{_e(tag)}"><h2>{_e(tag)}</h2><p>{_e(descriptions.get(tag, ""))}</p>{articles}</section>'
        )
    intro = "".join(f"<p>{_e(paragraph)}</p>" for paragraph in info["description"].split("\n\n"))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(info['title'])} reference</title><style>{STYLE}</style></head><body>"
        f'<header><h1>{_e(info["title"])}</h1><p class="muted">Version {_e(info["version"])}. '
        f'Base URL <code>{_e(base or "/")}</code>. Machine-readable: <a href="openapi.json">openapi.json</a> '
        f"(OpenAPI {_e(doc['openapi'])}).</p>{intro}</header>"
        f"<nav><h2>Endpoints</h2><ul>{''.join(nav)}</ul></nav><main>{''.join(sections)}</main>"
        "</body></html>"
    )
