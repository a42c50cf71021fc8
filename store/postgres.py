"""The PostgreSQL backend, chosen with ``STORE_URL=postgresql://...``.

Needs psycopg 3 and psycopg_pool (``pip install 'oxc[postgres]'``)::

    store = PostgresStore("postgresql://oxc@db/oxc", blob_dir="data/blobs", pool_size=10)

Behaves as ``JsonStore`` does (``tests/test_store_contract.py`` runs against
both): each table of the JSON store is a table here, keeping the whole record
in a ``json`` column beside indexed copies of the fields that queries use (see
``migrations/0001_initial.sql``). Where the JSON store takes its lock, this
one runs a transaction: row locks (``SELECT ... FOR UPDATE``), unique
constraints and ``ON CONFLICT`` keep concurrent calls as exclusive as they are
there. Writes that hand out a ``seq`` also hold a transaction-scoped advisory
lock from ``nextval`` to commit, so seqs become visible in the order they were
given: a reader that saw seq N never later meets a new seq below N (the
notifier's ``notified_seq`` mark relies on that).

Every write returns after its commit (``synchronous_commit`` is never off,
except for ``touch_user``, which is allowed to lose its last seconds). When
the database cannot be reached, or does not answer within the timeouts, a call
raises ``StoreUnavailable`` (the app answers 503 with Retry-After) instead of
hanging; the connection pool reconnects by itself when the server is back.
Attachment bytes stay on the filesystem under ``blob_dir``, as with the JSON
store; processes sharing one database share that directory too (on one
machine, or a shared filesystem). A blob written but not yet referred to is
pinned in ``blob_pins``, so a delete in another process never removes it.
Real-time events live in the ``events`` table (``PostgresEventLog``). The
schema is created and migrated at open (``migrate``), forward only.
"""

import contextlib
import functools
import logging
import os
import random
import re
import select
import threading
import time

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Json
from psycopg_pool import ConnectionPool

from .base import (
    UNCHECKED,
    Page,
    Store,
    dropped_attachment,
    member_updates,
    push_message_ids,
    search_terms,
    without_preview,
)
from .blobs import Blobs
from .errors import Conflict, Missing, QuotaExceeded, StoreError, StoreUnavailable

log = logging.getLogger("oxc.store")

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")

# Advisory lock classes; the second key is a hash of the schema, so two
# installations in one database never wait for each other.
SEQ_LOCK = "SELECT pg_advisory_xact_lock(3166, hashtext(current_schema()))"
MIGRATION_LOCK = 3167
BLOB_LOCK = "SELECT pg_advisory_xact_lock(3168, hashtext(current_schema() || ':' || %s))"
#: Seconds a pin keeps a blob file from deletion (a pin outlives its upload only after a crash).
PIN_LIFETIME = 3600
#: Seconds a used stream ticket is remembered past its expiry (the processes' clocks may disagree).
TICKET_MEMORY = 300

NO_CURSOR = 2**63 - 1

# table -> (key columns, indexed columns taken from a record, how to take them)
TABLES = {
    "users": (
        ("id",),
        ("id", "username_key", "email_key"),
        lambda r: (r["id"], _fold(r["username"]), _fold(r.get("email")) or None),
    ),
    "messages": (
        ("id",),
        ("id", "seq", "user_id", "recipient_id"),
        lambda r: (r["id"], r["seq"], r["user_id"], r.get("recipient_id")),
    ),
    "sessions": (("id",), ("id", "user_id", "token_hash"), lambda r: (r["id"], r["user_id"], r["token_hash"])),
    "chats": (
        ("id",),
        ("id", "seq", "type", "pair_key", "activity"),
        lambda r: (r["id"], r["seq"], r["type"], _pair_key(*r["pair"]) if r["type"] == "direct" else None, r["seq"]),
    ),
    "members": (("chat_id", "user_id"), ("chat_id", "user_id"), lambda r: (r["chat_id"], r["user_id"])),
    "chat_messages": (("id",), ("id", "chat_id", "seq"), lambda r: (r["id"], r["chat_id"], r["seq"])),
    "attachments": (
        ("id",),
        ("id", "chat_id", "sha256", "thumbnail_sha256", "uploader_id", "size"),
        lambda r: (
            r["id"],
            r["chat_id"],
            r["sha256"],
            r.get("thumbnail_sha256"),
            r.get("uploader_id"),
            r.get("size") or 0,
        ),
    ),
    "keys": (("id",), ("id", "user_id"), lambda r: (r["id"], r["user_id"])),
    "codes": (("id",), ("id",), lambda r: (r["id"],)),
    "notifications": (
        ("id",),
        ("id", "user_id", "seq", "kind", "is_read"),
        lambda r: (r["id"], r["user_id"], r["seq"], r.get("kind"), bool(r.get("read"))),
    ),
    "devices": (("id",), ("id", "user_id"), lambda r: (r["id"], r["user_id"])),
    "push_jobs": (
        ("id",),
        ("id", "status", "next_attempt_at", "created_at", "message_ids"),
        lambda r: (r["id"], r["status"], r.get("next_attempt_at"), r.get("created_at"), push_message_ids(r)),
    ),
}
#: The tables that hold message text or copies of it, rewritten by ``compact``.
COMPACTED = ("messages", "chat_messages", "postings", "events", "notifications", "push_jobs")
#: Columns an update never changes (a chat's activity moves only with its messages).
INSERT_ONLY = {"activity"}
#: The order rows are read back in by ``export_records`` (the JSON store's dict order).
EXPORT_ORDER = {
    "members": "position",
    "keys": "position",
    "devices": "position",
    "push_jobs": "position",
    "messages": "seq",
    "chats": "seq",
    "chat_messages": "seq",
    "notifications": "seq",
}


def _upsert_sql(table):
    keys, columns, _ = TABLES[table]
    names = ", ".join((*columns, "data"))
    marks = ", ".join(["%s"] * (len(columns) + 1))
    changes = ", ".join(
        f"{name} = EXCLUDED.{name}" for name in (*columns, "data") if name not in keys and name not in INSERT_ONLY
    )
    return f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {changes}"


UPSERT = {table: _upsert_sql(table) for table in TABLES}

#: Params: key, 1, the window's end if one starts now, now, now.
COUNT_ATTEMPT = """
    INSERT INTO attempts AS a (key, count, window_ends) VALUES (%s, %s, %s)
    ON CONFLICT (key) DO UPDATE SET
        count = CASE WHEN a.window_ends <= %s THEN 1 ELSE a.count + 1 END,
        window_ends = CASE WHEN a.window_ends <= %s THEN EXCLUDED.window_ends ELSE a.window_ends END
    RETURNING count, window_ends
"""

UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, errors.ReadOnlySqlTransaction)
RETRIED = (errors.DeadlockDetected, errors.SerializationFailure)

ORPHANS = """
    SELECT digest FROM unnest(%s::text[]) AS d(digest)
    WHERE NOT EXISTS (SELECT 1 FROM attachments WHERE sha256 = d.digest)
      AND NOT EXISTS (SELECT 1 FROM attachments WHERE thumbnail_sha256 = d.digest)
"""


def _fold(text):
    return text.casefold() if text else text


def _pair_key(first, second):
    return "|".join(sorted((first, second)))


def _message_scopes(message):
    sender, recipient = message["user_id"], message.get("recipient_id")
    return ["public"] if recipient is None else sorted({f"user:{sender}", f"user:{recipient}"})


def _searchable(message):
    return None if message.get("deleted") or message.get("encrypted") else message.get("content")


def _absent_if_nul(default):
    """Answer ``default()`` for an id holding NUL: no record can have one, and PostgreSQL text refuses it."""

    def wrap(method):
        @functools.wraps(method)
        def checked(self, *args, **kwargs):
            if any(isinstance(value, str) and "\x00" in value for value in (*args, *kwargs.values())):
                return default()
            return method(self, *args, **kwargs)

        return checked

    return wrap


# ---- connecting and migrating ---------------------------------------------------


