"""Notifications: what makes them, the feed, devices, and signed push with retries."""

import hashlib
import hmac
import http.server
import json
import socket
import threading
import time

import pytest
from conftest import assert_error
from server import wait_until

SECRET = "push-secret-for-tests-0123456789"


@pytest.fixture
def group(client):
    alice, bob, carol = (client.user(name) for name in ("alice", "bob", "carol"))
    chat = client.post_json(
        "/api/chats/group", {"name": "team", "members": [bob.id, carol.id]}, headers=alice.headers
    ).json["data"]
    return alice, bob, carol, chat["id"]


def settled(client):
    """Wait until the server has made the notifications of every message (it does so off the request path)."""
    assert wait_until(lambda: client.get("/api/health").json["data"]["notifications_pending"] == 0, timeout=10)


def feed(client, user, **query):
    settled(client)
    return client.get("/api/notifications", query, headers=user.headers).json


def kinds(client, user):
    return [note["kind"] for note in feed(client, user)["notifications"]]


def say(client, user, chat_id, content):
    return client.post_json(f"/api/chats/{chat_id}/messages", {"content": content}, headers=user.headers).json["data"]


def test_mentions_notify_the_members_named_even_in_a_muted_chat(client, group):
    alice, bob, carol, chat_id = group
    dave = client.user("dave")
    client.put_json(f"/api/chats/{chat_id}/mute", {"muted": True}, headers=carol.headers)
    say(client, alice, chat_id, "hey @bob @carol @dave @alice")
    for user in (bob, carol):
        notes = feed(client, user)["notifications"]
        assert notes[0]["kind"] == "mention" and notes[0]["actor_username"] == "alice"
        assert notes[0]["preview"] == "hey @bob @carol @dave @alice" and notes[0]["chat_name"] == "team"
    assert kinds(client, dave) == []
    assert "mention" not in kinds(client, alice)


def test_a_plain_group_message_notifies_nobody(client, group):
    alice, bob, _, chat_id = group
    before = kinds(client, bob)
    say(client, alice, chat_id, "hello all")
    assert kinds(client, bob) == before


def test_direct_messages_notify_unless_muted(client, group):
    alice, bob, _, _ = group
    chat = client.post_json("/api/chats/direct", {"user_id": bob.id, "content": "psst"}, headers=alice.headers).json[
        "data"
    ]
    assert kinds(client, bob)[0] == "direct_message"
    client.put_json(f"/api/chats/{chat['id']}/mute", {"muted": True}, headers=bob.headers)
    count = len(kinds(client, bob))
    say(client, alice, chat["id"], "again")
    assert len(kinds(client, bob)) == count


def test_being_added_and_a_role_change_notify(client, group):
    alice, bob, carol, chat_id = group
    assert kinds(client, bob) == ["added_to_chat"]
    dave = client.user("dave")
    client.post_json(f"/api/chats/{chat_id}/members", {"user_id": dave.id}, headers=alice.headers)
    assert feed(client, dave)["notifications"][0]["actor_username"] == "alice"
    client.patch_json(f"/api/chats/{chat_id}/members/{bob.id}", {"role": "admin"}, headers=alice.headers)
    note = feed(client, bob)["notifications"][0]
    assert (note["kind"], note["role"]) == ("role_changed", "admin")
    client.put_json(f"/api/chats/{chat_id}/mute", {"muted": True}, headers=carol.headers)
    client.patch_json(f"/api/chats/{chat_id}/members/{carol.id}", {"role": "admin"}, headers=alice.headers)
    assert kinds(client, carol) == ["added_to_chat"]


def test_the_feed_pages_counts_and_marks_read(client, group):
    alice, bob, _, chat_id = group
    for number in range(5):
        say(client, alice, chat_id, f"@bob number {number}")
    settled(client)
    assert client.get("/api/notifications/count", headers=bob.headers).json["data"]["unread_count"] == 6
    first = feed(client, bob, limit=2)
    assert [n["preview"] for n in first["notifications"]] == ["@bob number 4", "@bob number 3"]
    rest = feed(client, bob, limit=10, before=first["paging"]["before"])
    assert len(rest["notifications"]) == 4 and rest["paging"]["before"] is None
    settled(client)
    mentions = client.get("/api/notifications/mentions", headers=bob.headers).json["notifications"]
    assert len(mentions) == 5
    answer = client.post_json(f"/api/notifications/{mentions[0]['id']}/read", {}, headers=bob.headers).json
    assert answer["data"]["unread_count"] == 5
    assert len(feed(client, bob, unread="true")["notifications"]) == 5
    assert client.post_json("/api/notifications/read-all", {}, headers=bob.headers).json["data"]["marked"] == 5
    assert feed(client, bob, unread="true")["notifications"] == []
    assert feed(client, bob)["unread_count"] == 0


