"""Image bombs: small files that would decode to hundreds of megabytes.

A 7000x7000 RGBA PNG of one colour compresses to about 200 kB and decodes to
196 MB (twice that while being shrunk). These tests send such files to a real
``oxc serve`` in a subprocess, ten at once, while sampling the server's
resident memory and asking ``/api/health`` all along; and, in process, check
that a JPEG is decoded reduced while a format that cannot be is refused a
thumbnail over the memory budget, its file kept all the same.
"""

import http.client
import io
import json
import struct
import threading
import time
import zlib

import pytest
from conftest import assert_error
from server import Server

pytest.importorskip("PIL", reason="thumbnails need Pillow (the media extra)")
from PIL import Image, ImageFile  # noqa: E402

MB = 1024 * 1024
#: The RSS the server must stay under whatever arrives (the issue's figure).
RSS_LIMIT = 400 * MB


def uniform_png(width, height, alpha=True):
    """A valid PNG of one colour, compressed row by row (deflate's ~1000:1 on repeated bytes)."""
    pixel = bytes([200, 30, 30, 128] if alpha else [200, 30, 30])
    row = b"\x00" + pixel * width
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def rss(pid):
    """The resident memory of process ``pid`` in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler(threading.Thread):
    """Reads a process's RSS every few milliseconds until stopped; keeps the peak."""

    def __init__(self, pid, every=0.005):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.samples = pid, every, 0, 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self.samples += 1
            time.sleep(self.every)


class Health(threading.Thread):
    """Asks ``/api/health`` in a loop (from 127.0.0.2, another client) and keeps every latency."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.latencies, self.failures = port, [], []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            started = time.monotonic()
            try:
                connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=10, source_address=("127.0.0.2", 0)
                )
                connection.request("GET", "/api/health")
                status = connection.getresponse().status
                connection.close()
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            self.latencies.append(time.monotonic() - started)
            if status != 200:
                self.failures.append(status)
            time.sleep(0.02)


def upload(port, token, chat_id, data, name, answers):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST",
            f"/api/chats/{chat_id}/attachments?name={name}",
            body=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
        )
        response = connection.getresponse()
        answers.append((response.status, json.loads(response.read())))
    except OSError as exc:
        answers.append((None, repr(exc)))
    finally:
        connection.close()


def attack(server, token, chat_id, files):
    """Send every file at once; returns (answers, peak RSS, health latencies, health failures)."""
    sampler, health = Sampler(server.process.pid), Health(server.port)
    sampler.start()
    health.start()
    answers = []
    senders = [
        threading.Thread(target=upload, args=(server.port, token, chat_id, data, f"bomb{n}.png", answers))
        for n, data in enumerate(files)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)
    time.sleep(0.2)  # memory freed late would still be seen
    sampler.done.set()
    health.done.set()
    sampler.join()
    health.join()
    return answers, sampler.peak, health.latencies, health.failures


def test_ten_image_bombs_at_once_keep_the_server_small_and_answering(tmp_path):
    bomb = uniform_png(7000, 7000)
    assert len(bomb) < 256_000  # the attack is cheap: ~200 kB that decode to 196 MB
    server = Server(tmp_path / "data", LOG_LEVEL="WARNING")
    try:
        token = server.user("mallory")["access_token"]
        chat = server.client(tokens={"access_token": token}).create_group("bombs")
        before = rss(server.process.pid)
        answers, peak, latencies, failures = attack(server, token, chat["id"], [bomb] * 10)
        latencies.sort()
        print(
            f"\nten 7000x7000 RGBA PNG bombs: RSS {before / MB:.0f} MB before, peak {peak / MB:.0f} MB; "
            f"/api/health {len(latencies)} answers, median {1000 * latencies[len(latencies) // 2]:.1f} ms, "
            f"max {1000 * latencies[-1]:.1f} ms"
        )
        assert len(answers) == 10
        assert all(status is not None and status < 500 for status, _ in answers), answers
        assert peak < RSS_LIMIT, f"peak RSS {peak / MB:.0f} MB"
        assert not failures and latencies and latencies[-1] < 1.0, (failures, latencies[-5:])
        for status, body in answers:
            assert status == 201
            thumbnail = body["data"]["thumbnail"]
            assert thumbnail["status"] == "none" and "memory" in thumbnail["reason"], thumbnail
    finally:
        assert server.stop() == 0


def test_ten_images_just_within_the_budget_are_decoded_a_few_at_a_time(tmp_path):
    # 4000x4000 RGBA: 64 MB decoded, 128 MB while shrunk (the budget is 128 MiB). Decoded all at
    # once they would take 1.3 GB; two at a time (THUMBNAIL_CONCURRENCY) take about 260 MB.
    edge = uniform_png(4000, 4000)
    server = Server(tmp_path / "data", LOG_LEVEL="WARNING")
    try:
        token = server.user("mallory")["access_token"]
        chat = server.client(tokens={"access_token": token}).create_group("edge")
        answers, peak, latencies, failures = attack(server, token, chat["id"], [edge] * 10)
        latencies.sort()
        reasons = [body["data"]["thumbnail"]["reason"] for _, body in answers]
        print(
            f"\nten 4000x4000 RGBA PNGs: peak RSS {peak / MB:.0f} MB, {reasons.count(None)} thumbnails made; "
            f"/api/health {len(latencies)} answers, max {1000 * latencies[-1]:.1f} ms"
        )
        assert [status for status, _ in answers] == [201] * 10, answers
        assert peak < RSS_LIMIT, f"peak RSS {peak / MB:.0f} MB"
        assert not failures and latencies and latencies[-1] < 1.0, (failures, latencies[-5:])
        assert reasons.count(None) >= 2  # the slots work; the rest are made or said to be busy
        assert all(reason is None or "busy" in reason for reason in reasons), reasons
    finally:
        assert server.stop() == 0


# -- in process -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpegs():
    """6000x6000 JPEGs: decoded whole they take 144 MB, more than a thumbnail's 128 MiB."""
    made = {}
    for name, options in (("baseline", {}), ("progressive", {"progressive": True, "subsampling": 0})):
        out = io.BytesIO()
        Image.new("RGB", (6000, 6000), "navy").save(out, "JPEG", quality=50, **options)
        made[name] = out.getvalue()
    return made