def is_url(text):
    """Whether ``text`` names a PostgreSQL database (postgresql:// or postgres://)."""
    return isinstance(text, str) and text.startswith(("postgresql://", "postgres://"))


def conninfo(url, connect_timeout=5):
    """``url`` with oxc's defaults for whatever it does not set itself."""
    given = conninfo_to_dict(url)
    # Keepalives and tcp_user_timeout end a connection to a host that stopped
    # answering, where the server-side statement_timeout cannot help.
    defaults = {
        "connect_timeout": connect_timeout,
        "application_name": "oxc",
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 10_000,
    }
    return make_conninfo(url, **{name: value for name, value in defaults.items() if name not in given})


def _idle_and_open(conn):
    """The pool's check before it lends a connection: is it still open? Without a round trip.

    A round trip (psycopg_pool's own check) to a host that went silent waits
    for the TCP timeout, on top of the request's own wait. An idle connection
    has nothing to read, so one that is readable was closed by the server
    (a restart, a terminated backend) or broke; the pool then replaces it.
    """
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        conn.close()  # so that the pool discards it rather than lending it again
        raise psycopg.OperationalError("the server closed the connection")


def _connect(url, connect_timeout=5):
    try:
        return psycopg.connect(conninfo(url, connect_timeout), autocommit=True)
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"cannot reach the database: {_reason(exc)}") from exc


def _reason(exc):
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def migration_files(directory=MIGRATIONS):
    """[(version, name, path)] of the migration files, in order."""
    found = []
    for name in sorted(os.listdir(directory)):
        match = MIGRATION_FILE.match(name)
        if match:
            found.append((int(match.group(1)), match.group(2), os.path.join(directory, name)))
    versions = [version for version, _, _ in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"two migration files in {directory} share a version")
    return found


def _applied(conn):
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def _migrate(conn, directory):
    files = migration_files(directory)
    conn.execute("SELECT pg_advisory_lock(%s, hashtext(current_schema()))", (MIGRATION_LOCK,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = _applied(conn)
        known = files[-1][0] if files else 0
        if max(done, default=0) > known:
            raise StoreError(
                f"the database schema is at version {max(done)}, newer than this oxc knows ({known}); upgrade oxc"
            )
        applied = []
        for version, name, path in files:
            if version in done:
                continue
            with open(path, encoding="utf-8") as f:
                script = f.read()
            with conn.transaction():
                conn.execute(script)
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            log.info("store: applied migration %04d_%s", version, name)
            applied.append((version, name))
        return applied
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(current_schema()))", (MIGRATION_LOCK,))


def migrate(url, directory=MIGRATIONS):
    """Apply the migrations the database lacks, in order; returns [(version, name)] applied.

    Two processes migrating at once take turns (an advisory lock), so each
    file runs once; a database newer than the files raises StoreError.
    """
    try:
        with _connect(url) as conn:
            return _migrate(conn, directory)
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"the database failed while migrating: {_reason(exc)}") from exc


def current_version(url, directory=MIGRATIONS):
    """(the schema version of the database, the newest version this oxc has); 0 for none."""
    files = migration_files(directory)
    try:
        with _connect(url) as conn:
            return max(_applied(conn), default=0), (files[-1][0] if files else 0)
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"the database failed: {_reason(exc)}") from exc


# ---- the store ------------------------------------------------------------------


