"""Direct and group chats: roles, members, messages, receipts, over HTTP."""

import threading

import pytest
from conftest import assert_error


@pytest.fixture
def people(client):
    return {name: client.user(name) for name in ("alice", "bob", "carol", "dave")}


def group(client, owner, name="team", members=()):
    body = {"name": name, "members": [m.id for m in members]}
    return client.post_json("/api/chats/group", body, headers=owner.headers, status=201).json["data"]


def say(client, user, chat_id, content, status=201, **extra):
    return client.post_json(
        f"/api/chats/{chat_id}/messages", dict(content=content, **extra), headers=user.headers, status=status
    )


def history(client, user, chat_id, **query):
    return client.get(f"/api/chats/{chat_id}/messages", query, headers=user.headers).json["messages"]


def roles(client, user, chat_id):
    members = client.get(f"/api/chats/{chat_id}/members", headers=user.headers).json["data"]
    return {m["username"]: m["role"] for m in members}


# -- groups -------------------------------------------------------------------


def test_creating_a_group_makes_the_creator_its_owner(client, people):
    alice, bob = people["alice"], people["bob"]
    chat = group(client, alice, "Team", [bob])
    assert chat["type"] == "group" and chat["name"] == "Team" and chat["role"] == "owner"
    assert chat["member_count"] == 2 and chat["unread_count"] == 0 and chat["last_message"] is None
    assert roles(client, bob, chat["id"]) == {"alice": "owner", "bob": "member"}


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "Missing required field: name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "at most 100"),
        ({"name": "ok", "members": "bob"}, "members"),
        ({"name": "ok", "members": ["nobody"]}, "User nobody not found"),
        ({"name": "ok", "description": 5}, "description"),
    ],
)
def test_bad_group_bodies_are_400(client, people, body, message):
    response = client.post_json("/api/chats/group", body, headers=people["alice"].headers, status=400)
    assert_error(response, 400, message)