def test_feed_refusals(client, group):
    alice, bob, _, chat_id = group
    note = feed(client, bob)["notifications"][0]
    assert_error(client.post_json(f"/api/notifications/{note['id']}/read", {}, headers=alice.headers, status=404), 404)
    assert_error(client.get("/api/notifications", {"before": note["id"]}, headers=alice.headers, status=400), 400)
    assert_error(client.get("/api/notifications", {"unread": "maybe"}, headers=bob.headers, status=400), 400)
    assert_error(client.get("/api/notifications", {"limit": "0"}, headers=bob.headers, status=400), 400)
    assert_error(client.get("/api/notifications", status=401), 401)


def test_notifications_also_arrive_as_events(client, group):
    alice, bob, _, chat_id = group
    since = client.get("/api/events", {"timeout": 0}, headers=bob.headers).json["next"]
    say(client, alice, chat_id, "ping @bob")
    notes = []
    while not notes:
        answer = client.get("/api/events", {"timeout": 5, "since": since}, headers=bob.headers).json
        assert answer["next"] != since, "no notification event within the timeout"
        since = answer["next"]
        notes = [event["data"] for event in answer["events"] if event["type"] == "notification.created"]
    assert [note["kind"] for note in notes] == ["mention"]


# -- devices ----------------------------------------------------------------------------


def test_devices_are_registered_listed_and_removed(make_client):
    client = make_client(push_device_hosts=("hooks.example",))
    alice, bob = client.user("alice"), client.user("bob")
    phone = client.post_json(
        "/api/devices", {"platform": "ios", "token": "apns-token"}, headers=alice.headers, status=201
    ).json["data"]
    hook = client.post_json(
        "/api/devices",
        {"platform": "webhook", "endpoint": "https://hooks.example/push"},
        headers=alice.headers,
        status=201,
    ).json["data"]
    assert [d["id"] for d in client.get("/api/devices", headers=alice.headers).json["data"]] == [
        phone["id"],
        hook["id"],
    ]
    assert_error(client.delete(f"/api/devices/{phone['id']}", headers=bob.headers, status=404), 404)
    client.delete(f"/api/devices/{phone['id']}", headers=alice.headers)
    assert [d["id"] for d in client.get("/api/devices", headers=alice.headers).json["data"]] == [hook["id"]]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"token": "t"}, "platform"),
        ({"platform": "pager", "token": "t"}, "platform"),
        ({"platform": "web"}, "token"),
        ({"platform": "web", "endpoint": "ftp://hooks.example/x"}, "http(s) URL"),
        ({"platform": "web", "endpoint": "http://127.0.0.1:5432/"}, "PUSH_DEVICE_HOSTS"),
        ({"platform": "web", "endpoint": "http://169.254.169.254/latest"}, "PUSH_DEVICE_HOSTS"),
    ],
)
def test_bad_devices_are_refused(make_client, body, message):
    client = make_client(push_device_hosts=("hooks.example",))
    alice = client.user("alice")
    assert_error(client.post_json("/api/devices", body, headers=alice.headers, status=400), 400, message)


# -- push -------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback answering a scripted list of statuses (then 200)."""

    def __init__(self, port=0, statuses=(), delay=0):
        self.deliveries = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                time.sleep(delay)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.deliveries.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


def push_client(make_client, url, **settings):
    # The receivers listen on loopback, which pushes may reach only when the operator names it.
    settings.setdefault("push_allowed_addresses", ("127.0.0.1",))
    return make_client(push_webhook_url=url, push_webhook_secret=SECRET, admins=("alice",), **settings)


def test_each_notification_is_pushed_as_signed_json(make_client, receiver):
    client = push_client(make_client, receiver.url)
    alice, bob = client.user("alice"), client.user("bob")
    client.post_json("/api/devices", {"platform": "android", "token": "fcm-token"}, headers=bob.headers)
    client.post_json("/api/chats/direct", {"user_id": bob.id, "content": "hello"}, headers=alice.headers)
    assert wait_until(lambda: receiver.deliveries, timeout=5)
    headers, body = receiver.deliveries[0]
    expected = hmac.new(SECRET.encode(), f"{headers['X-Oxc-Timestamp']}.".encode() + body, hashlib.sha256)
    assert headers["X-Oxc-Signature"] == f"sha256={expected.hexdigest()}"
    [delivery] = json.loads(body)["deliveries"]
    assert delivery["user_id"] == bob.id and delivery["notification"]["kind"] == "direct_message"
    assert delivery["devices"][0]["token"] == "fcm-token"


def test_a_failed_delivery_is_retried_after_a_back_off(make_client, clock):
    receiver = Receiver(statuses=[500])
    try:
        client = push_client(make_client, receiver.url)
        alice, bob = client.user("alice"), client.user("bob")
        client.post_json("/api/chats/direct", {"user_id": bob.id, "content": "hello"}, headers=alice.headers)
        assert wait_until(lambda: len(receiver.deliveries) == 1, timeout=5)
        clock.advance(2)
        assert wait_until(lambda: len(receiver.deliveries) == 2, timeout=5)
        first, second = (json.loads(body) for _, body in receiver.deliveries)
        assert first == second
        assert receiver.deliveries[0][0]["X-Oxc-Delivery"] == receiver.deliveries[1][0]["X-Oxc-Delivery"]
    finally:
        receiver.close()


