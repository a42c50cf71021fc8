"""Bad requests of every kind get a clear 4xx in the envelope, never a 500."""

import json

import pytest
from conftest import assert_error
from test_events import open_stream


@pytest.fixture
def alice(client):
    return client.user("alice")


def send(client, alice, body, content_type="application/json", status=400):
    return client.post(
        "/api/messages", body, headers=dict(alice.headers, **{"Content-Type": content_type}), status=status
    )


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{", "not valid JSON"),
        (b"", "must be a JSON object"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"content": NaN}', "NaN"),
        (b'{"content": Infinity}', "Infinity"),
        (b'{"content": -Infinity}', "Infinity"),
        (b'{"content": "\\ud800"}', "surrogate"),
        (b'{"content": "ok", "x": {"\\udfff": 1}}', "surrogate"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 32000, "nested too deeply"),
    ],
)
def test_malformed_json_bodies_are_400(client, alice, body, message):
    assert_error(send(client, alice, body), 400, message)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_a_body_that_is_not_json_is_415(client, alice, content_type):
    assert_error(send(client, alice, b'{"content": "hi"}', content_type, status=415), 415, "application/json")


def test_json_with_a_charset_parameter_is_accepted(client, alice):
    send(client, alice, json.dumps({"content": "hi"}).encode(), "application/json; charset=utf-8", status=201)


def test_a_body_over_the_limit_is_413_before_it_is_read(make_client):
    client = make_client(max_body_bytes=2048)
    alice = client.user("alice")
    body = json.dumps({"content": "x" * 3000}).encode()
    assert_error(send(client, alice, body, status=413), 413, "too large")


def test_an_unknown_path_is_404_and_a_wrong_method_405_with_allow(client):
    assert_error(client.get("/api/nowhere", status=404), 404)
    response = client.put_json("/api/messages", {}, status=405)
    assert_error(response, 405)
    assert set(response.headers["Allow"].split(", ")) == {"GET", "POST", "OPTIONS"}


def test_head_answers_like_get_without_a_body(client):
    response = client.head("/api/health")
    assert response.status_int == 200 and response.body == b""


def test_a_malformed_query_string_is_400(client, alice):
    response = client.get("/api/messages?limit=%ff", headers=alice.headers, status=400)
    assert_error(response, 400)


def test_url_parameters_are_percent_decoded(client, alice):
    message = client.post_json("/api/messages", {"content": "hi"}, headers=alice.headers).json["data"]
    client.get(f"/api/messages/{message['id'].replace('-', '%2D')}", headers=alice.headers)


# -- middleware as composed by create_app -------------------------------------


def test_with_an_api_key_required_requests_without_it_get_401(make_client):
    client = make_client(secret_key_enabled=True, secret_key="k" * 20)
    assert_error(client.post_json("/api/auth/register", {}, status=401), 401, "API key is missing")
    assert_error(client.get("/api/messages", headers={"X-API-Key": "wrong"}, status=401), 401, "Invalid API key")
    assert_error(client.get("/", headers={"X-API-Key": "kéy"}, status=401), 401)
    client.get("/api/health")
    client.get("/", headers={"X-API-Key": "k" * 20})


