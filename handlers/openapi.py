"""The API described as an OpenAPI 3.1 document, rendered from the endpoints' declarations.

``get_openapi`` serves the document at ``{API_PREFIX}/openapi.json``; ``get_docs``
serves it as a self-contained HTML page at ``{API_PREFIX}/docs`` (``openapi_docs``).

The document is rendered from two sources and restates neither. The route table
(``req.ctx.routes``) says which method and path reach which handler, whether a
user is needed and, for chat handlers, which role (``roles.in_chat``). Each
handler's declaration (``handlers.http.declare``) says the rest: tag, summary,
parameters, the body's fields and limits, answers, refusals and links. Answer
schemas are the declared views (``views.component_schemas``). Answers that follow
from the kind of operation are added here once: 401 and bearer security for
routes that need a user, 403/404/409 for chat roles, 400/413/415 for JSON bodies,
503 for operations that write, 401 and the API key scheme when
``SECRET_KEY_ENABLED``, 429 when rate limiting is on (for the auth endpoints,
unless AUTH_RATE_LIMIT_ENABLED=0). A route without a declaration is left out,
with a warning in the log (``undeclared`` lists them for a test).

Both answers are built once per app, settings and mount point (SCRIPT_NAME) and
then served from a cache kept on ``req.ctx``.
"""

import json
import logging
import re

from . import openapi_docs
from .auth import THROTTLED_PATHS
from .http import Response, views
from .http.declare import (
    Reply,
    declaration_of,
    endpoint,
    ref,
    refuses,
    returns,
)

log = logging.getLogger("oxc.openapi")

OPENAPI_VERSION = "3.1.0"
PLACEHOLDER = re.compile(r"\{(\w+)\}")
_CACHE_LIMIT = 16

# =============================================================================
# Components
# =============================================================================


def _security_schemes(settings):
    return {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": (
                f"An access token from /auth/login or /auth/refresh, valid for {settings.access_token_expires} minutes."
            ),
        },
        "streamTicket": {
            "type": "apiKey",
            "in": "query",
            "name": "ticket",
            "description": "A ticket from POST /events/ticket; opens the event stream only (EventSource "
            "cannot send an Authorization header).",
        },
        "apiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": (
                "The shared API key. Required on every request except OPTIONS and "
                f"{settings.api_prefix}/health when the server runs with SECRET_KEY_ENABLED=1; "
                + (
                    "this server does."
                    if settings.secret_key_enabled
                    else "this server does not, so the header is ignored."
                )
            ),
        },
    }


def _components(settings):
    """The reusable schemas and security schemes, sized by ``settings`` (parameters come with the operations)."""
    # Answers are declared views; request bodies (and the schemas they refer to) join them
    # as the operations are rendered.
    schemas = views.component_schemas(settings)
    return {"schemas": schemas, "parameters": {}, "securitySchemes": _security_schemes(settings)}


TAGS = {
    "service": "The service itself.",
    "docs": "This documentation.",
    "auth": "Accounts and tokens.",
    "messages": "0xC's public and private messages.",
    "chats": "Direct chats and groups, their members and messages.",
    "events": "Real-time events: long-poll, Server-Sent Events, typing notices.",
    "search": "Finding messages by their words.",
    "users": "Profiles and the user directory.",
    "accounts": "E-mail verification and password reset with mailed codes.",
    "notifications": "The notification feed and push devices.",
    "media": "Attachments: upload, metadata, download, thumbnails.",
    "keys": "The public-key directory for end-to-end encryption (the server never sees a private key).",
    "web": "The web chat page's files.",
}
ROLE_NAMES = {
    "member": "a member of the chat",
    "admin": "an admin or the owner of the chat",
    "owner": "the owner of the chat",
}


def undeclared(routes):
    """The names of routes whose handler has no declaration (they are left out of the document)."""
    return [route.name for route in routes if declaration_of(route.handler) is None]


# =============================================================================
# The document
# =============================================================================

