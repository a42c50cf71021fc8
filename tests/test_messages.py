"""0xC's public and private messages: visibility, ownership, pages."""

import threading

import pytest
from conftest import assert_error


@pytest.fixture
def people(client):
    return client.user("alice"), client.user("bob"), client.user("carol")


def post(client, user, content, recipient=None, status=201):
    body = {"content": content}
    if recipient is not None:
        body["recipient_id"] = recipient.id
    return client.post_json("/api/messages", body, headers=user.headers, status=status)


def contents(response):
    return [message["content"] for message in response.json["messages"]]


def test_posting_answers_201_with_the_message_in_0xc_shape(client, people):
    alice, _, _ = people
    response = post(client, alice, "  Hello, world!  ")
    assert response.json["status"] == "success"
    assert response.json["message"] == "Message created successfully"
    message = response.json["data"]
    assert message["content"] == "Hello, world!"
    assert (message["user_id"], message["username"], message["recipient_id"]) == (alice.id, "alice", None)
    assert set(message) == {"id", "user_id", "username", "content", "timestamp", "recipient_id"}


def test_public_messages_are_seen_by_everyone_private_ones_by_the_pair_only(client, people):
    alice, bob, carol = people
    post(client, alice, "public")
    post(client, alice, "to bob", recipient=bob)
    post(client, bob, "to alice", recipient=alice)
    assert contents(client.get("/api/messages", headers=alice.headers)) == ["public", "to bob", "to alice"]
    assert contents(client.get("/api/messages", headers=bob.headers)) == ["public", "to bob", "to alice"]
    assert contents(client.get("/api/messages", headers=carol.headers)) == ["public"]


def test_a_message_to_oneself_is_listed_once(client, people):
    alice, _, _ = people
    post(client, alice, "note to self", recipient=alice)
    assert contents(client.get("/api/messages", headers=alice.headers)) == ["note to self"]


def test_get_one_message_answers_it_to_those_who_may_see_it(client, people):
    alice, bob, carol = people
    message = post(client, alice, "to bob", recipient=bob).json["data"]
    for viewer in (alice, bob):
        assert client.get(f"/api/messages/{message['id']}", headers=viewer.headers).json["data"] == message
    hidden = client.get(f"/api/messages/{message['id']}", headers=carol.headers, status=404)
    unknown = client.get("/api/messages/no-such-id", headers=carol.headers, status=404)
    assert_error(hidden, 404, f"Message with ID {message['id']} not found")
    assert_error(unknown, 404, "not found")


def test_messages_me_lists_only_what_i_sent(client, people):
    alice, bob, _ = people
    post(client, alice, "mine")
    post(client, bob, "his", recipient=alice)
    post(client, alice, "mine too", recipient=bob)
    assert contents(client.get("/api/messages/me", headers=alice.headers)) == ["mine", "mine too"]


def test_the_author_may_delete_a_message(client, people):
    alice, bob, _ = people
    message = post(client, alice, "oops").json["data"]
    response = client.delete(f"/api/messages/{message['id']}", headers=alice.headers)
    assert response.json == {"status": "success", "message": f"Message with ID {message['id']} deleted successfully"}
    assert_error(client.get(f"/api/messages/{message['id']}", headers=bob.headers, status=404), 404)
    assert contents(client.get("/api/messages", headers=alice.headers)) == []


def test_others_cannot_delete_a_message_they_see_or_one_they_do_not(client, people):
    alice, bob, carol = people
    public = post(client, alice, "public").json["data"]
    private = post(client, alice, "to bob", recipient=bob).json["data"]
    assert_error(
        client.delete(f"/api/messages/{public['id']}", headers=bob.headers, status=403), 403, "do not have permission"
    )
    assert_error(client.delete(f"/api/messages/{private['id']}", headers=carol.headers, status=404), 404)
    assert_error(client.delete("/api/messages/nope", headers=carol.headers, status=404), 404)
    assert len(contents(client.get("/api/messages", headers=bob.headers))) == 2


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "Missing required field: content"),
        ({"content": "   "}, "Missing required field: content"),
        ({"content": 42}, "must be a string"),
        ({"content": "x" * 1001}, "at most 1000"),
        ({"content": "hi", "recipient_id": "nobody"}, "Recipient with ID nobody not found"),
        ({"content": "hi", "recipient_id": 3}, "must be a string"),
    ],
)
def test_bad_messages_are_refused_with_400(client, people, body, message):
    alice, _, _ = people
    assert_error(client.post_json("/api/messages", body, headers=alice.headers, status=400), 400, message)


