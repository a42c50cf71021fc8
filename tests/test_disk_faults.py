"""The JSON store at the disk's edges: failing writes, a full disk, damaged files.

Faults are injected through the journal's ``Disk`` (short writes, ENOSPC, EIO,
a failing fdatasync) and, where the machine lets a test mount one, through a
real tmpfs that fills up. After each: nothing acknowledged is lost, nothing
refused is visible, and the store accepts writes again by itself once the
fault is gone. Damaged files stop start-up with one line naming the file and
the offset; ``oxc admin verify`` lists them and ``oxc admin repair`` keeps
copies before it changes anything.
"""

import errno
import os
import subprocess
import sys
import threading

import pytest
from conftest import assert_error
from server import ROOT, wait_until

from store import JsonStore, StoreCorrupt, journal

pytestmark = pytest.mark.backends("json")


class FaultyDisk(journal.Disk):
    """The real system calls, until ``fault`` says how the disk should fail."""

    def __init__(self):
        self.fault = None
        self.free = None

    def write(self, fd, data):
        if self.fault == "short":
            self.fault = "enospc"  # Linux: a short count first, ENOSPC on the next call
            return os.write(fd, bytes(data[: max(1, len(data) // 2)]))
        if self.fault == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.fault == "eio":
            raise OSError(errno.EIO, "Input/output error")
        return os.write(fd, data)

    def fdatasync(self, fd):
        if self.fault == "fdatasync":
            raise OSError(errno.EIO, "Input/output error")
        os.fdatasync(fd)

    def free_bytes(self, directory):
        if self.fault in ("short", "enospc"):
            return 0
        return super().free_bytes(directory) if self.free is None else self.free


def post(client, user, content, status=201):
    return client.post_json("/api/messages", {"content": content}, headers=user.headers, status=status)


def contents(client, user):
    return [m["content"] for m in client.get("/api/messages?limit=100", headers=user.headers).json["messages"]]


def stored_contents(data_dir):
    store = JsonStore(str(data_dir))
    try:
        return sorted(m["content"] for m in store.visible_messages("nobody", limit=10_000).items)
    finally:
        store.close()


@pytest.mark.parametrize("fault", ["short", "enospc", "eio", "fdatasync"])
def test_a_disk_fault_loses_nothing_acknowledged_shows_nothing_refused_and_ends_by_itself(make_client, tmp_path, fault):
    data_dir, disk = tmp_path / "faulty", FaultyDisk()
    store = JsonStore(str(data_dir), disk=disk)
    client = make_client(store=store)
    alice = client.user("alice")
    acknowledged = [post(client, alice, f"kept {n}").json["data"]["content"] for n in range(3)]
    journal_size = sum(path.stat().st_size for path in data_dir.glob("journal.*.log"))

    disk.fault = fault
    answers = []

    def writer(number):
        answers.append(post(client, alice, f"refused {number}", status="*"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for answer in answers:
        assert_error(answer, 503, "refuses writes")
        assert int(answer.headers["Retry-After"]) > 0
    assert sorted(contents(client, alice)) == sorted(acknowledged), "a refused write is not visible"
    health = client.get("/api/health", status=503).json["data"]
    assert health["store"] == "refusing writes" and health["store_problem"]
    if fault in ("short", "enospc", "eio"):
        size = sum(path.stat().st_size for path in data_dir.glob("journal.*.log"))
        assert size == journal_size, "the journal is cut back to what was durable"

    disk.fault = None
    assert wait_until(lambda: store.writable, timeout=5), "the store re-arms by itself"
    assert client.get("/api/health").json["data"]["store_problem"] is None
    acknowledged.append(post(client, alice, "after").json["data"]["content"])
    client.wsgi.core.close()
    assert stored_contents(data_dir) == sorted(acknowledged)


def test_below_the_free_space_reserve_writes_are_refused_and_resume_when_space_returns(
    make_client, tmp_path, monkeypatch
):
    monkeypatch.setattr(journal, "SPACE_CHECK_SECONDS", 0)
    disk = FaultyDisk()
    client = make_client(store=JsonStore(str(tmp_path / "d"), reserve=10_000_000, disk=disk))
    alice = client.user("alice")
    post(client, alice, "before")
    disk.free = 9_000_000
    assert_error(post(client, alice, "refused", status=503), 503, "nearly full")
    health = client.get("/api/health", status=503).json["data"]
    assert "nearly full" in health["store_problem"]
    assert contents(client, alice) == ["before"], "reads go on while writes are refused"
    disk.free = 50_000_000
    post(client, alice, "after")
    assert client.get("/api/health").json["data"]["store"] == "ok"


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 4 MiB tmpfs, where the machine lets the test mount one."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_loses_no_acknowledged_write_and_recovers_when_space_is_freed(make_client, tiny_disk):
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (2 * 1024 * 1024))
    data_dir = tiny_disk / "data"
    store = JsonStore(str(data_dir))  # no reserve: the disk itself runs out mid-batch
    client = make_client(store=store)
    alice = client.user("alice")
    acknowledged, refused = [], 0
    for number in range(5000):
        content = f"{number:05d} " + "x" * 900
        answer = post(client, alice, content, status="*")
        if answer.status_int == 201:
            acknowledged.append(content)
        else:
            assert_error(answer, 503, "refuses writes")
            refused += 1
            if refused >= 5:
                break
    assert refused == 5 and len(acknowledged) > 100
    assert sorted(c for c in contents(client, alice)) == sorted(acknowledged)[-100:]
    filler.unlink()
    assert wait_until(lambda: store.writable, timeout=5)
    acknowledged.append(post(client, alice, "after the disk had room again").json["data"]["content"])
    client.wsgi.core.close()
    assert stored_contents(data_dir) == sorted(acknowledged)


# ---- damaged files -----------------------------------------------------------------


def written_store(data_dir, count=30, compact_after=None):
    """A closed store holding ``count`` messages; compacted after ``compact_after`` of them."""
    store = JsonStore(str(data_dir))
    for number in range(count):
        store.add_message(
            {
                "id": f"m{number:03d}",
                "user_id": "alice",
                "recipient_id": None,
                "content": f"message {number}",
                "created_at": "2026-12-01T00:00:00Z",
            }
        )
        if number + 1 == compact_after:
            store.compact()
    store.close()
    return data_dir


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


def serve_once(data_dir):
    """Start ``oxc serve`` on ``data_dir``; returns (exit code, stderr) of a refused start."""
    env = dict(os.environ, DATA_DIR=str(data_dir), PORT="0", HOST="127.0.0.1", LOG_LEVEL="WARNING")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "oxc_wsgi.py"), "serve"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, done.stderr


def admin(data_dir, action):
    env = dict(os.environ, DATA_DIR=str(data_dir), LOG_LEVEL="WARNING")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "oxc_wsgi.py"), "admin", action],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_flipped_byte_in_any_journal_record_stops_start_up_naming_file_and_offset(tmp_path, which):
    data_dir = written_store(tmp_path / "data")
    path = data_dir / "journal.0.log"
    lines = path.read_bytes().splitlines(keepends=True)
    index = {"first": 0, "middle": len(lines) // 2, "last": len(lines) - 1}[which]
    offset = sum(len(line) for line in lines[:index])
    flip_byte(path, offset + 20)
    before = path.read_bytes()

    with pytest.raises(StoreCorrupt) as refused:
        JsonStore(str(data_dir))
    assert f"{path} is damaged at byte {offset} (record {index + 1}: checksum mismatch)" in str(refused.value)
    assert path.read_bytes() == before, "the evidence is kept"
    code, stderr = serve_once(data_dir)
    assert code == 3
    assert stderr.strip().count("\n") == 0 and "Traceback" not in stderr, stderr
    assert f"byte {offset}" in stderr and "oxc admin repair" in stderr


def test_a_missing_snapshot_beside_a_later_journal_stops_start_up(tmp_path):
    data_dir = written_store(tmp_path / "data", compact_after=10)
    (data_dir / "snapshot.json").unlink()
    with pytest.raises(StoreCorrupt, match=r"snapshot.json is missing but .*journal\.1\.log exists"):
        JsonStore(str(data_dir))
    code, stderr = serve_once(data_dir)
    assert code == 3 and "snapshot.json is missing" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("damage", ["flipped byte", "cut short", "not json"])
def test_a_damaged_snapshot_stops_start_up_naming_the_file(tmp_path, damage):
    data_dir = written_store(tmp_path / "data", compact_after=10)
    path = data_dir / "snapshot.json"
    if damage == "flipped byte":
        flip_byte(path, path.stat().st_size // 2)
    elif damage == "cut short":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.write_bytes(b"{not json")
    with pytest.raises(StoreCorrupt, match=f"{path} is damaged"):
        JsonStore(str(data_dir))
    code, stderr = serve_once(data_dir)
    assert code == 3 and f"{path} is damaged" in stderr and "Traceback" not in stderr


def test_a_torn_final_line_of_the_newest_journal_is_still_cut_off(tmp_path):
    data_dir = written_store(tmp_path / "data", count=5)
    path = data_dir / "journal.0.log"
    good = path.read_bytes()
    path.write_bytes(good + journal.encode_line([["put", "messages", "torn", {}]])[:-5])
    store = JsonStore(str(data_dir))
    store.close()
    assert path.read_bytes() == good


def test_verify_lists_every_damage_and_repair_keeps_copies_and_names_what_it_lost(tmp_path):
    data_dir = written_store(tmp_path / "data", count=30, compact_after=10)
    blobs = JsonStore(str(data_dir))
    digest = blobs.save_blob_bytes(b"attachment bytes" * 100)
    blobs.close()
    journal_path = data_dir / "journal.1.log"
    lines = journal_path.read_bytes().splitlines(keepends=True)
    flip_byte(journal_path, len(lines[0]) + 20)  # the second record
    blob_path = data_dir / "blobs" / digest[:2] / digest
    flip_byte(blob_path, 7)

    verified = admin(data_dir, "verify")
    assert verified.returncode == 1, verified.stderr
    assert f"damaged: {journal_path} at byte {len(lines[0])}: record 2: checksum mismatch" in verified.stdout
    assert f"damaged: {blob_path}: its bytes hash to" in verified.stdout
    assert "2 damaged" in verified.stdout

    damaged_journal = journal_path.read_bytes()
    repaired = admin(data_dir, "repair")
    assert repaired.returncode == 0, repaired.stderr
    assert f"could not keep: {journal_path} byte {len(lines[0])} (record 2" in repaired.stdout
    kept = list(data_dir.glob("damaged-*"))
    assert len(kept) == 1
    assert (kept[0] / "journal.1.log").read_bytes() == damaged_journal
    assert (kept[0] / digest).exists() and not blob_path.exists()

    store = JsonStore(str(data_dir))
    try:
        messages = [m["id"] for m in store.visible_messages("alice", limit=100).items]
    finally:
        store.close()
    assert len(messages) == 29 and "m011" not in messages
    assert admin(data_dir, "verify").returncode == 0


def test_repair_of_a_missing_snapshot_starts_from_the_journals_and_says_what_is_gone(tmp_path):
    data_dir = written_store(tmp_path / "data", count=20, compact_after=10)
    (data_dir / "snapshot.json").unlink()
    repaired = admin(data_dir, "repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "every record before journal generation 1 is lost" in repaired.stdout
    store = JsonStore(str(data_dir))
    try:
        assert len(store.visible_messages("alice", limit=100).items) == 10
    finally:
        store.close()


def test_verify_of_a_healthy_store_says_so_and_repair_changes_nothing(tmp_path):
    data_dir = written_store(tmp_path / "data", count=5)
    before = {path.name: path.read_bytes() for path in data_dir.iterdir() if path.is_file() and path.suffix != ".lock"}
    assert "no damage" in admin(data_dir, "verify").stdout
    assert "nothing changed" in admin(data_dir, "repair").stdout
    after = {path.name: path.read_bytes() for path in data_dir.iterdir() if path.is_file() and path.suffix != ".lock"}
    assert before == after
    assert not list(data_dir.glob("damaged-*"))
