"""The auth endpoints are throttled per client by default, and hashing refuses at once when it is full.

A client gets AUTH_RATE_LIMIT requests a minute (10) to register, login,
refresh, verification and reset, all together, even with the general rate
limit off (RATE_LIMIT_ENABLED=0); everything else passes untouched. Password
hashing runs ``concurrency`` at a time with at most ``queue`` callers waiting
(each at most ``wait`` seconds): a caller beyond that gets 429 at once instead
of holding a worker thread. The flood itself, against a real server:
tests/test_login_flood.py.
"""

import threading
import time

import pytest
from conftest import PASSWORD, assert_error
from webtest import TestApp

from handlers.auth import THROTTLED_PATHS
from handlers.http import TooManyRequests
from handlers.services.passwords import Passwords
from middleware import RateLimit, RateLimitPolicy
from oxc_wsgi import Settings

DEFAULTS = Settings()
ATTACKER = {"REMOTE_ADDR": "203.0.113.9"}
BYSTANDER = {"REMOTE_ADDR": "198.51.100.20"}
BODIES = {
    "/auth/register": {"username": "newcomer", "password": PASSWORD},
    "/auth/login": {"username": "alice", "password": "wrong password"},
    "/auth/refresh": {"refresh_token": "not-a-token"},
    "/auth/verify-email": {"email": "alice@example.com", "code": "123456"},
    "/auth/verify-email/request": {"email": "alice@example.com"},
    "/auth/password-reset": {"email": "alice@example.com", "code": "123456", "new_password": "a new password"},
    "/auth/password-reset/request": {"email": "alice@example.com"},
}


def test_the_auth_throttle_is_on_by_default():
    assert DEFAULTS.auth_rate_limit_enabled and DEFAULTS.auth_rate_limit == 10
    assert not DEFAULTS.rate_limit_enabled
    assert set(BODIES) == set(THROTTLED_PATHS)


@pytest.mark.parametrize("path", THROTTLED_PATHS)
def test_a_client_that_spent_its_auth_budget_gets_429_on_every_auth_endpoint(make_client, path):
    client = make_client(auth_rate_limit=DEFAULTS.auth_rate_limit)  # the harness relaxes it otherwise
    alice = client.user("alice")
    for _ in range(DEFAULTS.auth_rate_limit - 2):  # register and login above spent two
        client.post_json("/api/auth/login", BODIES["/auth/login"], status=401)
    refused = client.post_json("/api/" + path.lstrip("/"), BODIES[path], status=429)
    assert_error(refused, 429, "Too many requests")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Policy"] == '"strict";q=10;w=60'
    # Nothing else is limited, and other clients keep their own budget.
    for _ in range(3 * DEFAULTS.auth_rate_limit):
        client.get("/api/users/me", headers=alice.headers)
    assert "RateLimit" not in client.get("/api/health").headers
    client.post_json("/api/" + path.lstrip("/"), BODIES[path], extra_environ=BYSTANDER, status=[200, 201, 400, 401])


def test_a_login_flood_from_one_client_is_refused_before_any_password_is_checked(make_client, monkeypatch):
    client = make_client(auth_rate_limit=DEFAULTS.auth_rate_limit)
    checked = []
    passwords = client.wsgi.core.ctx.passwords
    verify = passwords.verify
    monkeypatch.setattr(passwords, "verify", lambda *args: checked.append(1) or verify(*args))
    statuses = [
        client.post_json(
            "/api/auth/login",
            {"username": f"user{number}", "password": "guess guess"},
            extra_environ=ATTACKER,
            status=[401, 429],
        ).status_int
        for number in range(50)
    ]
    assert statuses == [401] * 10 + [429] * 40
    assert len(checked) == 10


def test_auth_rate_limit_enabled_0_turns_the_throttle_off(make_client):
    client = make_client(auth_rate_limit=1, auth_rate_limit_enabled=False)
    for _ in range(5):
        client.post_json("/api/auth/login", BODIES["/auth/login"], status=401)


def test_with_the_general_limit_on_the_auth_endpoints_keep_the_strict_budget(make_client):
    client = make_client(rate_limit_enabled=True, rate_limit=1000, auth_rate_limit=2)
    for _ in range(2):
        client.post_json("/api/auth/refresh", BODIES["/auth/refresh"], status=401)
    client.post_json("/api/auth/verify-email/request", BODIES["/auth/verify-email/request"], status=429)
    assert client.get("/api/health").headers["RateLimit-Policy"] == '"default";q=1000;w=60'


def ok_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_a_policy_without_per_minute_limits_only_its_strict_paths():
    app = TestApp(
        RateLimit(ok_app, RateLimitPolicy(per_minute=None, strict_paths=("/auth/login",), strict_per_minute=1)),
        extra_environ=ATTACKER,
    )
    app.post("/auth/login")
    app.post("/auth/login", status=429)
    for _ in range(5):
        assert "RateLimit" not in app.get("/other").headers
    with pytest.raises(ValueError):
        RateLimitPolicy(per_minute=None)


# -- hashing capacity ----------------------------------------------------------------------------


class Blocker:
    """Work that holds a hashing slot until released."""

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self):
        self.started.set()
        assert self.release.wait(10)
        return "done"


def run_in_thread(passwords, work):
    outcome = {}

    def run():
        try:
            outcome["result"] = passwords._run(work)
        except TooManyRequests as exc:
            outcome["refused"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_hash_finding_every_slot_and_the_queue_taken_is_refused_at_once():
    passwords = Passwords(rounds=4, concurrency=1, queue=1, wait=10)
    holder = Blocker()
    first, first_outcome = run_in_thread(passwords, holder)
    assert holder.started.wait(5)
    second, second_outcome = run_in_thread(passwords, lambda: "second")
    time.sleep(0.2)  # the second caller waits for the slot
    started = time.monotonic()
    with pytest.raises(TooManyRequests) as refused:
        passwords.hash(PASSWORD)
    assert time.monotonic() - started < 0.5
    assert refused.value.status == 429 and ("Retry-After", "1") in refused.value.headers
    holder.release.set()
    first.join(5)
    second.join(5)
    assert first_outcome == {"result": "done"} and second_outcome == {"result": "second"}


def test_a_waiting_hash_gives_up_after_its_wait():
    passwords = Passwords(rounds=4, concurrency=1, queue=1, wait=0.2)
    holder = Blocker()
    first, _ = run_in_thread(passwords, holder)
    assert holder.started.wait(5)
    started = time.monotonic()
    with pytest.raises(TooManyRequests):
        passwords.verify(PASSWORD, None)
    assert 0.15 < time.monotonic() - started < 2
    holder.release.set()
    first.join(5)
    assert passwords.verify(PASSWORD, passwords.hash(PASSWORD))  # the slot is free again