RESPONSE_HEADERS = {
    401: {
        "WWW-Authenticate": {
            "description": "'Bearer' when the access token was the problem.",
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
}


def _replies(route, entry, settings):
    """Every answer the operation can give: status -> list of Reply."""
    replies = {}
    for status, reply in entry.responses.items():
        replies.setdefault(status, []).append(reply)

    def add(status, description):
        replies.setdefault(status, []).append(refuses(description))

    role = getattr(route.handler, "required_role", None)
    if role is not None:
        add(404, "No such chat.")
        add(403, f"The caller is not {ROLE_NAMES[role]}.")
        if entry.writes:
            add(409, "The caller stopped being a member of the chat while the request ran.")
    if entry.groups_only:
        add(400, f"The chat is a direct chat, which cannot {entry.groups_only}.")
    if _body_name(entry):
        add(400, "The body is not a JSON object (malformed, not UTF-8, NaN, a lone surrogate ...).")
        add(413, f"The body is over {settings.max_body_bytes} bytes (MAX_BODY_BYTES).")
        add(415, "Content-Type is not application/json.")
    if any(parameter.where == "query" for parameter in entry.parameters):
        add(400, "The query string is malformed.")
    if route.auth:
        add(401, "The access token is missing, malformed, expired, or its session has ended.")
    if settings.secret_key_enabled and not entry.api_key_exempt:
        add(401, "The X-API-Key header is missing or wrong.")
    if settings.rate_limit_enabled:
        add(429, "Too many requests from this client; retry after Retry-After.")
    elif settings.auth_rate_limit_enabled and route.template.endswith(THROTTLED_PATHS):
        add(
            429,
            f"Too many requests from this client to the auth endpoints ({settings.auth_rate_limit} a "
            "minute, AUTH_RATE_LIMIT); retry after Retry-After.",
        )
    if entry.writes:
        add(503, "The store refuses writes (a disk failure); retry after Retry-After.")
    return replies


def _response(status, replies):
    reasons = [reply.description for reply in replies]
    response = {"description": reasons[0] if len(reasons) == 1 else "\n".join(f"- {r}" for r in reasons)}
    if replies[0].schema is not None:
        response["content"] = {replies[0].media_type: {"schema": replies[0].schema}}
    if status in RESPONSE_HEADERS:
        response["headers"] = RESPONSE_HEADERS[status]
    return response


def _security(route, entry, settings):
    """Alternative requirements: the entry's own schemes, or bearer when the route needs a user."""
    alternatives = [[name] for name in entry.security] or [["bearerAuth"] if route.auth else []]
    if settings.secret_key_enabled and not entry.api_key_exempt:
        alternatives = [names + ["apiKey"] for names in alternatives]
    return [{name: [] for name in names} for names in alternatives if names]


def _body_name(entry):
    """The component name of the declaration's JSON body, if it takes one."""
    return entry.body_name if entry.body is not None else None


def _operation(route, entry, settings, components):
    description = entry.description
    role = getattr(route.handler, "required_role", None)
    if role is not None:
        description += f" The caller must be {ROLE_NAMES[role]}."
    operation = {
        "operationId": route.name,
        "tags": [entry.tag],
        "summary": entry.summary,
        "description": description,
        "security": _security(route, entry, settings),
    }
    if entry.parameters:
        for parameter in entry.parameters:
            components["parameters"][parameter.component] = parameter.document(settings)
        operation["parameters"] = [
            {"$ref": f"#/components/parameters/{parameter.component}"} for parameter in entry.parameters
        ]
    body = _body_name(entry)
    if body:
        media = {"schema": ref(body)}
        if entry.body_example is not None:
            media["example"] = dict(entry.body_example)
        operation["requestBody"] = {"required": True, "content": {"application/json": media}}
    elif entry.upload:
        operation["requestBody"] = {"required": True, "content": dict(entry.upload)}
    replies = _replies(route, entry, settings)
    operation["responses"] = {str(status): _response(status, replies[status]) for status in sorted(replies)}
    return operation


def _entry(route, settings):
    """What the document says of a route: its handler's declaration, resolved against ``settings``."""
    declaration = declaration_of(route.handler)
    return None if declaration is None else declaration.resolve(settings)


def _links(routes, entries, paths):
    """Add each declared Link to the answers that produce the id, pointing at every operation it can feed.

    A target's other path parameters come from the producing request's own path when it has
    them (a message's chat is the chat it was posted to); a target that would be left with a
    path parameter to chance is not linked, since no link could feed it.
    """
    for route in routes:
        entry = entries.get(route.name)
        for status, links in (entry.links if entry is not None else {}).items():
            found: dict[str, dict] = {}
            for link in links:
                for target in routes:
                    if target.name not in entries or (link.to and target.name not in link.to):
                        continue
                    if link.request_body is not None:
                        found[target.name] = {"operationId": target.name, "requestBody": link.request_body}
                    elif "{" + link.parameter + "}" in target.template:
                        found.setdefault(target.name, {"operationId": target.name, "parameters": {}})
                        found[target.name]["parameters"][link.parameter] = f"$response.body#{link.source}"
            templates = {target.name: target.template for target in routes}
            for name, link in list(found.items()):
                parameters = link.setdefault("parameters", {})
                for placeholder in PLACEHOLDER.findall(templates[name]):
                    if placeholder in parameters:
                        continue
                    if "{" + placeholder + "}" in route.template:
                        parameters[placeholder] = f"$request.path.{placeholder}"
                    else:
                        del found[name]
                        break
            for link in found.values():
                if not link["parameters"]:
                    del link["parameters"]
            if found:
                paths[route.template][route.method.lower()]["responses"][str(status)]["links"] = found


def _info(settings, version):
    prefix = settings.api_prefix
    api_key = (
        "This server requires the X-API-Key header on every request except OPTIONS and "
        f"{prefix}/health (SECRET_KEY_ENABLED=1)."
        if settings.secret_key_enabled
        else "This server does not require an API key (SECRET_KEY_ENABLED=0); with it on, every "
        f"request except OPTIONS and {prefix}/health needs the X-API-Key header."
    )
    auth_paths = "the auth endpoints" if settings.auth_rate_limit_enabled else "login and registration"
    rate = (
        f"Rate limiting is on: {settings.rate_limit} requests a minute per client, "
        f"{settings.auth_rate_limit} for {auth_paths}; beyond that 429."
        if settings.rate_limit_enabled
        else f"Each client may make {settings.auth_rate_limit} requests a minute to the auth endpoints (register, "
        "login, refresh, verification and reset); beyond that 429. Other requests are not rate limited."
        if settings.auth_rate_limit_enabled
        else "Rate limiting is off on this server."
    )
    return {
        "title": "oxc chat API",
        "version": version,
        "summary": "Public and private chat messages with JWT authentication.",
        "description": "\n\n".join(
            [
                'Every answer is JSON. A success is `{"status": "success", "message"?, "data"}` or, '
                'for lists, `{"status": "success", "messages": [...], "paging": {...}}`; an error is '
                '`{"status": "error", "message": "..."}`.',
                f"Register at {prefix}/auth/register, log in at {prefix}/auth/login, then send "
                "`Authorization: Bearer <access_token>`. Refresh with the refresh token before "
                "`refresh_at`; a refresh token is single-use when rotation is on.",
                api_key,
                rate,
                f"Messages hold 1 to {settings.max_message_length} characters (MAX_MESSAGE_LENGTH). "
                "Text fields are trimmed of surrounding whitespace before they are checked; unknown "
                "query parameters and body fields are ignored. Other methods on a known path answer "
                "405 with an Allow header.",
            ]
        ),
        "license": {"name": "MIT", "identifier": "MIT"},
    }


def build_document(settings, routes, version, script_name=""):
    """The OpenAPI document for ``routes`` under ``settings``, served below ``script_name``."""
    components = _components(settings)
    paths = {}
    entries = {}
    for route in routes:
        entry = _entry(route, settings)
        if entry is None:
            log.warning("route %s %s has no declaration for %s", route.method, route.template, route.name)
            continue
        entries[route.name] = entry
        if entry.body is not None:
            components["schemas"][entry.body_name] = entry.body_schema()
        for name, schema in entry.schemas.items():
            components["schemas"][name] = schema(settings)
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route, entry, settings, components)
    _links(routes, entries, paths)
    used_tags = {entry.tag for entry in entries.values()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": _info(settings, version),
        "servers": [{"url": script_name or "/", "description": "This server."}],
        "tags": [{"name": name, "description": text} for name, text in TAGS.items() if name in used_tags],
        "paths": paths,
        "components": components,
    }


def _cached(req, kind, build):
    """``build()`` once per app, kind and mount point; later calls get the cached value."""
    cache = getattr(req.ctx, "openapi_cache", None)
    if cache is None:
        cache = req.ctx.openapi_cache = {}
    key = (kind, req.script_name)
    value = cache.get(key)
    if value is None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()  # SCRIPT_NAME comes from the server's setup; a churn here is odd, not hostile
        value = cache[key] = build()
    return value


def document(req):
    """The OpenAPI document (a dict) as this request's app and mount point serve it."""
    return _cached(
        req, "document", lambda: build_document(req.ctx.settings, req.ctx.routes, req.ctx.version, req.script_name)
    )


@endpoint(
    "docs",
    "This OpenAPI document",
    "The OpenAPI 3.1 document describing every operation, as plain JSON (not in an envelope).",
    answers={
        200: returns(
            {
                "type": "object",
                "required": ["openapi", "info", "paths"],
                "examples": [
                    {"openapi": OPENAPI_VERSION, "paths": {}, "info": {"title": "oxc chat API", "version": "0.1.0"}}
                ],
            },
            "The document.",
        )
    },
)
def get_openapi(req):
    """The OpenAPI 3.1 document, as plain JSON."""
    body = _cached(
        req, "json", lambda: json.dumps(document(req), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    )
    return Response(
        [body], 200, [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))]
    )


# =============================================================================
# The reference page (rendered by openapi_docs)
# =============================================================================


@endpoint(
    "docs",
    "API reference page",
    "This document rendered as a self-contained HTML page.",
    answers={200: Reply("The page.", {"type": "string"}, "text/html")},
)
def get_docs(req):
    """The API reference as a self-contained HTML page."""
    body = _cached(req, "html", lambda: openapi_docs.render_page(document(req)).encode("utf-8"))
    return Response([body], 200, openapi_docs.PAGE_HEADERS + [("Content-Length", str(len(body)))])


#: The page's example maker, for tests that hold examples against their schemas.
example_of = openapi_docs.example_of
