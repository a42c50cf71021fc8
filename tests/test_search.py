"""Search: words, visibility, one chat, pages."""

import pytest
from conftest import assert_error


@pytest.fixture
def world(client):
    alice, bob, carol = (client.user(name) for name in ("alice", "bob", "carol"))
    chat = client.post_json("/api/chats/group", {"name": "g", "members": [bob.id]}, headers=alice.headers).json
    chat_id = chat["data"]["id"]
    for number in range(12):
        client.post_json(
            f"/api/chats/{chat_id}/messages", {"content": f"Deploy the rocket #{number}"}, headers=alice.headers
        )
    client.post_json("/api/messages", {"content": "public rocket news"}, headers=carol.headers)
    client.post_json(
        "/api/messages", {"content": "private rocket for bob", "recipient_id": bob.id}, headers=carol.headers
    )
    client.post_json(
        "/api/messages", {"content": "carol keeps this rocket", "recipient_id": carol.id}, headers=carol.headers
    )
    return alice, bob, carol, chat_id


def search(client, user, **query):
    return client.get("/api/search", query, headers=user.headers).json


def test_search_finds_every_word_newest_first_across_what_i_can_see(client, world):
    alice, bob, carol, chat_id = world
    found = search(client, bob, q="ROCKET", limit=100)["messages"]
    assert [m["content"] for m in found[:2]] == ["private rocket for bob", "public rocket news"]
    assert len(found) == 14 and found[2]["chat_id"] == chat_id
    assert [m["content"] for m in search(client, alice, q="rocket deploy 11")["messages"]] == ["Deploy the rocket #11"]
    assert [m["content"] for m in search(client, carol, q="rocket")["messages"]] == [
        "carol keeps this rocket",
        "private rocket for bob",
        "public rocket news",
    ]


def test_search_within_one_chat_and_pages_back(client, world):
    alice, _, _, chat_id = world
    first = search(client, alice, q="rocket", chat_id=chat_id, limit=5)
    assert [m["content"] for m in first["messages"]] == [f"Deploy the rocket #{n}" for n in range(11, 6, -1)]
    rest = search(client, alice, q="rocket", chat_id=chat_id, limit=50, before=first["paging"]["before"])
    assert [m["content"] for m in rest["messages"]] == [f"Deploy the rocket #{n}" for n in range(6, -1, -1)]
    assert rest["paging"]["before"] is None


def test_edits_change_what_search_finds(client, world):
    alice, _, _, chat_id = world
    target = search(client, alice, q="rocket", chat_id=chat_id, limit=1)["messages"][0]
    client.patch_json(f"/api/chats/{chat_id}/messages/{target['id']}", {"content": "balloon"}, headers=alice.headers)
    assert search(client, alice, q="balloon")["messages"][0]["id"] == target["id"]
    assert target["id"] not in [m["id"] for m in search(client, alice, q="rocket", limit=100)["messages"]]


@pytest.mark.parametrize(
    "query, status, message",
    [
        ({}, 400, "q"),
        ({"q": "   "}, 400, "q"),
        ({"q": "!!!"}, 400, "word"),
        ({"q": "x" * 201}, 400, "at most"),
        ({"q": "a", "limit": "500"}, 400, "limit"),
        ({"q": "a", "chat_id": "nope"}, 404, "Chat"),
        ({"q": "a", "before": "nope"}, 400, "before"),
    ],
)
def test_bad_searches_are_refused(client, world, query, status, message):
    alice = world[0]
    assert_error(client.get("/api/search", query, headers=alice.headers, status=status), status, message)


def test_a_cursor_must_be_a_message_the_searcher_may_see(client, world):
    alice, bob, carol, chat_id = world
    private = search(client, bob, q="private")["messages"][0]
    assert_error(
        client.get("/api/search", {"q": "rocket", "before": private["id"]}, headers=alice.headers, status=400),
        400,
        "before",
    )
    search(client, carol, q="rocket", before=private["id"])
    assert_error(
        client.get(
            "/api/search",
            {"q": "rocket", "chat_id": chat_id, "before": private["id"]},
            headers=alice.headers,
            status=400,
        ),
        400,
        "before",
    )
