"""The web chat page: served at ``/`` to browsers, its files under ``/static/``.

``service.get_root`` hands a request to :func:`page` when the setting
``WEB_UI_ENABLED`` is on and the request's Accept header ranks text/html above
JSON (browsers do; curl, fetch and 0xC clients do not, so they keep getting
0xC's JSON answer). :func:`get_static` serves the page's script modules, style
sheet and icon from ``handlers/static/``, which ships inside the package.

The page is plain HTML, CSS and JavaScript modules the browser loads natively
(``app.js`` and the modules it imports, listed in SCRIPT_MODULES; no build
step), with no inline script or style, so every answer here carries a strict
Content-Security-Policy. The few things the script must know from the server
(the API prefix, the mount point, whether registration and attachments are
on) are written into ``data-`` attributes of the page's ``<body>``; nothing
is rendered into a script.

Only the names in STATIC_TYPES can be reached under ``/static/``; the URL
never becomes a file path. Files are read once per process. Each answer has
an ETag (If-None-Match gets 304); the page links the files with ``?v=`` and
a digest of their contents, and such versioned requests may be cached for a
year, while unversioned ones must be revalidated. A module's imports of its
siblings are served with the same ``?v=``, because the browser resolves
``./chatlist.js`` against ``app.js?v=...`` without the query: unstamped, every
module would be revalidated on every page load.
"""

import functools
import hashlib
import html
import os
import re

from .http import NotFound, Response
from .http.declare import IF_NONE_MATCH, Param, Reply, endpoint, query, refuses

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
PAGE_FILE = "index.html"
JAVASCRIPT = "text/javascript; charset=utf-8"
#: The page's script: the entry module app.js and every module it imports, directly or not.
SCRIPT_MODULES: tuple[str, ...] = (
    "app.js",
    "api.js",
    "attachments.js",
    "auth.js",
    "chatlist.js",
    "composer.js",
    "config.js",
    "conversation.js",
    "dom.js",
    "events.js",
    "messages.js",
    "newchat.js",
    "presence.js",
    "receipts.js",
    "session.js",
    "state.js",
)
#: The files reachable under /static/, with their Content-Type; nothing else is served.
STATIC_TYPES = {
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
    **dict.fromkeys(SCRIPT_MODULES, JAVASCRIPT),
}
STATIC_NAME = Param(
    "StaticName", "name", "path", "The name of one of the web page's files.", {"enum": sorted(STATIC_TYPES)}
)
ASSET_VERSION = query(
    "AssetVersion",
    "v",
    "The files' version as the page links them; when it is current the answer may be cached for a year.",
    {"type": "string"},
)
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
#: A module's import of a sibling module, as the page's modules write them: ``import {x} from "./dom.js";``.
SIBLING_IMPORT = re.compile(rb'^(import\b[^;"]*?")(\./[\w-]+\.js)(")', re.M)


# =============================================================================
# Content negotiation
# =============================================================================


def _media_ranges(accept):
    """(type, subtype, q) for each media range of an Accept header; bad q values count as 0."""
    for item in accept.split(","):
        media, _, params = item.partition(";")
        kind, _, subtype = media.strip().lower().partition("/")
        if not kind or not subtype:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        yield kind, subtype, q


def _quality(ranges, kind, subtype):
    """(q, specificity) of the most specific range matching kind/subtype (RFC 9110 12.5.1)."""
    best = (0.0, -1)
    for range_kind, range_subtype, q in ranges:
        if (range_kind, range_subtype) == (kind, subtype):
            specificity = 2
        elif range_kind == kind and range_subtype == "*":
            specificity = 1
        elif (range_kind, range_subtype) == ("*", "*"):
            specificity = 0
        else:
            continue
        if specificity > best[1]:
            best = (q, specificity)
    return best


