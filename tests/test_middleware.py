"""Tests of each middleware layer against stub WSGI apps, with injected clocks."""

import io
import json
import logging
import sys
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest
from webtest import TestApp

from middleware import (
    AccessLog,
    ApiKey,
    BodyLimit,
    BodyTooLarge,
    Cors,
    RateLimit,
    RateLimitPolicy,
    TokenBucket,
    error_answer,
)
from middleware.accesslog import formatter
from middleware.wire import MAX_DECLARED_LENGTH, InvalidLength, declared_length, json_body

ORIGIN = "https://chat.example"
CLIENT = {"REMOTE_ADDR": "198.51.100.7"}


# ---- stubs and helpers ------------------------------------------------------


def ok_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def crashing_app(environ, start_response):
    raise RuntimeError("secret database password in the message")


def server_error_app(environ, start_response):
    start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
    return [b"boom"]


class RecordingApp:
    """A stub that remembers the environs it saw."""

    def __init__(self):
        self.environs = []

    def __call__(self, environ, start_response):
        self.environs.append(environ)
        return ok_app(environ, start_response)


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def client(app, **extra_environ):
    """A TestApp over app, itself wrapped in the stdlib WSGI validator."""
    return TestApp(validator(app), extra_environ=extra_environ or None)


def checked(app):
    """The stub as inner app, validated so the middleware must hand it a correct environ."""
    return validator(app)


def assert_refusal(response, status, message):
    assert response.status_int == status
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Content-Length"] == str(len(response.body))
    assert response.json == {"status": "error", "message": message}


def call(app, environ):
    """Call a WSGI app directly, as strictly as waitress does; return (status, headers, body)."""
    started = {}

    def start_response(status, headers, exc_info=None):
        if started and exc_info is None:
            raise AssertionError("start_response called a second time without exc_info")
        started["status"], started["headers"] = status, headers

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return started["status"], dict(started["headers"]), body


def raw_environ(**overrides):
    environ = {"QUERY_STRING": ""}
    setup_testing_defaults(environ)
    environ.update(overrides)
    return environ


# ---- error_answer -----------------------------------------------------------


def test_error_answer_renders_the_envelope_with_length_and_reason_phrase():
    started = {}

    def start_response(status, headers):
        started["status"], started["headers"] = status, headers

    body = error_answer(start_response, 404, "No such chat", [("X-Extra", "1")])
    assert started["status"] == "404 Not Found"
    assert body == [b'{"status":"error","message":"No such chat"}']
    assert dict(started["headers"]) == {
        "Content-Type": "application/json; charset=utf-8",
        "Content-Length": str(len(body[0])),
        "X-Extra": "1",
    }


def test_error_answer_keeps_non_ascii_text_as_utf8():
    body = error_answer(lambda status, headers: None, 404, "Kein Chat: café")
    assert body == ['{"status":"error","message":"Kein Chat: café"}'.encode()]


# ---- wire primitives --------------------------------------------------------


@pytest.mark.parametrize("declared, length", [("", None), ("  ", None), ("0", 0), (" 17 ", 17), ("007", 7)])
def test_declared_length_reads_digits_and_treats_blank_as_undeclared(declared, length):
    assert declared_length({"CONTENT_LENGTH": declared}) == length
    assert declared_length({}) is None


@pytest.mark.parametrize("declared", ["-1", "+5", "1e3", "12 3", "0x10", "\u0661"])
def test_declared_length_refuses_anything_but_ascii_digits(declared):
    with pytest.raises(InvalidLength, match="^Invalid Content-Length$"):
        declared_length({"CONTENT_LENGTH": declared})


def test_declared_length_reads_absurdly_long_lengths_as_above_every_limit():
    assert declared_length({"CONTENT_LENGTH": "9" * 5000}) == MAX_DECLARED_LENGTH
    assert declared_length({"CONTENT_LENGTH": "0" * 5000 + "12"}) == 12


