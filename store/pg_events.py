"""PostgreSQL's real-time event log: the ``events`` table, shared by every process on the database.

``PostgresStore.event_log()`` hands out the one instance; ``handlers/services/hub.py``
appends to it and follows it (LISTEN/NOTIFY), so a cursor resumes on any process.
"""

import logging
import time

import psycopg
from psycopg import sql
from psycopg.types.json import Json

from .errors import StoreError
from .eventlog import EventLog
from .pg_schema import connect, reason

log = logging.getLogger("oxc.store")


class PostgresEventLog(EventLog):
    """The real-time event log in the ``events`` table, shared by every process on the database.

    ``append`` takes the next id under the row lock of ``event_log`` and
    announces it with NOTIFY in the same transaction; ``follow`` (one thread
    per process) LISTENs and calls ``wake`` on every announcement, and at
    least once a second in case one was missed while reconnecting. A row is
    ``(id, type, data, audience, chat_id, at)``.
    """

    COLUMNS = "id, type, data, audience, chat_id, at"

    def __init__(self, url, rows, write):
        #: ``rows(query, params)`` and ``write(work, durable=...)``: the store's own query and transaction.
        self._url, self._rows, self._write = url, rows, write
        found = rows("SELECT epoch, current_schema() FROM event_log")
        self.epoch, schema = found[0]
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
        return self._write(work, durable=False)

    def newest(self):
        """The id of the newest event (0: none yet)."""
        return self._rows("SELECT last_id FROM event_log")[0][0]

    def after(self, event_id, limit):
        """Rows with ids above ``event_id``, oldest first."""
        return self._rows(f"SELECT {self.COLUMNS} FROM events WHERE id > %s ORDER BY id LIMIT %s", (event_id, limit))

    def recent(self, limit):
        """The newest ``limit`` rows, oldest first."""
        return self._rows(
            f"SELECT * FROM (SELECT {self.COLUMNS} FROM events ORDER BY id DESC LIMIT %s) AS newest ORDER BY id",
            (limit,),
        )

    def prune(self, keep):
        """Drop all but the newest ``keep`` events; returns how many went."""

        def work(cur):
            return cur.execute("DELETE FROM events WHERE id <= (SELECT last_id FROM event_log) - %s", (keep,)).rowcount

        return self._write(work, durable=False)

    def follow(self, wake, stopped):
        """Call ``wake()`` whenever events are appended, until ``stopped()``; reconnects by itself."""
        while not stopped():
            try:
                with connect(self._url) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    wake()  # whatever came while not listening
                    while not stopped():
                        for _ in conn.notifies(timeout=1.0):
                            break
                        wake()
            except (psycopg.Error, StoreError) as exc:
                if not stopped():
                    log.warning("events: following the event log failed, retrying: %s", reason(exc))
                    time.sleep(1.0)
