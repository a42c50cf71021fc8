"""Shared fixtures: a fresh app per test, and users in it.

Every test that builds an app through ``make_client`` (or ``client``) runs
once per storage backend: ``[json]`` over a temp data dir, ``[postgres]`` over
a fresh schema of the database at OXC_TEST_POSTGRES_URL (skipped, saying why,
without a server). A test or module about one backend's own workings says so
with ``@pytest.mark.backends("json")``.

Every JSON answer such an app gives is held against the app's own OpenAPI
document with extra fields forbidden (``DocumentCheck``, the drift test): a
field sent but not documented, or documented as required but not sent, fails
the test that made the request.
"""

import copy
import dataclasses
import json
import os
import time
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import jsonschema
import pytest
from pgtest import fresh_schema
from webtest import TestApp

from oxc_wsgi import HTTPError, Request, Settings, create_app

PASSWORD = "correct horse battery"


class Clock:
    """A clock tests move by hand: ``clock.advance(60)``."""

    def __init__(self, now=None):
        self.now = time.time() if now is None else now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@dataclasses.dataclass
class User:
    id: str
    username: str
    access_token: str
    refresh_token: str

    @property
    def headers(self):
        return {"Authorization": f"Bearer {self.access_token}"}


class Client(TestApp):
    """A webtest app that also knows how to make users."""

    def register(self, username, password=PASSWORD, email=None, status=201):
        body = {"username": username, "password": password}
        if email:
            body["email"] = email
        return self.post_json(f"{self.prefix}/auth/register", body, status=status)

    def login(self, username, password=PASSWORD, status=200):
        return self.post_json(f"{self.prefix}/auth/login", {"username": username, "password": password}, status=status)

    def user(self, username, email=None):
        """Register and log in ``username``; return a User with its tokens."""
        self.register(username, email=email)
        data = self.login(username).json["data"]
        return User(data["user"]["id"], username, data["access_token"], data["refresh_token"])


# =============================================================================
# The drift test: every JSON answer against the app's own document
# =============================================================================


class DriftError(AssertionError):
    """An answer the document does not describe: an undocumented field, a missing one, a wrong type."""


#: Statuses any operation may answer without the document listing them (a bug, a store outage on a read):
#: their body must still be the error envelope.
UNPLANNED = (500, 503)
#: Content types that are not JSON answers (streams, files, pages): passed through unchecked.
JSON_TYPES = ("application/json",)


def _is_object(schema):
    kind = schema.get("type")
    return "properties" in schema and (kind == "object" or (isinstance(kind, list) and "object" in kind))


def _resolve(schema, components, seen=()):
    """``schema`` with every $ref replaced by a copy of its target (siblings of a $ref win over the target)."""
    if isinstance(schema, list):
        return [_resolve(item, components, seen) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            raise ValueError(f"recursive schema {name}")
        target = _resolve(components[name], components, (*seen, name))
        siblings = {key: value for key, value in schema.items() if key != "$ref"}
        return {**target, **_resolve(siblings, components, seen)}
    return {key: _resolve(value, components, seen) for key, value in schema.items()}


#: What folding an allOf of objects takes from each member; anything else (an anyOf constraint) still applies.
FOLDED = ("type", "properties", "required", "description", "examples", "additionalProperties")


def _fold(objects):
    """One object schema holding the properties and requirements of ``objects`` (members of an allOf)."""
    merged = {"type": "object", "properties": {}, "required": []}
    rest = []
    for member in objects:
        for name, prop in member["properties"].items():
            if name in merged["properties"] and merged["properties"][name] != prop:
                merged["properties"][name] = {"allOf": [merged["properties"][name], prop]}
            else:
                merged["properties"][name] = prop
        merged["required"] += [name for name in member.get("required", ()) if name not in merged["required"]]
        # What else a member says (anyOf constraints, additionalProperties) still holds.
        other = {k: v for k, v in member.items() if k not in FOLDED}
        if other:
            rest.append(other)
    return merged, rest


def strict(schema):
    """A resolved schema with ``additionalProperties: false`` on every object that lists its properties.

    An ``allOf`` of objects is folded into one object first: each member alone
    would refuse the others' fields. ``anyOf``/``oneOf`` branches are whole
    alternatives, each made strict on its own.
    """
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    node = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "$defs"):
            node[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "if", "then", "else", "contains"):
            node[key] = strict(value)
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            node[key] = [strict(sub) for sub in value]
        else:
            node[key] = value
    if "allOf" in node:
        objects = [member for member in node["allOf"] if _is_object(member)]
        if objects:
            others = [member for member in node["allOf"] if not _is_object(member)]
            own = [node] if _is_object(node) else []
            merged, rest = _fold(own + objects)
            merged["additionalProperties"] = False
            outside = {k: v for k, v in node.items() if k not in ("allOf", "type", "properties", "required")}
            node = {**outside, **merged}
            if others + rest:
                node["allOf"] = others + rest
            return node
    if _is_object(node) and "additionalProperties" not in node:
        node["additionalProperties"] = False
    return node


