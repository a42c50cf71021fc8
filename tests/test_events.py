"""Real-time events: long-poll, SSE, visibility, typing, presence, limits."""

import io
import json
import threading
import time

import pytest
from conftest import assert_error


@pytest.fixture
def trio(client):
    alice, bob, carol = (client.user(name) for name in ("alice", "bob", "carol"))
    chat = client.post_json("/api/chats/group", {"name": "g", "members": [bob.id]}, headers=alice.headers).json
    return alice, bob, carol, chat["data"]["id"]


def poll(client, user, since=None, timeout=0, status=200):
    query = {"timeout": timeout}
    if since is not None:
        query["since"] = since
    return client.get("/api/events", query, headers=user.headers, status=status)


def head(client, user):
    return poll(client, user).json["next"]


def drain(client, user, since):
    """Every event for ``user`` after ``since`` (several polls if needed)."""
    seen = []
    while True:
        answer = poll(client, user, since).json
        seen += answer["events"]
        if answer["next"] == since:
            return seen, since
        since = answer["next"]


def kinds(events):
    return [event["type"] for event in events]


def test_a_poll_returns_at_once_when_events_wait_and_empty_at_its_timeout(client, trio):
    alice, bob, _, chat_id = trio
    since = head(client, bob)
    started = time.monotonic()
    empty = poll(client, bob, since, timeout=0.3).json
    assert empty["events"] == [] and empty["next"] == since
    assert time.monotonic() - started >= 0.25
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "hi"}, headers=alice.headers)
    started = time.monotonic()
    answer = poll(client, bob, since, timeout=20).json
    assert time.monotonic() - started < 2
    assert kinds(answer["events"]) == ["chat.message.created"]
    event = answer["events"][0]
    assert event["id"] == answer["next"] and event["data"]["content"] == "hi" and event["at"]


def test_a_waiting_poll_wakes_when_an_event_is_published(client, trio):
    alice, bob, _, chat_id = trio
    since = head(client, bob)
    got = {}

    def wait():
        got["answer"] = poll(client, bob, since, timeout=10).json

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)
    started = time.monotonic()
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "wake up"}, headers=alice.headers)
    waiter.join(5)
    assert time.monotonic() - started < 2
    assert got["answer"]["events"][0]["data"]["content"] == "wake up"


def test_a_burst_of_200_events_arrives_complete_and_in_order(client, trio):
    alice, bob, _, chat_id = trio
    since = head(client, bob)
    for number in range(200):
        client.post_json(f"/api/chats/{chat_id}/messages", {"content": f"n{number}"}, headers=alice.headers)
    events, _ = drain(client, bob, since)
    created = [e["data"]["content"] for e in events if e["type"] == "chat.message.created"]
    assert created == [f"n{n}" for n in range(200)]
    ids = [event["id"] for event in events]
    assert len(set(ids)) == len(ids)


def test_a_client_resumes_from_its_cursor_after_a_reconnect(client, trio):
    alice, bob, _, chat_id = trio
    since = head(client, bob)
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "one"}, headers=alice.headers)
    first = poll(client, bob, since).json
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "two"}, headers=alice.headers)
    again = poll(client, bob, first["next"]).json
    assert [e["data"]["content"] for e in again["events"] if e["type"] == "chat.message.created"] == ["two"]


def test_a_foreign_or_stale_cursor_is_410(make_client, trio, client):
    alice = trio[0]
    since = head(client, alice)
    assert_error(poll(client, alice, "ffffffff-3", status=410), 410, "earlier run")
    assert_error(poll(client, alice, "nonsense", status=410), 410)
    small = make_client(data_dir=None, events_kept=10)
    dave = small.user("dave")
    old = head(small, dave)
    for number in range(12):
        small.post_json("/api/messages", {"content": f"m{number}"}, headers=dave.headers)
    assert_error(poll(small, dave, old, status=410), 410, "no longer kept")
    assert since != old


@pytest.mark.parametrize("timeout", ["-1", "26", "soon"])
def test_a_bad_timeout_is_400(client, trio, timeout):
    assert_error(client.get("/api/events", {"timeout": timeout}, headers=trio[0].headers, status=400), 400)


