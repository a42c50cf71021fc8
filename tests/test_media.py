"""Attachments: upload, sniffing, limits, download with Range and ETag, thumbnails, deletion.

Over HTTP through webtest (the app wrapped in wsgiref's validator), plus the
multipart parser and the upload body limit on their own, and one real
waitress server for streaming through ``wsgi.file_wrapper``.
"""

import hashlib
import http.client
import io
import os
import random
import struct
import sys
import zlib
from wsgiref.validate import validator

import pytest
from conftest import assert_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server import Server
from webtest import TestApp

from handlers import media
from handlers.http import download, multipart
from handlers.services import thumbnails
from middleware import BodyLimit

PDF = b"%PDF-1.4\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 20 + b"%%EOF\n"


def png(width=40, height=30, alpha=False):
    """A real PNG, made with the standard library."""
    pixel = bytes([200, 30, 30, 128] if alpha else [200, 30, 30])
    rows = b"".join(b"\x00" + pixel * width for _ in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def jpeg(width=64, height=48):
    image_module = pytest.importorskip("PIL.Image", reason="making a JPEG needs Pillow (the media extra)")
    out = io.BytesIO()
    image_module.new("RGB", (width, height), "navy").save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def people(client):
    return {name: client.user(name) for name in ("alice", "bob", "carol", "dave")}


@pytest.fixture
def chat(client, people):
    """A group owned by Alice with Bob and Carol; Dave is outside."""
    body = {"name": "media", "members": [people["bob"].id, people["carol"].id]}
    return client.post_json("/api/chats/group", body, headers=people["alice"].headers).json["data"]


def upload(client, user, chat_id, data, content_type="application/octet-stream", status=201, **query):
    headers = dict(user.headers, **{"Content-Type": content_type})
    url = f"/api/chats/{chat_id}/attachments"
    return client.post(
        url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""),
        data,
        headers=headers,
        status=status,
    )


def form(client, user, chat_id, files=(), status=201, query="", **fields):
    return client.post(
        f"/api/chats/{chat_id}/attachments{query}",
        params=fields,
        upload_files=list(files),
        headers=user.headers,
        status=status,
    )


def blob_files(tmp_path):
    root = tmp_path / "data" / "blobs"
    return sorted(name for _, _, names in os.walk(root) for name in names)


# -- uploading ---------------------------------------------------------------------


def test_a_raw_upload_is_stored_with_its_metadata(client, people, chat, tmp_path):
    data = png(40, 30)
    answer = upload(client, people["alice"], chat["id"], data, "image/png", name="red.png")
    assert answer.json["message"] == "Attachment uploaded"
    shown = answer.json["data"]
    assert shown["chat_id"] == chat["id"] and shown["uploader_id"] == people["alice"].id
    assert (shown["name"], shown["size"], shown["content_type"], shown["kind"]) == (
        "red.png",
        len(data),
        "image/png",
        "image",
    )
    assert (shown["width"], shown["height"]) == (40, 30) and shown["message_id"] is None
    assert shown["sha256"] == hashlib.sha256(data).hexdigest() and "message" not in shown
    assert shown["sha256"] in blob_files(tmp_path)
    fetched = client.get(f"/api/attachments/{shown['id']}", headers=people["bob"].headers).json["data"]
    assert fetched == shown


def test_a_multipart_upload_with_a_caption_also_sends_the_message(client, people, chat):
    answer = form(
        client, people["alice"], chat["id"], [("file", "report.pdf", PDF, "application/pdf")], content="the report @bob"
    ).json["data"]
    assert answer["kind"] == "document" and answer["name"] == "report.pdf"
    message = answer["message"]
    assert message["content"] == "the report @bob" and message["attachment"]["id"] == answer["id"]
    assert message["mentions"] == [{"user_id": people["bob"].id, "username": "bob"}]
    assert answer["message_id"] == message["id"]
    history = client.get(f"/api/chats/{chat['id']}/messages", headers=people["bob"].headers).json["messages"]
    assert history[-1]["attachment"]["name"] == "report.pdf"


