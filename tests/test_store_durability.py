"""What the JSON backend promises about its data directory: reopen, crash, corruption, locking.

Everything runs against ``tmp_path``; crashes and second owners are real
subprocesses, because flock and kill -9 only mean something across processes.
"""

import base64
import hashlib
import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from store import StoreCorrupt, StoreLocked, StoreUnavailable, journal, open_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def opened():
    """``opened(path, **options)`` opens a store that is closed again at teardown."""
    stores = []

    def open_(path, **options):
        stores.append(open_store(path, **options))
        return stores[-1]

    yield open_
    for store in reversed(stores):
        store.close()


# ---- helpers --------------------------------------------------------------------


def token_hash(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def make_user(user_id, username, email=None):
    return {
        "id": user_id,
        "username": username,
        "email": email,
        "password_hash": "$2b$04$" + "x" * 53,
        "created_at": "2024-05-01T12:00:00Z",
    }


def make_message(message_id, user_id, recipient_id=None):
    return {
        "id": message_id,
        "user_id": user_id,
        "username": user_id,
        "content": f"text of {message_id}",
        "timestamp": "2024-05-01T12:00:00Z",
        "recipient_id": recipient_id,
    }


def make_session(session_id, user_id, token):
    return {
        "id": session_id,
        "user_id": user_id,
        "token_hash": token_hash(token),
        "previous_hash": None,
        "rotated_at": None,
        "created_at": 1_700_000_000.0,
        "expires_at": 1_700_086_400.0,
    }


def ids(page):
    return [message["id"] for message in page.items]


def run_python(code, *args):
    """Run ``code`` in a fresh interpreter from the project root."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def journal_files(directory):
    return sorted(directory.glob("journal.*.log"), key=lambda path: int(path.name.split(".")[1]))


def current_journal(directory):
    return journal_files(directory)[-1]


def all_bytes(directory):
    return b"".join(path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file())


class Expected:
    """What a store should hold: records by id, and ids that must be gone."""

    def __init__(self):
        self.users, self.messages, self.sessions = {}, {}, {}
        self.gone_usernames, self.gone_messages, self.gone_sessions, self.gone_hashes = set(), set(), set(), set()

    def check(self, store):
        for user in self.users.values():
            assert store.get_user(user["id"]) == user
            assert store.find_user(user["username"].upper()) == user
        for username in self.gone_usernames:
            assert store.find_user(username) is None
        for message in self.messages.values():
            assert store.get_message(message["id"]) == message
        for message_id in self.gone_messages:
            assert store.get_message(message_id) is None
        for session in self.sessions.values():
            assert store.get_session(session["id"]) == session
            assert store.find_session(session["token_hash"]) == session
        for session_id in self.gone_sessions:
            assert store.get_session(session_id) is None
        for digest in self.gone_hashes:
            assert store.find_session(digest) is None
        for user_id in ("alice", "bob", "carol", "nobody"):
            visible = [
                m
                for m in sorted(self.messages.values(), key=lambda m: m["seq"])
                if m["recipient_id"] is None or user_id in (m["user_id"], m["recipient_id"])
            ]
            assert ids(store.visible_messages(user_id, limit=1000)) == [m["id"] for m in visible]
            sent = [m for m in visible if m["user_id"] == user_id]
            assert ids(store.sent_messages(user_id, limit=1000)) == [m["id"] for m in sent]


def write_workload(store, expected, tag):
    """Users, messages, sessions, an update, deletions and a rotation, all tagged ``tag``."""
    for name in ("alice", "bob", "carol"):
        if name not in expected.users:
            expected.users[name] = store.create_user(make_user(name, f"{name}-{tag}", f"{name}-{tag}@example.com"))
            continue
        old = expected.users[name]["username"]
        expected.users[name] = store.update_user(
            name, {"username": f"{name}-{tag}", "email": f"{name}-{tag}@example.com"}
        )
        expected.gone_usernames.add(old)
    for number, (sender, recipient) in enumerate(
        [("alice", None), ("alice", "bob"), ("bob", None), ("carol", "alice"), ("bob", "carol"), ("carol", None)]
    ):
        message = store.add_message(make_message(f"{tag}-m{number}", sender, recipient))
        expected.messages[message["id"]] = message
    for message_id in (f"{tag}-m1", f"{tag}-m5"):
        assert store.delete_message(message_id) == expected.messages.pop(message_id)
        expected.gone_messages.add(message_id)
    for number, user_id in enumerate(("alice", "bob", "alice")):
        session = store.add_session(make_session(f"{tag}-s{number}", user_id, f"{tag}-token-{number}"))
        expected.sessions[session["id"]] = session
    old_hash = token_hash(f"{tag}-token-0")
    rotated = store.rotate_session(f"{tag}-s0", old_hash, token_hash(f"{tag}-token-0b"), 5.0, 6.0)
    expected.sessions[rotated["id"]] = rotated
    expected.gone_hashes.add(old_hash)
    assert store.delete_session(f"{tag}-s1") is True
    del expected.sessions[f"{tag}-s1"]
    expected.gone_sessions.add(f"{tag}-s1")


# ---- reopening ------------------------------------------------------------------


def test_everything_written_is_there_after_close_and_reopen(data_dir, opened):
    expected = Expected()
    store = opened(data_dir)
    write_workload(store, expected, "one")
    store.close()

    expected.check(opened(data_dir))


def test_everything_is_there_after_compaction_and_later_writes(data_dir, opened):
    expected = Expected()
    store = opened(data_dir)
    write_workload(store, expected, "one")
    store.compact()
    assert (data_dir / "snapshot.json").exists()
    write_workload(store, expected, "two")
    store.close()

    store = opened(data_dir)
    expected.check(store)
    store.compact()
    write_workload(store, expected, "three")
    store.close()

    expected.check(opened(data_dir))
    assert len(journal_files(data_dir)) == 1


def test_seqs_keep_rising_across_reopen_after_the_newest_message_was_deleted(data_dir, opened):
    store = opened(data_dir)
    newest = store.add_message(make_message("m1", "alice"))["seq"]
    store.delete_message("m1")
    store.close()
    store = opened(data_dir)
    after_replay = store.add_message(make_message("m2", "alice"))["seq"]
    assert after_replay > newest
    store.delete_message("m2")
    store.compact()
    store.close()
    assert opened(data_dir).add_message(make_message("m3", "alice"))["seq"] > after_replay


def test_automatic_compaction_leaves_one_snapshot_one_journal_and_the_right_data(data_dir, opened):
    expected = Expected()
    store = opened(data_dir, compact_min=20)
    for round_number in range(12):
        write_workload(store, expected, f"r{round_number}")
    store.close()

    names = sorted(path.name for path in data_dir.iterdir())
    journals = [name for name in names if name.startswith("journal.")]
    assert len(journals) == 1, names
    assert journals[0] != "journal.0.log", names
    assert sorted(set(names) - set(journals)) == ["blobs", "oxc.lock", "snapshot.json"]
    snapshot = journal.read_snapshot(data_dir / "snapshot.json")
    assert f"journal.{snapshot['generation']}.log" == journals[0]
    expected.check(opened(data_dir, compact_min=20))


# ---- damaged files ----------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        b'1f2e3d4c {"half a rec',
        b"\x00\x00\x00\x00",
        journal.encode_line([["put", "messages", "torn", {"id": "torn"}]])[:-1],
    ],
    ids=["half-a-line", "zero-bytes", "line-without-newline"],
)
def test_a_torn_tail_is_dropped_and_the_journal_truncated_to_the_good_prefix(data_dir, opened, tail):
    store = opened(data_dir)
    written = [store.add_message(make_message(f"m{i}", "alice")) for i in range(5)]
    store.close()
    path = current_journal(data_dir)
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(tail)

    store = opened(data_dir)
    assert path.read_bytes() == good
    for message in written:
        assert store.get_message(message["id"]) == message
    assert store.get_message("torn") is None
    later = store.add_message(make_message("later", "alice"))
    store.close()

    store = opened(data_dir)
    assert ids(store.visible_messages("alice")) == [m["id"] for m in written] + ["later"]
    assert store.get_message("later") == later


def test_a_complete_last_line_with_a_wrong_checksum_is_corruption_not_a_torn_tail(data_dir, opened):
    store = opened(data_dir)
    [store.add_message(make_message(f"m{i}", "alice")) for i in range(5)]
    store.close()
    path = current_journal(data_dir)
    lines = path.read_bytes().splitlines(keepends=True)
    checksum = int(lines[-1][:8], 16)
    lines[-1] = b"%08x" % (checksum ^ 1) + lines[-1][8:]
    path.write_bytes(b"".join(lines))

    with pytest.raises(StoreCorrupt) as refused:
        opened(data_dir)
    offset = sum(len(line) for line in lines[:-1])
    assert f"{path} is damaged at byte {offset} (record {len(lines)}: checksum mismatch)" in str(refused.value)
    assert path.read_bytes() == b"".join(lines), "the evidence is kept as it was"


def test_leftover_temp_files_are_removed_at_open(data_dir, opened):
    store = opened(data_dir)
    store.add_message(make_message("m1", "alice"))
    store.compact()
    store.close()
    leftovers = [data_dir / ".snapshot.json.tmp-123-4", data_dir / ".snapshot.json.tmp-99-140221"]
    for leftover in leftovers:
        leftover.write_bytes(b'{"half a snap')

    store = opened(data_dir)
    assert not any(leftover.exists() for leftover in leftovers)
    assert store.get_message("m1")["id"] == "m1"


# ---- ownership ------------------------------------------------------------------


def test_a_second_open_in_the_same_process_raises_store_locked_naming_the_directory(data_dir, opened):
    store = opened(data_dir)
    with pytest.raises(StoreLocked) as caught:
        open_store(data_dir)
    assert str(data_dir) in str(caught.value)
    # The failed attempt must not have taken the lock away from the owner.
    store.add_message(make_message("m1", "alice"))
    with pytest.raises(StoreLocked):
        open_store(data_dir)


def test_a_second_process_is_refused_with_the_same_message(data_dir, opened):
    opened(data_dir)
    with pytest.raises(StoreLocked) as caught:
        open_store(data_dir)

    result = run_python("import sys; from store import open_store; open_store(sys.argv[1])", data_dir)
    assert result.returncode != 0
    assert "StoreLocked" in result.stderr
    assert str(caught.value) in result.stderr
    assert str(data_dir) in str(caught.value)


CRASHING_WRITER = """
import os, signal, sys, threading
from store import open_store
store = open_store(sys.argv[1])
store.create_user({"id": "alice", "username": "alice", "email": None})
def write(thread):
    for i in range(25):
        store.add_message({"id": f"t{thread}-{i}", "user_id": "alice", "recipient_id": None})
workers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
for worker in workers: worker.start()
for worker in workers: worker.join()
print("ok", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_acknowledged_writes_survive_a_crash_without_close(data_dir, opened):
    result = run_python(CRASHING_WRITER, data_dir)
    assert result.stdout == "ok\n", result.stderr
    assert result.returncode == -9

    store = opened(data_dir)
    assert store.find_user("alice")["id"] == "alice"
    found = store.visible_messages("alice", limit=1000)
    assert sorted(ids(found)) == sorted(f"t{thread}-{i}" for thread in range(4) for i in range(25))
    assert len({message["seq"] for message in found.items}) == 100


# ---- secrets and disk failures ----------------------------------------------------


def test_the_data_directory_never_holds_a_raw_refresh_token(data_dir, opened):
    first, second = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    store = opened(data_dir)
    store.add_session(make_session("s1", "alice", first))
    store.rotate_session("s1", token_hash(first), token_hash(second), 1.0, 2.0)
    store.compact()
    store.add_session(make_session("s2", "alice", first + "x"))
    store.close()

    stored = all_bytes(data_dir)
    assert token_hash(second).encode() in stored  # the search does see the files
    for token in (first, second, first + "x"):
        assert token.encode() not in stored


def test_a_failed_fdatasync_refuses_writes_until_the_disk_recovers_and_loses_nothing(data_dir, opened, monkeypatch):
    store = opened(data_dir)
    store.add_message(make_message("before", "alice"))

    def failing_fdatasync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(journal.os, "fdatasync", failing_fdatasync)
    with pytest.raises(StoreUnavailable):
        store.add_message(make_message("during", "alice"))
    assert store.get_message("during") is None, "a write answered with an error is not visible"
    assert store.writable is False
    assert "Input/output error" in store.problem()
    with pytest.raises(StoreUnavailable):
        store.create_user(make_user("bob", "bob"))
    assert store.rearm() is False, "the disk still fails"
    monkeypatch.undo()
    assert store.rearm() is True
    assert store.writable is True and store.problem() is None
    store.add_message(make_message("after", "alice"))
    store.close()
    reopened = opened(data_dir)
    assert ids(reopened.visible_messages("alice")) == ["before", "after"]


# ---- 0xC import ---------------------------------------------------------------------


def ab64(raw):
    """passlib's adapted base64: '+' becomes '.', no padding."""
    return base64.b64encode(raw).decode("ascii").replace("+", ".").rstrip("=")


def passlib_pbkdf2(password, rounds=29000):
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, rounds)
    return f"$pbkdf2-sha256${rounds}${ab64(salt)}${ab64(digest)}"


def unab64(text):
    return base64.b64decode(text.replace(".", "+") + "=" * (-len(text) % 4))


def pbkdf2_matches(password, encoded):
    """What the auth handler does with a 0xC hash: recompute and compare."""
    _, scheme, rounds, salt, digest = encoded.split("$")
    assert scheme == "pbkdf2-sha256"
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), unab64(salt), int(rounds)) == unab64(digest)


