"""A NUL character never reaches the store.

PostgreSQL's text cannot hold one: a NUL in a message once stored the row, then failed the
event and answered 500 (a retry duplicated the message). Every backend now refuses it the same
way, wherever it comes from: a JSON body, the path, the query string or an upload's fields.
"""

import pytest
from conftest import assert_error
from test_media import PDF, chat, form, people  # noqa: F401  (fixtures)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/messages", {"content": "a\u0000b"}),
        ("/api/chats/group", {"name": "a\u0000b"}),
        ("/api/auth/register", {"username": "zed", "password": "p" * 10, "email": "z\u0000@example.com"}),
        ("/api/messages", {"content": "fine", "recipient_id": "\u0000"}),
    ],
)
def test_a_nul_in_a_json_body_is_400_on_every_backend(client, people, path, body):
    answer = client.post_json(path, body, headers=people["alice"].headers, status=400)
    assert_error(answer, 400)


def test_a_nul_in_a_chat_message_or_a_rename_is_400(client, people, chat):
    alice = people["alice"].headers
    said = client.post_json(f"/api/chats/{chat['id']}/messages", {"content": "x\u0000"}, headers=alice, status=400)
    assert_error(said, 400, "NUL")
    renamed = client.patch_json(f"/api/chats/{chat['id']}", {"name": "\u0000"}, headers=alice, status=400)
    assert_error(renamed, 400, "NUL")
    history = client.get(f"/api/chats/{chat['id']}/messages", headers=alice).json["messages"]
    assert all("\u0000" not in message["content"] for message in history if message["content"])


def test_a_nul_in_the_path_or_the_query_is_refused_not_a_500(client, people, chat):
    alice = people["alice"].headers
    assert_error(client.get("/api/chats/%00", headers=alice, status=404), 404)
    assert_error(client.get("/api/users/a%00b", headers=alice, status=404), 404)
    assert_error(client.get("/api/search", {"q": "hello", "chat_id": "\u0000"}, headers=alice, status=400), 400)


def test_a_nul_in_an_upload_caption_or_file_name_is_refused_or_removed(client, people, chat):
    alice = people["alice"]
    caption = form(client, alice, chat["id"], [("file", "r.pdf", PDF, "application/pdf")], status=400, content="a\x00b")
    assert_error(caption, 400)
    named = form(client, alice, chat["id"], [("file", "r\x00.pdf", PDF, "application/pdf")], status=(201, 400))
    if named.status_int == 201:
        assert "\x00" not in named.json["data"]["name"]