def test_send_1_sends_an_attachment_without_a_caption(client, people, chat):
    answer = upload(client, people["alice"], chat["id"], PDF, "application/pdf", send=1).json["data"]
    assert answer["message"]["content"] is None and answer["message"]["attachment"]["id"] == answer["id"]
    form_answer = form(
        client, people["alice"], chat["id"], [("file", "a.pdf", PDF, "application/pdf")], send="true"
    ).json["data"]
    assert form_answer["message"]["content"] is None


def test_a_bad_send_in_the_query_is_refused_before_anything_is_stored_even_with_a_good_form_field(
    client, people, chat, tmp_path
):
    answer = form(
        client,
        people["alice"],
        chat["id"],
        [("file", "a.pdf", PDF, "application/pdf")],
        status=400,
        query="?send=4.38e-154",
        send="1",
    )
    assert_error(answer, 400, "'send'")
    assert_error(
        upload(client, people["alice"], chat["id"], PDF, "application/pdf", status=400, send="maybe"), 400, "'send'"
    )
    assert blob_files(tmp_path) == []


def test_an_uploaded_attachment_is_sent_later_by_id_once_only(client, people, chat):
    alice = people["alice"]
    attachment = upload(client, alice, chat["id"], PDF, "application/pdf").json["data"]
    url = f"/api/chats/{chat['id']}/messages"
    message = client.post_json(url, {"attachment_id": attachment["id"]}, headers=alice.headers).json["data"]
    assert message["content"] is None and message["attachment"]["message_id"] == message["id"]
    again = client.post_json(
        url, {"attachment_id": attachment["id"], "content": "again"}, headers=alice.headers, status=400
    )
    assert_error(again, 400, "already sent")
    assert (
        client.get(f"/api/attachments/{attachment['id']}", headers=alice.headers).json["data"]["message_id"]
        == message["id"]
    )


def test_an_attachment_of_another_chat_or_none_at_all_cannot_be_sent(client, people, chat):
    alice, bob = people["alice"], people["bob"]
    other = client.post_json("/api/chats/direct", {"user_id": bob.id}, headers=alice.headers).json["data"]
    elsewhere = upload(client, alice, other["id"], PDF, "application/pdf").json["data"]
    url = f"/api/chats/{chat['id']}/messages"
    for attachment_id in (elsewhere["id"], "no-such-attachment"):
        response = client.post_json(url, {"attachment_id": attachment_id}, headers=alice.headers, status=400)
        assert_error(response, 400, "not an attachment of this chat")


def test_a_message_with_an_attachment_is_announced_like_any_other(client, people, chat):
    bob = people["bob"]
    cursor = client.get("/api/events", {"timeout": 0}, headers=bob.headers).json["next"]
    sent = upload(client, people["alice"], chat["id"], PDF, "application/pdf", content="minutes").json["data"]
    events = client.get("/api/events", {"since": cursor, "timeout": 0}, headers=bob.headers).json["events"]
    created = [event for event in events if event["type"] == "chat.message.created"]
    assert [event["data"]["attachment"]["id"] for event in created] == [sent["id"]]


def test_identical_files_share_one_blob_until_the_last_is_deleted(client, people, chat, tmp_path):
    alice = people["alice"]
    first = upload(client, alice, chat["id"], PDF, "application/pdf").json["data"]
    second = upload(client, alice, chat["id"], PDF, "application/pdf").json["data"]
    assert first["sha256"] == second["sha256"] and blob_files(tmp_path) == [first["sha256"]]
    client.delete(f"/api/attachments/{first['id']}", headers=alice.headers)
    assert blob_files(tmp_path) == [first["sha256"]]
    client.delete(f"/api/attachments/{second['id']}", headers=alice.headers)
    assert blob_files(tmp_path) == []


def test_a_users_file_name_never_becomes_a_path(client, people, chat, tmp_path):
    answer = upload(client, people["alice"], chat["id"], PDF, "application/pdf", name="..%2F..%2Fetc%2Fpasswd").json[
        "data"
    ]
    assert answer["name"] == "passwd"
    stored = [os.path.join(root, name) for root, _, names in os.walk(tmp_path) for name in names]
    assert not [path for path in stored if "passwd" in path]
    nameless = upload(client, people["alice"], chat["id"], PDF, "application/pdf", name="..").json["data"]
    assert nameless["name"] == "attachment.pdf"


