"""Attachment bytes when things go wrong: a full disk, the free-space reserve, quotas, damaged files.

Through HTTP on both backends where state is involved, plus the blob store
and ``store/diskspace.py`` on their own. A full disk is shown two ways: by
fault injection (``os.write`` fails with ENOSPC, after a short write, for an
upload's temp file only, so the journal is untouched) and, where the machine
allows it (root, Linux), by a real tmpfs of a few MiB mounted as the data
directory. Room for the reserve is faked through the blob store's public
``free`` attribute.
"""

import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import types

import pytest
from conftest import assert_error
from test_media import PDF, blob_files, form, png, upload

from store import DamagedBlob, OutOfSpace, diskspace, open_store
from store.blobs import TEMP_PREFIX, Blobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KiB, MiB = 1024, 1024 * 1024


def binary(size, seed=0):
    """``size`` bytes that sniff as nothing in particular (application/octet-stream), distinct per seed."""
    body = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    return (b"\x00" + body)[:size]


def temp_files(tmp_path):
    return [name for _, _, names in os.walk(tmp_path / "data") for name in names if name.startswith(TEMP_PREFIX)]


def blob_path(tmp_path, digest):
    return tmp_path / "data" / "blobs" / digest[:2] / digest


def flip_bit(path, offset, keep_times=False):
    """Flip one bit of ``path`` at ``offset``; ``keep_times`` restores its times, as silent bit rot would."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))
    times = (before.st_atime_ns, before.st_mtime_ns + (0 if keep_times else 1_000_000_000))
    os.utime(path, ns=times)  # whatever the file system's timestamp granularity


def storage(client, user):
    return client.get("/api/users/me", headers=user.headers).json["data"]["storage"]


@pytest.fixture
def people(client):
    return {name: client.user(name) for name in ("alice", "bob")}


@pytest.fixture
def chat(client, people):
    body = {"name": "files", "members": [people["bob"].id]}
    return client.post_json("/api/chats/group", body, headers=people["alice"].headers).json["data"]


@pytest.fixture
def full_disk(monkeypatch):
    """Writes to upload temp files fail as on a full disk: a short count first, then ENOSPC.

    ``allow`` temp files are written normally first; set ``on`` to False when space returns.
    """
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("telling an upload's temp file by its descriptor needs /proc/self/fd (Linux)")
    real_write = os.write
    state = types.SimpleNamespace(on=True, allow=0, seen=[], refused=0)

    def write(fd, data):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if not state.on or TEMP_PREFIX not in os.path.basename(path):
            return real_write(fd, data)
        if path not in state.seen:
            state.seen.append(path)
        if state.seen.index(path) < state.allow:
            return real_write(fd, data)
        if len(data) > 1 and os.fstat(fd).st_size == 0:
            return real_write(fd, bytes(data[: len(data) // 2]))  # the disk took part of it ...
        state.refused += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ... and then nothing more

    monkeypatch.setattr(os, "write", write)
    return state


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(path, size)`` mounts a fresh tmpfs of ``size`` (e.g. "2m") at ``path``; skips where it cannot."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    mounted = []

    def mount(path, size):
        os.makedirs(path, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        # Lazily: should an app still hold a file there, the mount goes once it lets go.
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ---- free space ------------------------------------------------------------------------------


def test_free_bytes_is_what_statvfs_says_an_unprivileged_writer_may_use(tmp_path):
    stats = os.statvfs(tmp_path)
    assert diskspace.free_bytes(tmp_path) == stats.f_bavail * stats.f_frsize > 0


def test_has_room_keeps_the_reserve_and_a_zero_reserve_checks_nothing():
    def free(path):
        return 1000

    assert diskspace.has_room("/x", 600, needed=400, free=free)
    assert not diskspace.has_room("/x", 600, needed=401, free=free)
    assert diskspace.has_room("/x", 0, needed=10**12, free=lambda path: pytest.fail("no statvfs when off"))


def test_a_put_that_would_eat_into_the_reserve_raises_out_of_space_and_leaves_nothing(tmp_path):
    free = {"bytes": 10_000}
    blobs = Blobs(str(tmp_path / "blobs"), reserve=9_500, free=lambda path: free["bytes"])
    with pytest.raises(OutOfSpace):
        blobs.put_bytes(b"x" * 501)
    assert os.listdir(tmp_path / "blobs") == []
    assert blobs.open(blobs.put_bytes(b"x" * 500)).read() == b"x" * 500  # exactly down to the reserve


def test_enospc_in_the_middle_of_a_put_raises_out_of_space_and_the_next_put_works(tmp_path, full_disk):
    blobs = Blobs(str(tmp_path / "blobs"))
    with pytest.raises(OutOfSpace, match="full"):
        blobs.put_bytes(b"y" * 100_000)
    assert full_disk.refused == 1 and os.listdir(tmp_path / "blobs") == []
    full_disk.on = False
    digest = blobs.put_bytes(b"y" * 100_000)
    with blobs.open(digest) as f:
        assert f.read() == b"y" * 100_000


# ---- uploads on a full disk, over HTTP -------------------------------------------------------


def test_an_upload_on_a_full_disk_is_503_with_retry_after_and_works_once_space_returns(
    client, people, chat, full_disk, tmp_path
):
    alice = people["alice"]
    refused = upload(client, alice, chat["id"], PDF, "application/pdf", status=503)
    assert_error(refused, 503, "disk")
    assert int(refused.headers["Retry-After"]) >= 1
    assert full_disk.refused >= 1 and temp_files(tmp_path) == [] and blob_files(tmp_path) == []
    refused = form(client, alice, chat["id"], [("file", "a.pdf", PDF, "application/pdf")], status=503)
    assert_error(refused, 503, "disk")
    # The store itself still takes writes: only the bytes had no room.
    client.post_json(f"/api/chats/{chat['id']}/messages", {"content": "text still goes"}, headers=alice.headers)
    full_disk.on = False  # space returns; nothing to restart
    stored = upload(client, alice, chat["id"], PDF, "application/pdf").json["data"]
    assert client.get(f"/api/attachments/{stored['id']}/content", headers=alice.headers).body == PDF


def test_a_thumbnail_with_no_room_fails_the_upload_and_takes_the_file_with_it(
    client, people, chat, full_disk, tmp_path
):
    pytest.importorskip("PIL", reason="thumbnails need Pillow")
    full_disk.allow = 1  # the image fits; its thumbnail does not
    refused = upload(client, people["alice"], chat["id"], png(), "image/png", status=503)
    assert_error(refused, 503, "disk")
    assert blob_files(tmp_path) == [] and temp_files(tmp_path) == []
    assert storage(client, people["alice"])["attachment_bytes"] == 0


def test_uploads_stop_before_they_eat_into_the_free_space_reserve(make_client, tmp_path):
    client = make_client(store_free_space_reserve=1 * MiB)
    alice = client.user("alice")
    chat = client.post_json("/api/chats/group", {"name": "g", "members": []}, headers=alice.headers).json["data"]
    blobs = client.wsgi.core.ctx.store.blobs
    assert blobs.reserve == 2 * MiB  # uploads keep twice the journal's reserve free
    free = {"bytes": 2 * MiB + len(PDF) - 1}
    blobs.free = lambda path: free["bytes"]
    refused = upload(client, alice, chat["id"], PDF, "application/pdf", status=503)
    assert_error(refused, 503, "disk")
    assert int(refused.headers["Retry-After"]) >= 1 and temp_files(tmp_path) == []
    client.post_json(
        f"/api/chats/{chat['id']}/messages", {"content": "the journal keeps its room"}, headers=alice.headers
    )
    client.get("/api/health")
    free["bytes"] += 1  # exactly enough
    upload(client, alice, chat["id"], PDF, "application/pdf")


def test_a_real_full_disk_answers_503_and_uploads_work_again_once_files_are_deleted(tmpfs, make_client, tmp_path):
    tmpfs(tmp_path / "data" / "blobs", "1m")
    client = make_client(store_free_space_reserve=0)  # no reserve: the disk itself says no
    alice = client.user("alice")
    chat = client.post_json("/api/chats/group", {"name": "g", "members": []}, headers=alice.headers).json["data"]
    stored, answer = [], None
    for seed in range(8):
        answer = upload(client, alice, chat["id"], binary(300 * KiB, seed), status="*")
        if answer.status_int != 201:
            break
        stored.append(answer.json["data"])
    assert 1 <= len(stored) < 8
    assert_error(answer, 503, "disk")
    assert int(answer.headers["Retry-After"]) >= 1 and temp_files(tmp_path) == []
    upload(client, alice, chat["id"], binary(300 * KiB, 100), status=503)  # still full: still 503, never 500
    client.delete(f"/api/attachments/{stored[0]['id']}", headers=alice.headers)
    again = upload(client, alice, chat["id"], binary(300 * KiB, 101)).json["data"]
    assert client.get(f"/api/attachments/{again['id']}/content", headers=alice.headers).body == binary(300 * KiB, 101)


@pytest.mark.backends("json")
def test_on_a_small_disk_uploads_stop_at_the_reserve_and_the_journal_keeps_working(tmpfs, make_client, tmp_path):
    tmpfs(tmp_path / "data", "4m")
    client = make_client(store_free_space_reserve=512 * KiB)
    alice = client.user("alice")
    chat = client.post_json("/api/chats/group", {"name": "g", "members": []}, headers=alice.headers).json["data"]
    stored, answer = [], None
    for seed in range(20):
        answer = upload(client, alice, chat["id"], binary(300 * KiB, seed), status="*")
        if answer.status_int != 201:
            break
        stored.append(answer.json["data"])
    assert stored and answer.status_int == 503 and temp_files(tmp_path) == []
    assert diskspace.free_bytes(tmp_path / "data") >= 512 * KiB
    for number in range(50):  # messages are still recorded: the reserve was left for them
        client.post_json(f"/api/chats/{chat['id']}/messages", {"content": f"message {number}"}, headers=alice.headers)
    client.get("/api/health")
    for attachment in stored[:2]:
        client.delete(f"/api/attachments/{attachment['id']}", headers=alice.headers)
    upload(client, alice, chat["id"], binary(300 * KiB, 100))


@pytest.mark.backends("postgres")
def test_a_database_out_of_disk_answers_503_not_500_and_recovers(client, people, chat, tmp_path):
    import psycopg

    alice = people["alice"]
    store = client.wsgi.core.ctx.store
    with psycopg.connect(store.url, autocommit=True) as conn:
        # What PostgreSQL raises when it cannot extend a table's file.
        conn.execute(
            "CREATE FUNCTION pretend_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; "
            "END $$"
        )
        conn.execute(
            "CREATE TRIGGER disk_full BEFORE INSERT ON attachments FOR EACH ROW EXECUTE FUNCTION pretend_disk_full()"
        )
        refused = upload(client, alice, chat["id"], PDF, "application/pdf", status=503)
        assert_error(refused, 503)
        assert int(refused.headers["Retry-After"]) >= 1
        assert blob_files(tmp_path) == []  # the bytes saved for it were let go
        conn.execute("DROP TRIGGER disk_full ON attachments")
    upload(client, alice, chat["id"], PDF, "application/pdf")


# ---- quotas ----------------------------------------------------------------------------------


def test_an_upload_past_the_quota_is_413_and_users_me_shows_the_use_and_the_limit(make_client, tmp_path):
    client = make_client(attachment_quota_bytes=2000)
    alice, bob = client.user("alice"), client.user("bob")
    chat = client.post_json("/api/chats/group", {"name": "g", "members": [bob.id]}, headers=alice.headers).json["data"]
    first = upload(client, alice, chat["id"], binary(1200, 1)).json["data"]
    assert storage(client, alice) == {"attachment_bytes": 1200, "quota_bytes": 2000}
    refused = upload(client, alice, chat["id"], binary(801, 2), status=413)
    assert_error(refused, 413, "quota")
    assert "ATTACHMENT_QUOTA_BYTES" in refused.json["message"] and "1200 used" in refused.json["message"]
    refused = form(
        client, alice, chat["id"], [("file", "b.bin", binary(801, 3), "application/octet-stream")], status=413
    )  # no size known beforehand: the stream stops where the quota ends
    assert_error(refused, 413, "quota")
    assert blob_files(tmp_path) == [first["sha256"]] and temp_files(tmp_path) == []
    assert storage(client, alice)["attachment_bytes"] == 1200
    upload(client, bob, chat["id"], binary(1500, 4))  # each user has a quota of their own
    client.delete(f"/api/attachments/{first['id']}", headers=alice.headers)
    assert storage(client, alice)["attachment_bytes"] == 0  # deleting frees the room
    upload(client, alice, chat["id"], binary(2000, 5))  # exactly the quota
    assert storage(client, alice) == {"attachment_bytes": 2000, "quota_bytes": 2000}


def test_a_deleted_message_frees_its_attachments_room_and_thumbnails_do_not_count(make_client):
    pytest.importorskip("PIL", reason="thumbnails need Pillow")
    client = make_client(attachment_quota_bytes=100_000)
    alice = client.user("alice")
    chat = client.post_json("/api/chats/group", {"name": "g", "members": []}, headers=alice.headers).json["data"]
    image = png(200, 200)
    sent = upload(client, alice, chat["id"], image, "image/png", content="look").json["data"]
    assert sent["thumbnail"]["status"] == "ready"
    assert storage(client, alice)["attachment_bytes"] == len(image)
    client.delete(f"/api/chats/{chat['id']}/messages/{sent['message_id']}", headers=alice.headers)
    assert storage(client, alice)["attachment_bytes"] == 0


def test_a_quota_of_zero_means_no_limit(make_client):
    client = make_client(attachment_quota_bytes=0)
    alice = client.user("alice")
    assert storage(client, alice) == {"attachment_bytes": 0, "quota_bytes": None}


def test_concurrent_uploads_never_take_a_user_past_the_quota(make_client):
    client = make_client(attachment_quota_bytes=10_000)
    alice = client.user("alice")
    chat = client.post_json("/api/chats/group", {"name": "g", "members": []}, headers=alice.headers).json["data"]
    threads, statuses = 8, []
    barrier = threading.Barrier(threads)

    def send(seed):
        barrier.wait()
        statuses.append(upload(client, alice, chat["id"], binary(3000, seed), status="*").status_int)

    racers = [threading.Thread(target=send, args=(seed,)) for seed in range(threads)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sorted(statuses) == [201] * 3 + [413] * 5
    assert storage(client, alice)["attachment_bytes"] == 9000


RACER = """
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
from store import QuotaExceeded, open_store
store = open_store(sys.argv[2], url=sys.argv[3])
digest = store.save_blob_bytes(b"racing bytes")
outcomes = []
def race(slot):
    while time.time() < float(sys.argv[5]):
        time.sleep(0.001)
    for attempt in range(3):
        record = {"id": f"{sys.argv[4]}-{slot}-{attempt}", "chat_id": "c1", "uploader_id": "alice",
                  "message_id": None, "size": 1000, "sha256": digest}
        try:
            store.add_attachment(record, quota=5000)
            outcomes.append("stored")
        except QuotaExceeded:
            outcomes.append("refused")
