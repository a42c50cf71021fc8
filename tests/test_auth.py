"""Registration, login, tokens, refresh rotation and logout, over HTTP."""

import base64
import json
import statistics
import threading
import time

import jwt
import pytest
from conftest import PASSWORD, assert_error, stored_bytes

from handlers.http import TooManyRequests
from oxc_wsgi import DEV_JWT_SECRET

SECRET = "a signing key for tests that forge tokens, 32+ bytes"


# -- register ---------------------------------------------------------------


def test_register_answers_201_with_the_new_user_and_never_the_hash(client):
    response = client.register("alice", email="alice@example.com")
    assert response.json["status"] == "success"
    assert response.json["message"] == "User registered successfully"
    user = response.json["data"]
    assert set(user) == {"id", "username", "email", "email_verified", "created_at"}
    assert user["email_verified"] is False
    assert (user["username"], user["email"]) == ("alice", "alice@example.com")


def test_registration_can_be_disabled(make_client):
    client = make_client(register_enabled=False)
    assert_error(client.register("alice", status=403), 403, "disabled")


@pytest.mark.parametrize(
    "body, message",
    [
        ({"password": PASSWORD}, "Missing required field: username"),
        ({"username": "alice"}, "Missing required field: password"),
        ({"username": "al", "password": PASSWORD}, "username"),
        ({"username": "a" * 33, "password": PASSWORD}, "username"),
        ({"username": "al ice", "password": PASSWORD}, "username"),
        ({"username": 5, "password": PASSWORD}, "must be a string"),
        ({"username": "alice", "password": "short"}, "at least 8"),
        ({"username": "alice", "password": "é" * 37}, "72 bytes"),
        ({"username": "alice", "password": ["x"] * 9}, "must be a string"),
        ({"username": "alice", "password": PASSWORD, "email": "not-an-address"}, "e-mail"),
    ],
)
def test_register_refuses_bad_fields_with_400(client, body, message):
    response = client.post_json("/api/auth/register", body, status=400)
    assert_error(response, 400, message)


def test_usernames_and_emails_are_unique_ignoring_case(client):
    client.register("alice", email="a@example.com")
    assert_error(client.register("ALICE", status=400), 400, "Username already exists")
    assert_error(client.register("bob", email="A@example.com", status=400), 400, "Email already registered")


# -- login ------------------------------------------------------------------


def test_login_answers_the_0xc_token_fields(client):
    client.register("alice")
    data = client.login("alice").json["data"]
    assert data["token_type"] == "Bearer"
    assert data["expires_in"] == 15 * 60
    assert data["user"]["username"] == "alice"
    assert data["access_token"].count(".") == 2
    assert data["refresh_token"] and data["refresh_token"] != data["access_token"]


def test_login_accepts_the_username_in_any_case(client):
    client.register("Alice")
    client.login("aLICE")


def test_wrong_password_and_unknown_user_get_the_same_401(client):
    client.register("alice")
    wrong = client.login("alice", "wrong password", status=401)
    unknown = client.login("nobody", PASSWORD, status=401)
    assert_error(wrong, 401)
    assert wrong.json == unknown.json


def test_password_over_72_bytes_is_refused_with_401_at_login_not_500(client):
    client.register("alice")
    assert_error(client.login("alice", "x" * 73, status=401), 401)


def test_login_needs_both_fields(client):
    assert_error(client.post_json("/api/auth/login", {"username": "alice"}, status=400), 400, "password")
    assert_error(client.post_json("/api/auth/login", {"password": "x"}, status=400), 400, "username")


def test_ten_failed_logins_lock_the_account_for_a_while(client, clock):
    client.register("alice")
    for _ in range(10):
        client.login("alice", "wrong password", status=401)
    locked = client.login("alice", PASSWORD, status=429)
    assert_error(locked, 429, "failed logins")
    assert int(locked.headers["Retry-After"]) > 0
    clock.advance(15 * 60 + 1)
    client.login("alice", PASSWORD)