@pytest.mark.parametrize(
    "declared, data, kept",
    [
        ("application/octet-stream", png(), "image/png"),
        ("application/octet-stream", b"just some words\n", "text/plain"),
        ("application/octet-stream", bytes(range(256)) * 4, "application/octet-stream"),
        ("image/jpg", b"\xff\xd8\xff\xe0" + bytes(100), "image/jpeg"),
        ("audio/webm", b"\x1a\x45\xdf\xa3" + bytes(100), "audio/webm"),
        ("audio/mpeg", b"ID3\x04" + bytes(100), "audio/mpeg"),
        ("audio/ogg", b"OggS" + bytes(100), "audio/ogg"),
        ("audio/wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(100), "audio/wav"),
        ("video/mp4", bytes(4) + b"ftypisom" + bytes(100), "video/mp4"),
        ("image/webp", b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(100), "image/webp"),
        ("image/gif", b"GIF89a\x02\x00\x03\x00" + bytes(100), "image/gif"),
        ("application/zip", b"PK\x03\x04" + bytes(100), "application/zip"),
    ],
)
def test_the_kept_type_agrees_with_the_bytes(client, people, chat, declared, data, kept):
    answer = upload(client, people["alice"], chat["id"], data, declared).json["data"]
    assert answer["content_type"] == kept


# -- refusals ------------------------------------------------------------------------


def test_every_attachment_endpoint_needs_a_token(client, people, chat):
    attachment = upload(client, people["alice"], chat["id"], PDF, "application/pdf").json["data"]
    base = f"/api/attachments/{attachment['id']}"
    for method, url in (
        ("post", f"/api/chats/{chat['id']}/attachments"),
        ("get", base),
        ("delete", base),
        ("get", f"{base}/content"),
        ("get", f"{base}/thumbnail"),
    ):
        assert_error(getattr(client, method)(url, status=401), 401)


def test_outsiders_get_403_and_unknown_ids_404(client, people, chat):
    attachment = upload(client, people["alice"], chat["id"], png(), "image/png").json["data"]
    dave = people["dave"]
    assert_error(upload(client, dave, chat["id"], PDF, "application/pdf", status=403), 403, "not a member")
    assert_error(upload(client, dave, "no-such-chat", PDF, "application/pdf", status=404), 404)
    base = f"/api/attachments/{attachment['id']}"
    for method, url in (("get", base), ("delete", base), ("get", f"{base}/content"), ("get", f"{base}/thumbnail")):
        assert_error(getattr(client, method)(url, headers=dave.headers, status=403), 403, "not a member")
        unknown = url.replace(attachment["id"], "no-such-attachment")
        assert_error(getattr(client, method)(unknown, headers=dave.headers, status=404), 404)


def test_a_removed_member_loses_access_at_once(client, people, chat):
    alice, bob = people["alice"], people["bob"]
    attachment = upload(client, alice, chat["id"], png(), "image/png").json["data"]
    base = f"/api/attachments/{attachment['id']}"
    assert client.get(f"{base}/content", headers=bob.headers).body == png()
    client.delete(f"/api/chats/{chat['id']}/members/{bob.id}", headers=alice.headers)
    for url in (base, f"{base}/content", f"{base}/thumbnail"):
        assert_error(client.get(url, headers=bob.headers, status=403), 403)


def test_files_over_media_max_bytes_are_413(make_client):
    client = make_client(media_max_bytes=2048)
    alice = client.user("alice")
    chat = client.post_json("/api/chats/group", {"name": "small"}, headers=alice.headers).json["data"]
    big = b"x" * 3000
    assert_error(upload(client, alice, chat["id"], big, "text/plain", status=413), 413, "MEDIA_MAX_BYTES")
    multipart_answer = form(client, alice, chat["id"], [("file", "big.txt", big, "text/plain")], status=413)
    assert_error(multipart_answer, 413, "MEDIA_MAX_BYTES")
    # Beyond the limit and the multipart allowance, the body limit refuses before anything is read.
    huge = client.post(
        f"/api/chats/{chat['id']}/attachments",
        b"x" * (2048 + media.UPLOAD_OVERHEAD + 1),
        headers=dict(alice.headers, **{"Content-Type": "text/plain"}),
        status=413,
    )
    assert_error(huge, 413, "Request body too large")
    assert upload(client, alice, chat["id"], b"x" * 2048, "text/plain").json["data"]["size"] == 2048


def test_disallowed_types_are_415(make_client):
    client = make_client(media_types=("image/png", "application/pdf"))
    alice = client.user("alice")
    chat = client.post_json("/api/chats/group", {"name": "strict"}, headers=alice.headers).json["data"]
    assert_error(upload(client, alice, chat["id"], b"hello", "text/plain", status=415), 415, "not accepted")
    # Declared generically, the sniffed type must be allowed too.
    assert_error(upload(client, alice, chat["id"], b"hello", status=415), 415, "text/plain")
    form_answer = form(
        client, alice, chat["id"], [("file", "x.zip", b"PK\x03\x04" + bytes(10), "application/zip")], status=415
    )
    assert_error(form_answer, 415, "application/zip")
    assert upload(client, alice, chat["id"], png(), "image/png").json["data"]["content_type"] == "image/png"


@pytest.mark.parametrize(
    "declared, data, sniffed",
    [
        ("image/png", PDF, "application/pdf"),
        ("image/jpeg", png(), "image/png"),
        ("image/png", bytes(range(256)), "unrecognised binary data"),
        ("text/plain", b"\x00\x01\x02binary", "unrecognised binary data"),
        ("application/pdf", b"a plain text file", "text/plain"),
    ],
)
def test_bytes_that_contradict_the_declared_type_are_415_naming_both(client, people, chat, declared, data, sniffed):
    response = upload(client, people["alice"], chat["id"], data, declared, status=415)
    assert_error(response, 415, f"declared {declared} but its bytes look like {sniffed}")


@pytest.mark.parametrize(
    "query, message",
    [
        ({"name": "x" * 256}, "name"),
        ({"content": "   "}, "content"),
        ({"content": "x" * 1001}, "content"),
        ({"send": "yes"}, "send"),
    ],
)
def test_bad_upload_parameters_are_400_and_keep_nothing(client, people, chat, tmp_path, query, message):
    response = upload(client, people["alice"], chat["id"], PDF, "application/pdf", status=400, **query)
    assert_error(response, 400, message)
    assert blob_files(tmp_path) == []


def test_bad_multipart_bodies_are_400(client, people, chat, tmp_path):
    alice, url = people["alice"], f"/api/chats/{chat['id']}/attachments"

    def post(body, content_type="multipart/form-data; boundary=XyZ"):
        return client.post(url, body, headers=dict(alice.headers, **{"Content-Type": content_type}), status=400)

    assert_error(post(b"", "multipart/form-data"), 400, "boundary")
    assert_error(post(b"no delimiter at all"), 400, "no boundary delimiter")
    assert_error(post(b'--XyZ\r\nContent-Disposition: form-data; name="file"\r\n\r\nunfinished'), 400, "closing")
    assert_error(post(b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--"), 400, "no name")
    assert_error(
        post(b'--XyZ\r\nContent-Disposition: form-data; name="content"\r\n\r\nhi\r\n--XyZ--'),
        400,
        "Missing required field: file",
    )
    assert_error(
        form(
            client,
            alice,
            chat["id"],
            [("file", "a.pdf", PDF, "application/pdf"), ("file", "b.pdf", PDF, "application/pdf")],
            status=400,
        ),
        400,
        "one file",
    )
    assert_error(
        form(client, alice, chat["id"], [("file", "a.pdf", PDF, "application/pdf")], content=" ", status=400),
        400,
        "content",
    )
    assert blob_files(tmp_path) == []


def test_an_empty_file_is_400(client, people, chat):
    assert_error(upload(client, people["alice"], chat["id"], b"", "text/plain", status=400), 400, "empty")


# -- downloading -----------------------------------------------------------------------


@pytest.fixture
def movie(client, people, chat):
    data = bytes(4) + b"ftypisom" + bytes(range(256)) * 40
    answer = upload(client, people["alice"], chat["id"], data, "video/mp4", name="clip \N{SNOWMAN}.mp4")
    return data, answer.json["data"]


def test_a_download_carries_type_length_disposition_and_etag(client, people, movie):
    data, attachment = movie
    answer = client.get(f"/api/attachments/{attachment['id']}/content", headers=people["bob"].headers)
    assert answer.body == data
    assert answer.headers["Content-Type"] == "video/mp4"
    assert answer.headers["Content-Length"] == str(len(data))
    assert answer.headers["ETag"] == f'"{attachment["sha256"]}"'
    assert answer.headers["Accept-Ranges"] == "bytes"
    assert (
        answer.headers["Content-Disposition"]
        == "inline; filename=\"clip _.mp4\"; filename*=UTF-8''clip%20%E2%98%83.mp4"
    )
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in answer.headers["Content-Security-Policy"]


def test_documents_are_downloaded_as_attachments_not_shown_inline(client, people, chat):
    attachment = upload(client, people["alice"], chat["id"], b"<html>hi</html>", "text/plain", name="a.txt")
    answer = client.get(f"/api/attachments/{attachment.json['data']['id']}/content", headers=people["bob"].headers)
    assert answer.headers["Content-Disposition"].startswith("attachment;")


def test_if_none_match_answers_304_without_a_body(client, people, movie):
    _, attachment = movie
    url, etag = f"/api/attachments/{attachment['id']}/content", f'"{attachment["sha256"]}"'
    for value in (etag, f'"other", W/{etag}', "*"):
        answer = client.get(url, headers=dict(people["bob"].headers, **{"If-None-Match": value}), status=304)
        assert answer.body == b"" and answer.headers["ETag"] == etag
    assert client.get(url, headers=dict(people["bob"].headers, **{"If-None-Match": '"other"'})).status_int == 200


@pytest.mark.parametrize(
    "header, first, last",
    [
        ("bytes=0-9", 0, 9),
        ("bytes=100-", 100, None),
        ("bytes=-16", -16, None),
        ("bytes=10-99999", 10, None),
        ("bytes = 5 - 6", 5, 6),
    ],
)
def test_a_single_byte_range_answers_206(client, people, movie, header, first, last):
    data, attachment = movie
    answer = client.get(
        f"/api/attachments/{attachment['id']}/content", headers=dict(people["bob"].headers, Range=header), status=206
    )
    expected = data[first:] if last is None else data[first : last + 1]
    start = first if first >= 0 else len(data) + first
    assert answer.body == expected
    assert answer.headers["Content-Range"] == f"bytes {start}-{start + len(expected) - 1}/{len(data)}"
    assert answer.headers["Content-Length"] == str(len(expected))


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=9-2", "items=0-1", "bytes=", "bytes=x-y"])
def test_ranges_that_are_malformed_or_several_get_the_whole_file(client, people, movie, header):
    data, attachment = movie
    answer = client.get(
        f"/api/attachments/{attachment['id']}/content", headers=dict(people["bob"].headers, Range=header), status=200
    )
    assert answer.body == data


@pytest.mark.parametrize("header", ["bytes=999999-", "bytes=-0"])
def test_an_unsatisfiable_range_is_416(client, people, movie, header):
    data, attachment = movie
    answer = client.get(
        f"/api/attachments/{attachment['id']}/content", headers=dict(people["bob"].headers, Range=header), status=416
    )
    assert_error(answer, 416)
    assert answer.headers["Content-Range"] == f"bytes */{len(data)}"


def test_if_range_honours_the_range_only_for_the_current_etag(client, people, movie):
    data, attachment = movie
    url, headers = f"/api/attachments/{attachment['id']}/content", dict(people["bob"].headers, Range="bytes=0-3")
    current = client.get(url, headers=dict(headers, **{"If-Range": f'"{attachment["sha256"]}"'}), status=206)
    assert current.body == data[:4]
    stale = client.get(url, headers=dict(headers, **{"If-Range": '"older"'}), status=200)
    assert stale.body == data


def test_head_answers_the_headers_without_the_bytes(client, people, movie):
    data, attachment = movie
    answer = client.head(f"/api/attachments/{attachment['id']}/content", headers=people["bob"].headers)
    assert answer.body == b"" and answer.headers["Content-Length"] == str(len(data))


def test_the_file_goes_out_through_the_servers_file_wrapper(client, people, movie):
    data, attachment = movie
    used = []

    class FileWrapper:
        def __init__(self, file, block_size):
            used.append(block_size)
            self.file, self.block_size = file, block_size

        def __iter__(self):
            return iter(lambda: self.file.read(self.block_size), b"")

        def close(self):
            self.file.close()

    answer = client.get(
        f"/api/attachments/{attachment['id']}/content",
        headers=people["bob"].headers,
        extra_environ={"wsgi.file_wrapper": FileWrapper},
    )
    assert answer.body == data and used == [download.BLOCK]


# -- thumbnails ---------------------------------------------------------------------------


def test_images_get_a_thumbnail_no_larger_than_320_pixels(client, people, chat):
    pytest.importorskip("PIL", reason="thumbnails need Pillow (the media extra)")
    from PIL import Image

    attachment = upload(client, people["alice"], chat["id"], png(800, 400), "image/png").json["data"]
    thumbnail = attachment["thumbnail"]
    assert thumbnail == {"status": "ready", "reason": None, "content_type": "image/jpeg", "width": 320, "height": 160}
    answer = client.get(f"/api/attachments/{attachment['id']}/thumbnail", headers=people["bob"].headers)
    assert answer.headers["Content-Type"] == "image/jpeg" and answer.headers["ETag"].startswith('"')
    assert Image.open(io.BytesIO(answer.body)).size == (320, 160)
    photo = upload(client, people["alice"], chat["id"], jpeg(64, 48), "image/jpeg").json["data"]
    assert (photo["width"], photo["height"], photo["thumbnail"]["status"]) == (64, 48, "ready")


def test_transparent_images_keep_their_transparency_as_png(client, people, chat):
    pytest.importorskip("PIL", reason="thumbnails need Pillow (the media extra)")
    attachment = upload(client, people["alice"], chat["id"], png(10, 10, alpha=True), "image/png").json["data"]
    assert attachment["thumbnail"]["content_type"] == "image/png"


def test_other_kinds_say_clearly_that_they_have_no_thumbnail(client, people, chat):
    attachment = upload(client, people["alice"], chat["id"], PDF, "application/pdf").json["data"]
    assert attachment["thumbnail"] == {
        "status": "none",
        "reason": "Only images have thumbnails",
        "content_type": None,
        "width": None,
        "height": None,
    }
    answer = client.get(f"/api/attachments/{attachment['id']}/thumbnail", headers=people["bob"].headers, status=404)
    assert_error(answer, 404, "Only images have thumbnails")


def test_an_undecodable_image_has_no_thumbnail_and_says_why(client, people, chat):
    pytest.importorskip("PIL", reason="thumbnails need Pillow (the media extra)")
    broken = png()[:40]
    attachment = upload(client, people["alice"], chat["id"], broken, "image/png").json["data"]
    assert attachment["thumbnail"]["status"] == "none" and "decoded" in attachment["thumbnail"]["reason"]


def test_without_pillow_the_server_runs_says_so_and_makes_no_thumbnails(make_client, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with caplog.at_level("WARNING", logger="oxc"):
        client = make_client()
    assert any("Pillow is not installed" in record.getMessage() for record in caplog.records)
    alice = client.user("alice")
    chat = client.post_json("/api/chats/group", {"name": "plain"}, headers=alice.headers).json["data"]
    attachment = upload(client, alice, chat["id"], png(), "image/png").json["data"]
    assert (attachment["width"], attachment["height"]) == (40, 30)
    assert attachment["thumbnail"]["status"] == "none" and "Pillow" in attachment["thumbnail"]["reason"]
    assert "pip install 'oxc[media]'" in thumbnails.thumbnail_support()


# -- deleting ------------------------------------------------------------------------------


def test_the_uploader_or_a_moderator_deletes_an_attachment_and_its_bytes_go(client, people, chat, tmp_path):
    alice, bob, carol = people["alice"], people["bob"], people["carol"]
    by_bob = upload(client, bob, chat["id"], PDF, "application/pdf").json["data"]
    refused = client.delete(f"/api/attachments/{by_bob['id']}", headers=carol.headers, status=403)
    assert_error(refused, 403, "uploader")
    client.delete(f"/api/attachments/{by_bob['id']}", headers=alice.headers)  # the owner moderates
    assert_error(client.get(f"/api/attachments/{by_bob['id']}", headers=bob.headers, status=404), 404)
    assert blob_files(tmp_path) == []


def test_deleting_a_message_deletes_its_attachment_and_bytes(client, people, chat, tmp_path):
    alice = people["alice"]
    pytest.importorskip("PIL", reason="the thumbnail's bytes are checked too")
    sent = upload(client, alice, chat["id"], png(), "image/png", content="look").json["data"]
    assert len(blob_files(tmp_path)) == 2  # the image and its thumbnail
    client.delete(f"/api/chats/{chat['id']}/messages/{sent['message_id']}", headers=alice.headers)
    tombstone = client.get(f"/api/chats/{chat['id']}/messages", headers=alice.headers).json["messages"][-1]
    assert tombstone["deleted"] is True and tombstone["attachment"] is None
    assert_error(client.get(f"/api/attachments/{sent['id']}", headers=alice.headers, status=404), 404)
    assert blob_files(tmp_path) == []


def test_deleting_a_sent_attachment_leaves_the_caption_or_a_tombstone(client, people, chat):
    alice, bob = people["alice"], people["bob"]
    captioned = upload(client, alice, chat["id"], PDF, "application/pdf", content="notes").json["data"]
    bare = upload(client, alice, chat["id"], PDF, "application/pdf", send=1).json["data"]
    cursor = client.get("/api/events", {"timeout": 0}, headers=bob.headers).json["next"]
    for attachment in (captioned, bare):
        client.delete(f"/api/attachments/{attachment['id']}", headers=alice.headers)
    history = client.get(f"/api/chats/{chat['id']}/messages", headers=bob.headers).json["messages"]
    messages = {message["id"]: message for message in history}
    kept, gone = messages[captioned["message_id"]], messages[bare["message_id"]]
    assert kept["content"] == "notes" and kept["attachment"] is None and not kept["deleted"]
    assert gone["deleted"] is True
    events = client.get("/api/events", {"since": cursor, "timeout": 0}, headers=bob.headers).json["events"]
    assert [event["type"] for event in events] == ["chat.message.edited", "chat.message.deleted"]


def test_deleting_a_chat_deletes_its_attachments_bytes(client, people, chat, tmp_path):
    upload(client, people["alice"], chat["id"], PDF, "application/pdf")
    client.delete(f"/api/chats/{chat['id']}", headers=people["alice"].headers)
    assert blob_files(tmp_path) == []


# -- the multipart parser and the upload body limit on their own ------------------------------


def encode(parts, boundary=b"b0undary"):
    out = b"preamble to ignore\r\n"
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\nepilogue"


def parse(body, boundary=b"b0undary", chunk=7, **options):
    stream = io.BytesIO(body)
    return [
        (
            part.name,
            part.filename,
            part.text(1 << 20)
            if part.filename is None
            else b"".join(iter(lambda: part.read(random.randint(1, 50)), b"")),
        )
        for part in multipart.Parts(lambda n: stream.read(min(n, chunk)), boundary, **options)
    ]


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=3000), chunk=st.integers(1, 200))
def test_the_parser_returns_every_byte_whatever_the_reads(data, chunk):
    data += b"\r\n--b0undar"  # almost a delimiter, at the very end
    parts = parse(encode([("note", None, b"hi"), ("file", "f.bin", data)]), chunk=chunk)
    assert parts == [("note", None, "hi"), ("file", "f.bin", data)]


def test_the_parser_reads_rfc_8187_names_and_werkzeugs_empty_fields():
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"; '
        b"filename*=UTF-8''%C3%A9t%C3%A9.txt\r\n\r\nsummer\r\n"
        b'--b\r\nContent-Disposition: form-data; name="content"\r\n\r\n--b--\r\n'
    )
    assert parse(body, b"b") == [("file", "été.txt", b"summer"), ("content", None, "")]


def test_the_parser_limits_parts_and_header_size():
    with pytest.raises(multipart.MultipartError, match="More than 2 parts"):
        parse(encode([("a", None, b"1")] * 3), max_parts=2)
    long_header = b'--b\r\nContent-Disposition: form-data; name="' + b"a" * 20000 + b'"\r\n\r\nx\r\n--b--'
    with pytest.raises(multipart.MultipartError, match="headers are longer"):
        parse(long_header, b"b")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=600))