def test_a_preflight_needs_no_api_key_and_refusals_carry_cors_headers(make_client):
    client = make_client(secret_key_enabled=True, secret_key="k" * 20, cors_origins=("https://chat.example",))
    preflight = client.options(
        "/api/messages",
        headers={
            "Origin": "https://chat.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-api-key",
        },
        status=204,
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://chat.example"
    assert "X-API-Key" in preflight.headers["Access-Control-Allow-Headers"]
    refused = client.get("/api/messages", headers={"Origin": "https://chat.example"}, status=401)
    assert refused.headers["Access-Control-Allow-Origin"] == "https://chat.example"
    assert "Origin" in refused.headers["Vary"]
    stranger = client.get("/api/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in stranger.headers


def test_rate_limits_answer_429_with_retry_after_and_a_stricter_budget_for_login(make_client):
    client = make_client(rate_limit_enabled=True, rate_limit=100, auth_rate_limit=3)
    for _ in range(3):
        client.post_json("/api/auth/login", {"username": "x", "password": "y" * 8}, status=401)
    refused = client.post_json("/api/auth/login", {"username": "x", "password": "y" * 8}, status=429)
    assert_error(refused, 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert "RateLimit-Policy" in refused.headers
    client.get("/api/health")


def test_every_answer_carries_a_request_id(client):
    assert len(client.get("/").headers["X-Request-ID"]) >= 8
    assert client.get("/", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"


def test_an_unexpected_error_is_a_500_that_leaks_nothing(client, monkeypatch, caplog):
    alice = client.user("alice")

    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.wsgi.core.ctx.store, "visible_messages", explode)
    response = client.get("/api/messages", headers=dict(alice.headers, Origin="https://x.example"), status=500)
    assert response.json == {"status": "error", "message": "Internal server error"}
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "secret internals" in caplog.text


@pytest.mark.backends("json")  # breaks the journal; PostgreSQL outages: test_postgres.py, test_two_hosts.py
def test_a_store_that_refuses_writes_answers_503_and_health_says_so(client, monkeypatch):
    alice = client.user("alice")
    store = client.wsgi.core.ctx.store

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("store.journal.os.fdatasync", broken)
    response = client.post_json("/api/messages", {"content": "lost?"}, headers=alice.headers, status=503)
    assert_error(response, 503, "refuses writes")
    assert response.headers["Retry-After"]
    assert not store.writable
    health = client.get("/api/health", status=503)
    assert health.json["status"] == "error" and health.json["data"]["store"] == "refusing writes"
    assert "Input/output error" in health.json["data"]["store_problem"]
    assert_error(client.post_json("/api/messages", {"content": "x"}, headers=alice.headers, status=503), 503)


def test_root_and_health_describe_the_service(client, clock):
    root = client.get("/").json
    assert root["status"] == "success" and root["data"]["name"] == "oxc" and root["data"]["version"]
    clock.advance(5)
    health = client.get("/api/health").json["data"]
    assert health["store"] == "ok" and health["uptime_seconds"] >= 5 and health["version"]


def test_the_app_works_under_another_prefix(make_client):
    client = make_client(api_prefix="/v2/chat")
    alice = client.user("alice")
    client.post_json("/v2/chat/messages", {"content": "hi"}, headers=alice.headers, status=201)
    assert_error(client.get("/api/messages", headers=alice.headers, status=404), 404)


def test_the_app_can_be_mounted_under_a_script_name(make_client):
    client = make_client()
    app = client.wsgi

    def parent(environ, start_response):
        path = environ["PATH_INFO"]
        if path.startswith("/chat/"):
            environ["SCRIPT_NAME"] += "/chat"
            environ["PATH_INFO"] = path[len("/chat") :]
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"parent"]

    from webtest import TestApp

    mounted = TestApp(parent)
    mounted.post_json("/chat/api/auth/register", {"username": "alice", "password": "p" * 10}, status=201)
    token = mounted.post_json("/chat/api/auth/login", {"username": "alice", "password": "p" * 10}).json
    headers = {"Authorization": f"Bearer {token['data']['access_token']}"}
    mounted.post_json("/chat/api/messages", {"content": "mounted"}, headers=headers, status=201)
    assert mounted.get("/chat/api/messages", headers=headers).json["messages"][0]["content"] == "mounted"
    assert mounted.get("/api/messages", status=404).body == b"parent"


@pytest.mark.parametrize("path", ["/api/messages", "/api/messages/me", "/api/chats", "/api/users"])
def test_a_non_ascii_digit_limit_is_400_not_500(client, alice, path):
    assert_error(client.get(path, {"limit": "²"}, headers=alice.headers, status=400), 400, "limit")


def test_a_path_parameter_is_not_decoded_twice(client, alice):
    message = client.post_json("/api/messages", {"content": "hi"}, headers=alice.headers).json["data"]
    assert_error(client.get("/api/messages/%2541", headers=alice.headers, status=404), 404, "%41")
    client.get(f"/api/messages/{message['id']}", headers=alice.headers)


@pytest.mark.backends("json")  # breaks the journal; PostgreSQL outages: test_postgres.py, test_two_hosts.py
def test_reads_still_answer_while_the_store_refuses_writes(client, alice, monkeypatch, clock):
    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("store.journal.os.fdatasync", broken)
    client.post_json("/api/messages", {"content": "x"}, headers=alice.headers, status=503)
    clock.advance(120)
    client.get("/api/messages", headers=alice.headers, status=200)


def test_with_an_api_key_a_ticketed_event_stream_needs_no_header(make_client):
    client = make_client(secret_key_enabled=True, secret_key="k" * 20)
    key = {"X-API-Key": "k" * 20}
    client.post_json("/api/auth/register", {"username": "alice", "password": "p" * 10}, headers=key)
    token = client.post_json("/api/auth/login", {"username": "alice", "password": "p" * 10}, headers=key).json["data"][
        "access_token"
    ]
    assert_error(client.get("/api/events/stream", status=401), 401, "API key")
    assert_error(client.get("/api/events/stream", {"ticket": "forged"}, status=401), 401, "ticket")
    bearer = {"Authorization": f"Bearer {token}", **key}
    ticket = client.post_json("/api/events/ticket", {}, headers=bearer, status=201).json["data"]["ticket"]
    started, body = open_stream(client, query=f"ticket={ticket}")
    assert started["status"] == "200 OK"
    body.close()