def test_the_eleventh_attempt_is_refused_before_its_password_is_checked(client, monkeypatch):
    client.register("alice")
    for _ in range(10):
        client.login("alice", "wrong password", status=401)
    checked = []
    monkeypatch.setattr(client.wsgi.core.ctx.passwords, "verify", lambda *args: checked.append(args))
    locked = client.login("alice", "wrong password", status=429)
    assert_error(locked, 429, "Too many failed logins for this account")
    assert locked.headers["Retry-After"] == "900"
    assert checked == []


def test_unknown_usernames_are_locked_out_alike(client):
    client.register("alice")
    answers = {}
    for username in ("alice", "nobody"):
        for _ in range(10):
            client.login(username, "wrong password", status=401)
        answers[username] = client.login(username, "wrong password", status=429)
    assert answers["alice"].json == answers["nobody"].json
    assert answers["alice"].headers["Retry-After"] == answers["nobody"].headers["Retry-After"]


def test_a_login_refused_because_the_server_is_busy_does_not_count(client, monkeypatch):
    client.register("alice")
    passwords = client.wsgi.core.ctx.passwords
    verify = passwords.verify

    def busy(*args):
        raise TooManyRequests("The server is busy checking passwords; try again shortly", 1)

    monkeypatch.setattr(passwords, "verify", busy)
    for _ in range(12):
        assert_error(client.login("alice", "wrong password", status=429), 429, "busy")
    monkeypatch.setattr(passwords, "verify", verify)
    for _ in range(10):
        client.login("alice", "wrong password", status=401)
    client.login("alice", PASSWORD, status=429)


def test_a_successful_login_clears_the_count(client):
    client.register("alice")
    for _ in range(9):
        client.login("alice", "wrong password", status=401)
    client.login("alice")
    for _ in range(10):
        client.login("alice", "wrong password", status=401)
    client.login("alice", PASSWORD, status=429)


@pytest.mark.backends("postgres")
def test_every_app_on_one_database_shares_the_lockout(make_client):
    first, second = make_client(), make_client()
    first.register("alice")
    for _ in range(5):
        first.login("alice", "wrong password", status=401)
        second.login("alice", "wrong password", status=401)
    assert_error(first.login("alice", status=429), 429, "failed logins")
    assert_error(second.login("alice", status=429), 429, "failed logins")


@pytest.mark.parametrize("moment", ["after the check", "before the session"])
def test_a_login_that_loses_a_race_with_a_password_change_gets_401_and_no_session(client, monkeypatch, moment):
    alice_id = client.register("alice").json["data"]["id"]
    ctx = client.wsgi.core.ctx
    target, name = (ctx.passwords, "verify") if moment == "after the check" else (ctx.store, "add_session")
    original = getattr(target, name)

    def change_password_first(*args, **kwargs):
        # What a password reset finishing in another request at this moment does.
        ctx.store.update_user(alice_id, {"password_hash": ctx.passwords.hash("changed meanwhile")})
        ctx.store.delete_user_sessions(alice_id)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, change_password_first)
    assert_error(client.login("alice", status=401), 401, "Invalid username or password")
    monkeypatch.undo()
    assert ctx.store.delete_user_sessions(alice_id) == 0
    client.login("alice", "changed meanwhile")


def test_login_rehashes_a_password_stored_at_a_lower_cost(make_client, tmp_path):
    weak = make_client(bcrypt_rounds=4)
    weak.register("alice")
    weak.wsgi.core.close()
    strong = make_client(bcrypt_rounds=5)
    strong.login("alice")
    assert strong.wsgi.core.ctx.store.find_user("alice")["password_hash"].startswith("$2b$05$")


def test_unknown_users_take_as_long_to_refuse_as_wrong_passwords(make_client):
    client = make_client(bcrypt_rounds=9)
    client.register("alice")
    times = {"alice": [], "nobody": []}
    # Interleaved, so that whatever else the machine does weighs on both alike.
    for _ in range(15):
        for username in times:
            started = time.perf_counter()
            client.login(username, "wrong password", status=401)
            times[username].append(time.perf_counter() - started)
            client.wsgi.core.ctx.login_throttle.succeeded(username)
    known, unknown = statistics.median(times["alice"]), statistics.median(times["nobody"])
    assert abs(known - unknown) / max(known, unknown) < 0.10, (known, unknown)