def test_no_multipart_body_makes_the_upload_fail_with_500(client, body):
    if not hasattr(client, "fuzz_user"):
        client.fuzz_user = client.user("fuzz")
        client.fuzz_chat = client.post_json("/api/chats/group", {"name": "f"}, headers=client.fuzz_user.headers).json[
            "data"
        ]["id"]
    framed = encode([("file", "x", body)], b"XyZ") if body[:1] == b"\x00" else b"--XyZ\r\n" + body
    headers = dict(client.fuzz_user.headers, **{"Content-Type": "multipart/form-data; boundary=XyZ"})
    answer = client.post(f"/api/chats/{client.fuzz_chat}/attachments", framed, headers=headers, expect_errors=True)
    assert answer.status_int in (201, 400, 413, 415), answer.body


def echo_length(environ, start_response):
    data = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(len(data)).encode()]


def test_the_body_limit_lets_upload_paths_be_larger():
    app = TestApp(validator(BodyLimit(echo_length, 10, larger=((r"/api/chats/[^/]+/attachments", 100),))))
    assert app.post("/api/chats/c1/attachments", b"x" * 100).body == b"100"
    assert (
        app.post("/api/chats/c1/attachments", b"x" * 101, status=413).json["message"]
        == "Request body too large (limit 100 bytes)"
    )
    assert (
        app.post("/api/chats/c1/messages", b"x" * 11, status=413).json["message"]
        == "Request body too large (limit 10 bytes)"
    )
    assert app.post("/api/chats/c1/attachments/extra", b"x" * 11, status=413)  # the pattern matches in full