def test_json_body_is_compact_utf8_and_escapes_lone_surrogates():
    assert json_body({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    assert json_body({"a": "\ud800"}) == b'{"a":"\\ud800"}'


# ---- ApiKey -----------------------------------------------------------------


def keyed(**kwargs):
    return client(ApiKey(checked(ok_app), ["key-one", "key-two"], **kwargs))


def test_request_without_api_key_is_refused_as_missing():
    assert_refusal(keyed().get("/api/chats", status=401), 401, "API key is missing")


def test_request_with_empty_api_key_is_refused_as_missing():
    response = keyed().get("/api/chats", headers={"X-API-Key": ""}, status=401)
    assert_refusal(response, 401, "API key is missing")


def test_request_with_wrong_api_key_is_refused_as_invalid():
    response = keyed().get("/api/chats", headers={"X-API-Key": "key-three"}, status=401)
    assert_refusal(response, 401, "Invalid API key")


@pytest.mark.parametrize("key", ["key-one", "key-two"])
def test_every_accepted_api_key_reaches_the_app(key):
    assert keyed().get("/api/chats", headers={"X-API-Key": key}).text == "ok"


@pytest.mark.parametrize("presented", ["clé-one", "ключ", "\udcff", "key-one\x00"])
def test_non_ascii_api_key_is_refused_with_401_not_500(presented):
    app = ApiKey(ok_app, ["key-one"])
    status, headers, body = call(app, raw_environ(HTTP_X_API_KEY=presented))
    assert status == "401 Unauthorized"
    assert body == b'{"status":"error","message":"Invalid API key"}'


def test_latin1_api_key_through_webtest_is_refused_with_401():
    response = keyed().get("/api/chats", extra_environ={"HTTP_X_API_KEY": "cl\xe9"}, status=401)
    assert_refusal(response, 401, "Invalid API key")


def test_options_request_passes_without_api_key():
    assert keyed().options("/api/chats").text == "ok"


def test_exempt_path_passes_without_api_key_but_only_on_exact_match():
    app = keyed(exempt_paths=("/api/health",))
    assert app.get("/api/health").text == "ok"
    assert_refusal(app.get("/api/health/more", status=401), 401, "API key is missing")


@pytest.mark.parametrize(
    "keys, exempt_paths",
    [
        ([], ()),
        ("key-one", ()),
        ([""], ()),
        (["clé"], ()),
        (["with space"], ()),
        ([b"bytes"], ()),
        (["key-one"], "/api/health"),
        (["key-one"], ("api/health",)),
    ],
)
def test_api_key_bad_config_raises_value_error(keys, exempt_paths):
    with pytest.raises(ValueError):
        ApiKey(ok_app, keys, exempt_paths=exempt_paths)


# ---- Cors -------------------------------------------------------------------


def test_allowed_origin_is_echoed_with_vary_and_exposed_headers():
    response = client(Cors(checked(ok_app), [ORIGIN, "http://localhost:5173"])).get(
        "/api/chats", headers={"Origin": ORIGIN}
    )
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Vary"] == "Origin"
    exposed = [name.strip() for name in response.headers["Access-Control-Expose-Headers"].split(",")]
    assert {"Retry-After", "RateLimit", "RateLimit-Policy", "X-Request-ID", "ETag"} <= set(exposed)
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_configured_origins_are_matched_case_insensitively_as_browsers_lowercase_them():
    response = client(Cors(checked(ok_app), ["https://Chat.Example"])).get("/", headers={"Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_wildcard_origins_answer_star_without_vary_or_credentials():
    response = client(Cors(checked(ok_app), "*")).get("/", headers={"Origin": "https://anyone.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_disallowed_origin_gets_no_allow_header_but_still_vary():
    response = client(Cors(checked(ok_app), [ORIGIN])).get("/", headers={"Origin": "https://evil.example"})
    assert response.text == "ok"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers["Vary"] == "Origin"


def test_request_without_origin_passes_untouched_under_wildcard():
    response = client(Cors(checked(ok_app), "*")).get("/")
    assert response.headerlist == [("Content-Type", "text/plain"), ("Content-Length", "2")]


def test_vary_origin_is_merged_into_the_apps_own_vary():
    def varying_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Vary", "Accept-Encoding")])
        return [b"ok"]

    response = client(Cors(checked(varying_app), [ORIGIN])).get("/", headers={"Origin": ORIGIN})
    assert response.headers.getall("Vary") == ["Accept-Encoding, Origin"]


def test_preflight_is_answered_204_without_calling_the_app():
    inner = RecordingApp()
    response = client(Cors(inner, [ORIGIN])).options(
        "/api/messages",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, x-api-key",
        },
        status=204,
    )
    assert inner.environs == []
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, PUT, PATCH, DELETE, OPTIONS"
    allowed = {name.strip() for name in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"Authorization", "Content-Type", "X-API-Key", "Last-Event-ID", "X-Request-ID"} <= allowed
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["Vary"] == "Origin"
    assert response.body == b""


def test_preflight_needs_no_api_key_when_cors_wraps_api_key():
    app = client(Cors(ApiKey(checked(ok_app), ["key-one"]), [ORIGIN]))
    response = app.options("/api/chats", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}, status=204)
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_preflight_from_disallowed_origin_gets_bare_204_and_never_reaches_the_app():
    inner = RecordingApp()
    response = client(Cors(inner, [ORIGIN])).options(
        "/", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE"}, status=204
    )
    assert inner.environs == []
    assert not [name for name in response.headers if name.lower().startswith("access-control-")]


def test_plain_options_without_preflight_headers_reaches_the_app():
    assert client(Cors(checked(ok_app), [ORIGIN])).options("/", headers={"Origin": ORIGIN}).text == "ok"


def test_cors_headers_are_on_a_401_from_api_key():
    app = client(Cors(ApiKey(checked(ok_app), ["key-one"]), [ORIGIN]))
    response = app.get("/api/chats", headers={"Origin": ORIGIN}, status=401)
    assert_refusal(response, 401, "API key is missing")
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_cors_headers_are_on_a_429_from_rate_limit():
    policy = RateLimitPolicy(per_minute=1)
    app = client(Cors(RateLimit(checked(ok_app), policy, clock=FakeClock()), [ORIGIN]), **CLIENT)
    app.get("/", headers={"Origin": ORIGIN})
    response = app.get("/", headers={"Origin": ORIGIN}, status=429)
    assert_refusal(response, 429, "Too many requests")
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_cors_headers_are_on_a_500_answered_by_the_app():
    app = client(Cors(checked(server_error_app), [ORIGIN]))
    response = app.get("/", headers={"Origin": ORIGIN}, status=500)
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_cors_headers_are_on_a_500_started_with_exc_info_by_an_inner_access_log():
    def failing_after_start(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("late failure")

    app = client(Cors(AccessLog(checked(failing_after_start)), [ORIGIN]))
    response = app.get("/", headers={"Origin": ORIGIN}, status=500)
    assert_refusal(response, 500, "Internal server error")
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


@pytest.mark.parametrize(
    "wrap",
    [lambda app: Cors(app, [ORIGIN]), lambda app: RateLimit(app, RateLimitPolicy(), clock=FakeClock())],
    ids=["cors", "rate_limit"],
)
def test_header_adding_layers_forward_exc_info_so_a_started_answer_can_be_replaced(wrap):
    def failing_after_start(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("late failure")

    status, headers, body = call(wrap(AccessLog(failing_after_start)), raw_environ(HTTP_ORIGIN=ORIGIN))
    assert status == "500 Internal Server Error"
    assert body == b'{"status":"error","message":"Internal server error"}'


def test_cors_does_not_buffer_a_streamed_body():
    def streaming_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        yield b"data: 1\n\n"
        raise AssertionError("the stream was consumed by the middleware")

    started = {}

    def start_response(status, headers, exc_info=None):
        started["headers"] = headers

    result = Cors(streaming_app, [ORIGIN])(raw_environ(HTTP_ORIGIN=ORIGIN), start_response)
    assert next(result) == b"data: 1\n\n"
    assert ("Access-Control-Allow-Origin", ORIGIN) in started["headers"]
    result.close()


@pytest.mark.parametrize(
    "origins",
    [
        "https://chat.example",
        [],
        ["*"],
        ["chat.example"],
        ["https://chat.example/"],
        ["https://chat.example/path"],
        ["https://chat.example?x=1"],
        ["null"],
        [None],
    ],
)
def test_cors_bad_config_raises_value_error(origins):
    with pytest.raises(ValueError):
        Cors(ok_app, origins)


# ---- RateLimit --------------------------------------------------------------


def limited(clock, **policy):
    middleware = RateLimit(checked(ok_app), RateLimitPolicy(**policy), clock=clock)
    return middleware, client(middleware, **CLIENT)


def test_allowed_answers_carry_the_rate_limit_headers():
    _, app = limited(FakeClock(), per_minute=100)
    response = app.get("/")
    assert response.headers["RateLimit-Policy"] == '"default";q=100;w=60'
    assert response.headers["RateLimit"] == '"default";r=99;t=0'


def test_empty_bucket_is_refused_with_429_retry_after_and_rate_limit_headers():
    _, app = limited(FakeClock(), per_minute=3)
    for _ in range(3):
        app.get("/")
    response = app.get("/", status=429)
    assert_refusal(response, 429, "Too many requests")
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["Retry-After"] == "20"
    assert response.headers["RateLimit-Policy"] == '"default";q=3;w=60'
    assert response.headers["RateLimit"] == '"default";r=0;t=20'


def test_retry_after_is_at_least_one_second_even_when_a_token_is_nearly_there():
    clock = FakeClock()
    _, app = limited(clock, per_minute=600)
    for _ in range(600):
        app.get("/")
    clock.now += 0.099
    assert app.get("/", status=429).headers["Retry-After"] == "1"


def test_bucket_refills_continuously_with_the_injected_clock():
    clock = FakeClock()
    _, app = limited(clock, per_minute=60)
    for _ in range(60):
        app.get("/")
    app.get("/", status=429)
    clock.now += 1
    app.get("/")
    app.get("/", status=429)
    clock.now += 2.5
    app.get("/")
    app.get("/")
    app.get("/", status=429)


def test_bucket_admits_a_burst_then_only_the_steady_rate_unlike_a_fixed_window():
    # A fixed one-minute window would admit 60 just before the minute boundary
    # and 60 more just after it; the bucket admits only what refilled meanwhile.
    clock = FakeClock(now=59.0)
    _, app = limited(clock, per_minute=60)
    admitted = sum(app.get("/", expect_errors=True).status_int == 200 for _ in range(60))
    clock.now = 61.0
    admitted += sum(app.get("/", expect_errors=True).status_int == 200 for _ in range(60))
    assert admitted == 62


def test_burst_sets_the_capacity_independently_of_the_rate():
    clock = FakeClock()
    _, app = limited(clock, per_minute=60, burst=5)
    for _ in range(5):
        app.get("/")
    app.get("/", status=429)
    clock.now += 3600
    assert app.get("/").headers["RateLimit"] == '"default";r=4;t=0'


def test_strict_paths_use_their_own_smaller_bucket():
    _, app = limited(FakeClock(), per_minute=100, strict_paths=("/auth/login",), strict_per_minute=2)
    app.post("/api/auth/login")
    response = app.post("/api/auth/login")
    assert response.headers["RateLimit-Policy"] == '"strict";q=2;w=60'
    assert_refusal(app.post("/api/auth/login", status=429), 429, "Too many requests")
    assert app.get("/api/chats").headers["RateLimit"] == '"default";r=99;t=0'


def test_each_client_address_has_its_own_bucket():
    middleware = RateLimit(checked(ok_app), RateLimitPolicy(per_minute=1), clock=FakeClock())
    app = client(middleware)
    app.get("/", extra_environ={"REMOTE_ADDR": "192.0.2.1"})
    app.get("/", extra_environ={"REMOTE_ADDR": "192.0.2.1"}, status=429)
    app.get("/", extra_environ={"REMOTE_ADDR": "192.0.2.2"})


def test_options_requests_are_not_counted():
    _, app = limited(FakeClock(), per_minute=1)
    for _ in range(5):
        response = app.options("/")
        assert "RateLimit" not in response.headers
    app.get("/")


def test_bucket_table_stays_bounded_under_many_clients():
    clock = FakeClock()
    middleware = RateLimit(ok_app, RateLimitPolicy(per_minute=60, max_clients=50), clock=clock)
    for number in range(500):
        call(middleware, raw_environ(REMOTE_ADDR=f"10.0.{number // 256}.{number % 256}"))
        assert middleware.bucket_count() <= 50
        clock.now += 0.01


def test_idle_full_buckets_are_dropped_before_busy_ones():
    clock = FakeClock()
    middleware = RateLimit(ok_app, RateLimitPolicy(per_minute=60, max_clients=10), clock=clock)
    busy = raw_environ(REMOTE_ADDR="203.0.113.1")
    for _ in range(60):
        call(middleware, busy)
    clock.now += 2  # an idle client's one spent token refills within a second
    for number in range(20):
        call(middleware, raw_environ(REMOTE_ADDR=f"10.0.0.{number}"))
        clock.now += 2
    # 42 seconds after spending its 60 tokens the busy client has 42 again: its
    # bucket survived the sweeps (a fresh one would report 59 left).
    assert call(middleware, busy)[1]["RateLimit"] == '"default";r=41;t=0'


def test_token_bucket_never_holds_more_than_its_capacity():
    bucket = TokenBucket(capacity=3, rate=1.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.seconds_until_token(0.0) == 1
    assert bucket.tokens(100.0) == 3
    assert bucket.is_full(100.0)


@pytest.mark.parametrize(
    "policy",
    [
        {"per_minute": 0},
        {"per_minute": -5},
        {"per_minute": 1.5},
        {"per_minute": True},
        {"burst": 0},
        {"strict_per_minute": 0},
        {"strict_paths": "/auth/login"},
        {"strict_paths": ("auth/login",)},
        {"max_clients": 0},
    ],
)
def test_rate_limit_bad_policy_raises_value_error(policy):
    with pytest.raises(ValueError):
        RateLimitPolicy(**policy)


def test_rate_limit_without_a_policy_object_raises_value_error():
    with pytest.raises(ValueError):
        RateLimit(ok_app, {"per_minute": 10})


def test_rate_limit_policy_is_frozen():
    policy = RateLimitPolicy(strict_paths=["/auth/login"])
    assert policy.strict_paths == ("/auth/login",)
    with pytest.raises(AttributeError):
        policy.per_minute = 5


# ---- BodyLimit --------------------------------------------------------------


def echo_app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


class ExplodingInput:
    def read(self, *args):
        raise AssertionError("the body was read")

    readline = read

    def readlines(self, *args):
        raise AssertionError("the body was read")

    def __iter__(self):
        raise AssertionError("the body was read")


def test_body_within_the_limit_reaches_the_app_intact():
    app = client(BodyLimit(checked(echo_app), max_bytes=10))
    assert app.post("/", b"0123456789").body == b"0123456789"


def test_declared_body_over_the_limit_is_refused_with_413():
    app = client(BodyLimit(checked(echo_app), max_bytes=10))
    response = app.post("/", b"0123456789A", status=413)
    assert_refusal(response, 413, "Request body too large (limit 10 bytes)")


def test_declared_body_over_the_limit_is_refused_without_reading_it():
    inner = RecordingApp()
    environ = raw_environ(REQUEST_METHOD="POST", CONTENT_LENGTH="1000001")
    environ["wsgi.input"] = ExplodingInput()
    status, _, body = call(BodyLimit(inner, max_bytes=1000), environ)
    assert status == "413 Request Entity Too Large"
    assert body == b'{"status":"error","message":"Request body too large (limit 1000 bytes)"}'
    assert inner.environs == []


@pytest.mark.parametrize("declared", ["abc", "-1", "+5", "1e3", "1_000", "\uff15", "5 5"])
def test_invalid_content_length_is_refused_with_400(declared):
    status, headers, body = call(
        BodyLimit(echo_app, max_bytes=1000), raw_environ(REQUEST_METHOD="POST", CONTENT_LENGTH=declared)
    )
    assert status == "400 Bad Request"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert body == b'{"status":"error","message":"Invalid Content-Length"}'


def test_absurdly_long_content_length_is_refused_with_413_not_a_crash():
    status, _, _ = call(BodyLimit(echo_app, max_bytes=1000), raw_environ(CONTENT_LENGTH="9" * 5000))
    assert status == "413 Request Entity Too Large"


def test_app_cannot_read_past_the_declared_length():
    def greedy_app(environ, start_response):
        body = environ["wsgi.input"].read(1 << 20)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]

    environ = raw_environ(REQUEST_METHOD="POST", CONTENT_LENGTH="4")
    environ["wsgi.input"] = io.BytesIO(b"abcdEXTRA")
    assert call(BodyLimit(greedy_app, max_bytes=100), environ)[2] == b"abcd"


def test_undeclared_body_over_the_limit_raises_body_too_large_and_answers_413():
    seen = []

    def streaming_reader(environ, start_response):
        try:
            while environ["wsgi.input"].read(4):
                pass
        except BodyTooLarge as error:
            seen.append(error)
            raise
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read it all"]

    environ = raw_environ(REQUEST_METHOD="POST")
    environ["wsgi.input"] = io.BytesIO(b"x" * 11)
    status, _, body = call(BodyLimit(streaming_reader, max_bytes=10), environ)
    assert isinstance(seen[0], ValueError)
    assert status == "413 Request Entity Too Large"
    assert body == b'{"status":"error","message":"Request body too large (limit 10 bytes)"}'


def test_undeclared_body_at_the_limit_is_read_whole():
    def line_reader(environ, start_response):
        lines = list(environ["wsgi.input"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"|".join(lines)]

    environ = raw_environ(REQUEST_METHOD="POST")
    environ["wsgi.input"] = io.BytesIO(b"ab\ncd\n")
    assert call(BodyLimit(line_reader, max_bytes=6), environ)[2] == b"ab\n|cd\n"


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, "10", None, True])
def test_body_limit_bad_config_raises_value_error(max_bytes):
    with pytest.raises(ValueError):
        BodyLimit(ok_app, max_bytes)


# ---- AccessLog --------------------------------------------------------------


class SteppingClock:
    """Returns the given readings in order, one per call."""

    def __init__(self, *readings):
        self._readings = iter(readings)

    def __call__(self):
        return next(self._readings)


def logged(app, clock=None):
    return client(AccessLog(checked(app), clock=clock or SteppingClock(5.0, 5.0125)))


def access_lines(caplog):
    return [record.getMessage() for record in caplog.records if record.name == "oxc.access"]


def test_access_log_writes_one_line_with_method_path_status_duration_and_id(caplog):
    caplog.set_level(logging.INFO, logger="oxc.access")
    response = logged(ok_app).get("/api/chats", headers={"X-Request-ID": "req-42"})
    assert response.headers["X-Request-ID"] == "req-42"
    assert access_lines(caplog) == ["GET /api/chats 200 2B 12.5ms client=- rid=req-42"]


def test_access_log_leaves_the_query_string_out(caplog):
    caplog.set_level(logging.INFO, logger="oxc.access")
    logged(ok_app).get("/api/events?ticket=s3cr3t-ticket")
    assert "s3cr3t" not in caplog.text
    assert access_lines(caplog)[0].startswith("GET /api/events 200 ")


def test_access_log_includes_the_script_name(caplog):
    caplog.set_level(logging.INFO, logger="oxc.access")
    logged(ok_app).get("/chats", extra_environ={"SCRIPT_NAME": "/api"})
    assert access_lines(caplog)[0].startswith("GET /api/chats 200 ")


def test_access_log_percent_encodes_control_characters_so_lines_cannot_be_forged(caplog):
    caplog.set_level(logging.INFO, logger="oxc.access")
    call(
        AccessLog(ok_app, clock=SteppingClock(0.0, 0.0)),
        raw_environ(PATH_INFO="/a\n200 GET /admin b", HTTP_X_REQUEST_ID="r1"),
    )
    assert access_lines(caplog) == ["GET /a%0A200%20GET%20/admin%20b 200 2B 0.0ms client=- rid=r1"]


def test_access_log_names_the_client_the_user_and_the_bytes(caplog):
    caplog.set_level(logging.INFO, logger="oxc.access")

    def app_with_user(environ, start_response):
        environ["oxc.user_id"] = "u1"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello", b" world"]

    call(
        AccessLog(app_with_user, clock=SteppingClock(0.0, 0.002)),
        raw_environ(REMOTE_ADDR="192.0.2.7", HTTP_X_REQUEST_ID="r2"),
    )
    assert access_lines(caplog) == ["GET / 200 11B 2.0ms client=192.0.2.7 user=u1 rid=r2"]
    fields = [record.oxc for record in caplog.records if record.name == "oxc.access"][0]
    assert fields["client"] == "192.0.2.7" and fields["user"] == "u1" and fields["bytes"] == 11
    assert fields["status"] == 200 and fields["duration_ms"] == 2.0 and fields["request_id"] == "r2"


@pytest.mark.parametrize(
    ("trusted_proxy", "remote", "expected"),
    [
        ("", "10.0.0.1", "10.0.0.1"),  # no trusted proxy: the header is anyone's to forge
        ("10.0.0.9", "10.0.0.1", "10.0.0.1"),  # not from the proxy
        ("10.0.0.1", "10.0.0.1", "198.51.100.4"),
        ("*", "10.0.0.1", "198.51.100.4"),
    ],
)
def test_access_log_believes_x_forwarded_for_only_from_the_trusted_proxy(caplog, trusted_proxy, remote, expected):
    caplog.set_level(logging.INFO, logger="oxc.access")
    call(
        AccessLog(ok_app, trusted_proxy=trusted_proxy),
        raw_environ(REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.4"),
    )
    assert f" client={expected} " in access_lines(caplog)[0]


def test_json_log_format_writes_one_object_per_line_with_the_access_fields(caplog):
    caplog.set_level(logging.INFO, logger="oxc.access")
    call(
        AccessLog(ok_app, clock=SteppingClock(0.0, 0.001)),
        raw_environ(REMOTE_ADDR="192.0.2.7", PATH_INFO="/a\nb", HTTP_X_REQUEST_ID="r3"),
    )
    record = [record for record in caplog.records if record.name == "oxc.access"][0]
    line = formatter("json").format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["logger"] == "oxc.access"
    assert (entry["method"], entry["path"], entry["status"], entry["bytes"]) == ("GET", "/a%0Ab", 200, 2)
    assert (entry["client"], entry["user"], entry["request_id"]) == ("192.0.2.7", None, "r3")
    assert entry["message"] == "GET /a%0Ab 200 2B 1.0ms client=192.0.2.7 rid=r3"


def test_json_log_format_carries_the_traceback_in_the_object():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("oxc", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    entry = json.loads(formatter("json").format(record))
    assert entry["message"] == "failed here" and "RuntimeError: boom" in entry["exception"]


def test_request_id_is_put_in_the_environ_and_echoed():
    inner = RecordingApp()
    response = client(AccessLog(inner)).get("/", headers={"X-Request-ID": "abc.DEF_1-2"})
    assert response.headers["X-Request-ID"] == "abc.DEF_1-2"
    assert inner.environs[0]["oxc.request_id"] == "abc.DEF_1-2"


@pytest.mark.parametrize("incoming", ["", "x" * 65, "has space", "semi;colon", "caf\xe9"])
def test_malformed_request_id_is_replaced_by_a_fresh_one(incoming):
    inner = RecordingApp()
    response = client(AccessLog(inner)).get("/", extra_environ={"HTTP_X_REQUEST_ID": incoming})
    fresh = response.headers["X-Request-ID"]
    assert fresh != incoming
    assert len(fresh) == 16 and int(fresh, 16) >= 0
    assert inner.environs[0]["oxc.request_id"] == fresh


def test_apps_own_request_id_header_is_replaced_not_duplicated():
    def app_with_id(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Request-ID", "app-made")])
        return [b"ok"]

    response = logged(app_with_id).get("/", headers={"X-Request-ID": "outer"})
    assert response.headers.getall("X-Request-ID") == ["outer"]


def test_crash_before_start_response_becomes_a_500_envelope_and_a_logged_traceback(caplog):
    caplog.set_level(logging.INFO, logger="oxc.access")
    response = logged(crashing_app).get("/api/chats", headers={"X-Request-ID": "r9"}, status=500)
    assert_refusal(response, 500, "Internal server error")
    assert "secret" not in response.text
    assert response.headers["X-Request-ID"] == "r9"
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert errors and errors[0].exc_info[0] is RuntimeError
    assert access_lines(caplog)[-1] == "GET /api/chats 500 52B 12.5ms client=- rid=r9"


def test_crash_inside_a_generator_app_before_it_starts_also_becomes_a_500():
    def generator_app(environ, start_response):
        raise RuntimeError("generator failure")
        yield b"never"

    response = logged(generator_app).get("/", status=500)
    assert_refusal(response, 500, "Internal server error")


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_are_never_swallowed(interrupt):
    def interrupted_app(environ, start_response):
        raise interrupt()

    with pytest.raises(interrupt):
        call(AccessLog(interrupted_app), raw_environ())


def test_inner_iterable_is_closed_and_the_line_logged_only_after_close(caplog):
    caplog.set_level(logging.INFO, logger="oxc.access")
    events = []

    class ClosingBody:
        def __iter__(self):
            events.append("iterated")
            yield b"ok"

        def close(self):
            events.append("closed")

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingBody()

    middleware = AccessLog(checked(app), clock=SteppingClock(0.0, 0.001))
    result = middleware(raw_environ(), lambda status, headers, exc_info=None: None)
    assert b"".join(result) == b"ok"
    assert access_lines(caplog) == []
    result.close()
    assert events == ["iterated", "closed"]
    lines = access_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("GET / 200 2B 1.0ms client=- rid=")


def test_access_log_bad_config_raises_value_error():
    with pytest.raises(ValueError):
        AccessLog(ok_app, logger="oxc.access")
    with pytest.raises(ValueError):
        AccessLog(ok_app, clock=42)


# ---- the whole stack --------------------------------------------------------


def test_composed_stack_decorates_refusals_and_answers_preflights_before_the_key():
    stack = AccessLog(
        Cors(
            RateLimit(
                ApiKey(BodyLimit(checked(ok_app), max_bytes=100), ["key-one"]),
                RateLimitPolicy(per_minute=5),
                clock=FakeClock(),
            ),
            [ORIGIN],
        ),
        clock=FakeClock(),
    )
    app = client(stack, **CLIENT)
    preflight = app.options(
        "/api/chats", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}, status=204
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in preflight.headers

    refused = app.get("/api/chats", headers={"Origin": ORIGIN}, status=401)
    assert_refusal(refused, 401, "API key is missing")
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert refused.headers["RateLimit"] == '"default";r=4;t=0'
    assert "X-Request-ID" in refused.headers

    allowed = app.get("/api/chats", headers={"Origin": ORIGIN, "X-API-Key": "key-one"})
    assert allowed.text == "ok"
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