class PostgresStore(Store):
    """Users, messages, chats ... in a PostgreSQL database; see the module docstring.

    Args:
        url: ``postgresql://user@host:port/database?options=...``.
        blob_dir: where attachment bytes live (None: a temporary directory).
        pool_size: the most connections held open at once.
        timeout: seconds a call waits for a connection before StoreUnavailable.
        connect_timeout, statement_timeout: seconds, for each connection and each statement.
    """

    def __init__(self, url, blob_dir=None, pool_size=10, timeout=5.0, connect_timeout=5, statement_timeout=15):
        self.url = url
        self._timeout = timeout
        self._statement_timeout_ms = int(statement_timeout * 1000)
        self._closed = False
        self._close_lock = threading.Lock()
        self._healthy, self._checked_at = True, time.monotonic()
        #: A list to append every (query, params) to, for tests that EXPLAIN them; None: off.
        self.trace = None
        with _connect(url, connect_timeout) as conn:
            try:
                _migrate(conn, MIGRATIONS)
            except UNAVAILABLE as exc:
                raise StoreUnavailable(f"the database failed while migrating: {_reason(exc)}") from exc
        self._pool = ConnectionPool(
            conninfo(url, connect_timeout),
            min_size=min(2, pool_size),
            max_size=pool_size,
            kwargs={"autocommit": True},
            configure=self._configure,
            check=_idle_and_open,
            timeout=timeout,
            reconnect_timeout=max(10.0, 2 * timeout),
            name="oxc",
            open=False,
        )
        self._pool.open(wait=False)
        # Unlike the JSON store, no sweep of unreferenced blob files at open: the
        # directory may be shared with another process, or still hold a JSON
        # store's bytes that ``oxc migrate-store`` has yet to bring over; and only
        # stale temp files, not the uploads another process has in flight.
        self.blobs = Blobs(blob_dir, shared=True)
        self._events = None

    def _configure(self, conn):
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), "
            "set_config('idle_in_transaction_session_timeout', %s, false)",
            (str(self._statement_timeout_ms), str(max(60_000, 4 * self._statement_timeout_ms))),
        )
        if conn.execute("SHOW synchronous_commit").fetchone()[0] == "off":
            conn.execute("SET synchronous_commit TO on")  # an acknowledged write must survive a crash

    @property
    def writable(self):
        if self._closed:
            return False
        now = time.monotonic()
        if now - self._checked_at < 1.0:
            return self._healthy
        try:
            with self._pool.connection(timeout=min(1.0, self._timeout)) as conn:
                in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            self._healthy = not in_recovery
        except (psycopg.Error, StoreError):
            self._healthy = False
        self._checked_at = time.monotonic()
        return self._healthy

    def close(self):
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close(timeout=5)
        self.blobs.close()

    def compact(self):
        # An UPDATE or DELETE leaves the row's old version in the table's file until a
        # vacuum; VACUUM FULL writes each table anew without them (locking it meanwhile).
        if self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            with _connect(self.url) as conn:
                for table in COMPACTED:
                    conn.execute(f"VACUUM (FULL) {table}")
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"the database failed while compacting: {_reason(exc)}") from exc

    # -- connections, transactions, queries ------------------------------------------

    @contextlib.contextmanager
    def _cursor(self):
        """A cursor on a pooled connection (autocommit); database failures become StoreUnavailable."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            with self._pool.connection(timeout=self._timeout) as conn, conn.cursor() as cursor:
                yield cursor
        except RETRIED:
            raise
        except UNAVAILABLE as exc:
            self._healthy, self._checked_at = False, time.monotonic()
            if self._closed:
                raise StoreUnavailable("the store is closed") from exc
            raise StoreUnavailable(f"the database is unavailable: {_reason(exc)}") from exc

    def _write(self, work, seq_lock=False, durable=True):
        """Run ``work(cursor)`` in one transaction and return its result once committed.

        ``seq_lock``: hold the seq lock from the start (before any ``nextval``).
        Deadlocks and serialization failures are retried a few times.
        """
        for attempt in range(5):
            try:
                with self._cursor() as cur, cur.connection.transaction():
                    if not durable:
                        cur.execute("SET LOCAL synchronous_commit TO off")
                    if seq_lock:
                        cur.execute(SEQ_LOCK)
                    result = work(cur)
                self._healthy, self._checked_at = True, time.monotonic()
                return result
            except RETRIED as exc:
                if attempt == 4:
                    raise StoreUnavailable(f"the database kept refusing a write: {_reason(exc)}") from exc
                time.sleep(0.01 * (attempt + 1))

    def _execute(self, cur, query, params=()):
        if self.trace is not None:
            self.trace.append((query, params))
        cur.execute(query, params)
        return cur

    def _rows(self, query, params=()):
        with self._cursor() as cur:
            return self._execute(cur, query, params).fetchall()

    def _record(self, query, params=()):
        """The first column of the first row (a record), or None."""
        rows = self._rows(query, params)
        return rows[0][0] if rows else None

    def _put(self, cur, table, record):
        self._execute(cur, UPSERT[table], (*TABLES[table][2](record), Json(record)))

    def _put_many(self, cur, table, records):
        records = list(records)
        if records:
            if self.trace is not None:
                self.trace.append((UPSERT[table], None))
            cur.executemany(UPSERT[table], [(*TABLES[table][2](r), Json(r)) for r in records])

    def _locked(self, cur, table, key):
        """The record with ``key`` (id), locked for update; KeyError if there is none."""
        row = self._execute(cur, f"SELECT data FROM {table} WHERE id = %s FOR UPDATE", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return row[0]

    def _change(self, table, key, changes):
        def work(cur):
            record = dict(self._locked(cur, table, key), **changes)
            self._put(cur, table, record)
            return record

        return self._write(work)

    def _delete(self, table, key):
        def work(cur):
            return self._execute(cur, f"DELETE FROM {table} WHERE id = %s", (key,)).rowcount > 0

        return self._write(work)

    def _seqs(self, cur, count):
        if count <= 0:
            return []
        rows = self._execute(cur, "SELECT nextval('oxc_seq') FROM generate_series(1, %s)", (count,)).fetchall()
        return sorted(row[0] for row in rows)

    def _index_terms(self, cur, scopes, text, seq, add=True):
        terms = sorted(search_terms(text)) if text else []
        if not terms or not scopes:
            return
        if add:
            self._execute(
                cur,
                "INSERT INTO postings (scope, term, seq) SELECT s, t, %s "
                "FROM unnest(%s::text[]) AS s, unnest(%s::text[]) AS t ON CONFLICT DO NOTHING",
                (seq, list(scopes), terms),
            )
        else:
            self._execute(
                cur,
                "DELETE FROM postings WHERE scope = ANY(%s::text[]) AND term = ANY(%s::text[]) AND seq = %s",
                (list(scopes), terms, seq),
            )

    def _orphans(self, cur, records):
        digests = sorted({d for r in records for d in (r["sha256"], r.get("thumbnail_sha256")) if d})
        if not digests:
            return []
        return [row[0] for row in self._execute(cur, ORPHANS, (digests,)).fetchall()]

    def _unlink(self, digests):
        # Only after the commit: a crash in between leaves an orphan file
        # (wasted space), never a record without its bytes. Checked again
        # under the digest's lock: the same bytes may have been uploaded anew,
        # here or in another process, and be pinned.
        for digest in digests:

            def work(cur, digest=digest):
                self._execute(cur, BLOB_LOCK, (digest,))
                pinned = self._execute(
                    cur,
                    "SELECT 1 FROM blob_pins WHERE digest = %s AND created_at > %s LIMIT 1",
                    (digest, time.time() - PIN_LIFETIME),
                ).fetchone()
                if not pinned and self._execute(cur, ORPHANS, ([digest],)).fetchone():
                    self.blobs.delete(digest)  # under the lock, before the commit releases it
                self._execute(
                    cur,
                    "DELETE FROM blob_pins WHERE digest = %s AND created_at <= %s",
                    (digest, time.time() - PIN_LIFETIME),
                )

            self._write(work)

    @contextlib.contextmanager
    def _pinning(self, digest):
        """Install the blob ``digest`` (the body of the with) and pin it, under the digest's lock."""
        with self._cursor() as cur, cur.connection.transaction():
            self._execute(cur, BLOB_LOCK, (digest,))
            yield
            self._execute(cur, "INSERT INTO blob_pins (digest, created_at) VALUES (%s, %s)", (digest, time.time()))

    def _unpin(self, cur, record):
        """In the transaction that commits ``record``: its blobs are referred to, no longer merely pinned."""
        for digest in filter(None, (record.get("sha256"), record.get("thumbnail_sha256"))):
            self._execute(
                cur,
                "DELETE FROM blob_pins WHERE id = "
                "(SELECT id FROM blob_pins WHERE digest = %s ORDER BY created_at LIMIT 1)",
                (digest,),
            )

    # -- pages ---------------------------------------------------------------------

    def _page(self, table, sources, before, after, limit):
        """A Page over the union of ``sources`` ((condition, params) on ``table``) by seq."""
        if limit <= 0:
            return self._empty_page(table, sources, before, after)
        forward = after is not None
        cursor = after if forward else before
        bound, order = ("seq > %s", "ASC") if forward else ("seq < %s", "DESC")
        parts, params = [], []
        for condition, values in sources:
            # Each source reads its own index from the cursor on and stops after limit + 1.
            where = condition if cursor is None else f"{condition} AND {bound}"
            parts.append(f"(SELECT seq, data FROM {table} WHERE {where} ORDER BY seq {order} LIMIT %s)")
            params += [*values, *(() if cursor is None else (cursor,)), limit + 1]
        found = dict(self._rows(" UNION ALL ".join(parts), params))  # one message may come from two sources
        rows = sorted(found.items())
        rows = rows[: limit + 1] if forward else rows[-(limit + 1) :]
        more = len(rows) > limit
        if forward:
            rows = rows[:limit]
            older, newer = self._exists(table, sources, "seq <= %s", after), more
        else:
            rows = rows[-limit:]
            older = more
            newer = before is not None and self._exists(table, sources, "seq >= %s", before)
        return Page([data for _, data in rows], older, newer)

    def _empty_page(self, table, sources, before, after):
        if after is not None:
            return Page([], self._exists(table, sources, "seq <= %s", after), False)
        if before is not None:
            return Page([], False, self._exists(table, sources, "seq >= %s", before))
        return Page([], False, False)

    def _exists(self, table, sources, bound, cursor):
        checks = " OR ".join(
            f"EXISTS (SELECT 1 FROM {table} WHERE {condition} AND {bound})" for condition, _ in sources
        )
        params = [value for _, values in sources for value in (*values, cursor)]
        return bool(self._rows(f"SELECT {checks}", params)[0][0])

    # -- legacy import -----------------------------------------------------------------

    def import_legacy(self, legacy):
        """Take in a 0xC data directory's (users, messages, sessions), as read by ``read_legacy``."""
        users, messages, sessions = legacy
        log.info(
            "store: importing a 0xC data directory: %d users, %d messages, %d tokens",
            len(users),
            len(messages),
            len(sessions),
        )

        def work(cur):
            try:
                self._put_many(cur, "users", users)
            except errors.UniqueViolation as exc:
                raise Conflict(_conflict_message(exc)) from None
            seqs = self._seqs(cur, len(messages))
            for message, seq in zip(messages, seqs):
                message = dict(message, seq=seq)
                self._put(cur, "messages", message)
                self._index_terms(cur, _message_scopes(message), message.get("content"), seq)
            self._put_many(cur, "sessions", sessions)

        self._write(work, seq_lock=True)

    # -- users ---------------------------------------------------------------------------

    def _put_user(self, cur, user):
        try:
            with cur.connection.transaction():  # a savepoint, so the caller's transaction survives
                self._put(cur, "users", user)
        except errors.UniqueViolation as exc:
            raise Conflict(_conflict_message(exc)) from None

    def create_user(self, user):
        self._write(lambda cur: self._put_user(cur, user))
        return user

    @_absent_if_nul(lambda: None)
    def get_user(self, user_id):
        return self._record("SELECT data FROM users WHERE id = %s", (user_id,))

    @_absent_if_nul(lambda: None)
    def find_user(self, username):
        return self._record("SELECT data FROM users WHERE username_key = %s", (_fold(username),))

    @_absent_if_nul(lambda: None)
    def find_user_by_email(self, address):
        if not address:
            return None
        return self._record("SELECT data FROM users WHERE email_key = %s", (_fold(address),))

    def update_user(self, user_id, changes, expected=None):
        def work(cur):
            user = self._locked(cur, "users", user_id)
            if expected and any(user.get(name) != value for name, value in expected.items()):
                return None
            user = dict(user, **changes)
            self._put_user(cur, user)
            return user

        return self._write(work)

    # -- messages --------------------------------------------------------------------------

    def add_message(self, message):
        def work(cur):
            record = dict(message, seq=self._seqs(cur, 1)[0])
            self._put(cur, "messages", record)
            self._index_terms(cur, _message_scopes(record), record.get("content"), record["seq"])
            return record

        return self._write(work, seq_lock=True)

    @_absent_if_nul(lambda: None)
    def get_message(self, message_id):
        return self._record("SELECT data FROM messages WHERE id = %s", (message_id,))

    @_absent_if_nul(lambda: None)
    def delete_message(self, message_id):
        def work(cur):
            row = self._execute(cur, "DELETE FROM messages WHERE id = %s RETURNING data", (message_id,)).fetchone()
            if row is None:
                return None
            message = row[0]
            self._index_terms(cur, _message_scopes(message), message.get("content"), message["seq"], add=False)
            return message

        return self._write(work)

    @_absent_if_nul(lambda: Page([], False, False))
    def visible_messages(self, user_id, before=None, after=None, limit=50):
        return self._page(
            "messages",
            [
                ("recipient_id IS NULL", ()),
                ("user_id = %s AND recipient_id IS NOT NULL", (user_id,)),
                ("recipient_id = %s", (user_id,)),
            ],
            before,
            after,
            limit,
        )

    @_absent_if_nul(lambda: Page([], False, False))
    def sent_messages(self, user_id, before=None, after=None, limit=50):
        return self._page("messages", [("user_id = %s", (user_id,))], before, after, limit)

    # -- sessions ----------------------------------------------------------------------------

    def add_session(self, session, password_hash=None):
        def work(cur):
            if password_hash is not None:
                # FOR SHARE: a password change (FOR UPDATE) waits for this commit, or this sees it.
                row = self._execute(
                    cur, "SELECT data->>'password_hash' FROM users WHERE id = %s FOR SHARE", (session["user_id"],)
                ).fetchone()
                if row is None or row[0] != password_hash:
                    return None
            self._put(cur, "sessions", session)
            return session

        return self._write(work)

    @_absent_if_nul(lambda: None)
    def get_session(self, session_id):
        return self._record("SELECT data FROM sessions WHERE id = %s", (session_id,))

    @_absent_if_nul(lambda: None)
    def find_session(self, token_hash):
        return self._record("SELECT data FROM sessions WHERE token_hash = %s LIMIT 1", (token_hash,))

    @_absent_if_nul(lambda: None)
    def rotate_session(self, session_id, token_hash, new_hash, now, expires_at):
        def work(cur):
            row = self._execute(cur, "SELECT data FROM sessions WHERE id = %s FOR UPDATE", (session_id,)).fetchone()
            if row is None or row[0]["token_hash"] != token_hash:
                return None
            session = dict(row[0], token_hash=new_hash, previous_hash=token_hash, rotated_at=now, expires_at=expires_at)
            self._put(cur, "sessions", session)
            return session

        return self._write(work)

    @_absent_if_nul(lambda: False)
    def delete_session(self, session_id):
        return self._delete("sessions", session_id)

    @_absent_if_nul(lambda: 0)
    def delete_user_sessions(self, user_id, keep=None):
        def work(cur):
            if keep is None:
                return self._execute(cur, "DELETE FROM sessions WHERE user_id = %s", (user_id,)).rowcount
            return self._execute(cur, "DELETE FROM sessions WHERE user_id = %s AND id <> %s", (user_id, keep)).rowcount

        return self._write(work)

    # -- the signing key and stream tickets ------------------------------------------------------

    def signing_key(self, candidate):
        def work(cur):
            self._execute(
                cur,
                "INSERT INTO signing_keys (name, value) VALUES ('jwt', %s) ON CONFLICT (name) DO NOTHING",
                (candidate,),
            )
            return self._execute(cur, "SELECT value FROM signing_keys WHERE name = 'jwt'").fetchone()[0]

        return self._write(work), "the database (table signing_keys)"

    def use_ticket(self, ticket_id, expires_at, now):
        # One statement: of two processes inserting one id, exactly one gets its row back.
        first = (
            self._write(
                lambda cur: self._execute(
                    cur,
                    "INSERT INTO stream_tickets (id, expires_at) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING "
                    "RETURNING id",
                    (ticket_id, expires_at),
                ).fetchone()
            )
            is not None
        )
        # Housekeeping, well past expiry: another process's clock may be a little behind this one's.
        self._write(
            lambda cur: self._execute(cur, "DELETE FROM stream_tickets WHERE expires_at < %s", (now - TICKET_MEMORY,)),
            durable=False,
        )
        return first

    # -- people -------------------------------------------------------------------------------

    def touch_user(self, user_id, seconds):
        def work(cur):
            row = self._execute(cur, "SELECT data FROM users WHERE id = %s FOR UPDATE", (user_id,)).fetchone()
            if row is None:
                return None
            user = dict(row[0], last_seen=seconds)
            self._put(cur, "users", user)
            return user

        # Not waited for: losing the last few seconds of "last seen" to a crash
        # is harmless, and a flush per request is not.
        return self._write(work, durable=False)

    @_absent_if_nul(lambda: ([], False))
    def users_by_prefix(self, prefix, limit=20, after=None):
        pattern = re.sub(r"([\\%_])", r"\\\1", _fold(prefix) or "") + "%"
        query = "SELECT data FROM users WHERE username_key LIKE %s ESCAPE '\\'"
        params = [pattern]
        if after is not None:
            query += " AND username_key > %s"
            params.append(_fold(after))
        rows = self._rows(query + " ORDER BY username_key LIMIT %s", (*params, limit + 1))
        return [row[0] for row in rows[:limit]], len(rows) > limit

    # -- chats -----------------------------------------------------------------------------------

    def _add_members(self, cur, chat_id, members):
        self._put_many(cur, "members", (dict(m, chat_id=chat_id) for m in members))

    def create_chat(self, chat, members):
        def work(cur):
            record = dict(chat, seq=self._seqs(cur, 1)[0])
            self._put(cur, "chats", record)
            self._add_members(cur, record["id"], members)
            return record

        return self._write(work, seq_lock=True)

    def direct_chat(self, chat, first, second):
        pair = sorted((first["user_id"], second["user_id"]))
        key = _pair_key(*pair)
        existing = self._record("SELECT data FROM chats WHERE pair_key = %s", (key,))
        if existing is not None:
            return existing, False

        def work(cur):
            # Under the seq lock, a chat another call created for the pair is committed and seen here.
            row = self._execute(cur, "SELECT data FROM chats WHERE pair_key = %s", (key,)).fetchone()
            if row is not None:
                return row[0], False
            record = dict(chat, seq=self._seqs(cur, 1)[0], pair=pair)
            self._put(cur, "chats", record)
            self._add_members(cur, record["id"], (first, second))
            return record, True

        return self._write(work, seq_lock=True)

    @_absent_if_nul(lambda: None)
    def get_chat(self, chat_id):
        return self._record("SELECT data FROM chats WHERE id = %s", (chat_id,))

    def update_chat(self, chat_id, changes):
        return self._change("chats", chat_id, changes)

    @_absent_if_nul(lambda: False)
    def delete_chat(self, chat_id):
        def work(cur):
            if self._execute(cur, "SELECT 1 FROM chats WHERE id = %s FOR UPDATE", (chat_id,)).fetchone() is None:
                return None
            return self._remove_chat(cur, chat_id)

        orphans = self._write(work)
        if orphans is None:
            return False
        self._unlink(orphans)
        return True

    def _remove_chat(self, cur, chat_id):
        """Delete a chat with everything in it; returns the digests no attachment refers to any more."""
        self._execute(cur, "DELETE FROM chat_messages WHERE chat_id = %s", (chat_id,))
        self._execute(cur, "DELETE FROM postings WHERE scope = %s", (chat_id,))
        self._execute(cur, "DELETE FROM members WHERE chat_id = %s", (chat_id,))
        removed = self._execute(cur, "DELETE FROM attachments WHERE chat_id = %s RETURNING data", (chat_id,)).fetchall()
        self._execute(cur, "DELETE FROM chats WHERE id = %s", (chat_id,))
        return self._orphans(cur, [row[0] for row in removed])

    def change_chat(self, chat_id, user_ids, decide):
        user_ids = list(dict.fromkeys(user_ids))
        readable = [user_id for user_id in user_ids if "\x00" not in user_id]  # no record has a NUL in its id

        def work(cur):
            # Every operation that changes members locks the chat's row first, so they take
            # turns on one chat and each decides on what the one before it wrote.
            row = (
                None
                if "\x00" in chat_id
                else self._execute(cur, "SELECT data FROM chats WHERE id = %s FOR UPDATE", (chat_id,)).fetchone()
            )
            chat = row[0] if row else None
            current, count = dict.fromkeys(user_ids), 0
            if chat is not None:
                for user_id, data in self._execute(
                    cur,
                    "SELECT user_id, data FROM members WHERE chat_id = %s AND user_id = ANY(%s::text[]) "
                    "ORDER BY user_id FOR UPDATE",
                    (chat_id, readable),
                ).fetchall():
                    current[user_id] = data
                count = self._execute(cur, "SELECT count(*) FROM members WHERE chat_id = %s", (chat_id,)).fetchone()[0]
            change = decide(chat, dict(current), count)
            if change is None:
                return chat, current, []
            if chat is None:
                raise Missing(f"chat {chat_id} is gone")
            updates = member_updates(change, user_ids)
            after = dict(current)
            for user_id, record in updates.items():
                after[user_id] = None if record is None else dict(record, chat_id=chat_id, user_id=user_id)
            gone = [user_id for user_id, record in updates.items() if record is None and current[user_id]]
            put = [after[user_id] for user_id, record in updates.items() if record is not None]
            joined = sum(1 for record in put if current[record["user_id"]] is None)
            if change.delete or (updates and count - len(gone) + joined == 0):
                return None, dict.fromkeys(user_ids), self._remove_chat(cur, chat_id)
            if gone:
                self._execute(
                    cur, "DELETE FROM members WHERE chat_id = %s AND user_id = ANY(%s::text[])", (chat_id, gone)
                )
            self._put_many(cur, "members", put)
            if change.chat:
                chat = dict(chat, **change.chat)
                self._put(cur, "chats", chat)
            return chat, after, []

        chat, after, orphans = self._write(work)
        self._unlink(orphans)
        return chat, after

    @_absent_if_nul(lambda: set())
    def chat_ids(self, user_id):
        return {row[0] for row in self._rows("SELECT chat_id FROM members WHERE user_id = %s", (user_id,))}

    @_absent_if_nul(lambda: ([], False))
    def user_chats(self, user_id, limit=50, before=None):
        query = (
            "SELECT c.data FROM members m JOIN chats c ON c.id = m.chat_id WHERE m.user_id = %s{} "
            "ORDER BY c.activity DESC, c.id DESC LIMIT %s"
        )
        cursor = None if before is None else self._rows("SELECT activity, id FROM chats WHERE id = %s", (before,))
        if cursor:
            rows = self._rows(query.format(" AND (c.activity, c.id) < (%s, %s)"), (user_id, *cursor[0], limit + 1))
        else:
            rows = self._rows(query.format(""), (user_id, limit + 1))
        return [row[0] for row in rows[:limit]], len(rows) > limit

    # -- members ---------------------------------------------------------------------------------

    @_absent_if_nul(lambda: None)
    def get_member(self, chat_id, user_id):
        return self._record("SELECT data FROM members WHERE chat_id = %s AND user_id = %s", (chat_id, user_id))

    @_absent_if_nul(lambda: [])
    def members(self, chat_id):
        return [
            row[0] for row in self._rows("SELECT data FROM members WHERE chat_id = %s ORDER BY position", (chat_id,))
        ]

    def add_member(self, member):
        def work(cur):
            inserted = self._execute(
                cur,
                "INSERT INTO members (chat_id, user_id, data) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (member["chat_id"], member["user_id"], Json(member)),
            ).rowcount
            if not inserted:
                raise Conflict("User is already a member of this chat")

        self._write(work)
        return member

    def update_members(self, updates):
        def work(cur):
            locked = {}
            for chat_id, user_id in sorted(updates):  # one order everywhere, so no deadlocks
                row = self._execute(
                    cur, "SELECT data FROM members WHERE chat_id = %s AND user_id = %s FOR UPDATE", (chat_id, user_id)
                ).fetchone()
                if row is None:
                    raise KeyError((chat_id, user_id))
                locked[chat_id, user_id] = row[0]
            records = [dict(locked[key], **changes) for key, changes in updates.items()]
            self._put_many(cur, "members", records)
            return records

        return self._write(work)

    @_absent_if_nul(lambda: False)
    def remove_member(self, chat_id, user_id):
        def work(cur):
            return (
                self._execute(
                    cur, "DELETE FROM members WHERE chat_id = %s AND user_id = %s", (chat_id, user_id)
                ).rowcount
                > 0
            )

        return self._write(work)

    # -- messages in chats -------------------------------------------------------------------------

    def add_chat_message(self, message):
        chat_id, user_id, attachment_id = message["chat_id"], message["user_id"], message.get("attachment_id")

        def work(cur):
            record = dict(message, seq=self._seqs(cur, 1)[0])
            seq = record["seq"]
            # Locks in the order every chat operation takes them: the chat, its members, then the rest.
            self._execute(cur, "UPDATE chats SET activity = GREATEST(activity, %s) WHERE id = %s", (seq, chat_id))
            row = self._execute(
                cur, "SELECT data FROM members WHERE chat_id = %s AND user_id = %s FOR UPDATE", (chat_id, user_id)
            ).fetchone()
            if row is None:
                raise Missing(f"{user_id} is not a member of chat {chat_id}")
            author = row[0]
            if attachment_id:
                found = self._execute(
                    cur, "SELECT data FROM attachments WHERE id = %s FOR UPDATE", (attachment_id,)
                ).fetchone()
                attachment = found[0] if found else None
                if attachment is None or attachment["chat_id"] != chat_id or attachment.get("message_id") is not None:
                    raise Conflict(f"attachment {attachment_id} is not an unsent attachment of chat {chat_id}")
                self._put(cur, "attachments", dict(attachment, message_id=record["id"]))
            self._put(cur, "chat_messages", record)
            self._index_terms(cur, [chat_id], _searchable(record), seq)
            self._put(
                cur, "members", dict(author, read_seq=seq, delivered_seq=max(author.get("delivered_seq", 0), seq))
            )
            return record

        if "\x00" in chat_id or "\x00" in user_id:  # no record has a NUL in its id
            raise Missing(f"{user_id!r} is not a member of chat {chat_id!r}")
        if attachment_id and "\x00" in attachment_id:
            raise Conflict(f"attachment {attachment_id!r} is not an unsent attachment of chat {chat_id!r}")
        return self._write(work, seq_lock=True)

    @_absent_if_nul(lambda: None)
    def get_chat_message(self, message_id):
        return self._record("SELECT data FROM chat_messages WHERE id = %s", (message_id,))

    def update_chat_message(self, message_id, changes):
        def work(cur):
            old = self._locked(cur, "chat_messages", message_id)
            return self._rewrite_chat_message(cur, old, dict(old, **changes))

        return self._write(work)

    def _rewrite_chat_message(self, cur, old, message):
        """Store ``message`` in place of ``old``, moving its search postings if its text changed."""
        before, after = _searchable(old), _searchable(message)
        if before != after:
            self._index_terms(cur, [old["chat_id"]], before, old["seq"], add=False)
            self._index_terms(cur, [message["chat_id"]], after, message["seq"])
        self._put(cur, "chat_messages", message)
        return message

    def change_chat_message(self, message_id, user_id, decide):
        def work(cur):
            row = self._execute(cur, "SELECT chat_id FROM chat_messages WHERE id = %s", (message_id,)).fetchone()
            old = member = None
            # A key-share lock on the chat: membership changes (which lock it for update) wait, messages do not.
            if (
                row is not None
                and self._execute(cur, "SELECT 1 FROM chats WHERE id = %s FOR KEY SHARE", (row[0],)).fetchone()
            ):
                found = self._execute(
                    cur, "SELECT data FROM members WHERE chat_id = %s AND user_id = %s", (row[0], user_id)
                ).fetchone()
                member = found[0] if found else None
                found = self._execute(
                    cur, "SELECT data FROM chat_messages WHERE id = %s FOR UPDATE", (message_id,)
                ).fetchone()
                old = found[0] if found else None
            changes = decide(old, member)
            if not changes:
                return old, []
            if old is None:
                raise Missing(f"chat message {message_id} is gone")
            message = self._rewrite_chat_message(cur, old, dict(old, **changes))
            dropped = dropped_attachment(old, message)
            removed = (
                dropped
                and self._execute(cur, "DELETE FROM attachments WHERE id = %s RETURNING data", (dropped,)).fetchone()
            )
            return message, self._orphans(cur, [removed[0]]) if removed else []

        if "\x00" in message_id or "\x00" in user_id:
            if decide(None, None):
                raise Missing(f"chat message {message_id!r} is gone")
            return None
        message, orphans = self._write(work)
        self._unlink(orphans)
        return message

    @_absent_if_nul(lambda: Page([], False, False))
    def chat_history(self, chat_id, before=None, after=None, limit=50):
        return self._page("chat_messages", [("chat_id = %s", (chat_id,))], before, after, limit)

    @_absent_if_nul(lambda: 0)
    def unread_count(self, chat_id, user_id):
        return self._rows(
            "SELECT count(*) FROM chat_messages WHERE chat_id = %s AND seq > COALESCE("
            "(SELECT (data->>'read_seq')::bigint FROM members WHERE chat_id = %s AND user_id = %s), 0)",
            (chat_id, chat_id, user_id),
        )[0][0]

    def search(self, scopes, terms, before=None, limit=20):
        terms = sorted({term for term in terms if "\x00" not in term})
        scopes = [scope for scope in dict.fromkeys(scopes) if "\x00" not in scope]
        if not terms or not scopes or limit <= 0:
            return [], False
        # Each scope is read newest first from the postings of its longest
        # (likely rarest) term, stopping after limit + 1 matches.
        lead = max(terms, key=lambda term: (len(term), term))
        others = [term for term in terms if term != lead]
        checks = "".join(
            " AND EXISTS (SELECT 1 FROM postings o WHERE o.scope = p.scope AND o.term = %s AND o.seq = p.seq)"
            for _ in others
        )
        query = (
            "SELECT DISTINCT found.seq FROM unnest(%s::text[]) AS s(scope) CROSS JOIN LATERAL ("
            f"SELECT p.seq FROM postings p WHERE p.scope = s.scope AND p.term = %s AND p.seq < %s{checks} "
            "ORDER BY p.seq DESC LIMIT %s) AS found ORDER BY found.seq DESC LIMIT %s"
        )
        bound = NO_CURSOR if before is None else before
        found = [row[0] for row in self._rows(query, (scopes, lead, bound, *others, limit + 1, limit + 1))]
        wanted = found[:limit]
        records = (
            dict(
                self._rows(
                    "SELECT seq, data FROM chat_messages WHERE seq = ANY(%s::bigint[]) UNION ALL "
                    "SELECT seq, data FROM messages WHERE seq = ANY(%s::bigint[])",
                    (wanted, wanted),
                )
            )
            if wanted
            else {}
        )
        return [records[seq] for seq in wanted if seq in records], len(found) > limit

    # -- attachments and blobs ----------------------------------------------------------------------

    def save_blob(self, read, limit):
        return self.blobs.put(read, limit, self._pinning)

    def save_blob_bytes(self, data):
        return self.blobs.put_bytes(data, self._pinning)

    def discard_blob(self, digest):
        self._write(lambda cur: self._unpin(cur, {"sha256": digest}))
        self._unlink([digest])

    def open_blob(self, digest):
        return self.blobs.open(digest)

    def add_attachment(self, attachment, quota=0):
        def work(cur):
            # A key-share lock: a group deleted meanwhile waits for this insert or refuses it.
            if (
                self._execute(
                    cur, "SELECT 1 FROM chats WHERE id = %s FOR KEY SHARE", (attachment["chat_id"],)
                ).fetchone()
                is None
            ):
                raise Missing(f"chat {attachment['chat_id']} is gone")
            if quota:
                # The uploader's row is the lock that makes check and insert one step across processes.
                uploader = attachment.get("uploader_id")
                self._execute(cur, "SELECT 1 FROM users WHERE id = %s FOR UPDATE", (uploader,))
                used = self._used(cur, uploader)
                if used + (attachment.get("size") or 0) > quota:
                    raise QuotaExceeded(used, quota)
            self._put(cur, "attachments", attachment)
            self._unpin(cur, attachment)

        self._write(work)
        return attachment

    def _used(self, cur, user_id):
        return self._execute(
            cur, "SELECT COALESCE(sum(size), 0)::bigint FROM attachments WHERE uploader_id = %s", (user_id,)
        ).fetchone()[0]

    @_absent_if_nul(lambda: 0)
    def attachment_usage(self, user_id):
        with self._cursor() as cur:
            return self._used(cur, user_id)

    @_absent_if_nul(lambda: None)
    def get_attachment(self, attachment_id):
        return self._record("SELECT data FROM attachments WHERE id = %s", (attachment_id,))

    def update_attachment(self, attachment_id, changes):
        def work(cur):
            record = dict(self._locked(cur, "attachments", attachment_id), **changes)
            self._put(cur, "attachments", record)
            self._unpin(cur, {"thumbnail_sha256": changes.get("thumbnail_sha256")})
            return record

        return self._write(work)

    @_absent_if_nul(lambda: False)
    def delete_attachment(self, attachment_id, unsent_only=False):
        def work(cur):
            unsent = " AND (data->>'message_id') IS NULL" if unsent_only else ""
            row = self._execute(
                cur, f"DELETE FROM attachments WHERE id = %s{unsent} RETURNING data", (attachment_id,)
            ).fetchone()
            return None if row is None else self._orphans(cur, [row[0]])

        orphans = self._write(work)
        if orphans is None:
            return False
        self._unlink(orphans)
        return True

    # -- public keys ------------------------------------------------------------------------------------

    def add_key(self, key):
        self._write(lambda cur: self._put(cur, "keys", key))
        return key

    @_absent_if_nul(lambda: None)
    def get_key(self, key_id):
        return self._record("SELECT data FROM keys WHERE id = %s", (key_id,))

    @_absent_if_nul(lambda: [])
    def user_keys(self, user_id):
        keys = [row[0] for row in self._rows("SELECT data FROM keys WHERE user_id = %s ORDER BY position", (user_id,))]
        return sorted(keys, key=lambda key: key["created_at"])

    def change_user_keys(self, user_id, decide):
        def work(cur):
            # The user's row lock makes one user's key changes take turns.
            self._execute(cur, "SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,))
            own = {
                row[0]["id"]: row[0]
                for row in self._execute(
                    cur, "SELECT data FROM keys WHERE user_id = %s ORDER BY position FOR UPDATE", (user_id,)
                ).fetchall()
            }
            added, changes = decide(sorted(own.values(), key=lambda key: key["created_at"]))
            changed = [dict(own[key_id], **change) for key_id, change in changes.items()]
            self._put_many(cur, "keys", [*added, *changed])
            return added, changed

        if "\x00" in user_id:
            added, changes = decide([])
            if added or changes:
                raise Missing(f"user {user_id!r} does not exist")
            return [], []
        return self._write(work)

    def update_key(self, key_id, changes):
        return self._change("keys", key_id, changes)

    # -- one-time codes -------------------------------------------------------------------------------------

    def put_code(self, code):
        self._write(lambda cur: self._put(cur, "codes", code))
        return code

    @_absent_if_nul(lambda: None)
    def get_code(self, code_id):
        return self._record("SELECT data FROM codes WHERE id = %s", (code_id,))

    @_absent_if_nul(lambda: False)
    def delete_code(self, code_id, code_hash=None):
        if code_hash is None:
            return self._delete("codes", code_id)
        return self._write(
            lambda cur: (
                self._execute(
                    cur, "DELETE FROM codes WHERE id = %s AND data->>'code_hash' = %s", (code_id, code_hash)
                ).rowcount
                > 0
            )
        )

    @_absent_if_nul(lambda: None)
    def spend_code(self, code_id, now, max_attempts):
        def work(cur):
            row = self._execute(cur, "SELECT data FROM codes WHERE id = %s FOR UPDATE", (code_id,)).fetchone()
            if row is None:
                return None
            code = row[0]
            if code["expires_at"] < now or code["attempts"] >= max_attempts:
                self._execute(cur, "DELETE FROM codes WHERE id = %s", (code_id,))
                return None
            code = dict(code, attempts=code["attempts"] + 1)
            self._put(cur, "codes", code)
            return code

        return self._write(work)

    # -- attempts counted in a window ---------------------------------------------------------------------

    def count_attempt(self, key, now, window):
        # One statement: the row lock of ON CONFLICT makes concurrent counts queue, in any process.
        count, ends = self._write(
            lambda cur: self._execute(cur, COUNT_ATTEMPT, (key, 1, now + window, now, now)).fetchone()
        )
        if random.random() < 0.001:  # housekeeping, not a rule: any process may sweep
            self._write(
                lambda cur: self._execute(cur, "DELETE FROM attempts WHERE window_ends <= %s", (now,)), durable=False
            )
        return count, ends

    def take_back_attempt(self, key):
        self._write(
            lambda cur: self._execute(cur, "UPDATE attempts SET count = count - 1 WHERE key = %s AND count > 0", (key,))
        )

    def clear_attempts(self, key):
        self._write(lambda cur: self._execute(cur, "DELETE FROM attempts WHERE key = %s", (key,)))

    # -- notifications ---------------------------------------------------------------------------------------

    def add_notifications(self, notifications, push_jobs=(), max_pending=0, mark=None, expected=UNCHECKED):
        if not notifications and not push_jobs and mark is None:
            return [], [], []
        push_jobs = list(push_jobs)

        def work(cur):
            if expected is not UNCHECKED:  # under the seq lock, which every writer of the mark holds
                row = self._execute(cur, "SELECT value FROM meta WHERE key = 'notified_seq'").fetchone()
                if (row[0] if row else None) != expected:
                    raise Conflict("The notification mark has moved")
            seqs = self._seqs(cur, len(notifications))
            records = [dict(note, seq=seq) for note, seq in zip(notifications, seqs)]
            pending = self._execute(cur, "SELECT count(*) FROM push_jobs WHERE status = 'pending'").fetchone()[0]
            room = max(0, max_pending - pending)
            accepted = [dict(job, status="pending") for job in push_jobs[:room]]
            refused = [dict(job, status="dead", last_error="the push queue is full") for job in push_jobs[room:]]
            self._put_many(cur, "notifications", records)
            self._put_many(cur, "push_jobs", accepted + refused)
            if mark is not None:
                self._execute(
                    cur,
                    "INSERT INTO meta (key, value) VALUES ('notified_seq', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (Json(mark),),
                )
            return records, accepted, refused

        # The seq lock also keeps two callers from both taking the last room in the queue.
        return self._write(work, seq_lock=True)

    @_absent_if_nul(lambda: None)
    def get_meta(self, key):
        return self._record("SELECT value FROM meta WHERE key = %s", (key,))

    def latest_seq(self):
        last_value, is_called = self._rows("SELECT last_value, is_called FROM oxc_seq")[0]
        return last_value if is_called else last_value - 1

    def chat_messages_after(self, seq, limit=100):
        return [
            row[0]
            for row in self._rows("SELECT data FROM chat_messages WHERE seq > %s ORDER BY seq LIMIT %s", (seq, limit))
        ]

    @_absent_if_nul(lambda: None)
    def get_notification(self, notification_id):
        return self._record("SELECT data FROM notifications WHERE id = %s", (notification_id,))

    @_absent_if_nul(lambda: ([], False))
    def user_notifications(self, user_id, before=None, limit=50, kind=None, unread_only=False):
        query, params = "SELECT data FROM notifications WHERE user_id = %s", [user_id]
        if before is not None:
            query += " AND seq < %s"
            params.append(before)
        if kind is not None:
            query += " AND kind = %s"
            params.append(kind)
        if unread_only:
            query += " AND NOT is_read"
        rows = self._rows(query + " ORDER BY seq DESC LIMIT %s", (*params, limit + 1))
        return [row[0] for row in rows[:limit]], len(rows) > limit

    @_absent_if_nul(lambda: 0)
    def unread_notification_count(self, user_id):
        return self._rows("SELECT count(*) FROM notifications WHERE user_id = %s AND NOT is_read", (user_id,))[0][0]

    @_absent_if_nul(lambda: 0)
    def mark_notifications_read(self, user_id, notification_ids=None):
        query, params = "SELECT data FROM notifications WHERE user_id = %s AND NOT is_read", [user_id]
        if notification_ids is not None:
            wanted = [i for i in notification_ids if isinstance(i, str) and "\x00" not in i]
            if not wanted:
                return 0
            query += " AND id = ANY(%s::text[])"
            params.append(wanted)

        def work(cur):
            unread = [row[0] for row in self._execute(cur, query + " ORDER BY seq FOR UPDATE", params).fetchall()]
            self._put_many(cur, "notifications", (dict(note, read=True) for note in unread))
            return len(unread)

        return self._write(work)

    def scrub_message(self, message_id, retract):
        def work(cur):
            events = self._execute(
                cur,
                "SELECT id, type, data FROM events WHERE data->>'id' = %s "
                "OR data->>'message_id' = %s ORDER BY id FOR UPDATE",
                (message_id, message_id),
            ).fetchall()
            for event_id, kind, data in events:
                replaced = retract(kind, data)
                if replaced is not None and replaced != data:
                    self._execute(cur, "UPDATE events SET data = %s WHERE id = %s", (Json(replaced), event_id))
            notes = [
                row[0]
                for row in self._execute(
                    cur,
                    "SELECT data FROM notifications WHERE data->>'message_id' = %s ORDER BY seq FOR UPDATE",
                    (message_id,),
                ).fetchall()
            ]
            self._put_many(
                cur, "notifications", (dict(note, preview=None) for note in notes if note.get("preview") is not None)
            )
            jobs = [
                row[0]
                for row in self._execute(
                    cur,
                    "SELECT data FROM push_jobs WHERE message_ids @> ARRAY[%s]::text[] ORDER BY position FOR UPDATE",
                    (message_id,),
                ).fetchall()
            ]
            scrubbed = [without_preview(job, message_id) for job in jobs]
            self._put_many(cur, "push_jobs", (new for new, old in zip(scrubbed, jobs) if new is not old))

        if "\x00" not in message_id:
            self._write(work)

    # -- devices and push jobs -------------------------------------------------------------------------------------

    def add_device(self, device, limit=None):
        def work(cur):
            if limit is not None:
                # The user's row lock makes one user's registrations take turns, so the count holds.
                self._execute(cur, "SELECT 1 FROM users WHERE id = %s FOR UPDATE", (device["user_id"],))
                held = self._execute(
                    cur, "SELECT count(*) FROM devices WHERE user_id = %s", (device["user_id"],)
                ).fetchone()[0]
                if held >= limit:
                    raise Conflict(f"user {device['user_id']} already has {limit} devices")
            self._put(cur, "devices", device)

        self._write(work)
        return device

    @_absent_if_nul(lambda: None)
    def get_device(self, device_id):
        return self._record("SELECT data FROM devices WHERE id = %s", (device_id,))

    @_absent_if_nul(lambda: [])
    def user_devices(self, user_id):
        return [
            row[0] for row in self._rows("SELECT data FROM devices WHERE user_id = %s ORDER BY position", (user_id,))
        ]

    @_absent_if_nul(lambda: False)
    def delete_device(self, device_id):
        return self._delete("devices", device_id)

    def due_push_jobs(self, now, limit=50):
        return [
            row[0]
            for row in self._rows(
                "SELECT data FROM push_jobs WHERE status = 'pending' AND next_attempt_at <= %s "
                "ORDER BY next_attempt_at, id LIMIT %s",
                (now, limit),
            )
        ]

    def claim_push_jobs(self, now, lease, limit=50):
        def work(cur):
            # SKIP LOCKED: a job another process is claiming right now is left to it.
            due = [
                row[0]
                for row in self._execute(
                    cur,
                    "SELECT data FROM push_jobs WHERE status = 'pending' AND next_attempt_at <= %s "
                    "ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (now, limit),
                ).fetchall()
            ]
            claimed = [dict(job, next_attempt_at=now + lease) for job in due]
            self._put_many(cur, "push_jobs", claimed)
            return claimed

        return self._write(work)

    def next_push_time(self):
        job = self._record("SELECT data FROM push_jobs WHERE status = 'pending' ORDER BY next_attempt_at, id LIMIT 1")
        return None if job is None else job["next_attempt_at"]

    def update_push_job(self, job_id, changes):
        return self._change("push_jobs", job_id, changes)

    @_absent_if_nul(lambda: False)
    def delete_push_job(self, job_id):
        return self._delete("push_jobs", job_id)

    def dead_push_jobs(self, limit=100):
        return [
            row[0]
            for row in self._rows(
                "SELECT data FROM push_jobs WHERE status = 'dead' ORDER BY created_at DESC, position LIMIT %s", (limit,)
            )
        ]

    # -- real time -------------------------------------------------------------------------------------

    def event_log(self):
        if self._events is None:
            self._events = PostgresEventLog(self)
        return self._events

    # -- moving whole stores (``oxc migrate-store``) ---------------------------------------------------

    def is_empty(self):
        """Whether no table holds a record."""
        checks = " OR ".join(f"EXISTS (SELECT 1 FROM {table})" for table in (*TABLES, "meta"))
        return not self._rows(f"SELECT {checks}")[0][0]

    def count_records(self):
        """{table: rows} over every table."""
        return {table: self._rows(f"SELECT count(*) FROM {table}")[0][0] for table in (*TABLES, "meta")}

    def export_records(self, batch=1000):
        """Yield (table, record) for every record, each table in the JSON store's order.

        ``meta`` records come as ``{"key": ..., "value": ...}``.
        """
        for table in (*TABLES, "meta"):
            if table == "meta":
                for key, value in self._rows("SELECT key, value FROM meta ORDER BY key"):
                    yield table, {"key": key, "value": value}
                continue
            order = EXPORT_ORDER.get(table, "id")
            last = None
            while True:
                # Keyset pages, so a large table is never held whole.
                where = "" if last is None else f" WHERE {order} > %s"
                rows = self._rows(
                    f"SELECT {order}, data FROM {table}{where} ORDER BY {order} LIMIT %s",
                    (() if last is None else (last,)) + (batch,),
                )
                for _, data in rows:
                    yield table, data
                if len(rows) < batch:
                    break
                last = rows[-1][0]

    def import_records(self, table, records):
        """Load ``records`` of one table in one transaction, as they are (seqs included)."""
        records = list(records)

        def work(cur):
            if table == "meta":
                for record in records:
                    self._execute(
                        cur,
                        "INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) "
                        "DO UPDATE SET value = EXCLUDED.value",
                        (record["key"], Json(record["value"])),
                    )
                return
            self._put_many(cur, table, records)
            for record in records:
                if table == "messages":
                    self._index_terms(cur, _message_scopes(record), record.get("content"), record["seq"])
                elif table == "chat_messages":
                    self._index_terms(cur, [record["chat_id"]], _searchable(record), record["seq"])

        try:
            self._write(work)
        except errors.UniqueViolation as exc:
            raise Conflict(_conflict_message(exc)) from None

    def finish_import(self, next_seq):
        """After ``import_records``: set each chat's activity, and the seq to continue from."""

        def work(cur):
            self._execute(
                cur,
                "UPDATE chats c SET activity = GREATEST(c.seq, COALESCE("
                "(SELECT max(seq) FROM chat_messages m WHERE m.chat_id = c.id), 0))",
            )
            highest = self._execute(
                cur,
                "SELECT GREATEST((SELECT max(seq) FROM messages), "
                "(SELECT max(seq) FROM chat_messages), (SELECT max(seq) FROM chats), "
                "(SELECT max(seq) FROM notifications), 0)",
            ).fetchone()[0]
            last = max(highest, next_seq - 1)
            if last > 0:
                self._execute(cur, "SELECT setval('oxc_seq', %s, true)", (last,))

        self._write(work, seq_lock=True)


def _conflict_message(exc):
    constraint = getattr(exc.diag, "constraint_name", None) or ""
    if "email" in constraint:
        return "Email already registered"
    if "username" in constraint:
        return "Username already exists"
    return "Already exists"


class PostgresEventLog:
    """The real-time event log in the ``events`` table, shared by every process on the database.

    ``append`` takes the next id under the row lock of ``event_log`` and
    announces it with NOTIFY in the same transaction; ``follow`` (one thread
    per process) LISTENs and calls ``wake`` on every announcement, and at
    least once a second in case one was missed while reconnecting. A row is
    ``(id, type, data, audience, chat_id, at)``.
    """

    COLUMNS = "id, type, data, audience, chat_id, at"

    def __init__(self, store):
        self._store = store
        rows = store._rows("SELECT epoch, current_schema() FROM event_log")
        self.epoch, schema = rows[0]
        self.channel = f"oxc_events_{schema}"[:63]

    def append(self, type, data, audience, chat_id, at):
        """Add an event; its id once committed."""

        def work(cur):
            event_id = cur.execute("UPDATE event_log SET last_id = last_id + 1 RETURNING last_id").fetchone()[0]
            cur.execute(
                f"INSERT INTO events ({self.COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                (event_id, type, Json(data), None if audience is None else sorted(audience), chat_id, at),
            )
            cur.execute("SELECT pg_notify(%s, %s)", (self.channel, str(event_id)))
            return event_id

        # Events are not records: one lost in a crash is one a listener did not get either.
        return self._store._write(work, durable=False)

    def newest(self):
        """The id of the newest event (0: none yet)."""
        return self._store._rows("SELECT last_id FROM event_log")[0][0]

    def after(self, event_id, limit):
        """Rows with ids above ``event_id``, oldest first."""
        return self._store._rows(
            f"SELECT {self.COLUMNS} FROM events WHERE id > %s ORDER BY id LIMIT %s", (event_id, limit)
        )

    def recent(self, limit):
        """The newest ``limit`` rows, oldest first."""
        return self._store._rows(
            f"SELECT * FROM (SELECT {self.COLUMNS} FROM events ORDER BY id DESC LIMIT %s) AS newest ORDER BY id",
            (limit,),
        )

    def prune(self, keep):
        """Drop all but the newest ``keep`` events; returns how many went."""

        def work(cur):
            return cur.execute("DELETE FROM events WHERE id <= (SELECT last_id FROM event_log) - %s", (keep,)).rowcount

        return self._store._write(work, durable=False)

    def follow(self, wake, stopped):
        """Call ``wake()`` whenever events are appended, until ``stopped()``; reconnects by itself."""
        while not stopped():
            try:
                with _connect(self._store.url) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    wake()  # whatever came while not listening
                    while not stopped():
                        for _ in conn.notifies(timeout=1.0):
                            break
                        wake()
            except (psycopg.Error, StoreError) as exc:
                if not stopped():
                    log.warning("events: following the event log failed, retrying: %s", _reason(exc))
                    time.sleep(1.0)
