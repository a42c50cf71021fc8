"""Deleted means deleted: a deleted message's text leaves every copy the service made of it.

Each test writes a secret, deletes the message that held it, and then looks
where copies were made: a replay of the event stream from a cursor before the
message, the notification feed, queued pushes and dead letters, and (after
``POST /api/admin/compact``) every byte the service keeps at rest.
"""

import json

import pytest
from conftest import assert_error, stored_bytes
from server import wait_until

SECRET = "hunter2-correct-horse-7731"
RECEIVER = "http://127.0.0.1:9/unreachable"  # nothing listens: pushes stay queued


def poll(client, user, since=None, timeout=0):
    query = {"timeout": timeout}
    if since is not None:
        query["since"] = since
    return client.get("/api/events", query, headers=user.headers).json


def replay(client, user, since):
    """Every event ``user`` gets after the cursor ``since``, as a client resuming would."""
    seen = []
    while True:
        answer = poll(client, user, since)
        seen += answer["events"]
        if answer["next"] == since:
            return seen
        since = answer["next"]


def settled(client):
    assert wait_until(lambda: client.get("/api/health").json["data"]["notifications_pending"] == 0, timeout=10)


def text_of(value):
    return json.dumps(value)


@pytest.fixture
def pushing(make_client):
    """An app that pushes to a receiver that never answers, keeping one delivery queued (the rest dead)."""
    return make_client(
        push_webhook_url=RECEIVER,
        push_webhook_secret="push-secret-for-tests-0123456789",
        push_device_hosts=("127.0.0.1",),
        push_allowed_addresses=("127.0.0.1",),
        push_queue_max=1,
        admins=("alice",),
    )


def a_mention_with_pushes(client):
    """alice mentions bob, who has a push device, in a direct chat: a queued push and a dead letter result."""
    alice, bob = client.user("alice"), client.user("bob")
    client.post_json(
        "/api/devices",
        {"platform": "webhook", "token": "bob-phone", "endpoint": "http://127.0.0.1:9/bob-device"},
        headers=bob.headers,
        status=201,
    )
    chat = client.post_json("/api/chats/direct", {"user_id": bob.id}, headers=alice.headers).json["data"]
    since = {user.username: poll(client, user)["next"] for user in (alice, bob)}
    message = client.post_json(
        f"/api/chats/{chat['id']}/messages",
        {"content": f"@bob the password is {SECRET}"},
        headers=alice.headers,
        status=201,
    ).json["data"]
    settled(client)
    return alice, bob, chat["id"], message, since


def push_jobs(client):
    store = client.wsgi.core.ctx.store
    return store.due_push_jobs(float("inf"), limit=100) + store.dead_push_jobs()


def test_a_deleted_chat_message_leaves_the_event_log_notifications_and_pushes(pushing):
    client = pushing
    alice, bob, chat_id, message, since = a_mention_with_pushes(client)
    # The copies exist before the delete: this is what the attack reads afterwards.
    assert SECRET in text_of(replay(client, bob, since["bob"]))
    assert SECRET in text_of(client.get("/api/notifications", headers=bob.headers).json)
    jobs = push_jobs(client)
    assert {job["status"] for job in jobs} == {"pending", "dead"} and SECRET in text_of(jobs)

    client.delete(f"/api/chats/{chat_id}/messages/{message['id']}", headers=alice.headers)

    for user in (alice, bob):
        events = replay(client, user, since[user.username])
        assert SECRET not in text_of(events)
        created = [e["data"] for e in events if e["type"] == "chat.message.created"]
        assert created and all(
            data["deleted"] and data["content"] is None and data["mentions"] == [] for data in created
        )  # the replay shows the tombstone
        assert [e["type"] for e in events][-1] == "chat.message.deleted"
    feed = client.get("/api/notifications", headers=bob.headers).json
    mention = next(note for note in feed["notifications"] if note["message_id"] == message["id"])
    assert mention["kind"] == "mention" and mention["preview"] is None
    assert SECRET not in text_of(feed) and SECRET not in text_of(
        client.get("/api/notifications/mentions", headers=bob.headers).json
    )
    jobs = push_jobs(client)
    assert len(jobs) == 2 and SECRET not in text_of(jobs)
    letters = client.get("/api/admin/push/dead-letters", headers=alice.headers).json["data"]
    assert letters and SECRET not in text_of(letters)