threads = [threading.Thread(target=race, args=(slot,)) for slot in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
store.close()
print(json.dumps(outcomes))
"""


@pytest.mark.backends("postgres")
def test_two_processes_uploading_at_once_never_take_a_user_past_the_quota(backend, tmp_path):
    import time

    store = open_store(tmp_path / "data", url=backend["store_url"])
    try:
        store.create_user({"id": "alice", "username": "alice", "password_hash": "x"})
        store.create_chat(
            {"id": "c1", "type": "group", "name": "c1", "description": None, "created_by": "alice", "created_at": "t"},
            [],
        )
        start_at = str(time.time() + 2)
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, ROOT, str(tmp_path / "data"), backend["store_url"], name, start_at],
                stdout=subprocess.PIPE,
                text=True,
            )
            for name in ("first", "second")
        ]
        outcomes = []
        try:
            for racer in racers:
                out, _ = racer.communicate(timeout=60)
                assert racer.returncode == 0
                outcomes += json.loads(out)
        finally:
            for racer in racers:  # before the schema goes
                if racer.poll() is None:
                    racer.kill()
                    racer.wait()
        assert outcomes.count("stored") == 5 and outcomes.count("refused") == 19
        assert store.attachment_usage("alice") == 5000
    finally:
        store.close()


def test_a_process_opening_a_shared_blob_directory_leaves_uploads_in_flight_alone(tmp_path):
    directory = str(tmp_path / "blobs")
    blobs = Blobs(directory, shared=True)
    stale = tmp_path / "blobs" / f"{TEMP_PREFIX}crashed"
    stale.write_bytes(b"left by a crash")
    os.utime(stale, (1, 1))
    chunks = [b"first half ", b"second half"]

    def read(size):
        if len(chunks) == 1:
            Blobs(directory, shared=True)  # another process starts while this upload is half written
        return chunks.pop(0) if chunks else b""

    digest, _, _ = blobs.put(read, 1000)
    with blobs.open(digest) as f:
        assert f.read() == b"first half second half"
    assert not stale.exists()


# ---- damaged bytes ---------------------------------------------------------------------------


def test_a_flipped_bit_is_never_served_as_if_whole_and_the_log_names_it(client, people, chat, tmp_path, caplog):
    alice = people["alice"]
    data = binary(200 * KiB, 7)
    shown = upload(client, alice, chat["id"], data).json["data"]
    url = f"/api/attachments/{shown['id']}/content"
    assert client.get(url, headers=alice.headers).body == data
    path = blob_path(tmp_path, shown["sha256"])
    flip_bit(path, 150 * KiB)
    with caplog.at_level(logging.ERROR, logger="oxc.media"):
        answer = client.get(url, headers=alice.headers, status=500)
    assert_error(answer, 500, "damaged")
    assert shown["sha256"] in caplog.text and str(path) in caplog.text and shown["id"] in caplog.text
    ranged = client.get(url, headers=dict(alice.headers, Range="bytes=0-9"), status=500)
    assert_error(ranged, 500, "damaged")
    client.head(url, headers=alice.headers, status=500)
    # A client whose copy is current (If-None-Match: the SHA-256) holds whole bytes: 304 stays true.
    client.get(url, headers=dict(alice.headers, **{"If-None-Match": f'"{shown["sha256"]}"'}), status=304)
    problems = list(client.wsgi.core.ctx.store.blobs.check_all())
    assert [(digest, path_, problem.split(":")[0]) for digest, path_, problem in problems] == [
        (shown["sha256"], str(path), "damaged")
    ]
    # Uploading the same bytes again puts a whole file in place of the damaged one.
    upload(client, alice, chat["id"], data)
    assert client.get(url, headers=alice.headers).body == data
    assert list(client.wsgi.core.ctx.store.blobs.check_all()) == []


def test_bit_rot_that_leaves_the_file_times_alone_is_caught_after_a_restart(make_client, tmp_path):
    client = make_client()
    alice = client.user("alice")
    chat = client.post_json("/api/chats/group", {"name": "g", "members": []}, headers=alice.headers).json["data"]
    shown = upload(client, alice, chat["id"], binary(64 * KiB, 8)).json["data"]
    flip_bit(blob_path(tmp_path, shown["sha256"]), 10, keep_times=True)
    client.wsgi.core.close()
    restarted = make_client()  # a new process: nothing remembered; alice's token still holds
    answer = restarted.get(f"/api/attachments/{shown['id']}/content", headers=alice.headers, status=500)
    assert_error(answer, 500, "damaged")


def test_a_damaged_thumbnail_is_not_served_either(client, people, chat, tmp_path):
    pytest.importorskip("PIL", reason="thumbnails need Pillow")
    alice = people["alice"]
    shown = upload(client, alice, chat["id"], png(100, 100), "image/png").json["data"]
    url = f"/api/attachments/{shown['id']}/thumbnail"
    thumbnail = client.get(url, headers=alice.headers)
    flip_bit(blob_path(tmp_path, thumbnail.headers["ETag"].strip('"')), 20)
    assert_error(client.get(url, headers=alice.headers, status=500), 500, "damaged")


def test_a_verified_blob_costs_a_stat_to_open_again_and_check_all_still_reads_it_afresh(tmp_path):
    blobs = Blobs(str(tmp_path / "blobs"))
    data = b"kept bytes " * 1000
    digest = blobs.put_bytes(data)
    (tmp_path / "blobs" / ".upload-left-over").write_bytes(b"an upload in flight")
    (tmp_path / "blobs" / "README").write_bytes(b"not a blob")
    assert list(blobs.check_all()) == []
    flip_bit(blobs.path(digest), 5, keep_times=True)
    with blobs.open(digest) as f:  # remembered as whole for this very file: not read again
        assert len(f.read()) == len(data)
    [(found, path, problem)] = blobs.check_all()
    assert (found, path) == (digest, blobs.path(digest)) and problem.startswith("damaged: its bytes hash to ")
    with pytest.raises(DamagedBlob) as damaged:  # check_all told this process, too
        blobs.open(digest)
    assert damaged.value.digest == digest and damaged.value.path == blobs.path(digest)
    with pytest.raises(DamagedBlob):
        Blobs(str(tmp_path / "blobs")).open(digest)  # another process reads it whole first


def test_check_all_names_a_blob_filed_under_the_wrong_directory(tmp_path):
    blobs = Blobs(str(tmp_path / "blobs"))
    digest = blobs.put_bytes(b"misfiled")
    wrong = tmp_path / "blobs" / "00"
    wrong.mkdir()
    os.replace(blobs.path(digest), wrong / digest)
    [(found, path, problem)] = blobs.check_all()
    assert (found, path) == (digest, str(wrong / digest)) and problem.startswith("misplaced")
