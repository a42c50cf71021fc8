"""Shared fixtures: a fresh app per test, and users in it.

Every test that builds an app through ``make_client`` (or ``client``) runs
once per storage backend: ``[json]`` over a temp data dir, ``[postgres]`` over
a fresh schema of the database at OXC_TEST_POSTGRES_URL (skipped, saying why,
without a server). A test or module about one backend's own workings says so
with ``@pytest.mark.backends("json")``.
"""

import dataclasses
import os
import time
from wsgiref.validate import validator

import pytest
from pgtest import fresh_schema
from webtest import TestApp

from oxc_wsgi import Settings, create_app

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
        client = Client(validator(wsgi))
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