def _where(path):
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


class DocumentCheck:
    """Test-only WSGI wrapper: each JSON answer must match the app's own served document, strictly.

    The operation is found by the app's route table (method and path template),
    its answer by status; the schema is made strict (``strict``) and the answer
    validated with jsonschema. Answers that are not JSON (the event stream,
    files, the web page, the docs page) pass untouched.
    """

    #: Strict schemas per (settings, method, template, status), shared by the apps of a test run.
    _documents = {}

    def __init__(self, app):
        self.app = app
        self.core = app.core
        settings = self.core.ctx.settings
        self.key = repr(dataclasses.replace(settings, data_dir=None, store_url=""))

    def __call__(self, environ, start_response):
        seen = {}

        def capture(status, headers, exc_info=None):
            seen["status"], seen["headers"] = status, headers
            return start_response(status, headers, exc_info)

        answer = self.app(environ, capture)
        content_type = dict((name.lower(), value) for name, value in seen.get("headers", ())).get("content-type", "")
        media_type = content_type.split(";")[0].strip()
        if environ["REQUEST_METHOD"] in ("HEAD", "OPTIONS"):
            return answer
        if media_type == "text/event-stream":
            return CheckedStream(answer, self)
        if media_type not in JSON_TYPES:
            return answer
        try:
            body = b"".join(answer)
        finally:
            close = getattr(answer, "close", None)
            if close is not None:
                close()
        if body:
            self.check(environ, int(seen["status"].split()[0]), json.loads(body))
        return [body]

    def document(self):
        """The app's served document (GET {prefix}/openapi.json of the app itself), once per settings."""
        cached = self._documents.get(self.key)
        if cached is None:
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": f"{self.core.ctx.settings.api_prefix}/openapi.json"}
            setup_testing_defaults(environ)
            seen = {}
            body = b"".join(self.core(environ, lambda status, headers, exc_info=None: seen.setdefault("s", status)))
            assert seen["s"].startswith("200"), seen["s"]
            cached = self._documents[self.key] = {"doc": json.loads(body), "schemas": {}, "refs": {}}
        return cached

    def schema_for(self, method, path, status):
        """The operation's name and the strict schema of its answer with ``status`` (None: undocumented)."""
        cached = self.document()
        doc = cached["doc"]
        try:
            route, _ = self.core.router.match(method, path)
        except HTTPError:
            # Not an operation (no such path or method): the answer is the error envelope.
            return f"{method} {path} (no route)", self.strict_schema("#/components/schemas/Error")
        operation = f"{method} {route.template}"
        key = (operation, status)
        if key not in cached["schemas"]:
            responses = doc["paths"].get(route.template, {}).get(method.lower(), {}).get("responses")
            if responses is None:
                raise DriftError(f"{operation}: the document has no such operation")
            reply = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
            if reply is None:
                cached["schemas"][key] = None
            else:
                reply = _resolve(reply, {**doc["components"].get("responses", {}), **doc["components"]["schemas"]})
                media = reply.get("content", {}).get("application/json")
                cached["schemas"][key] = None if media is None else self.strict_schema(media.get("schema", {}))
        return operation, cached["schemas"][key]

    def strict_schema(self, schema):
        """``schema`` (or the component this reference names) resolved and made strict; references are cached."""
        cached = self.document()
        if isinstance(schema, str):
            if schema not in cached["refs"]:
                cached["refs"][schema] = self.strict_schema({"$ref": schema})
            return cached["refs"][schema]
        return strict(_resolve(copy.deepcopy(schema), cached["doc"]["components"]["schemas"]))

    def check(self, environ, status, answer):
        """Raise DriftError when ``answer`` is not what the document says ``status`` of this operation sends."""
        method = environ["REQUEST_METHOD"]
        path = Request(environ, self.core.ctx).path
        operation, schema = self.schema_for(method, path, status)
        if schema is None and status in UNPLANNED:
            schema = self.strict_schema("#/components/schemas/Error")
        if schema is None:
            raise DriftError(f"{operation} answered {status}, which the document does not list (or not as JSON)")
        validate(schema, answer, f"{operation} answered {status}")


