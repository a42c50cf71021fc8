"""PostgreSQL's side of the store: its tables, connections and migrations.

``PostgresStore`` (``postgres.py``) keeps each record whole in a ``data``
column beside indexed copies of the fields that queries use; ``TABLES`` says
which, and ``UPSERT`` writes them. ``migrate`` brings a database's schema to
the files under ``migrations/`` (forward only, one process at a time)::

    migrate("postgresql://oxc@db/oxc")           # [(version, name)] applied
    current_version("postgresql://oxc@db/oxc")   # (the database's, the newest known)
"""

import functools
import logging
import os
import re
import select

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import rules
from .errors import StoreError, StoreUnavailable
from .rules import fold, pair_key, push_message_ids

log = logging.getLogger("oxc.store")

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
#: The advisory lock class that makes migrations take turns (see ``postgres.SEQ_LOCK``).
MIGRATION_LOCK = 3167

# table -> (key columns, indexed columns taken from a record, how to take them)
TABLES = {
    "users": (
        ("id",),
        ("id", "username_key", "email_key"),
        lambda r: (r["id"], fold(r["username"]), fold(r.get("email")) or None),
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
        lambda r: (r["id"], r["seq"], r["type"], pair_key(*r["pair"]) if r["type"] == "direct" else None, r["seq"]),
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

UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, errors.ReadOnlySqlTransaction)
RETRIED = (errors.DeadlockDetected, errors.SerializationFailure)


def absent_if_nul(default):
    """Answer ``default()`` for an id holding NUL: no record can have one, and PostgreSQL text refuses it."""

    def wrap(method):
        @functools.wraps(method)
        def checked(self, *args, **kwargs):
            if any(isinstance(value, str) and "\x00" in value for value in (*args, *kwargs.values())):
                return default()
            return method(self, *args, **kwargs)

        return checked

    return wrap


def conflict_message(exc):
    """The Conflict text for a unique violation: which rule the write broke."""
    constraint = getattr(exc.diag, "constraint_name", None) or ""
    if "email" in constraint:
        return rules.EMAIL_TAKEN
    if "username" in constraint:
        return rules.USERNAME_TAKEN
    return "Already exists"


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


def idle_and_open(conn):
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


def connect(url, connect_timeout=5):
    try:
        return psycopg.connect(conninfo(url, connect_timeout), autocommit=True)
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"cannot reach the database: {reason(exc)}") from exc


def reason(exc):
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


def apply_migrations(conn, directory):
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
        with connect(url) as conn:
            return apply_migrations(conn, directory)
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"the database failed while migrating: {reason(exc)}") from exc


def current_version(url, directory=MIGRATIONS):
    """(the schema version of the database, the newest version this oxc has); 0 for none."""
    files = migration_files(directory)
    try:
        with connect(url) as conn:
            return max(_applied(conn), default=0), (files[-1][0] if files else 0)
    except UNAVAILABLE as exc:
        raise StoreUnavailable(f"the database failed: {reason(exc)}") from exc