def prefers_html(accept):
    """True when ``accept`` names text/html explicitly and ranks it above JSON.

    Browsers send ``text/html,...,*/*;q=0.8``; API clients send nothing,
    ``*/*`` or ``application/json``, and a tie goes to JSON, so that 0xC
    clients never get a page by accident.
    """
    if not accept:
        return False
    ranges = list(_media_ranges(accept))
    html_q, html_specificity = _quality(ranges, "text", "html")
    json_q, _ = _quality(ranges, "application", "json")
    return html_specificity >= 1 and html_q > json_q


# =============================================================================
# Files
# =============================================================================


def _etag(data):
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@functools.cache
def _read(name):
    """(bytes, ETag) of a file in the static directory, read once per process."""
    with open(os.path.join(STATIC_DIR, name), "rb") as f:
        data = f.read()
    return data, _etag(data)


@functools.lru_cache(maxsize=1)
def asset_version():
    """A digest of every static file: the ``?v=`` that makes their URLs change with them."""
    digest = hashlib.sha256()
    for name in sorted(STATIC_TYPES):
        digest.update(_read(name)[1].encode())
    return digest.hexdigest()[:12]


@functools.cache
def _served(name: str) -> tuple[bytes, str]:
    """(bytes, ETag) of a static file as it is served: a module's sibling imports carry ``?v=``."""
    data = _read(name)[0]
    if STATIC_TYPES[name] == JAVASCRIPT:
        version = b"?v=" + asset_version().encode()
        data = SIBLING_IMPORT.sub(lambda match: match[1] + match[2] + version + match[3], data)
    return data, _etag(data)


@functools.lru_cache(maxsize=16)
def render_page(base, api, register, attachments):
    """(bytes, ETag) of the page for a mount point and settings; values are HTML-escaped."""
    template = _read(PAGE_FILE)[0].decode("utf-8")
    values = {
        "base": base,
        "api": api,
        "register": "on" if register else "off",
        "attachments": "on" if attachments else "off",
        "asset": asset_version(),
    }
    body = PLACEHOLDER.sub(lambda match: html.escape(values[match.group(1)], quote=True), template).encode()
    return body, _etag(body)


def _not_modified(req, etag):
    header = req.header("If-None-Match")
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return etag in tags or "*" in tags


def _answer(req, body, etag, content_type, cache_control, extra=()):
    headers = [("ETag", etag), ("Cache-Control", cache_control), *SECURITY_HEADERS, *extra]
    if _not_modified(req, etag):
        return Response([], 304, headers)
    return Response([body], 200, [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers])


# =============================================================================
# Handlers
# =============================================================================


def page(req):
    """The chat page (get_root delegates here for browsers)."""
    settings = req.ctx.settings
    base = req.script_name
    attachments = any(route.name == "post_attachment" for route in getattr(req.ctx, "routes", ()))
    body, etag = render_page(base, base + settings.api_prefix, settings.register_enabled, attachments)
    return _answer(req, body, etag, "text/html; charset=utf-8", REVALIDATE, [("Vary", "Accept")])


@endpoint(
    "web",
    "A file of the web chat page",
    "The web chat page's script, style sheet and icon (the page itself is GET / for browsers), with "
    "Content-Type, ETag and Cache-Control: immutable for a year when v is current, revalidated "
    "otherwise. If-None-Match naming the current ETag answers 304. Only these names exist: there is no "
    "other path to the server's files. 404 when WEB_UI_ENABLED=0.",
    answers={
        200: Reply("The file.", {"type": "string"}, "*/*"),
        304: Reply("The client's copy is current (no body)."),
        404: refuses("No such file, or the web page is turned off."),
    },
    parameters=(STATIC_NAME, ASSET_VERSION, IF_NONE_MATCH),
)
def get_static(req, name):
    """One of the page's files: a script module, the style sheet, the icon (404 for any other name)."""
    if not req.ctx.settings.web_enabled:
        raise NotFound("The web page is turned off on this server (WEB_UI_ENABLED=0)")
    content_type = STATIC_TYPES.get(name)
    if content_type is None:
        raise NotFound(f"No such file: {name}")
    body, etag = _served(name)
    versioned = req.query.get("v") == asset_version()
    return _answer(req, body, etag, content_type, IMMUTABLE if versioned else REVALIDATE)