class CheckedStream:
    """An event stream passed through chunk by chunk, each event's data held against the Event schema."""

    def __init__(self, answer, check):
        self.answer = answer
        self.chunks = iter(answer)
        self.check = check
        self.pending = b""

    def __iter__(self):
        return self

    def __next__(self):
        chunk = next(self.chunks)
        self.pending += chunk
        *complete, self.pending = self.pending.split(b"\n\n")
        for block in complete:
            for line in block.decode("utf-8").split("\n"):
                if line.startswith("data:"):
                    event = json.loads(line[len("data:") :])
                    schema = self.check.strict_schema("#/components/schemas/Event")
                    validate(schema, event, "GET events/stream sent an event")
        return chunk

    def close(self):
        close = getattr(self.answer, "close", None)
        if close is not None:
            close()


def validate(schema, answer, what):
    """Raise DriftError naming every place where ``answer`` breaks ``schema``."""
    validator_ = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator_.iter_errors(answer), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            detail = error.message
            best = jsonschema.exceptions.best_match(error.context) if error.context else None
            if best is not None:
                detail += (
                    f" (nearest alternative: at {_where(list(error.absolute_path) + list(best.path))}: {best.message})"
                )
            lines.append(f"  at {_where(error.absolute_path)}: {detail}")
        raise DriftError(f"{what}, which its document does not describe:\n" + "\n".join(lines))


BACKENDS = ("json", "postgres")


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run only against these storage backends")


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        metafunc.parametrize("backend", marker.args if marker else BACKENDS, indirect=True)


@pytest.fixture
def backend(request):
    """The storage backend's settings: {} (the JSON store) or {"store_url": <fresh schema>}."""
    if request.param == "postgres":
        with fresh_schema() as (url, _):
            yield {"store_url": url}
    else:
        yield {}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def make_client(tmp_path, clock, backend):
    """Build a Client over a fresh app; keyword arguments override settings."""
    made = []

    def make(**overrides):
        # Tests make many users from one "client"; the auth throttle's own tests ask for the real budget.
        options = dict(data_dir=tmp_path / "data", bcrypt_rounds=4, auth_rate_limit=1_000_000, **backend)
        options.update(overrides)
        wsgi = create_app(Settings(), clock=clock, **options)
        made.append(wsgi)
        client = Client(validator(DocumentCheck(wsgi)))
        client.prefix = options.get("api_prefix", "/api")
        client.wsgi = wsgi
        return client

    yield make
    for wsgi in made:
        wsgi.core.close()


@pytest.fixture
def client(make_client):
    return make_client()


def assert_error(response, status, contains=None):
    """The answer has ``status`` and the error envelope (with ``contains`` in its message)."""
    assert response.status_int == status
    assert response.content_type == "application/json"
    assert response.json["status"] == "error"
    assert isinstance(response.json["message"], str) and response.json["message"]
    if contains is not None:
        assert contains.lower() in response.json["message"].lower(), response.json["message"]


def stored_bytes(client, data_dir):
    """Everything the service keeps at rest: the data directory's files and, on PostgreSQL, every row."""
    stored = b""
    for root, _, names in os.walk(data_dir):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                stored += f.read()
    url = client.wsgi.core.ctx.settings.store_url
    if url:
        import psycopg

        with psycopg.connect(url) as conn:
            tables = [
                row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            ]
            for table in tables:
                for (row,) in conn.execute(f'SELECT t::text FROM "{table}" AS t'):
                    stored += row.encode("utf-8")
    return stored
