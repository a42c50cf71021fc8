"""The Python client library against a real server on loopback."""

import threading
import time

import jwt
import pytest

from oxc_client import BadRequest, Client, ConnectionFailed, CursorGone, Forbidden, NotFound, RateLimited
from oxc_wsgi import DEV_JWT_SECRET
from server import Server


@pytest.fixture
def server(tmp_path):
    running = Server(tmp_path / "data")
    yield running
    running.stop()


def client_for(server, **options):
    return Client(f"http://127.0.0.1:{server.port}", **options)


def user(server, name, **options):
    client = client_for(server, **options)
    client.register(name, "password123")
    client.login(name, "password123")
    return client


def test_the_library_covers_messages_chats_people_and_search(server):
    alice, bob = user(server, "alice"), user(server, "bob")
    assert alice.service()["name"] == "oxc" and alice.health()["store"] == "ok"
    alice.send_message("hello world")
    private = alice.send_message("just you", recipient_id=bob.me()["id"])
    assert bob.get_message(private["id"])["content"] == "just you"
    group = alice.create_group("Team", members=["bob"], description="d")
    for number in range(7):
        alice.send(group["id"], f"m{number} @bob")
    assert [m["content"] for m in bob.iter_history(group["id"], limit=3)] == [f"m{n} @bob" for n in range(6, -1, -1)]
    assert [m["username"] for m in alice.members(group["id"])] == ["alice", "bob"]
    direct = bob.direct_chat("alice", "psst")
    assert direct["message"]["content"] == "psst"
    assert [c["id"] for c in alice.iter_chats(limit=1)] == [direct["id"], group["id"]]
    last = bob.history(group["id"], limit=1)["messages"][0]
    assert bob.mark_read(group["id"], last["id"])["unread_count"] == 0
    assert [hit["content"] for hit in alice.iter_search("m3")] == ["m3 @bob"]
    assert alice.users("b")["users"][0]["username"] == "bob"
    assert alice.update_me(bio="hi")["bio"] == "hi"
    assert bob.notification_count() >= 1


def test_refusals_raise_typed_errors_with_the_servers_message(server):
    alice, bob = user(server, "alice"), user(server, "bob")
    group = alice.create_group("Team", members=["bob"])
    with pytest.raises(Forbidden) as refused:
        bob.delete_chat(group["id"])
    assert refused.value.status == 403 and "owner" in refused.value.message
    with pytest.raises(NotFound):
        alice.get_message("nope")
    with pytest.raises(BadRequest) as bad:
        alice.send(group["id"], "")
    assert "content" in bad.value.message
    with pytest.raises(ConnectionFailed):
        Client("http://127.0.0.1:9").service()


def test_the_access_token_is_refreshed_at_refresh_at_and_new_refresh_tokens_are_kept(server):
    saved = []
    alice = user(server, "alice", on_tokens=saved.append)
    first = dict(alice.tokens)
    alice.tokens["refresh_at"] = time.time() - 1
    alice.me()
    assert alice.tokens["access_token"] != first["access_token"]
    assert alice.tokens["refresh_token"] != first["refresh_token"]
    assert saved[-1] == alice.tokens


def test_an_expired_access_token_is_refreshed_once_and_the_call_retried(server):
    alice = user(server, "alice")
    claims = jwt.decode(alice.tokens["access_token"], options={"verify_signature": False})
    now = int(time.time())
    expired = jwt.encode(dict(claims, iat=now - 2000, exp=now - 1000), DEV_JWT_SECRET, algorithm="HS256",
                         headers={"typ": "at+jwt"})
    alice.tokens["access_token"] = expired
    assert alice.me()["username"] == "alice"
    assert alice.tokens["access_token"] != expired


def test_429_is_retried_after_retry_after(tmp_path):
    limited = Server(tmp_path / "data", RATE_LIMIT_ENABLED=1, AUTH_RATE_LIMIT=2)
    try:
        waits = []
        client = client_for(limited, sleep=waits.append, retries=1)
        client.register("alice", "password123")
        client.login("alice", "password123")
        with pytest.raises(RateLimited) as limited_error:
            client.login("alice", "password123")
        assert waits and waits[0] >= 1 and limited_error.value.retry_after >= 1
    finally:
        limited.stop()


def test_the_event_stream_yields_live_events_and_resumes_from_a_cursor(server):
    alice, bob = user(server, "alice"), user(server, "bob")
    group = alice.create_group("Team", members=["bob"])
    seen, ready = [], threading.Event()

    def listen():
        for event in bob.stream():
            seen.append(event)
            ready.set()
            if event["type"] == "chat.message.created":
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.5)
    alice.send(group["id"], "live")
    listener.join(5)
    created = [e for e in seen if e["type"] == "chat.message.created"]
    assert created and created[0]["data"]["content"] == "live"
    alice.send(group["id"], "while away")
    resumed = next(e for e in bob.stream(since=created[0]["id"]) if e["type"] == "chat.message.created")
    assert resumed["data"]["content"] == "while away"
    with pytest.raises(CursorGone):
        next(bob.stream(since="ffff-1"))
