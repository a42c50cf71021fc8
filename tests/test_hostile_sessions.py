"""Hostile clients against tokens, sessions and real-time listeners, on both backends.

Each test performs an attack through HTTP against the app and expects it to
fail: a token forged with the published development key or without a session,
a made-up refresh token that names someone else's session, a stream that
outlives its session, one account taking every listener slot, and a stream
ticket used twice. ``tests/test_hostile_processes.py`` does the same where it
takes real server processes (the generated key across restarts and processes,
tickets across processes).
"""

import json
import os
import stat
import threading
import time

import jwt
import pytest
from conftest import PASSWORD, assert_error
from test_accounts import inbox  # noqa: F401 (a fixture)
from test_events import open_stream, poll

from oxc_wsgi import DEV_JWT_SECRET

#: What "within a few seconds" means here for a listener to end after its session did.
ENDS_WITHIN = 5.0


def claims_of(token):
    return jwt.decode(token, options={"verify_signature": False})


def forge(claims, key):
    return jwt.encode(claims, key, algorithm="HS256", headers={"typ": "at+jwt"})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def try_stream(client, headers=None, query=""):
    """(status line, JSON answer or None) of opening the stream; a stream that opened is closed at once.

    (``client.get`` would read an opened stream forever.)
    """
    started, body = open_stream(client, headers, query)
    try:
        if started["status"].startswith("200"):
            return started["status"], None
        return started["status"], json.loads(b"".join(body))
    finally:
        if hasattr(body, "close"):
            body.close()


# -- the signing key ---------------------------------------------------------------------


def test_a_token_forged_with_the_published_development_key_gets_401(client, clock):
    alice = client.user("alice")
    now = int(clock())
    real = claims_of(alice.access_token)
    for claims in (
        {"sub": alice.id, "iat": now, "exp": now + 600},  # all the old code needed
        {"sub": alice.id, "sid": real["sid"], "iat": now, "exp": now + 600},
    ):
        response = client.get("/api/users/me", headers=bearer(forge(claims, DEV_JWT_SECRET)), status=401)
        assert_error(response, 401)
    client.get("/api/users/me", headers=alice.headers)


def test_a_token_without_a_session_gets_401_even_signed_with_the_real_key(make_client, clock):
    secret = "the key of this test, long enough to be real"
    client = make_client(jwt_secret_key=secret)
    alice = client.user("alice")
    now = int(clock())
    sid = claims_of(alice.access_token)["sid"]
    assert_error(
        client.get(
            "/api/users/me", headers=bearer(forge({"sub": alice.id, "iat": now, "exp": now + 600}, secret)), status=401
        ),
        401,
    )
    assert_error(
        client.get(
            "/api/users/me",
            headers=bearer(forge({"sub": alice.id, "sid": "made-up-session", "iat": now, "exp": now + 600}, secret)),
            status=401,
        ),
        401,
    )
    bob = client.user("bob")
    assert_error(
        client.get(
            "/api/users/me",
            headers=bearer(
                forge(  # someone else's session
                    {"sub": alice.id, "sid": claims_of(bob.access_token)["sid"], "iat": now, "exp": now + 600}, secret
                )
            ),
            status=401,
        ),
        401,
    )
    # The control: the same claims with the session they belong to pass.
    me = client.get(
        "/api/users/me", headers=bearer(forge({"sub": alice.id, "sid": sid, "iat": now, "exp": now + 600}, secret))
    )
    assert me.json["data"]["id"] == alice.id


def test_without_a_configured_key_one_is_generated_kept_with_the_data_and_logged(
    make_client, backend, tmp_path, caplog
):
    with caplog.at_level("WARNING", logger="oxc"):
        first = make_client()
    warnings = [record.getMessage() for record in caplog.records if "JWT_SECRET_KEY is not set" in record.getMessage()]
    assert len(warnings) == 1
    alice = first.user("alice")
    key = first.wsgi.core.ctx.tokens._secret
    assert key != DEV_JWT_SECRET and len(key) >= 64
    jwt.decode(alice.access_token, key, algorithms=["HS256"])
    if backend:
        assert "database" in warnings[0]
    else:
        path = tmp_path / "data" / "signing.key"
        assert str(path) in warnings[0]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert path.read_text().strip() == key
        first.wsgi.core.close()  # the JSON store belongs to one process: a restart
    second = make_client()
    assert second.wsgi.core.ctx.tokens._secret == key
    assert second.get("/api/users/me", headers=alice.headers).json["data"]["id"] == alice.id