@pytest.fixture
def alice_chat(client):
    alice = client.user("alice")
    chat = client.post_json("/api/chats/group", {"name": "pictures", "members": []}, headers=alice.headers)
    return alice, chat.json["data"]


def attach(client, user, chat, data, content_type, status=201):
    return client.post(
        f"/api/chats/{chat['id']}/attachments?name=picture",
        data,
        status=status,
        headers=dict(user.headers, **{"Content-Type": content_type}),
    ).json["data"]


def test_a_large_jpeg_is_decoded_reduced_and_gets_its_thumbnail(client, alice_chat, big_jpegs, monkeypatch):
    decoded = []
    prepare = ImageFile.ImageFile.load_prepare

    def spy(image):
        decoded.append(image.size)
        return prepare(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", spy)
    alice, chat = alice_chat
    attachment = attach(client, alice, chat, big_jpegs["baseline"], "image/jpeg")
    assert (attachment["width"], attachment["height"]) == (6000, 6000)
    assert attachment["thumbnail"]["status"] == "ready", attachment["thumbnail"]
    assert decoded == [(750, 750)]  # libjpeg scaled by 1/8 while decoding: 2.25 MB, not 144


def test_a_progressive_jpeg_over_the_budget_is_kept_without_a_thumbnail(client, alice_chat, big_jpegs):
    # A progressive JPEG keeps every coefficient of the whole image (6 bytes a pixel here: 216 MB, 208 MiB)
    # however reduced its decoding.
    alice, chat = alice_chat
    attachment = attach(client, alice, chat, big_jpegs["progressive"], "image/jpeg")
    assert attachment["thumbnail"]["status"] == "none" and "208 MB of memory" in attachment["thumbnail"]["reason"]
    answer = client.get(f"/api/attachments/{attachment['id']}/content", headers=alice.headers)
    assert answer.body == big_jpegs["progressive"]
    answer = client.get(f"/api/attachments/{attachment['id']}/thumbnail", headers=alice.headers, status=404)
    assert_error(answer, 404, "memory")


def test_a_png_bomb_is_kept_without_being_decoded(client, alice_chat, monkeypatch):
    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", lambda image: pytest.fail("the bomb was decoded"))
    alice, chat = alice_chat
    bomb = uniform_png(7000, 7000)
    attachment = attach(client, alice, chat, bomb, "image/png")
    assert (attachment["width"], attachment["height"], attachment["size"]) == (7000, 7000, len(bomb))
    assert attachment["thumbnail"]["status"] == "none" and "memory" in attachment["thumbnail"]["reason"]


def test_an_upload_that_finds_every_thumbnail_slot_busy_is_kept_without_one(make_client):
    client = make_client(thumbnail_concurrency=1)
    alice = client.user("alice")
    chat = client.post_json("/api/chats/group", {"name": "busy", "members": []}, headers=alice.headers).json["data"]
    thumbnails = client.wsgi.core.ctx.thumbnails
    thumbnails.wait = 0.05
    assert thumbnails._slots.acquire(timeout=1)  # another upload's decode holds the only slot
    try:
        started = time.monotonic()
        attachment = attach(client, alice, chat, uniform_png(64, 48), "image/png")
        assert time.monotonic() - started < 2
        assert attachment["thumbnail"]["status"] == "none" and "busy" in attachment["thumbnail"]["reason"]
    finally:
        thumbnails._slots.release()
    assert attach(client, alice, chat, uniform_png(64, 40), "image/png")["thumbnail"]["status"] == "ready"


def test_the_thumbnail_is_turned_by_the_exif_orientation(client, alice_chat):
    alice, chat = alice_chat
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show the picture rotated 90 degrees clockwise
    out = io.BytesIO()
    Image.new("RGB", (640, 320), "navy").save(out, "JPEG", exif=exif.tobytes())
    attachment = attach(client, alice, chat, out.getvalue(), "image/jpeg")
    assert (attachment["thumbnail"]["width"], attachment["thumbnail"]["height"]) == (160, 320)
    answer = client.get(f"/api/attachments/{attachment['id']}/thumbnail", headers=alice.headers)
    assert Image.open(io.BytesIO(answer.body)).size == (160, 320)