@pytest.fixture
def legacy_dir(data_dir):
    """A 0xC data directory: users keyed by id, messages out of order, one live and one revoked token."""
    data_dir.mkdir()
    users = {
        "1": {
            "id": 1,
            "username": "alice",
            "email": "alice@example.com",
            "password": passlib_pbkdf2("alice password"),
            "created_at": "2023-03-01T09:00:00",
        },
        "2": {
            "id": 2,
            "username": "bob",
            "email": "bob@example.com",
            "password": passlib_pbkdf2("bob password"),
            "created_at": "2023-03-02T09:00:00",
        },
        "3": {
            "username": "carol",
            "email": None,
            "password": passlib_pbkdf2("carol password"),
            "created_at": "2023-03-03T09:00:00",
        },
    }
    messages = [
        {
            "id": 13,
            "user_id": 3,
            "username": "carol",
            "content": "public, third",
            "timestamp": "2023-04-01T12:03:00",
            "recipient_id": None,
        },
        {
            "id": 11,
            "user_id": 1,
            "username": "alice",
            "content": "public, first",
            "timestamp": "2023-04-01T12:01:00",
            "recipient_id": None,
        },
        {
            "id": 14,
            "user_id": 2,
            "username": "bob",
            "content": "bob to carol, fourth",
            "timestamp": "2023-04-01T12:04:00",
            "recipient_id": 3,
        },
        {
            "id": 12,
            "user_id": 1,
            "username": "alice",
            "content": "alice to bob, second",
            "timestamp": "2023-04-01T12:02:00",
            "recipient_id": 2,
        },
    ]
    live, revoked = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    tokens = [
        {"token": live, "user_id": 1, "created_at": "2023-04-01T12:00:00", "expires_at": "2023-04-08T12:00:00"},
        {"token": revoked, "user_id": 2, "created_at": "2023-04-01T12:00:00", "revoked": True},
    ]
    for name, content in (("users.json", users), ("messages.json", messages), ("tokens.json", tokens)):
        (data_dir / name).write_text(json.dumps(content, indent=2), encoding="utf-8")
    return {
        "dir": data_dir,
        "live": live,
        "revoked": revoked,
        "originals": {name: (data_dir / name).read_bytes() for name in ("users.json", "messages.json", "tokens.json")},
    }