def test_admins_and_owner_may_rename_members_may_not(client, people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    chat = group(client, alice, members=[bob, carol])
    client.patch_json(f"/api/chats/{chat['id']}/members/{bob.id}", {"role": "admin"}, headers=alice.headers)
    renamed = client.patch_json(
        f"/api/chats/{chat['id']}", {"name": "New", "description": "d"}, headers=bob.headers
    ).json["data"]
    assert (renamed["name"], renamed["description"]) == ("New", "d")
    refused = client.patch_json(f"/api/chats/{chat['id']}", {"name": "Mine"}, headers=carol.headers, status=403)
    assert_error(refused, 403, "admins and owner")
    assert_error(client.patch_json(f"/api/chats/{chat['id']}", {}, headers=alice.headers, status=400), 400)


def test_non_members_get_403_on_everything_in_a_chat(client, people):
    alice, dave = people["alice"], people["dave"]
    chat = group(client, alice)
    message = say(client, alice, chat["id"], "secret plans").json["data"]
    base = f"/api/chats/{chat['id']}"
    attempts = [
        ("get", base, None),
        ("patch", base, {"name": "x"}),
        ("delete", base, None),
        ("get", f"{base}/members", None),
        ("post", f"{base}/members", {"user_id": dave.id}),
        ("delete", f"{base}/members/{alice.id}", None),
        ("patch", f"{base}/members/{alice.id}", {"role": "admin"}),
        ("put", f"{base}/mute", {"muted": True}),
        ("get", f"{base}/messages", None),
        ("post", f"{base}/messages", {"content": "let me in"}),
        ("patch", f"{base}/messages/{message['id']}", {"content": "x"}),
        ("delete", f"{base}/messages/{message['id']}", None),
        ("get", f"{base}/messages/{message['id']}/receipts", None),
        ("post", f"{base}/read", {"message_id": message["id"]}),
        ("post", f"{base}/delivered", {"message_id": message["id"]}),
    ]
    for method, path, body in attempts:
        if body is None:
            response = getattr(client, method)(path, headers=dave.headers, status=403)
        else:
            response = getattr(client, f"{method}_json")(path, body, headers=dave.headers, status=403)
        assert_error(response, 403, "not a member")
        assert "secret" not in response.text
    search = client.get("/api/search", {"q": "secret", "chat_id": chat["id"]}, headers=dave.headers, status=403)
    assert_error(search, 403)
    assert client.get("/api/search", {"q": "secret"}, headers=dave.headers).json["messages"] == []


def test_an_unknown_chat_is_404(client, people):
    assert_error(client.get("/api/chats/nope", headers=people["alice"].headers, status=404), 404, "Chat")


def test_chat_endpoints_need_a_token(client):
    for path in ("/api/chats", "/api/chats/x", "/api/chats/x/messages", "/api/search?q=a", "/api/users/me"):
        assert_error(client.get(path, status=401), 401)


# -- members ------------------------------------------------------------------


def test_admins_add_members_and_unknown_duplicate_or_direct_are_400(client, people):
    alice, bob, carol, dave = people["alice"], people["bob"], people["carol"], people["dave"]
    chat = group(client, alice, members=[bob])
    added = client.post_json(
        f"/api/chats/{chat['id']}/members", {"username": "carol"}, headers=alice.headers, status=201
    ).json["data"]
    assert added == {"user_id": carol.id, "username": "carol", "role": "member", "joined_at": added["joined_at"]}
    assert_error(
        client.post_json(f"/api/chats/{chat['id']}/members", {"user_id": "ghost"}, headers=alice.headers, status=400),
        400,
        "not found",
    )
    assert_error(
        client.post_json(f"/api/chats/{chat['id']}/members", {"user_id": bob.id}, headers=alice.headers, status=400),
        400,
        "already a member",
    )
    assert_error(client.post_json(f"/api/chats/{chat['id']}/members", {}, headers=alice.headers, status=400), 400)
    assert_error(
        client.post_json(f"/api/chats/{chat['id']}/members", {"user_id": dave.id}, headers=bob.headers, status=403), 403
    )
    direct = client.post_json("/api/chats/direct", {"user_id": bob.id}, headers=alice.headers).json["data"]
    assert_error(
        client.post_json(
            f"/api/chats/{direct['id']}/members", {"user_id": carol.id}, headers=alice.headers, status=400
        ),
        400,
        "Direct chats",
    )


def test_a_removed_member_loses_access_at_once(client, people):
    alice, bob = people["alice"], people["bob"]
    chat = group(client, alice, members=[bob])
    say(client, alice, chat["id"], "before")
    client.delete(f"/api/chats/{chat['id']}/members/{bob.id}", headers=alice.headers)
    assert_error(client.get(f"/api/chats/{chat['id']}/messages", headers=bob.headers, status=403), 403)
    assert client.get("/api/chats", headers=bob.headers).json["chats"] == []
    assert client.get("/api/search", {"q": "before"}, headers=bob.headers).json["messages"] == []


def test_members_may_leave_but_not_remove_others(client, people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    chat = group(client, alice, members=[bob, carol])
    refused = client.delete(f"/api/chats/{chat['id']}/members/{carol.id}", headers=bob.headers, status=403)
    assert_error(refused, 403)
    client.delete(f"/api/chats/{chat['id']}/members/{bob.id}", headers=bob.headers)
    assert roles(client, alice, chat["id"]) == {"alice": "owner", "carol": "member"}
    assert_error(
        client.delete(f"/api/chats/{chat['id']}/members/{bob.id}", headers=alice.headers, status=400),
        400,
        "not a member",
    )


def test_an_admin_cannot_remove_or_demote_the_owner_or_other_admins(client, people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    chat = group(client, alice, members=[bob, carol])
    for user in (bob, carol):
        client.patch_json(f"/api/chats/{chat['id']}/members/{user.id}", {"role": "admin"}, headers=alice.headers)
    assert_error(client.delete(f"/api/chats/{chat['id']}/members/{alice.id}", headers=bob.headers, status=403), 403)
    assert_error(client.delete(f"/api/chats/{chat['id']}/members/{carol.id}", headers=bob.headers, status=403), 403)
    demote = client.patch_json(
        f"/api/chats/{chat['id']}/members/{alice.id}", {"role": "member"}, headers=bob.headers, status=403
    )
    assert_error(demote, 403, "owner")
    assert roles(client, alice, chat["id"]) == {"alice": "owner", "bob": "admin", "carol": "admin"}


def test_ownership_transfers_and_there_is_always_exactly_one_owner(client, people):
    alice, bob = people["alice"], people["bob"]
    chat = group(client, alice, members=[bob])
    assert_error(
        client.delete(f"/api/chats/{chat['id']}/members/{alice.id}", headers=alice.headers, status=400), 400, "transfer"
    )
    assert_error(
        client.patch_json(
            f"/api/chats/{chat['id']}/members/{alice.id}", {"role": "member"}, headers=alice.headers, status=400
        ),
        400,
        "transfer",
    )
    assert_error(
        client.patch_json(
            f"/api/chats/{chat['id']}/members/{bob.id}", {"role": "king"}, headers=alice.headers, status=400
        ),
        400,
        "role",
    )
    client.patch_json(f"/api/chats/{chat['id']}/members/{bob.id}", {"role": "owner"}, headers=alice.headers)
    assert roles(client, bob, chat["id"]) == {"alice": "admin", "bob": "owner"}
    client.delete(f"/api/chats/{chat['id']}/members/{alice.id}", headers=bob.headers)
    client.delete(f"/api/chats/{chat['id']}/members/{bob.id}", headers=bob.headers)
    assert_error(client.get(f"/api/chats/{chat['id']}", headers=bob.headers, status=404), 404)


def test_only_the_owner_deletes_a_group_and_its_messages_go_with_it(client, people):
    alice, bob = people["alice"], people["bob"]
    chat = group(client, alice, members=[bob])
    say(client, bob, chat["id"], "gone soon")
    assert_error(client.delete(f"/api/chats/{chat['id']}", headers=bob.headers, status=403), 403, "owner")
    client.delete(f"/api/chats/{chat['id']}", headers=alice.headers)
    assert client.get("/api/chats", headers=bob.headers).json["chats"] == []
    assert client.get("/api/search", {"q": "gone"}, headers=bob.headers).json["messages"] == []


def test_mute_is_per_member(client, people):
    alice, bob = people["alice"], people["bob"]
    chat = group(client, alice, members=[bob])
    client.put_json(f"/api/chats/{chat['id']}/mute", {"muted": True}, headers=bob.headers)
    mine = {c["id"]: c["muted"] for c in client.get("/api/chats", headers=bob.headers).json["chats"]}
    theirs = {c["id"]: c["muted"] for c in client.get("/api/chats", headers=alice.headers).json["chats"]}
    assert mine[chat["id"]] is True and theirs[chat["id"]] is False
    assert_error(
        client.put_json(f"/api/chats/{chat['id']}/mute", {"muted": "yes"}, headers=bob.headers, status=400),
        400,
        "muted",
    )


# -- direct chats -------------------------------------------------------------


def test_a_direct_chat_is_created_once_and_found_again(client, people):
    alice, bob = people["alice"], people["bob"]
    first = client.post_json(
        "/api/chats/direct", {"username": "bob", "content": "hi bob"}, headers=alice.headers, status=201
    ).json["data"]
    assert first["type"] == "direct" and first["peer"] == {"id": bob.id, "username": "bob"}
    assert first["message"]["content"] == "hi bob"
    again = client.post_json("/api/chats/direct", {"user_id": alice.id}, headers=bob.headers, status=200)
    assert again.json["data"]["id"] == first["id"] and again.json["data"]["unread_count"] == 1


def test_two_concurrent_direct_chat_requests_yield_one_chat(client, people):
    alice, bob = people["alice"], people["bob"]
    ids, barrier = [], threading.Barrier(4)

    def open_chat(user, peer):
        barrier.wait()
        ids.append(
            client.post_json("/api/chats/direct", {"user_id": peer.id}, headers=user.headers, status="*").json["data"][
                "id"
            ]
        )

    threads = [threading.Thread(target=open_chat, args=pair) for pair in [(alice, bob), (bob, alice)] * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    assert len(client.get("/api/chats", headers=alice.headers).json["chats"]) == 1


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "user_id or username"),
        ({"username": "ghost"}, "not found"),
        ({"username": "alice"}, "another user"),
        ({"user_id": 4}, "must be a string"),
    ],
)
def test_bad_direct_chat_requests_are_400(client, people, body, message):
    assert_error(client.post_json("/api/chats/direct", body, headers=people["alice"].headers, status=400), 400, message)


def test_direct_chats_have_no_name_roles_or_removals_and_cannot_be_deleted(client, people):
    alice, bob = people["alice"], people["bob"]
    chat = client.post_json("/api/chats/direct", {"user_id": bob.id}, headers=alice.headers).json["data"]
    base = f"/api/chats/{chat['id']}"
    assert_error(client.delete(f"{base}/members/{bob.id}", headers=alice.headers, status=400), 400, "Direct")
    assert_error(
        client.patch_json(f"{base}/members/{bob.id}", {"role": "admin"}, headers=alice.headers, status=400),
        400,
        "Direct",
    )
    assert_error(client.patch_json(base, {"name": "x"}, headers=alice.headers, status=400), 400, "Direct")
    assert_error(client.delete(base, headers=alice.headers, status=400), 400, "Direct")


# -- messages in chats ----------------------------------------------------------


def test_messages_replies_and_mentions(client, people):
    alice, bob = people["alice"], people["bob"]
    chat = group(client, alice, members=[bob])
    first = say(client, alice, chat["id"], "hello @bob and @dave and @BOB").json["data"]
    assert first["mentions"] == [{"user_id": bob.id, "username": "bob"}]
    reply = say(client, bob, chat["id"], "hi!", reply_to_id=first["id"]).json["data"]
    assert reply["reply_to_id"] == first["id"]
    other = group(client, bob, "other")
    foreign = say(client, bob, other["id"], "elsewhere").json["data"]
    assert_error(say(client, alice, chat["id"], "x", status=400, reply_to_id=foreign["id"]), 400, "reply_to_id")
    assert_error(say(client, alice, chat["id"], "", status=400), 400, "content")
    assert_error(say(client, alice, chat["id"], "x" * 1001, status=400), 400, "at most")


def test_history_pages_in_both_directions(client, people):
    alice, bob = people["alice"], people["bob"]
    chat = group(client, alice, members=[bob])
    for number in range(30):
        say(client, alice if number % 2 else bob, chat["id"], f"n{number}")
    newest = client.get(f"/api/chats/{chat['id']}/messages", {"limit": 10}, headers=bob.headers).json
    assert [m["content"] for m in newest["messages"]] == [f"n{n}" for n in range(20, 30)]
    older = client.get(
        f"/api/chats/{chat['id']}/messages", {"limit": 10, "before": newest["paging"]["before"]}, headers=bob.headers
    ).json
    assert [m["content"] for m in older["messages"]] == [f"n{n}" for n in range(10, 20)]
    newer = client.get(
        f"/api/chats/{chat['id']}/messages", {"limit": 5, "after": older["paging"]["after"]}, headers=bob.headers
    ).json
    assert [m["content"] for m in newer["messages"]] == [f"n{n}" for n in range(20, 25)]
    other = group(client, alice, "other")
    stray = say(client, alice, other["id"], "stray").json["data"]
    assert_error(
        client.get(f"/api/chats/{chat['id']}/messages", {"before": stray["id"]}, headers=alice.headers, status=400),
        400,
        "before",
    )


def test_only_the_author_edits_and_edited_at_is_kept(client, people, clock):
    alice, bob = people["alice"], people["bob"]
    chat = group(client, alice, members=[bob])
    message = say(client, alice, chat["id"], "teh").json["data"]
    assert message["edited_at"] is None
    clock.advance(30)
    edited = client.patch_json(
        f"/api/chats/{chat['id']}/messages/{message['id']}", {"content": "the"}, headers=alice.headers
    ).json["data"]
    assert edited["content"] == "the" and edited["edited_at"] > edited["created_at"]
    assert_error(
        client.patch_json(
            f"/api/chats/{chat['id']}/messages/{message['id']}", {"content": "x"}, headers=bob.headers, status=403
        ),
        403,
        "author",
    )
    assert_error(
        client.patch_json(
            f"/api/chats/{chat['id']}/messages/nope", {"content": "x"}, headers=alice.headers, status=404
        ),
        404,
    )


def test_delete_leaves_a_tombstone_and_admins_may_moderate(client, people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    chat = group(client, alice, members=[bob, carol])
    rude = say(client, carol, chat["id"], "rude words").json["data"]
    reply = say(client, bob, chat["id"], "hey", reply_to_id=rude["id"]).json["data"]
    assert_error(
        client.delete(f"/api/chats/{chat['id']}/messages/{reply['id']}", headers=carol.headers, status=403), 403
    )
    client.delete(f"/api/chats/{chat['id']}/messages/{rude['id']}", headers=alice.headers)
    shown = history(client, bob, chat["id"])
    assert shown[0]["id"] == rude["id"] and shown[0]["deleted"] and shown[0]["content"] is None
    assert shown[1]["reply_to_id"] == rude["id"]
    assert client.get("/api/search", {"q": "rude"}, headers=bob.headers).json["messages"] == []
    assert_error(
        client.delete(f"/api/chats/{chat['id']}/messages/{rude['id']}", headers=alice.headers, status=400),
        400,
        "already",
    )
    assert_error(
        client.patch_json(
            f"/api/chats/{chat['id']}/messages/{rude['id']}", {"content": "x"}, headers=carol.headers, status=400
        ),
        400,
        "deleted",
    )


def test_read_pointers_give_unread_counts_and_receipts(client, people):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    chat = group(client, alice, members=[bob, carol])
    sent = [say(client, alice, chat["id"], f"m{n}").json["data"] for n in range(5)]
    summary = {c["id"]: c for c in client.get("/api/chats", headers=bob.headers).json["chats"]}[chat["id"]]
    assert summary["unread_count"] == 5 and summary["last_message"]["content"] == "m4"
    assert client.get("/api/chats", headers=alice.headers).json["chats"][0]["unread_count"] == 0
    answer = client.post_json(f"/api/chats/{chat['id']}/read", {"message_id": sent[2]["id"]}, headers=bob.headers)
    assert answer.json["data"]["unread_count"] == 2
    client.post_json(f"/api/chats/{chat['id']}/read", {"message_id": sent[0]["id"]}, headers=bob.headers)
    assert client.get("/api/chats", headers=bob.headers).json["chats"][0]["unread_count"] == 2
    client.post_json(f"/api/chats/{chat['id']}/delivered", {"message_id": sent[4]["id"]}, headers=carol.headers)
    receipts = client.get(f"/api/chats/{chat['id']}/messages/{sent[2]['id']}/receipts", headers=alice.headers).json[
        "data"
    ]["receipts"]
    assert {r["username"]: (r["delivered"], r["read"]) for r in receipts} == {
        "bob": (True, True),
        "carol": (True, False),
    }
    assert_error(
        client.post_json(f"/api/chats/{chat['id']}/read", {"message_id": "nope"}, headers=bob.headers, status=404), 404
    )
    assert_error(client.post_json(f"/api/chats/{chat['id']}/read", {}, headers=bob.headers, status=400), 400)


def test_my_chats_are_listed_newest_activity_first_and_paged(client, people):
    alice, bob = people["alice"], people["bob"]
    chats = [group(client, alice, f"g{n}", [bob]) for n in range(5)]
    say(client, bob, chats[1]["id"], "bump")
    listed = client.get("/api/chats", headers=alice.headers).json["chats"]
    assert [c["name"] for c in listed] == ["g1", "g4", "g3", "g2", "g0"]
    first = client.get("/api/chats", {"limit": 2}, headers=alice.headers).json
    rest = client.get("/api/chats", {"limit": 10, "before": first["paging"]["before"]}, headers=alice.headers).json
    assert [c["name"] for c in first["chats"] + rest["chats"]] == ["g1", "g4", "g3", "g2", "g0"]
    assert rest["paging"]["before"] is None
    assert_error(client.get("/api/chats", {"before": "nope"}, headers=alice.headers, status=400), 400)


def test_chats_survive_a_restart(make_client, people, client):
    alice, bob = people["alice"], people["bob"]
    chat = group(client, alice, members=[bob])
    say(client, bob, chat["id"], "persisted @alice")
    client.wsgi.core.close()
    again = make_client()
    token = again.login("alice").json["data"]["access_token"]
    messages = again.get(f"/api/chats/{chat['id']}/messages", headers={"Authorization": f"Bearer {token}"}).json
    assert messages["messages"][0]["mentions"] == [{"user_id": alice.id, "username": "alice"}]
