"""What the PostgreSQL backend promises beyond the store contract.

Hot queries read indexes (EXPLAIN of the very statements the store runs), an
unreachable or vanished database is a quick StoreUnavailable (503 for
clients) and the store recovers by itself, migrations run once each and in
order, and ``migrate-store`` carries a whole store to PostgreSQL and back
unchanged. Each test gets a fresh schema of the database at
OXC_TEST_POSTGRES_URL (see ``pgtest.py``) and skips without a server.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from pgtest import admin_connection, fresh_schema, with_search_path
from server import ROOT

from store import JsonStore, StoreError, StoreUnavailable, open_store

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test,postgres]')")
pytest.importorskip("psycopg_pool", reason="psycopg_pool is not installed (pip install -e '.[test,postgres]')")

from store import postgres, transfer  # noqa: E402  (needs psycopg)


@pytest.fixture
def schema():
    """(url, schema name) of a fresh schema."""
    with fresh_schema() as found:
        yield found


@pytest.fixture
def store(schema, tmp_path):
    opened = open_store(tmp_path / "data", url=schema[0])
    yield opened
    opened.close()


# ---- records (as the handlers make them) ------------------------------------------------


def user(user_id, username, email=None):
    return {
        "id": user_id,
        "username": username,
        "email": email,
        "password_hash": "$2b$04$" + "x" * 53,
        "created_at": "2024-05-01T12:00:00Z",
    }


def member(user_id, role="member"):
    return {
        "user_id": user_id,
        "role": role,
        "joined_at": "2024-05-01T12:00:00Z",
        "muted": False,
        "read_seq": 0,
        "delivered_seq": 0,
    }


def chat(chat_id, kind="group"):
    return {
        "id": chat_id,
        "type": kind,
        "name": chat_id,
        "description": None,
        "created_by": "u0",
        "created_at": "2024-05-01T12:00:00Z",
    }


def fill(store, users=20, chats=30, messages=600):
    """A store with some of everything, so that plans are not about empty tables."""
    for number in range(users):
        store.create_user(user(f"u{number}", f"user{number}", f"user{number}@example.com"))
    for number in range(chats):
        store.create_chat(
            chat(f"c{number}"), [member(f"u{(number + k) % users}", "owner" if k == 0 else "member") for k in range(4)]
        )
    for number in range(messages):
        store.add_chat_message(
            {
                "id": f"cm{number}",
                "chat_id": f"c{number % chats}",  # by one of its members
                "user_id": f"u{(number % chats + number % 4) % users}",
                "content": f"word{number % 50} lunch {number}",
                "created_at": "2024-05-01T12:00:00Z",
            }
        )
        store.add_message(
            {
                "id": f"m{number}",
                "user_id": f"u{number % users}",
                "username": "x",
                "content": f"hello {number}",
                "timestamp": "2024-05-01T12:00:00Z",
                "recipient_id": None if number % 3 else f"u{(number + 1) % users}",
            }
        )
    store.add_notifications(
        [
            {
                "id": f"n{number}",
                "user_id": f"u{number % users}",
                "kind": "mention",
                "read": number % 2 == 0,
                "created_at": "2024-05-01T12:00:00Z",
            }
            for number in range(200)
        ]
    )


# ---- indexes ---------------------------------------------------------------------------------


HOT_QUERIES = {
    "message by id": lambda s: s.get_message("m77"),
    "chat message by id": lambda s: s.get_chat_message("cm77"),
    "chat history page": lambda s: s.chat_history("c3", limit=20),
    "chat history before": lambda s: s.chat_history("c3", before=400, limit=20),
    "chat history after": lambda s: s.chat_history("c3", after=100, limit=20),
    "my chats": lambda s: s.user_chats("u5", limit=10),
    "my chats before": lambda s: s.user_chats("u5", limit=2, before="c5"),
    "unread count": lambda s: s.unread_count("c3", "u4"),
    "search": lambda s: s.search(["c1", "c2", "c3", "public"], ["lunch", "word7"], limit=10),
    "search before": lambda s: s.search(["c1", "c2"], ["lunch"], before=500, limit=10),
    "visible messages": lambda s: s.visible_messages("u3", limit=20),
    "visible messages after": lambda s: s.visible_messages("u3", after=100, limit=20),
    "sent messages": lambda s: s.sent_messages("u3", before=500, limit=20),
    "user by name": lambda s: s.find_user("USER7"),
    "user by e-mail": lambda s: s.find_user_by_email("user7@example.com"),
    "users by prefix": lambda s: s.users_by_prefix("user1", limit=5),
    "session by token": lambda s: s.find_session("0" * 64),
    "members": lambda s: s.members("c3"),
    "member": lambda s: s.get_member("c3", "u4"),
    "chat ids": lambda s: s.chat_ids("u4"),
    "notifications": lambda s: s.user_notifications("u4", limit=10),
    "mentions": lambda s: s.user_notifications("u4", kind="mention", limit=10),
    "unread notifications": lambda s: s.user_notifications("u4", unread_only=True, limit=10),
    "unread notification count": lambda s: s.unread_notification_count("u4"),
    "chat messages after": lambda s: s.chat_messages_after(300, limit=10),
    "due push jobs": lambda s: s.due_push_jobs(1e12),
    "next push time": lambda s: s.next_push_time(),
    "dead push jobs": lambda s: s.dead_push_jobs(),
    "user keys": lambda s: s.user_keys("u4"),
    "user devices": lambda s: s.user_devices("u4"),
}


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """(store, schema name): one filled store for every plan test (filling takes seconds)."""
    with fresh_schema() as (url, name):
        store = open_store(tmp_path_factory.mktemp("filled"), url=url)
        try:
            fill(store)
            with admin_connection() as conn:
                conn.execute(f'ANALYZE "{name}".messages, "{name}".chat_messages, "{name}".postings')
            yield store, name
        finally:
            store.close()


@pytest.mark.parametrize("name", HOT_QUERIES)
def test_hot_queries_read_indexes_never_whole_tables(filled, name):
    store, schema_name = filled
    store.trace = []
    try:
        HOT_QUERIES[name](store)
        statements = [
            (query, params) for query, params in store.trace if query.lstrip(" (").upper().startswith("SELECT")
        ]
    finally:
        store.trace = None
    assert statements, "the call ran no query"
    with admin_connection() as conn:
        conn.execute(f'SET search_path TO "{schema_name}"')
        # With sequential scans priced out, a plan that still has one has no index to use.
        conn.execute("SET enable_seqscan TO off")
        for query, params in statements:
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + query, params).fetchall())
            assert "Seq Scan" not in plan, f"{name}: {query}\n{plan}"
            assert "Index" in plan, f"{name}: {query}\n{plan}"


# ---- outages ---------------------------------------------------------------------------------


class Proxy:
    """A loopback TCP port that forwards to the database until ``cut()``, and again after ``restore()``."""

    def __init__(self, target):
        self.target = target  # a unix socket path, or (host, port)
        self.port = 0
        self._sockets = set()
        self._lock = threading.Lock()
        self._listener = None
        self.restore()

    def restore(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener):
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if isinstance(self.target, str):
                upstream = socket.socket(socket.AF_UNIX)
            else:
                upstream = socket.socket()
            upstream.connect(self.target)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with self._lock:
                    self._sockets.discard(end)
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def cut(self):
        """Refuse new connections and drop the open ones, as a database that went away."""
        listener, self._listener = self._listener, None
        listener.close()
        with self._lock:
            ends = list(self._sockets)
        for end in ends:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def proxy(schema):
    with admin_connection() as conn:
        host, port, dbname = conn.info.host, conn.info.port, conn.info.dbname
    target = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
    running = Proxy(target)
    yield running, with_search_path(f"postgresql://127.0.0.1:{running.port}/{dbname}", schema[1])
    if running._listener is not None:
        running.cut()


def test_a_database_that_is_not_there_is_store_unavailable_at_once(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        open_store(tmp_path / "data", url=f"postgresql://127.0.0.1:{closed_port}/test")
    assert time.monotonic() - started < 5


def test_an_outage_is_store_unavailable_within_the_timeout_and_the_store_recovers(proxy, tmp_path):
    running, url = proxy
    store = postgres.PostgresStore(url, blob_dir=str(tmp_path / "blobs"), pool_size=3, timeout=1.0)
    try:
        store.create_user(user("u1", "alice"))
        assert store.writable is True
        running.cut()
        for call in (
            lambda: store.get_user("u1"),
            lambda: store.create_user(user("u2", "bob")),
            lambda: store.add_message({"id": "m1", "user_id": "u1", "content": "hi", "recipient_id": None}),
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            assert time.monotonic() - started < 4
        time.sleep(1.1)  # past the cached health answer
        assert store.writable is False
        running.restore()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert store.get_user("u1")["username"] == "alice"
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not recover"
                time.sleep(0.2)
        store.create_user(user("u2", "bob"))
        assert store.find_user("BOB")["id"] == "u2"
        time.sleep(1.1)
        assert store.writable is True
    finally:
        store.close()


@pytest.mark.backends("postgres")
def test_during_an_outage_the_app_answers_503_with_retry_after_and_recovers(proxy, make_client):
    running, url = proxy
    client = make_client(store_url=url)
    alice = client.user("alice")
    assert client.get("/api/health").status_int == 200
    client.wsgi.core.ctx.store._timeout = 1.0
    running.cut()
    time.sleep(1.1)
    health = client.get("/api/health", status=503)
    assert health.headers["Retry-After"] and health.json["status"] == "error"
    answer = client.get("/api/messages", headers=alice.headers, status=503)
    assert answer.headers["Retry-After"] and answer.json["status"] == "error"
    answer = client.post_json("/api/messages", {"content": "lost?"}, headers=alice.headers, status=503)
    assert answer.headers["Retry-After"]
    running.restore()
    deadline = time.monotonic() + 30
    while client.get("/api/messages", headers=alice.headers, expect_errors=True).status_int != 200:
        assert time.monotonic() < deadline, "the app did not recover"
        time.sleep(0.2)
    client.post_json("/api/messages", {"content": "back"}, headers=alice.headers, status=201)
    assert [m["content"] for m in client.get("/api/messages", headers=alice.headers).json["messages"]] == ["back"]


# ---- migrations -------------------------------------------------------------------------------


#: (version, name) of every migration file oxc ships, in order.
SHIPPED = [(version, name) for version, name, _ in postgres.migration_files()]
NEWEST = SHIPPED[-1][0]


def test_opening_migrates_once_and_again_is_a_no_op(schema, tmp_path):
    url = schema[0]
    assert SHIPPED[:2] == [(1, "initial"), (2, "scale_out")]
    assert postgres.current_version(url) == (0, NEWEST)
    open_store(tmp_path / "data", url=url).close()
    assert postgres.current_version(url) == (NEWEST, NEWEST)
    assert postgres.migrate(url) == []
    open_store(tmp_path / "data", url=url).close()
    with admin_connection() as conn:
        rows = conn.execute(f'SELECT version, name FROM "{schema[1]}".schema_migrations ORDER BY version').fetchall()
    assert rows == SHIPPED


def test_later_migration_files_apply_in_order_and_a_newer_schema_is_refused(schema, tmp_path):
    url = schema[0]
    directory = tmp_path / "migrations"
    directory.mkdir()
    shutil.copy(os.path.join(postgres.MIGRATIONS, "0001_initial.sql"), directory)
    later = NEWEST + 1  # newer than any file oxc ships
    (directory / f"{later:04d}_later.sql").write_text("ALTER TABLE extra ADD COLUMN more text;\n")
    (directory / "0002_extra.sql").write_text("CREATE TABLE extra (id integer PRIMARY KEY);\n")
    (directory / "README").write_text("not a migration\n")
    assert postgres.migrate(url, directory) == [(1, "initial"), (2, "extra"), (later, "later")]
    assert postgres.migrate(url, directory) == []
    assert postgres.current_version(url, directory) == (later, later)
    with pytest.raises(StoreError, match="newer than this oxc"):
        postgres.migrate(url)
    with pytest.raises(StoreError, match="newer than this oxc"):
        open_store(tmp_path / "data", url=url)


def test_a_failing_migration_changes_nothing_and_stops_there(schema, tmp_path):
    url = schema[0]
    directory = tmp_path / "migrations"
    directory.mkdir()
    shutil.copy(os.path.join(postgres.MIGRATIONS, "0001_initial.sql"), directory)
    (directory / "0002_broken.sql").write_text("CREATE TABLE half (id integer);\nTHIS IS NOT SQL;\n")
    import psycopg

    with pytest.raises(psycopg.Error):
        postgres.migrate(url, directory)
    assert postgres.current_version(url, directory) == (1, 2)
    with admin_connection() as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f"{schema[1]}.half",)).fetchone()[0] is None


def test_two_processes_starting_at_once_migrate_once(schema, tmp_path):
    url = schema[0]
    barrier = threading.Barrier(4)
    outcomes = []

    def start():
        barrier.wait()
        try:
            outcomes.append(postgres.migrate(url))
        except Exception as exc:  # reported below
            outcomes.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(repr, outcomes)) == sorted(map(repr, [SHIPPED, [], [], []]))


def test_oxc_migrate_shows_and_applies_the_schema_version(schema, tmp_path):
    env = dict(os.environ, STORE_URL=schema[0], DATA_DIR=str(tmp_path / "data"))
    run = [sys.executable, os.path.join(ROOT, "oxc_wsgi.py")]
    shown = subprocess.run(
        [*run, "migrate", "--show"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    assert f"schema version 0 (this oxc's newest: {NEWEST})" in shown.stdout
    applied = subprocess.run([*run, "migrate"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "applied 0001_initial" in applied.stdout and "applied 0002_scale_out" in applied.stdout
    assert f"schema version {NEWEST}" in applied.stdout
    again = subprocess.run([*run, "migrate"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "applied" not in again.stdout and f"schema version {NEWEST}" in again.stdout


# ---- moving a store -----------------------------------------------------------------------------


def populate(store):
    """Some of every table, through the Store interface."""
    store.create_user(user("u1", "Alice", "alice@example.com"))
    store.create_user(user("u2", "bob"))
    store.add_message(
        {
            "id": "m1",
            "user_id": "u1",
            "username": "Alice",
            "content": "hello public",
            "timestamp": "t",
            "recipient_id": None,
        }
    )
    store.add_message(
        {
            "id": "m2",
            "user_id": "u1",
            "username": "Alice",
            "content": "hello bob",
            "timestamp": "t",
            "recipient_id": "u2",
        }
    )
    store.add_message(
        {"id": "gone", "user_id": "u2", "username": "bob", "content": "x", "timestamp": "t", "recipient_id": None}
    )
    store.add_session(
        {
            "id": "s1",
            "user_id": "u1",
            "token_hash": "a" * 64,
            "previous_hash": None,
            "rotated_at": None,
            "created_at": 1.5,
            "expires_at": 2.5,
        }
    )
    store.create_chat(chat("g1"), [member("u2", "owner"), member("u1")])
    store.direct_chat(chat("d1", "direct"), member("u1"), member("u2"))
    store.add_chat_message(
        {
            "id": "cm1",
            "chat_id": "g1",
            "user_id": "u1",
            "content": "lunch at noon",
            "created_at": "t",
            "mentions": [{"user_id": "u2", "username": "bob"}],
        }
    )
    store.add_chat_message({"id": "cm2", "chat_id": "d1", "user_id": "u2", "content": "lunch?", "created_at": "t"})
    store.update_chat_message("cm1", {"content": "dinner at noon", "edited_at": "t2"})
    store.update_members({("g1", "u1"): {"role": "admin", "muted": True}})
    digest = store.save_blob_bytes(b"attachment bytes")
    thumb = store.save_blob_bytes(b"thumbnail bytes")
    store.add_attachment(
        {
            "id": "a1",
            "chat_id": "g1",
            "uploader_id": "u1",
            "message_id": "cm1",
            "sha256": digest,
            "thumbnail_sha256": thumb,
            "size": 16,
            "name": "f.png",
            "created_at": "t",
        }
    )
    store.add_key(
        {
            "id": "k1",
            "user_id": "u1",
            "device_id": "d",
            "algorithm": "x25519",
            "public_key": "AA",
            "created_at": "t",
            "revoked_at": None,
        }
    )
    store.put_code({"id": "verify:u1", "user_id": "u1", "purpose": "verify", "digest": "d", "attempts": 2})
    store.add_notifications(
        [
            {"id": "n1", "user_id": "u2", "kind": "mention", "read": False, "created_at": "t"},
            {"id": "n2", "user_id": "u2", "kind": "direct_message", "read": True, "created_at": "t"},
        ],
        [
            {
                "id": "j1",
                "url": "https://h/",
                "payload": {"deliveries": []},
                "attempts": 0,
                "last_error": None,
                "next_attempt_at": 100.5,
                "created_at": "t",
            }
        ],
        max_pending=10,
        mark=7,
    )
    store.add_device(
        {"id": "dev1", "user_id": "u2", "platform": "web", "token": "tok", "endpoint": None, "created_at": "t"}
    )
    store.delete_message("gone")  # the seq it had must not be handed out again
    return digest, thumb


def snapshot_of(directory):
    store = JsonStore(str(directory))
    try:
        tables = {}
        for table, record in store.export_records():
            key = (
                record["key"]
                if table == "meta"
                else (record["chat_id"], record["user_id"])
                if table == "members"
                else record["id"]
            )
            tables.setdefault(table, {})[key] = record
        members = {chat_id: [m["user_id"] for m in store.members(chat_id)] for chat_id in ("g1", "d1")}
        return tables, store.latest_seq() + 1, members
    finally:
        store.close()


def test_migrate_store_carries_a_json_store_to_postgres_and_back_unchanged(schema, tmp_path):
    source, back, pg_blobs = tmp_path / "source", tmp_path / "back", tmp_path / "pg" / "blobs"
    original = JsonStore(str(source))
    digest, thumb = populate(original)
    original.close()
    reports = []

    counts = transfer.copy_store(
        str(source), schema[0], blob_dir=str(pg_blobs), progress=lambda *report: reports.append(report)
    )
    assert counts["users"] == 2 and counts["chat_messages"] == 2 and counts["meta"] == 1
    assert reports and reports[-1][0] == reports[-1][1]

    database = postgres.PostgresStore(schema[0], blob_dir=str(pg_blobs))
    try:
        assert database.find_user("alice")["email"] == "alice@example.com"
        assert [m["id"] for m in database.search(["g1", "d1"], ["noon"])[0]] == ["cm1"]
        assert [c["id"] for c in database.user_chats("u1")[0]] == ["d1", "g1"]
        assert database.unread_count("g1", "u2") == 1
        assert [m["user_id"] for m in database.members("g1")] == ["u2", "u1"]
        assert database.get_meta("notified_seq") == 7
        with database.open_blob(thumb) as f:
            assert f.read() == b"thumbnail bytes"
        latest = database.latest_seq()
        assert (
            database.add_message({"id": "new", "user_id": "u1", "content": "x", "recipient_id": None})["seq"]
            == latest + 1
        )
        database.delete_message("new")
    finally:
        database.close()

    transfer.copy_store(schema[0], str(back), blob_dir=str(pg_blobs))
    tables, next_seq, members = snapshot_of(source)
    copied_tables, copied_next_seq, copied_members = snapshot_of(back)
    assert copied_tables == tables
    assert copied_next_seq == next_seq + 1  # the message added (and deleted) in PostgreSQL took one
    assert copied_members == members
    for blob in (digest, thumb):
        with open(back / "blobs" / blob[:2] / blob, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == blob


def test_migrate_store_refuses_a_destination_that_holds_a_store(schema, tmp_path):
    source = JsonStore(str(tmp_path / "source"))
    populate(source)
    source.close()
    transfer.copy_store(str(tmp_path / "source"), schema[0], blob_dir=str(tmp_path / "blobs"))
    with pytest.raises(StoreError, match="already holds"):
        transfer.copy_store(str(tmp_path / "source"), schema[0], blob_dir=str(tmp_path / "blobs"))
    with pytest.raises(StoreError, match="already holds"):
        transfer.copy_store(schema[0], str(tmp_path / "source"), blob_dir=str(tmp_path / "blobs"))


def test_migrate_store_back_into_the_data_directory_the_database_shares_keeps_its_blobs(schema, tmp_path):
    # A PostgreSQL install keeps its bytes in DATA_DIR/blobs; moving it back to a
    # JSON store in that very DATA_DIR must not lose them to the new store's sweep.
    data = tmp_path / "data"
    database = open_store(data, url=schema[0])
    digest = database.save_blob_bytes(b"kept bytes")
    database.create_chat(chat("g1"), [member("u1", "owner")])
    database.add_attachment(
        {
            "id": "a1",
            "chat_id": "g1",
            "uploader_id": "u1",
            "message_id": None,
            "sha256": digest,
            "size": 10,
            "name": "f",
            "created_at": "t",
        }
    )
    database.close()
    transfer.copy_store(schema[0], str(data), blob_dir=str(data / "blobs"))
    restored = open_store(data)
    try:
        with restored.open_blob(digest) as f:
            assert f.read() == b"kept bytes"
        assert restored.get_attachment("a1")["sha256"] == digest
    finally:
        restored.close()


def test_oxc_migrate_store_copies_with_progress(schema, tmp_path):
    source = JsonStore(str(tmp_path / "source"))
    populate(source)
    source.close()
    env = dict(os.environ, DATA_DIR=str(tmp_path / "pgdata"))
    env.pop("STORE_URL", None)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "oxc_wsgi.py"),
            "migrate-store",
            "--from",
            str(tmp_path / "source"),
            "--to",
            schema[0],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "copied 21 records (2 users, 2 messages, 1 sessions, 2 chats, 4 members," in result.stdout
    assert "21/21 meta" in result.stderr and "2/2 blobs" in result.stderr  # progress
    assert len(os.listdir(tmp_path / "pgdata" / "blobs")) == 2  # two blob directories (ab/...)