def test_a_0xc_directory_is_imported_with_users_messages_and_hashed_tokens(legacy_dir, opened):
    store = opened(legacy_dir["dir"])

    alice = store.find_user("ALICE")
    assert alice["id"] == "1" and alice["email"] == "alice@example.com"
    assert alice["password_hash"].startswith("$pbkdf2-sha256$29000$")
    assert pbkdf2_matches("alice password", alice["password_hash"])
    assert store.get_user("3")["username"] == "carol"
    assert store.find_user("bob")["id"] == "2"

    public_and_alice = store.visible_messages("1")
    assert ids(public_and_alice) == ["11", "12", "13"]
    assert [m["seq"] for m in public_and_alice.items] == sorted(m["seq"] for m in public_and_alice.items)
    assert store.get_message("12")["recipient_id"] == "2"
    assert ids(store.visible_messages("2")) == ["11", "12", "13", "14"]
    assert ids(store.visible_messages("3")) == ["11", "13", "14"]
    assert ids(store.visible_messages("4")) == ["11", "13"]
    assert store.get_message("14")["seq"] > store.get_message("13")["seq"]

    session = store.find_session(token_hash(legacy_dir["live"]))
    assert session["user_id"] == "1"
    assert store.find_session(token_hash(legacy_dir["revoked"])) is None
    assert legacy_dir["live"].encode() not in b"".join(
        path.read_bytes()
        for path in legacy_dir["dir"].iterdir()
        if path.is_file() and path.name not in legacy_dir["originals"]
    )


