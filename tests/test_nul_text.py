"""A NUL character never reaches the store; both backends keep U+FFFD in its place.

PostgreSQL's text cannot hold NUL: a NUL in a message once stored the row, then failed the
event and answered 500 (a retry duplicated the message). Now every text oxc receives (a JSON
body, the query string, an upload's fields) has each NUL replaced by U+FFFD before any handler
sees it, so both backends store and answer the same, and a NUL in the path names nothing (404).
"""

import pytest
from conftest import assert_error
from test_media import PDF, chat, form, people  # noqa: F401  (fixtures)

MARK = "\ufffd"


def test_a_nul_in_a_public_message_is_kept_as_the_replacement_character(client, people):
    alice = people["alice"].headers
    sent = client.post_json("/api/messages", {"content": "a\u0000b"}, headers=alice, status=201).json["data"]
    assert sent["content"] == f"a{MARK}b"
    assert client.get(f"/api/messages/{sent['id']}", headers=alice).json["data"]["content"] == f"a{MARK}b"


def test_a_nul_in_a_chat_message_a_name_or_an_unknown_key_never_fails(client, people, chat):
    alice = people["alice"].headers
    said = client.post_json(
        f"/api/chats/{chat['id']}/messages", {"content": "x\u0000", "\u0000extra": ["\u0000"]}, headers=alice
    )
    assert said.status_int == 201 and said.json["data"]["content"] == f"x{MARK}"
    renamed = client.patch_json(f"/api/chats/{chat['id']}", {"name": "team\u0000"}, headers=alice).json["data"]
    assert renamed["name"] == f"team{MARK}"
    history = client.get(f"/api/chats/{chat['id']}/messages", headers=alice).json["messages"]
    assert [message["content"] for message in history][-1] == f"x{MARK}"


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/chats/group", {"name": "a\u0000b"}),
        ("/api/auth/register", {"username": "zed", "password": "p" * 10, "email": "z\u0000@example.com"}),
        ("/api/messages", {"content": "fine", "recipient_id": "\u0000"}),
    ],
)
def test_a_nul_anywhere_in_a_json_body_is_never_a_500(client, people, path, body):
    answer = client.post_json(path, body, headers=people["alice"].headers, expect_errors=True)
    assert answer.status_int < 500
    assert "\u0000" not in answer.text


def test_a_nul_in_the_path_names_nothing_and_in_the_query_is_replaced(client, people, chat):
    alice = people["alice"].headers
    assert_error(client.get("/api/chats/%00", headers=alice, status=404), 404)
    assert_error(client.get("/api/users/a%00b", headers=alice, status=404), 404)
    assert_error(client.get("/api/search", {"q": "hello", "chat_id": "\u0000"}, headers=alice, status=404), 404)
    assert client.get("/api/users", {"after": "a\u0000"}, headers=alice).status_int == 200


def test_a_nul_in_an_upload_caption_or_file_name_is_replaced_or_removed(client, people, chat):
    alice = people["alice"]
    caption = form(client, alice, chat["id"], [("file", "r.pdf", PDF, "application/pdf")], content="a\x00b")
    assert caption.json["data"]["message"]["content"] == f"a{MARK}b"
    named = form(client, alice, chat["id"], [("file", "r\x00.pdf", PDF, "application/pdf")], status=(201, 400))
    if named.status_int == 201:
        assert "\x00" not in named.json["data"]["name"]
