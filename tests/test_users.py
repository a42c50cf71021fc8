"""Profiles, password change, the directory and public profiles."""

import pytest
from conftest import PASSWORD, assert_error


def test_my_profile_is_readable_and_updatable(client, clock):
    alice = client.user("alice", email="alice@example.com")
    me = client.get("/api/users/me", headers=alice.headers).json["data"]
    assert (me["username"], me["email"], me["full_name"]) == ("alice", "alice@example.com", None)
    assert me["last_seen"] is not None
    changed = client.patch_json(
        "/api/users/me",
        {"full_name": "Alice Liddell", "bio": "curious", "avatar_url": "https://img.example/a.png"},
        headers=alice.headers,
    ).json["data"]
    assert (changed["full_name"], changed["bio"], changed["avatar_url"]) == (
        "Alice Liddell",
        "curious",
        "https://img.example/a.png",
    )
    assert client.get("/api/users/me", headers=alice.headers).json["data"]["bio"] == "curious"


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({}, 400, "Nothing to change"),
        ({"full_name": "x" * 101}, 400, "at most 100"),
        ({"bio": 7}, 400, "must be a string"),
        ({"avatar_url": "javascript:alert(1)"}, 400, "http(s) URL"),
        ({"email": "new@example.com"}, 403, "password"),
        ({"email": "new@example.com", "password": "wrong password"}, 403, "password"),
        ({"email": "nonsense", "password": PASSWORD}, 400, "e-mail"),
    ],
)
def test_bad_profile_changes_are_refused(client, body, status, message):
    alice = client.user("alice")
    assert_error(client.patch_json("/api/users/me", body, headers=alice.headers, status=status), status, message)


def test_changing_email_needs_the_password_and_a_free_address(client):
    alice = client.user("alice")
    client.user("bob", email="bob@example.com")
    assert_error(
        client.patch_json(
            "/api/users/me", {"email": "BOB@example.com", "password": PASSWORD}, headers=alice.headers, status=400
        ),
        400,
        "already registered",
    )
    changed = client.patch_json(
        "/api/users/me", {"email": "alice@example.com", "password": PASSWORD}, headers=alice.headers
    ).json["data"]
    assert changed["email"] == "alice@example.com"


def test_a_password_change_ends_other_sessions_but_not_this_one(client):
    alice = client.user("alice")
    other = client.login("alice").json["data"]
    answer = client.post_json(
        "/api/users/me/password",
        {"current_password": PASSWORD, "new_password": "a new password"},
        headers=alice.headers,
    )
    assert answer.json["data"]["other_sessions_ended"] == 1
    client.get("/api/users/me", headers=alice.headers)
    assert_error(
        client.get("/api/users/me", headers={"Authorization": f"Bearer {other['access_token']}"}, status=401), 401
    )
    assert_error(client.post_json("/api/auth/refresh", {"refresh_token": other["refresh_token"]}, status=401), 401)
    client.login("alice", PASSWORD, status=401)
    client.login("alice", "a new password")


def change_password_during_the_check(client, monkeypatch, user_id, new_password):
    """Make the next password check find the password changed by another request meanwhile."""
    ctx = client.wsgi.core.ctx
    verify = ctx.passwords.verify

    def verify_while_changed(*args):
        ctx.store.update_user(user_id, {"password_hash": ctx.passwords.hash(new_password)})
        monkeypatch.setattr(ctx.passwords, "verify", verify)
        return verify(*args)

    monkeypatch.setattr(ctx.passwords, "verify", verify_while_changed)


def test_of_two_password_changes_from_one_current_password_only_one_wins(client, monkeypatch):
    alice = client.user("alice")
    change_password_during_the_check(client, monkeypatch, alice.id, "the other change")
    body = {"current_password": PASSWORD, "new_password": "mine, not theirs"}
    refused = client.post_json("/api/users/me/password", body, headers=alice.headers, status=403)
    assert_error(refused, 403, "not correct")
    client.login("alice", "mine, not theirs", status=401)
    client.login("alice", "the other change")


def test_an_address_change_on_a_password_changed_meanwhile_is_refused(client, monkeypatch):
    alice = client.user("alice", email="alice@example.com")
    change_password_during_the_check(client, monkeypatch, alice.id, "changed meanwhile")
    assert_error(
        client.patch_json(
            "/api/users/me", {"email": "mallory@example.com", "password": PASSWORD}, headers=alice.headers, status=403
        ),
        403,
        "password",
    )
    assert client.wsgi.core.ctx.store.get_user(alice.id)["email"] == "alice@example.com"


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"new_password": "another one"}, 400, "current_password"),
        ({"current_password": PASSWORD}, 400, "new_password"),
        ({"current_password": PASSWORD, "new_password": "short"}, 400, "at least 8"),
        ({"current_password": "not it at all", "new_password": "another one"}, 403, "not correct"),
    ],
)
def test_bad_password_changes_are_refused(client, body, status, message):
    alice = client.user("alice")
    assert_error(
        client.post_json("/api/users/me/password", body, headers=alice.headers, status=status), status, message
    )


def test_the_directory_finds_users_by_username_prefix_and_pages(client):
    alice = client.user("alice")
    for name in ("bob", "bobby", "Bobo", "carol"):
        client.register(name)
    found = client.get("/api/users", {"q": "bo", "limit": 2}, headers=alice.headers).json
    assert [u["username"] for u in found["users"]] == ["bob", "bobby"]
    assert "email" not in found["users"][0]
    rest = client.get("/api/users", {"q": "bo", "after": found["paging"]["after"]}, headers=alice.headers).json
    assert [u["username"] for u in rest["users"]] == ["Bobo"] and rest["paging"]["after"] is None
    assert_error(client.get("/api/users", {"q": "x" * 33}, headers=alice.headers, status=400), 400)
    assert_error(client.get("/api/users", {"limit": 0}, headers=alice.headers, status=400), 400)


def test_a_public_profile_hides_the_email(client):
    alice = client.user("alice")
    bob = client.user("bob", email="bob@example.com")
    shown = client.get(f"/api/users/{bob.id}", headers=alice.headers).json["data"]
    assert shown["username"] == "bob" and "email" not in shown and shown["last_seen"]
    assert_error(client.get("/api/users/nobody", headers=alice.headers, status=404), 404)


def test_last_seen_follows_activity_at_minute_resolution(client, clock):
    alice = client.user("alice")
    bob = client.user("bob")
    first = client.get(f"/api/users/{alice.id}", headers=bob.headers).json["data"]["last_seen"]
    clock.advance(30)
    client.get("/api/users/me", headers=alice.headers)
    assert client.get(f"/api/users/{alice.id}", headers=bob.headers).json["data"]["last_seen"] == first
    clock.advance(31)
    client.get("/api/users/me", headers=alice.headers)
    assert client.get(f"/api/users/{alice.id}", headers=bob.headers).json["data"]["last_seen"] > first