def test_the_key_file_is_created_once_and_whole_though_many_race_to_create_it(tmp_path):
    from store.files import write_new

    path = tmp_path / "signing.key"
    barrier = threading.Barrier(8)
    created = []

    def create(number):
        barrier.wait()
        created.append((write_new(str(path), f"key number {number}".encode()), number))

    racers = [threading.Thread(target=create, args=(number,)) for number in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    winners = [number for made, number in created if made]
    assert len(winners) == 1 and path.read_text() == f"key number {winners[0]}"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["signing.key"]  # no temporary file left behind


@pytest.mark.backends("json")
def test_an_in_memory_store_signs_with_a_random_key_of_its_own(make_client):
    first, second = make_client(data_dir=None), make_client(data_dir=None)
    keys = {first.wsgi.core.ctx.tokens._secret, second.wsgi.core.ctx.tokens._secret}
    assert len(keys) == 2 and DEV_JWT_SECRET not in keys


# -- someone else's session ------------------------------------------------------------------


def refresh(client, token, status=200):
    return client.post_json("/api/auth/refresh", {"refresh_token": token}, status=status)


def test_a_made_up_refresh_token_naming_someones_session_does_not_end_it(client, clock):
    alice = client.user("alice")
    sid = claims_of(alice.access_token)["sid"]  # readable by anyone who sees one of her tokens
    secret = alice.refresh_token.split(".", 1)[1]
    altered = secret[:-1] + ("B" if secret.endswith("A") else "A")  # always a different token (1 in 64 ended in A)
    for attempt in (f"{sid}.garbage", f"{sid}.", f"{sid}.{altered}"):
        response = refresh(client, attempt, status=401)
        assert "revoked" not in response.json["message"]
    client.get("/api/users/me", headers=alice.headers)
    rotated = refresh(client, alice.refresh_token).json["data"]
    clock.advance(60)  # past the reuse grace: the family now has a previous token
    assert "revoked" not in refresh(client, f"{sid}.garbage", status=401).json["message"]
    client.get("/api/users/me", headers=bearer(rotated["access_token"]))
    again = refresh(client, rotated["refresh_token"]).json["data"]
    client.get("/api/users/me", headers=bearer(again["access_token"]))


def test_a_real_replay_still_revokes_the_family(client, clock):
    alice = client.user("alice")
    rotated = refresh(client, alice.refresh_token).json["data"]
    clock.advance(60)
    assert_error(refresh(client, alice.refresh_token, status=401), 401, "revoked")
    assert_error(
        client.get("/api/users/me", headers=bearer(rotated["access_token"]), status=401), 401, "Session has ended"
    )


# -- listeners end with their session -----------------------------------------------------------


class Reader(threading.Thread):
    """Reads an SSE body chunk by chunk in the background, noting when it ends."""

    def __init__(self, body):
        super().__init__(daemon=True)
        self.body = body
        self.chunks = []
        self.ended_at = None
        self.start()

    def run(self):
        for chunk in self.body:
            self.chunks.append(chunk)
        self.ended_at = time.monotonic()

    @property
    def text(self):
        return b"".join(self.chunks).decode()


@pytest.fixture
def pair(make_client, inbox):  # noqa: F811
    """A mail-capable client, alice and bob (with an address, for resets) and their direct chat."""
    client = make_client(smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_security="none")
    alice, bob = client.user("alice"), client.user("bob", email="bob@example.com")
    inbox.code_for("bob@example.com")  # the verification mail is in, so a reset's code is the next one
    chat = client.post_json("/api/chats/direct", {"user_id": bob.id}, headers=alice.headers, status=201)
    return client, alice, bob, chat.json["data"]["id"]


def end_session(how, client, user, inbox):  # noqa: F811
    """End ``user``'s session the way ``how`` says, as they (or whoever holds their mail) would."""
    if how == "logout":
        client.post_json("/api/auth/logout", {"refresh_token": user.refresh_token})
    elif how == "password-change":
        other = client.login(user.username).json["data"]  # changed from another device
        client.post_json(
            "/api/users/me/password",
            {"current_password": PASSWORD, "new_password": "a new password"},
            headers=bearer(other["access_token"]),
        )
    else:
        mails = len(inbox.to("bob@example.com"))
        client.post_json("/api/auth/password-reset/request", {"email": "bob@example.com"})
        code = inbox.code_for("bob@example.com", count=mails + 1)
        client.post_json(
            "/api/auth/password-reset", {"email": "bob@example.com", "new_password": "a new password", "code": code}
        )


def stream_of(client, user, ticket=False):
    if ticket:
        issued = client.post_json("/api/events/ticket", {}, headers=user.headers, status=201).json["data"]
        started, body = open_stream(client, query=f"ticket={issued['ticket']}")
    else:
        started, body = open_stream(client, user.headers)
    assert started["status"] == "200 OK"
    return Reader(body)


@pytest.mark.parametrize("how", ["logout", "password-change", "password-reset"])
@pytest.mark.parametrize("ticket", [False, True], ids=["bearer", "ticket"])
def test_a_stream_ends_with_its_session_and_never_delivers_what_came_after(pair, inbox, how, ticket):  # noqa: F811
    client, alice, bob, chat_id = pair
    reader = stream_of(client, bob, ticket)
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "before the end"}, headers=alice.headers)
    for _ in range(50):
        if "before the end" in reader.text:
            break
        time.sleep(0.05)
    assert "before the end" in reader.text
    end_session(how, client, bob, inbox)
    ended_at = time.monotonic()
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "secret after the end"}, headers=alice.headers)
    reader.join(ENDS_WITHIN + 1)
    try:
        assert reader.ended_at is not None, "the stream outlived its session"
        assert reader.ended_at - ended_at < ENDS_WITHIN
        assert "secret after the end" not in reader.text
    finally:
        if reader.ended_at is not None:  # else the app's close at teardown ends it
            reader.body.close()