def test_a_0xc_import_happens_once_and_leaves_the_original_files_in_place(legacy_dir, opened):
    store = opened(legacy_dir["dir"])
    seqs = {m["id"]: m["seq"] for m in store.visible_messages("2").items}
    store.delete_message("13")
    store.update_user("2", {"username": "robert"})
    store.close()

    store = opened(legacy_dir["dir"])
    assert store.get_message("13") is None
    assert store.find_user("bob") is None and store.find_user("robert")["id"] == "2"
    assert {m["id"]: m["seq"] for m in store.visible_messages("2").items} == {
        key: value for key, value in seqs.items() if key != "13"
    }
    assert store.delete_user_sessions("1") == 1
    for name, original in legacy_dir["originals"].items():
        assert (legacy_dir["dir"] / name).read_bytes() == original


@pytest.mark.parametrize("shape", ["list", "keyed-by-id", "wrapped"])
def test_every_0xc_users_file_shape_is_accepted(data_dir, opened, shape):
    data_dir.mkdir()
    records = [
        {"id": "u1", "username": "alice", "password_hash": passlib_pbkdf2("pw")},
        {"id": "u2", "username": "bob", "password_hash": passlib_pbkdf2("pw")},
    ]
    content = {"list": records, "keyed-by-id": {r["id"]: r for r in records}, "wrapped": {"users": records}}[shape]
    (data_dir / "users.json").write_text(json.dumps(content), encoding="utf-8")

    store = opened(data_dir)
    assert store.find_user("alice")["id"] == "u1"
    assert store.find_user("bob")["id"] == "u2"
    assert store.get_user("u1")["password_hash"] == records[0]["password_hash"]


def test_bytes_uploaded_again_survive_the_deletion_of_an_older_copy(data_dir, opened):
    store = opened(data_dir)
    payload = b"same bytes twice"
    digest = store.save_blob_bytes(payload)
    store.create_chat(
        {"id": "c", "type": "group", "name": "c", "description": None, "created_by": "alice", "created_at": "t"}, []
    )
    store.add_attachment({"id": "a1", "chat_id": "c", "sha256": digest, "thumbnail_sha256": None})
    # A second upload of the same bytes is written before its record exists...
    assert store.save_blob_bytes(payload) == digest
    # ...and the first attachment is deleted in between: the bytes must stay.
    store.delete_attachment("a1")
    store.add_attachment({"id": "a2", "chat_id": "c", "sha256": digest, "thumbnail_sha256": None})
    with store.open_blob(digest) as f:
        assert f.read() == payload
    store.delete_attachment("a2")
    assert store.open_blob(digest) is None
