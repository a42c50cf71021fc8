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
Real-time events live in the ``events`` table (``pg_events.py``). The
schema is created and migrated at open (``pg_schema.migrate``), forward only.

This module holds connections, transactions and whole-store import and
export; the queries live in mixins by area: ``pg_accounts.py`` (users,
sessions, keys, codes), ``pg_chats.py`` (chats, members, chat messages,
search, attachments) and ``pg_notices.py`` (notifications, devices, push jobs).
"""

import contextlib
import logging
import threading
import time

import psycopg
from psycopg import errors
from psycopg.types.json import Json
from psycopg_pool import ConnectionPool

from .base import Page, Store
from .blobs import Blobs
from .errors import Conflict, StoreError, StoreUnavailable
from .legacy import announce_import
from .pg_accounts import PostgresAccounts
from .pg_chats import PostgresChats
from .pg_events import PostgresEventLog
from .pg_notices import PostgresNotices
from .pg_schema import (
    EXPORT_ORDER,
    MIGRATIONS,
    RETRIED,
    TABLES,
    UNAVAILABLE,
    UPSERT,
    apply_migrations,
    conflict_message,
    connect,
    conninfo,
    current_version,
    idle_and_open,
    is_url,
    migrate,
    migration_files,
    reason,
)
from .rules import blob_digests, message_scopes, search_terms, searchable

# What callers (``oxc migrate``, tests) reach through this module.
__all__ = [
    "MIGRATIONS",
    "PostgresEventLog",
    "PostgresStore",
    "conninfo",
    "current_version",
    "is_url",
    "migrate",
    "migration_files",
]

log = logging.getLogger("oxc.store")

# Advisory lock classes; the second key is a hash of the schema, so two
# installations in one database never wait for each other.
SEQ_LOCK = "SELECT pg_advisory_xact_lock(3166, hashtext(current_schema()))"
BLOB_LOCK = "SELECT pg_advisory_xact_lock(3168, hashtext(current_schema() || ':' || %s))"
#: Seconds a pin keeps a blob file from deletion (a pin outlives its upload only after a crash).
PIN_LIFETIME = 3600


#: The tables that hold message text or copies of it, rewritten by ``compact``.
COMPACTED = ("messages", "chat_messages", "postings", "events", "notifications", "push_jobs")

ORPHANS = """
    SELECT digest FROM unnest(%s::text[]) AS d(digest)
    WHERE NOT EXISTS (SELECT 1 FROM attachments WHERE sha256 = d.digest)
      AND NOT EXISTS (SELECT 1 FROM attachments WHERE thumbnail_sha256 = d.digest)
"""


class PostgresStore(PostgresAccounts, PostgresChats, PostgresNotices, Store):
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
        with connect(url, connect_timeout) as conn:
            try:
                apply_migrations(conn, MIGRATIONS)
            except UNAVAILABLE as exc:
                raise StoreUnavailable(f"the database failed while migrating: {reason(exc)}") from exc
        self._pool = ConnectionPool(
            conninfo(url, connect_timeout),
            min_size=min(2, pool_size),
            max_size=pool_size,
            kwargs={"autocommit": True},
            configure=self._configure,
            check=idle_and_open,
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
            with connect(self.url) as conn:
                for table in COMPACTED:
                    conn.execute(f"VACUUM (FULL) {table}")
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"the database failed while compacting: {reason(exc)}") from exc

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
            raise StoreUnavailable(f"the database is unavailable: {reason(exc)}") from exc

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
                    raise StoreUnavailable(f"the database kept refusing a write: {reason(exc)}") from exc
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
        digests = sorted({digest for record in records for digest in blob_digests(record)})
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
        for digest in blob_digests(record):
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
        announce_import(legacy)
        users, messages, sessions = legacy

        def work(cur):
            try:
                self._put_many(cur, "users", users)
            except errors.UniqueViolation as exc:
                raise Conflict(conflict_message(exc)) from None
            seqs = self._seqs(cur, len(messages))
            for message, seq in zip(messages, seqs):
                message = dict(message, seq=seq)
                self._put(cur, "messages", message)
                self._index_terms(cur, message_scopes(message), message.get("content"), seq)
            self._put_many(cur, "sessions", sessions)

        self._write(work, seq_lock=True)

    # -- real time -------------------------------------------------------------------------------------

    def event_log(self):
        if self._events is None:
            self._events = PostgresEventLog(self.url, self._rows, self._write)
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
                    self._index_terms(cur, message_scopes(record), record.get("content"), record["seq"])
                elif table == "chat_messages":
                    self._index_terms(cur, [record["chat_id"]], searchable(record), record["seq"])

        try:
            self._write(work)
        except errors.UniqueViolation as exc:
            raise Conflict(conflict_message(exc)) from None

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