def test_after_the_last_attempt_a_delivery_is_a_dead_letter_admins_can_see(make_client, clock):
    receiver = Receiver(statuses=[500, 503, 500])
    try:
        client = push_client(make_client, receiver.url, push_max_attempts=2)
        alice, bob = client.user("alice"), client.user("bob")
        client.post_json("/api/chats/direct", {"user_id": bob.id, "content": "hello"}, headers=alice.headers)
        assert wait_until(lambda: len(receiver.deliveries) == 1, timeout=5)
        clock.advance(2)

        def dead():
            return client.get("/api/admin/push/dead-letters", headers=alice.headers).json["data"]

        assert wait_until(dead, timeout=5)
        letter = dead()[0]
        assert letter["attempts"] == 2 and letter["last_error"] == "HTTP 503" and letter["url"] == receiver.url
        assert_error(client.get("/api/admin/push/dead-letters", headers=bob.headers, status=403), 403)
    finally:
        receiver.close()


def test_one_delivery_per_receiver_carries_every_notification_of_a_message(make_client, receiver):
    client = push_client(make_client, receiver.url)
    alice, bob, carol = client.user("alice"), client.user("bob"), client.user("carol")
    chat = client.post_json(
        "/api/chats/group", {"name": "g", "members": [bob.id, carol.id]}, headers=alice.headers
    ).json["data"]
    assert wait_until(lambda: len(receiver.deliveries) == 1, timeout=5)
    say(client, alice, chat["id"], "@bob @carol look")
    assert wait_until(lambda: len(receiver.deliveries) == 2, timeout=5)
    batch = json.loads(receiver.deliveries[1][1])["deliveries"]
    assert sorted(item["user_id"] for item in batch) == sorted([bob.id, carol.id])
    assert {item["notification"]["kind"] for item in batch} == {"mention"}


def test_a_full_queue_keeps_the_overflow_as_dead_letters(make_client):
    client = push_client(make_client, "http://127.0.0.1:9/unreachable", push_queue_max=1)
    alice, bob = client.user("alice"), client.user("bob")
    chat = client.post_json("/api/chats/group", {"name": "g", "members": [bob.id]}, headers=alice.headers).json
    say(client, alice, chat["data"]["id"], "@bob one")
    settled(client)
    letters = client.get("/api/admin/push/dead-letters", headers=alice.headers).json["data"]
    assert [letter["last_error"] for letter in letters] == ["the push queue is full"]


def test_queued_deliveries_survive_a_restart(make_client, clock):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook"
    client = push_client(make_client, url)
    alice, bob = client.user("alice"), client.user("bob")
    client.post_json("/api/chats/direct", {"user_id": bob.id, "content": "while down"}, headers=alice.headers)
    assert wait_until(lambda: client.wsgi.core.ctx.store.due_push_jobs(clock() + 10), timeout=5)
    client.wsgi.core.close()
    receiver = Receiver(port=port)
    try:
        clock.advance(60)
        push_client(make_client, url)
        assert wait_until(lambda: receiver.deliveries, timeout=5)
        assert json.loads(receiver.deliveries[0][1])["deliveries"][0]["notification"]["preview"] == "while down"
    finally:
        receiver.close()


def test_sending_never_waits_for_the_receiver(make_client):
    receiver = Receiver(delay=3)
    try:
        client = push_client(make_client, receiver.url)
        alice, bob = client.user("alice"), client.user("bob")
        started = time.monotonic()
        client.post_json("/api/chats/direct", {"user_id": bob.id, "content": "fast"}, headers=alice.headers)
        client.post_json("/api/chats/direct", {"user_id": bob.id, "content": "faster"}, headers=alice.headers)
        assert time.monotonic() - started < 1.0
        assert wait_until(lambda: receiver.deliveries, timeout=6)
    finally:
        receiver.close()


def test_notifications_of_messages_are_not_lost_when_the_server_stops_before_making_them(make_client):
    client = make_client()
    alice, bob = client.user("alice"), client.user("bob")
    chat = client.post_json("/api/chats/group", {"name": "g", "members": [bob.id]}, headers=alice.headers).json
    settled(client)
    client.wsgi.core.ctx.notifier.close()  # the background notifier dies before it gets to the message
    say(client, alice, chat["data"]["id"], "@bob are you there")
    assert client.get("/api/health").json["data"]["notifications_pending"] == 1
    client.wsgi.core.close()
    again = make_client()
    token = again.login("bob").json["data"]["access_token"]
    settled(again)
    notes = again.get("/api/notifications", headers={"Authorization": f"Bearer {token}"}).json["notifications"]
    assert [(n["kind"], n["preview"]) for n in notes][0] == ("mention", "@bob are you there")