@pytest.mark.parametrize("larger", [(("/x", 0),), (("/x",),), ((5, 10),), (("/x", True),), ["/x"]])
def test_a_bad_larger_limit_is_refused_when_the_middleware_is_built(larger):
    with pytest.raises(ValueError, match="BodyLimit"):
        BodyLimit(echo_length, 10, larger=larger)


# -- a real server ------------------------------------------------------------------------------


def test_a_real_server_streams_uploads_and_ranges(tmp_path):
    server = Server(tmp_path / "data", MEDIA_MAX_BYTES=8 * 1024 * 1024)
    try:
        token = server.user("alice")["access_token"]
        chat = server.client(tokens={"access_token": token}).create_group("films")
        data = os.urandom(3 * 1024 * 1024)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request(
            "POST",
            f"/api/chats/{chat['id']}/attachments?name=film.bin",
            body=io.BytesIO(data),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(data)),
            },
        )
        response = connection.getresponse()
        attachment = __import__("json").loads(response.read())["data"]
        assert response.status == 201 and attachment["size"] == len(data)
        url = f"/api/attachments/{attachment['id']}/content"
        connection.request("GET", url, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        assert response.status == 200 and response.read() == data
        connection.request("GET", url, headers={"Authorization": f"Bearer {token}", "Range": "bytes=1000000-1000099"})
        response = connection.getresponse()
        assert response.status == 206 and response.read() == data[1000000:1000100]
        assert response.getheader("Content-Range") == f"bytes 1000000-1000099/{len(data)}"
        connection.request(
            "GET", url, headers={"Authorization": f"Bearer {token}", "If-None-Match": f'"{attachment["sha256"]}"'}
        )
        response = connection.getresponse()
        assert response.status == 304 and response.read() == b""
        connection.close()
    finally:
        assert server.stop() == 0
