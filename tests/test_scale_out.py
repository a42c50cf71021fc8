"""Several processes on one PostgreSQL database behave as one service.

Each test builds two apps on one fresh schema, as two processes would be
(each with its own store, pool, event hub, notifier and push worker), and
checks through HTTP what a user would see when a load balancer sends their
requests to either: events published on one reach listeners on the other,
cursors and stream tickets work on both, and background work (notifications,
pushes) happens once, not once per process. ``tests/test_multiprocess.py``
does the same with real server processes.
"""

import json
import threading
import time

import pytest
from conftest import assert_error
from server import wait_until
from test_events import open_stream, poll
from test_notifications import Receiver

from store import open_store

pytestmark = pytest.mark.backends("postgres")


@pytest.fixture
def two(make_client):
    """Two apps ("processes") on one schema, sharing the data directory as they would share a disk."""
    return make_client(), make_client()


def group(app, owner, *members):
    chat = app.post_json("/api/chats/group", {"name": "g", "members": [m.id for m in members]}, headers=owner.headers)
    return chat.json["data"]["id"]


def test_a_message_posted_on_one_process_reaches_a_long_poll_waiting_on_the_other(two):
    first, second = two
    alice, bob = first.user("alice"), first.user("bob")
    chat_id = group(first, alice, bob)
    cursor = poll(second, bob).json["next"]
    answer = {}

    def wait():
        answer["response"] = poll(second, bob, since=cursor, timeout=10)
        answer["at"] = time.monotonic()

    waiting = threading.Thread(target=wait)
    waiting.start()
    time.sleep(0.3)
    sent_at = time.monotonic()
    first.post_json(f"/api/chats/{chat_id}/messages", {"content": "across"}, headers=alice.headers)
    waiting.join(15)
    events = answer["response"].json["events"]
    assert [(e["type"], e["data"].get("content")) for e in events] == [("chat.message.created", "across")]
    assert answer["at"] - sent_at < 1.0  # woken by NOTIFY, not found by a later poll


def test_a_cursor_from_one_process_resumes_on_the_other_with_nothing_missed(two):
    first, second = two
    alice, bob = first.user("alice"), first.user("bob")
    chat_id = group(first, alice, bob)
    cursor = poll(first, bob).json["next"]
    for number in range(3):
        (first, second)[number % 2].post_json(
            f"/api/chats/{chat_id}/messages", {"content": f"m{number}"}, headers=alice.headers
        )
    for app in (first, second):
        events = poll(app, bob, since=cursor).json["events"]
        assert [e["data"]["content"] for e in events if e["type"] == "chat.message.created"] == ["m0", "m1", "m2"]
    # The ids are the same on both: a client may switch processes between requests.
    assert [e["id"] for e in poll(first, bob, since=cursor).json["events"]] == [
        e["id"] for e in poll(second, bob, since=cursor).json["events"]
    ]


def test_a_stream_ticket_from_one_process_opens_the_stream_on_the_other(two):
    first, second = two
    alice, bob = first.user("alice"), first.user("bob")
    chat_id = group(first, alice, bob)
    ticket = first.post_json("/api/events/ticket", {}, headers=bob.headers, status=201).json["data"]["ticket"]
    started, body = open_stream(second, query=f"ticket={ticket}")
    chunks = iter(body)
    assert started["status"] == "200 OK" and next(chunks).startswith(b": connected")
    first.post_json(f"/api/chats/{chat_id}/messages", {"content": "streamed across"}, headers=alice.headers)
    chunk = next(chunks).decode()
    body.close()
    payload = json.loads(chunk.split("data: ", 1)[1].split("\n", 1)[0])
    assert payload["type"] == "chat.message.created" and payload["data"]["content"] == "streamed across"