def test_max_message_length_is_a_setting(make_client):
    client = make_client(max_message_length=10)
    alice = client.user("alice")
    post(client, alice, "x" * 10)
    assert_error(post(client, alice, "x" * 11, status=400), 400, "at most 10")


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/messages"),
        ("post", "/api/messages"),
        ("get", "/api/messages/me"),
        ("get", "/api/messages/some-id"),
        ("delete", "/api/messages/some-id"),
        ("get", "/api/auth/token-info"),
    ],
)
def test_every_message_endpoint_needs_a_token(client, method, path):
    assert_error(getattr(client, method)(path, status=401), 401, "missing")


# -- pages ------------------------------------------------------------------


@pytest.fixture
def seventy(client, people):
    alice, bob, _ = people
    for number in range(70):
        post(client, alice, f"m{number}", recipient=bob if number % 7 == 0 else None)
    return alice


def test_a_list_without_cursor_is_the_newest_page_oldest_first(client, seventy):
    response = client.get("/api/messages", headers=seventy.headers)
    assert contents(response) == [f"m{n}" for n in range(20, 70)]
    paging = response.json["paging"]
    assert paging["limit"] == 50
    assert paging["before"] == response.json["messages"][0]["id"]
    assert paging["after"] is None


def test_following_before_cursors_walks_back_through_everything_once(client, seventy):
    seen, cursor = [], None
    while True:
        query = {"limit": 15} | ({"before": cursor} if cursor else {})
        response = client.get("/api/messages", query, headers=seventy.headers)
        seen = contents(response) + seen
        cursor = response.json["paging"]["before"]
        if cursor is None:
            break
    assert seen == [f"m{n}" for n in range(70)]


def test_following_after_cursors_walks_forward_through_everything_once(client, seventy):
    first = client.get("/api/messages", {"limit": 1, "before": "x"}, headers=seventy.headers, status=400)
    assert_error(first, 400, "before")
    oldest = client.get("/api/messages", {"limit": 70}, headers=seventy.headers).json["messages"][0]
    seen, cursor = [oldest["content"]], oldest["id"]
    while cursor is not None:
        response = client.get("/api/messages", {"limit": 20, "after": cursor}, headers=seventy.headers)
        seen += contents(response)
        cursor = response.json["paging"]["after"]
    assert seen == [f"m{n}" for n in range(70)]


def test_private_messages_of_others_never_appear_in_a_page(client, people, seventy):
    _, _, carol = people
    listed = contents(client.get("/api/messages", {"limit": 200}, headers=carol.headers))
    assert listed == [f"m{n}" for n in range(70) if n % 7 != 0]


@pytest.mark.parametrize(
    "query, message",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"before": "a", "after": "b"}, "either"),
        ({"before": "unknown"}, "before"),
        ({"after": "unknown"}, "after"),
    ],
)
def test_bad_paging_parameters_are_refused_with_400(client, seventy, query, message):
    assert_error(client.get("/api/messages", query, headers=seventy.headers, status=400), 400, message)


def test_a_cursor_must_be_a_message_the_user_may_see(client, people):
    alice, bob, carol = people
    secret = post(client, alice, "to bob", recipient=bob).json["data"]
    response = client.get("/api/messages", {"before": secret["id"]}, headers=carol.headers, status=400)
    assert_error(response, 400, "before")
    assert_error(client.get("/api/messages/me", {"after": secret["id"]}, headers=bob.headers, status=400), 400)


def test_concurrent_posts_are_all_kept(client, people):
    alice, _, _ = people

    def send(worker):
        for number in range(25):
            post(client, alice, f"{worker}-{number}")

    threads = [threading.Thread(target=send, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = contents(client.get("/api/messages", {"limit": 200}, headers=alice.headers))
    assert sorted(listed) == sorted(f"{w}-{n}" for w in range(8) for n in range(25))