def test_an_idle_stream_ends_within_a_few_seconds_of_a_logout(pair, inbox, record_property):  # noqa: F811
    client, _, bob, _ = pair
    reader = stream_of(client, bob)
    time.sleep(0.2)
    client.post_json("/api/auth/logout", {"refresh_token": bob.refresh_token})
    ended_at = time.monotonic()
    reader.join(ENDS_WITHIN + 1)
    assert reader.ended_at is not None, "the stream outlived its session"
    reader.body.close()
    took = reader.ended_at - ended_at
    record_property("logout_to_stream_end_seconds", round(took, 2))
    print(f"\nlogout -> idle stream end: {took:.2f} s")
    assert took < ENDS_WITHIN


def test_a_long_poll_ends_with_401_when_its_session_ends(pair):
    client, alice, bob, chat_id = pair
    since = poll(client, bob).json["next"]
    answer = {}

    def wait():
        answer["response"] = poll(client, bob, since=since, timeout=12, status="*")
        answer["at"] = time.monotonic()

    waiting = threading.Thread(target=wait)
    waiting.start()
    time.sleep(0.3)
    client.post_json("/api/auth/logout", {"refresh_token": bob.refresh_token})
    ended_at = time.monotonic()
    waiting.join(ENDS_WITHIN + 1)
    assert "at" in answer, "the poll outlived its session"
    assert_error(answer["response"], 401, "Session has ended")
    assert answer["at"] - ended_at < ENDS_WITHIN


# -- one account, every slot ----------------------------------------------------------------------