def test_each_mention_is_notified_once_though_both_processes_run_a_notifier(two):
    first, second = two
    alice, bob = first.user("alice"), first.user("bob")
    chat_id = group(first, alice, bob)
    for number in range(20):
        (first, second)[number % 2].post_json(
            f"/api/chats/{chat_id}/messages", {"content": f"@bob look {number}"}, headers=alice.headers
        )

    def mentions():
        feed = second.get("/api/notifications", {"limit": 100}, headers=bob.headers).json["notifications"]
        return sorted(note["preview"] for note in feed if note["kind"] == "mention")

    assert wait_until(lambda: len(mentions()) >= 20, timeout=10)
    time.sleep(0.3)  # both notifiers have had time to make a duplicate, were they to
    assert mentions() == sorted(f"@bob look {number}" for number in range(20))
    unread = first.get("/api/notifications/count", headers=bob.headers).json["data"]["unread_count"]
    assert unread == 21  # the mentions and being added to the group


def test_each_push_is_delivered_once_though_both_processes_drain_the_queue(make_client):
    receiver = Receiver()
    try:
        apps = [make_client(push_webhook_url=receiver.url, push_allowed_addresses=("127.0.0.1",)) for _ in range(2)]
        alice, bob = apps[0].user("alice"), apps[0].user("bob")
        for number in range(10):
            apps[number % 2].post_json(
                "/api/chats/direct", {"user_id": bob.id, "content": f"dm {number}"}, headers=alice.headers
            )

        def previews():  # one delivery may carry several notifications
            return sorted(
                delivery["notification"]["preview"]
                for _, body in list(receiver.deliveries)
                for delivery in json.loads(body)["deliveries"]
            )

        assert wait_until(lambda: len(previews()) >= 10, timeout=15)
        time.sleep(0.5)  # both workers have had time to send a job twice, were they to
        ids = [headers["X-Oxc-Delivery"] for headers, _ in receiver.deliveries]
        assert len(ids) == len(set(ids))
        assert previews() == sorted(f"dm {number}" for number in range(10))
    finally:
        receiver.close()


def test_bytes_uploaded_in_one_process_survive_a_delete_of_their_last_copy_in_another(backend, tmp_path):
    first = open_store(tmp_path / "data", url=backend["store_url"])
    second = open_store(tmp_path / "data", url=backend["store_url"])
    try:
        payload = b"the same picture, twice"
        digest = first.save_blob_bytes(payload)
        first.create_chat(
            {"id": "c1", "type": "group", "name": "c1", "description": None, "created_by": "alice", "created_at": "t"},
            [],
        )
        first.add_attachment({"id": "a1", "chat_id": "c1", "sha256": digest})
        # The second process writes the same bytes again (pinned, not yet referred to) ...
        assert second.save_blob_bytes(payload) == digest
        # ... while the first deletes the only attachment that referred to them.
        assert first.delete_attachment("a1") is True
        second.add_attachment({"id": "a2", "chat_id": "c1", "sha256": digest})
        with second.open_blob(digest) as blob:
            assert blob.read() == payload
        # Once the last attachment goes, so do the bytes, whichever process deletes it.
        assert first.delete_attachment("a2") is True
        assert second.open_blob(digest) is None
    finally:
        first.close()
        second.close()


def test_the_shared_log_keeps_the_newest_events_and_an_older_cursor_is_gone_everywhere(make_client):
    first = make_client(events_kept=10)
    alice, bob = first.user("alice"), first.user("bob")
    chat_id = group(first, alice, bob)
    old = poll(first, bob).json["next"]
    for number in range(25):
        first.post_json(f"/api/chats/{chat_id}/messages", {"content": f"m{number}"}, headers=alice.headers)
    recent = poll(first, bob).json["next"]
    later = make_client(events_kept=10)  # a process started after the log was pruned
    for app in (first, later):
        assert_error(poll(app, bob, since=old, status=410), 410, "resync")
    first.post_json(f"/api/chats/{chat_id}/messages", {"content": "newest"}, headers=alice.headers)
    for app in (first, later):
        events = poll(app, bob, since=recent).json["events"]
        assert [e["data"]["content"] for e in events if e["type"] == "chat.message.created"] == ["newest"]