# -- access tokens ----------------------------------------------------------


def test_token_info_answers_the_user_and_the_token_timing(client, clock):
    alice = client.user("alice")
    info = client.get("/api/auth/token-info", headers=alice.headers).json["data"]
    assert info["user"]["id"] == alice.id
    timing = info["token_info"]
    assert timing["type"] == "access"
    assert timing["expires_at"] - timing["issued_at"] == 900
    assert timing["refresh_at"] == timing["issued_at"] + 600
    assert abs(timing["issued_at"] - clock()) <= 1


def test_refresh_at_never_falls_after_expiry(make_client):
    client = make_client(access_token_expires=5, token_refresh_seconds=600)
    alice = client.user("alice")
    timing = client.get("/api/auth/token-info", headers=alice.headers).json["data"]["token_info"]
    assert timing["refresh_at"] == timing["expires_at"]


def _forge(claims, key=SECRET, algorithm="HS256", headers=None):
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers or {"typ": "at+jwt"})


def _unsigned(claims):
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'at+jwt'})}.{part(claims)}."


@pytest.mark.parametrize(
    "make_token",
    [
        lambda user, now: _unsigned({**user, "iat": now, "exp": now + 600}),
        lambda user, now: _forge({**user, "iat": now, "exp": now + 600}, algorithm="HS512", key=SECRET * 2),
        lambda user, now: _forge({**user, "iat": now, "exp": now + 600}, key="another secret" * 4),
        lambda user, now: _forge({**user, "iat": now, "exp": now + 600}, key=DEV_JWT_SECRET),
        lambda user, now: _forge({**user, "iat": now - 2000, "exp": now - 1000}),
        lambda user, now: _forge({**user, "iat": now}),
        lambda user, now: _forge({"sid": user["sid"], "iat": now, "exp": now + 600}),
        lambda user, now: _forge({"sub": user["sub"], "iat": now, "exp": now + 600}),
        lambda user, now: _forge({**user, "exp": now + 600}),
        lambda user, now: _forge({**user, "iat": now, "exp": now + 600}, headers={"typ": "JWT"}),
        lambda user, now: _forge({**user, "iat": now + 3600, "exp": now + 7200}),
        lambda user, now: "not.a.token",
    ],
    ids=[
        "alg-none",
        "hs512",
        "wrong-key",
        "published-dev-key",
        "expired",
        "no-exp",
        "no-sub",
        "no-sid",
        "no-iat",
        "wrong-typ",
        "issued-in-future",
        "garbage",
    ],
)
def test_forged_or_malformed_access_tokens_get_401(make_client, clock, make_token):
    client = make_client(jwt_secret_key=SECRET)
    alice = client.user("alice")
    sid = jwt.decode(alice.access_token, options={"verify_signature": False})["sid"]
    token = make_token({"sub": alice.id, "sid": sid}, int(clock()))
    response = client.get("/api/messages", headers={"Authorization": f"Bearer {token}"}, status=401)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_a_missing_or_malformed_authorization_header_gets_401(client):
    assert_error(client.get("/api/messages", status=401), 401, "Authentication token is missing")
    assert_error(client.get("/api/messages", headers={"Authorization": "Basic abc"}, status=401), 401)
    assert_error(client.get("/api/messages", headers={"Authorization": "Bearer "}, status=401), 401)


def test_an_access_token_expires_after_its_lifetime(client, clock):
    alice = client.user("alice")
    clock.advance(15 * 60 + 11)
    assert_error(client.get("/api/messages", headers=alice.headers, status=401), 401, "expired")


def test_a_refresh_token_is_not_accepted_as_a_bearer_token(client):
    alice = client.user("alice")
    headers = {"Authorization": f"Bearer {alice.refresh_token}"}
    assert_error(client.get("/api/messages", headers=headers, status=401), 401)


# -- refresh ----------------------------------------------------------------


def _refresh(client, token, status=200):
    return client.post_json("/api/auth/refresh", {"refresh_token": token}, status=status)