def test_one_account_cannot_take_every_listener_slot(make_client):
    client = make_client(realtime_max_clients=10)  # and the default per-user cap, 5
    mallory, alice = client.user("mallory"), client.user("alice")
    held = []
    try:
        for _ in range(10):  # the attack: as many streams as the server admits
            started, body = open_stream(client, mallory.headers)
            if started["status"].startswith("200"):
                held.append(body)
            else:
                assert started["status"] == "429 Too Many Requests"
                assert "too many open event listeners" in json.loads(b"".join(body))["message"]
                assert int(started["headers"]["Retry-After"]) > 0
        assert len(held) == 5
        # Everyone else still gets in.
        assert try_stream(client, alice.headers)[0] == "200 OK"
        poll(client, alice)
    finally:
        for body in held:
            body.close()


def test_the_per_user_cap_is_a_setting_and_covers_polls_and_tickets(make_client):
    client = make_client(realtime_max_clients=10, realtime_max_per_user=2)
    mallory = client.user("mallory")
    held = [open_stream(client, mallory.headers)[1] for _ in range(2)]
    try:
        status, answer = try_stream(client, mallory.headers)
        assert status == "429 Too Many Requests" and "too many open event listeners" in answer["message"]
        refused = poll(client, mallory, status=429)
        assert_error(refused, 429, "too many open event listeners")
        assert int(refused.headers["Retry-After"]) > 0
        ticket = client.post_json("/api/events/ticket", {}, headers=mallory.headers, status=201).json["data"]
        assert try_stream(client, query=f"ticket={ticket['ticket']}")[0] == "429 Too Many Requests"
        held.pop().close()  # a slot given back is the user's again
        started, again = open_stream(client, mallory.headers)
        assert started["status"] == "200 OK"
        held.append(again)
    finally:
        for body in held:
            body.close()


def test_the_global_cap_still_holds_under_the_per_user_one(make_client):
    client = make_client(realtime_max_clients=2, realtime_max_per_user=5)
    alice, bob = client.user("alice"), client.user("bob")
    held = [open_stream(client, user.headers)[1] for user in (alice, bob)]
    try:
        assert try_stream(client, alice.headers)[0] == "503 Service Unavailable"
    finally:
        for body in held:
            body.close()


# -- single-use stream tickets ----------------------------------------------------------------------


def test_a_stream_ticket_opens_one_stream_only(client):
    bob = client.user("bob")
    ticket = client.post_json("/api/events/ticket", {}, headers=bob.headers, status=201).json["data"]["ticket"]
    started, body = open_stream(client, query=f"ticket={ticket}")
    assert started["status"] == "200 OK"
    try:
        status, answer = try_stream(client, query=f"ticket={ticket}")
        assert status == "401 Unauthorized" and "used already" in answer["message"]
    finally:
        body.close()
    assert try_stream(client, query=f"ticket={ticket}")[0] == "401 Unauthorized"


def test_a_ticket_presented_twice_at_once_opens_one_stream(client):
    bob = client.user("bob")
    for _ in range(10):
        ticket = client.post_json("/api/events/ticket", {}, headers=bob.headers, status=201).json["data"]["ticket"]
        barrier = threading.Barrier(3)
        opened = []

        def redeem():
            barrier.wait()
            opened.append(try_stream(client, query=f"ticket={ticket}")[0])

        racers = [threading.Thread(target=redeem) for _ in range(3)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert sorted(opened) == ["200 OK", "401 Unauthorized", "401 Unauthorized"]


@pytest.mark.backends("postgres")
def test_a_ticket_used_on_one_process_is_refused_on_another(make_client):
    first, second = make_client(), make_client()
    bob = first.user("bob")
    ticket = first.post_json("/api/events/ticket", {}, headers=bob.headers, status=201).json["data"]["ticket"]
    started, body = open_stream(first, query=f"ticket={ticket}")
    assert started["status"] == "200 OK"
    body.close()
    status, answer = try_stream(second, query=f"ticket={ticket}")
    assert status == "401 Unauthorized" and "used already" in answer["message"]