def test_events_go_only_to_those_who_may_see_them(client, trio):
    alice, bob, carol, chat_id = trio
    cursors = {user.username: head(client, user) for user in (alice, bob, carol)}
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "group only"}, headers=alice.headers)
    client.post_json("/api/messages", {"content": "for carol", "recipient_id": carol.id}, headers=alice.headers)
    client.post_json("/api/messages", {"content": "for all"}, headers=bob.headers)
    seen = {
        user.username: [
            e["data"].get("content")
            for e in drain(client, user, cursors[user.username])[0]
            if e["type"] in ("chat.message.created", "message.created")
        ]
        for user in (alice, bob, carol)
    }
    assert seen == {
        "alice": ["group only", "for carol", "for all"],
        "bob": ["group only", "for all"],
        "carol": ["for carol", "for all"],
    }


def test_a_removed_member_stops_receiving_at_once(client, trio):
    alice, bob, _, chat_id = trio
    since = head(client, bob)
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "before removal"}, headers=alice.headers)
    client.delete(f"/api/chats/{chat_id}/members/{bob.id}", headers=alice.headers)
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "after removal"}, headers=alice.headers)
    events, _ = drain(client, bob, since)
    assert kinds(events) == ["member.removed"]
    assert events[0]["data"]["user_id"] == bob.id


def test_chat_and_member_changes_are_events(client, trio):
    alice, bob, carol, chat_id = trio
    since = head(client, bob)
    client.patch_json(f"/api/chats/{chat_id}", {"name": "renamed"}, headers=alice.headers)
    client.post_json(f"/api/chats/{chat_id}/members", {"user_id": carol.id}, headers=alice.headers)
    client.patch_json(f"/api/chats/{chat_id}/members/{bob.id}", {"role": "admin"}, headers=alice.headers)
    message = client.post_json(f"/api/chats/{chat_id}/messages", {"content": "x"}, headers=alice.headers).json["data"]
    client.patch_json(f"/api/chats/{chat_id}/messages/{message['id']}", {"content": "y"}, headers=alice.headers)
    client.post_json(f"/api/chats/{chat_id}/read", {"message_id": message["id"]}, headers=carol.headers)
    client.delete(f"/api/chats/{chat_id}/messages/{message['id']}", headers=alice.headers)
    events, since = drain(client, bob, since)
    notes = [event["data"]["kind"] for event in events if event["type"] == "notification.created"]
    assert notes == ["role_changed"]
    events = [event for event in events if event["type"] not in ("message.delivered", "notification.created")]
    assert kinds(events) == [
        "chat.updated",
        "member.added",
        "member.role_changed",
        "chat.message.created",
        "chat.message.edited",
        "message.read",
        "chat.message.deleted",
    ]
    client.delete(f"/api/chats/{chat_id}", headers=alice.headers)
    assert kinds(drain(client, bob, since)[0]) == ["chat.deleted"]


def test_typing_starts_and_stops_by_itself(client, trio, clock):
    alice, bob, _, chat_id = trio
    since = head(client, bob)
    client.post_json(f"/api/chats/{chat_id}/typing", {"typing": True}, headers=alice.headers)
    client.post_json(f"/api/chats/{chat_id}/typing", {}, headers=alice.headers)
    events, since = drain(client, bob, since)
    assert kinds(events) == ["typing.started"] and events[0]["data"]["username"] == "alice"
    clock.advance(7)
    answer = poll(client, bob, since, timeout=3).json
    assert kinds(answer["events"]) == ["typing.stopped"]
    assert_error(
        client.post_json(f"/api/chats/{chat_id}/typing", {"typing": "yes"}, headers=alice.headers, status=400), 400
    )
    assert_error(client.post_json(f"/api/chats/{chat_id}/typing", {}, headers=trio[2].headers, status=403), 403)


def test_presence_goes_online_with_a_listener_and_offline_after_it_leaves(client, trio, clock):
    alice, bob, _, _ = trio
    since = head(client, alice)
    poll(client, bob, timeout=0)
    events, since = drain(client, alice, since)
    assert [(e["type"], e["data"]["user_id"]) for e in events if e["data"].get("user_id") == bob.id] == [
        ("presence.online", bob.id)
    ]
    clock.advance(11)
    answer = poll(client, alice, since, timeout=3).json
    offline = [e for e in answer["events"] if e["type"] == "presence.offline" and e["data"]["user_id"] == bob.id]
    assert offline and offline[0]["data"]["last_seen"]