def test_after_an_admin_compacts_the_running_server_no_stored_byte_holds_the_text(pushing, tmp_path):
    client = pushing
    alice, bob, chat_id, message, _ = a_mention_with_pushes(client)
    assert SECRET.encode() in stored_bytes(client, tmp_path / "data")
    client.delete(f"/api/chats/{chat_id}/messages/{message['id']}", headers=alice.headers)
    assert_error(client.post_json("/api/admin/compact", {}, headers=bob.headers, status=403), 403, "admins")
    answer = client.post_json("/api/admin/compact", {}, headers=alice.headers).json
    assert answer["message"] == "Store compacted" and answer["data"]["seconds"] >= 0
    assert SECRET.encode() not in stored_bytes(client, tmp_path / "data")
    # The server goes on as before.
    client.post_json(f"/api/chats/{chat_id}/messages", {"content": "still here"}, headers=alice.headers, status=201)


def test_a_deleted_0xc_message_leaves_the_event_log_and_the_disk(make_client, tmp_path):
    client = make_client(admins=("alice",))
    alice, bob = client.user("alice"), client.user("bob")
    since = poll(client, bob)["next"]
    message = client.post_json(
        "/api/messages", {"content": f"public: {SECRET}"}, headers=alice.headers, status=201
    ).json["data"]
    assert SECRET in text_of(replay(client, bob, since))
    client.delete(f"/api/messages/{message['id']}", headers=alice.headers)
    events = replay(client, bob, since)
    assert SECRET not in text_of(events)
    assert [(e["type"], e["data"]["id"]) for e in events][-2:] == [
        ("message.created", message["id"]),
        ("message.deleted", message["id"]),
    ]
    client.post_json("/api/admin/compact", {}, headers=alice.headers)
    assert SECRET.encode() not in stored_bytes(client, tmp_path / "data")


def test_a_notification_made_just_before_the_delete_and_stored_after_it_loses_its_preview(client):
    notifier = client.wsgi.core.ctx.notifier
    alice, bob = client.user("alice"), client.user("bob")
    chat = client.post_json("/api/chats/direct", {"user_id": bob.id}, headers=alice.headers).json["data"]
    settled(client)
    since = poll(client, bob)["next"]
    notifier.close()  # from here the test plays the notifier, to place the delete inside its work
    message = client.post_json(
        f"/api/chats/{chat['id']}/messages", {"content": f"@bob {SECRET}"}, headers=alice.headers, status=201
    ).json["data"]
    store = client.wsgi.core.ctx.store
    notes = notifier._message_notes(store.get_chat_message(message["id"]))  # made while the message stood
    client.delete(f"/api/chats/{chat['id']}/messages/{message['id']}", headers=alice.headers)
    notifier._deliver(notes)  # ... and stored and published after the delete
    feed = client.get("/api/notifications", headers=bob.headers).json
    assert feed["notifications"][0]["preview"] is None and SECRET not in text_of(feed)
    assert SECRET not in text_of(replay(client, bob, since))


@pytest.mark.backends("postgres")
def test_another_process_on_the_database_scrubs_its_copy_of_the_log(make_client):
    first, second = make_client(), make_client()
    alice, bob = first.user("alice"), first.user("bob")
    since = poll(second, bob)["next"]
    chat = first.post_json("/api/chats/direct", {"user_id": bob.id}, headers=alice.headers).json["data"]
    message = first.post_json(
        f"/api/chats/{chat['id']}/messages", {"content": SECRET}, headers=alice.headers, status=201
    ).json["data"]
    assert wait_until(lambda: SECRET in text_of(replay(second, bob, since)), timeout=5)  # copied into the second
    first.delete(f"/api/chats/{chat['id']}/messages/{message['id']}", headers=alice.headers)
    assert wait_until(lambda: "chat.message.deleted" in text_of(replay(second, bob, since)), timeout=5)
    assert SECRET not in text_of(replay(second, bob, since))
    assert SECRET not in text_of(replay(first, bob, since))


def test_scrubbing_holds_while_old_events_fall_out_of_a_short_log(make_client):
    client = make_client(events_kept=20)
    alice, bob = client.user("alice"), client.user("bob")
    chat = client.post_json("/api/chats/direct", {"user_id": bob.id}, headers=alice.headers).json["data"]
    for round_number in range(3):  # each round pushes the previous one's events out of the log
        since = poll(client, bob)["next"]
        secret = client.post_json(
            f"/api/chats/{chat['id']}/messages", {"content": f"{SECRET}-{round_number}"}, headers=alice.headers
        ).json["data"]
        for number in range(4):
            client.post_json(
                f"/api/chats/{chat['id']}/messages", {"content": f"filler {number}"}, headers=alice.headers
            )
        client.delete(f"/api/chats/{chat['id']}/messages/{secret['id']}", headers=alice.headers)
        events = replay(client, bob, since)
        assert SECRET not in text_of(events) and "filler 3" in text_of(events)