def test_refresh_rotates_the_refresh_token_and_issues_a_working_access_token(client):
    alice = client.user("alice")
    data = _refresh(client, alice.refresh_token).json["data"]
    assert data["token_type"] == "Bearer" and data["expires_in"] == 900
    assert data["refresh_token"] != alice.refresh_token
    client.get("/api/messages", headers={"Authorization": f"Bearer {data['access_token']}"})
    _refresh(client, data["refresh_token"])


def test_a_replayed_refresh_token_revokes_the_whole_family(client, clock):
    alice = client.user("alice")
    rotated = _refresh(client, alice.refresh_token).json["data"]
    clock.advance(60)
    assert_error(_refresh(client, alice.refresh_token, status=401), 401, "revoked")
    assert_error(_refresh(client, rotated["refresh_token"], status=401), 401)
    headers = {"Authorization": f"Bearer {rotated['access_token']}"}
    assert_error(client.get("/api/messages", headers=headers, status=401), 401, "Session has ended")


def test_a_reuse_within_the_grace_period_is_refused_without_revoking(client):
    alice = client.user("alice")
    rotated = _refresh(client, alice.refresh_token).json["data"]
    assert_error(_refresh(client, alice.refresh_token, status=401), 401, "already been used")
    _refresh(client, rotated["refresh_token"])


def test_of_two_concurrent_refreshes_of_one_token_exactly_one_wins(client):
    alice = client.user("alice")
    statuses = []
    barrier = threading.Barrier(2)

    def refresh():
        barrier.wait()
        statuses.append(_refresh(client, alice.refresh_token, status="*").status_int)

    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 401]


def test_without_rotation_a_refresh_token_stays_usable(make_client):
    client = make_client(refresh_token_rotation=False)
    alice = client.user("alice")
    for _ in range(3):
        assert _refresh(client, alice.refresh_token).json["data"]["refresh_token"] == alice.refresh_token


def test_an_expired_refresh_token_is_refused(client, clock):
    alice = client.user("alice")
    clock.advance(30 * 86400 + 1)
    assert_error(_refresh(client, alice.refresh_token, status=401), 401, "Invalid or expired")


@pytest.mark.parametrize("body", [{}, {"refresh_token": ""}, {"refresh_token": 7}])
def test_refresh_without_a_token_string_is_a_400(client, body):
    assert_error(client.post_json("/api/auth/refresh", body, status=400), 400)


def test_an_unknown_refresh_token_is_a_401(client):
    assert_error(_refresh(client, "made-up-token", status=401), 401)
    assert_error(_refresh(client, "made.up", status=401), 401)


def test_no_raw_refresh_token_is_stored(client, tmp_path):
    alice = client.user("alice")
    rotated = _refresh(client, alice.refresh_token).json["data"]["refresh_token"]
    compact = getattr(client.wsgi.core.ctx.store, "compact", None)
    if compact:
        compact()  # the JSON store: into the snapshot too
    stored = stored_bytes(client, tmp_path / "data")
    assert alice.id.encode() in stored  # the sessions are there...
    for token in (alice.refresh_token, rotated):  # ...but not the tokens
        assert token.encode() not in stored
        assert token.split(".", 1)[1].encode() not in stored


# -- logout -----------------------------------------------------------------


def test_logout_ends_the_session_and_its_access_tokens(client):
    alice = client.user("alice")
    response = client.post_json("/api/auth/logout", {"refresh_token": alice.refresh_token})
    assert response.json == {"status": "success", "message": "Logged out successfully"}
    assert_error(_refresh(client, alice.refresh_token, status=401), 401)
    assert_error(client.get("/api/messages", headers=alice.headers, status=401), 401)


def test_logout_leaves_other_sessions_alone(client):
    alice = client.user("alice")
    second = client.login("alice").json["data"]
    client.post_json("/api/auth/logout", {"refresh_token": alice.refresh_token})
    _refresh(client, second["refresh_token"])


def test_logout_with_an_unknown_token_is_a_401_and_without_one_a_400(client):
    assert_error(client.post_json("/api/auth/logout", {"refresh_token": "nope"}, status=401), 401)
    assert_error(client.post_json("/api/auth/logout", {}, status=400), 400, "refresh_token")