def test_a_message_reaching_the_recipient_is_marked_delivered(client, trio):
    alice, bob, _, chat_id = trio
    since_alice, since_bob = head(client, alice), head(client, bob)
    message = client.post_json(f"/api/chats/{chat_id}/messages", {"content": "ping"}, headers=alice.headers).json
    poll(client, bob, since_bob)
    receipts = client.get(
        f"/api/chats/{chat_id}/messages/{message['data']['id']}/receipts", headers=alice.headers
    ).json["data"]["receipts"]
    assert receipts == [{"user_id": bob.id, "username": "bob", "delivered": True, "read": False}]
    events, _ = drain(client, alice, since_alice)
    assert ("message.delivered", bob.id) in [(e["type"], e["data"].get("user_id")) for e in events]


def test_listeners_beyond_the_cap_get_503_while_other_requests_still_answer(make_client):
    client = make_client(realtime_max_clients=2)
    alice = client.user("alice")
    since = head(client, alice)
    waiters = [threading.Thread(target=poll, args=(client, alice, since), kwargs={"timeout": 1.5}) for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.3)
    refused = poll(client, alice, timeout=1, status=503)
    assert_error(refused, 503, "Too many")
    assert refused.headers["Retry-After"]
    client.post_json("/api/messages", {"content": "still works"}, headers=alice.headers, status=201)
    client.get("/api/messages", headers=alice.headers)
    for waiter in waiters:
        waiter.join()
    poll(client, alice)


# -- SSE in process: the WSGI body read chunk by chunk --------------------------------


def open_stream(client, headers=None, query=""):
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/api/events/stream",
        "QUERY_STRING": query,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SCRIPT_NAME": "",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "REMOTE_ADDR": "127.0.0.1",
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started = {}
    body = client.wsgi(
        environ, lambda status, headers, exc_info=None: started.update(status=status, headers=dict(headers))
    )
    return started, body


def test_the_stream_starts_at_once_carries_events_and_resumes(client, trio):
    alice, bob, _, chat_id = trio
    started, body = open_stream(client, bob.headers)
    chunks = iter(body)
    first = next(chunks)
    assert started["status"] == "200 OK" and started["headers"]["Content-Type"].startswith("text/event-stream")
    assert first.startswith(b": connected") and b"retry: 3000" in first
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "streamed"}, headers=alice.headers)
    chunk = next(chunks).decode()
    cursor = chunk.split("id: ", 1)[1].split("\n", 1)[0]
    payload = json.loads(chunk.split("data: ", 1)[1].split("\n", 1)[0])
    assert payload["type"] == "chat.message.created" and payload["id"] == cursor
    body.close()
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "while away"}, headers=alice.headers)
    _, resumed = open_stream(client, dict(bob.headers, **{"Last-Event-ID": cursor}))
    chunks = iter(resumed)
    next(chunks)
    assert "while away" in next(chunks).decode()
    resumed.close()


def test_the_stream_ends_when_the_access_token_expires(client, trio, clock):
    bob = trio[1]
    _, body = open_stream(client, bob.headers)
    chunks = iter(body)
    next(chunks)
    clock.advance(15 * 60 + 1)
    started = time.monotonic()
    assert b"".join(chunks) == b""
    assert time.monotonic() - started < 3
    body.close()


def test_a_stream_ticket_opens_only_the_stream_and_expires(client, trio, clock):
    bob = trio[1]
    ticket = client.post_json("/api/events/ticket", {}, headers=bob.headers, status=201).json["data"]
    assert ticket["expires_in"] == 60
    started, body = open_stream(client, query=f"ticket={ticket['ticket']}")
    assert started["status"] == "200 OK"
    body.close()
    as_bearer = client.get("/api/messages", headers={"Authorization": f"Bearer {ticket['ticket']}"}, status=401)
    assert_error(as_bearer, 401)
    clock.advance(61)
    assert_error(client.get("/api/events/stream", {"ticket": ticket["ticket"]}, status=401), 401, "ticket")
    assert_error(client.get("/api/events/stream", status=401), 401)
    assert_error(client.get("/api/events/stream", {"ticket": "made-up"}, status=401), 401)


def test_a_cursor_with_a_non_ascii_number_is_410(client, trio):
    alice = trio[0]
    run = head(client, alice).rsplit("-", 1)[0]
    assert_error(poll(client, alice, f"{run}-²", status=410), 410)
