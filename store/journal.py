"""A durable, append-only journal with group commit and atomic snapshots.

This is the disk half of the JSON store; it knows records, not users or
messages. The directory it owns looks like this::

    oxc.lock             held (flock) by the one process that may write here
    snapshot.json        the whole state as of generation G, replaced atomically
    journal.G.log        every change since that snapshot, one line each

Why this design: rewriting a whole JSON file on every message (what 0xC does)
makes each write cost grow with the store. Here a write appends one line and
the cost stays flat; a snapshot is written only after as many journal records
as the state has live records, so its O(n) cost is spread over n writes.

Durability: ``append`` (called under the owner's state lock, so that journal
order is application order) only queues the line. ``wait_durable`` then waits
until the line is on disk. The first waiter to find no flush under way becomes
the leader: it writes every queued line in one ``write`` and one ``fdatasync``
while the others wait on the condition, so concurrent writers share one disk
flush (group commit). A caller acknowledges a write only after
``wait_durable`` returns, so an acknowledged write survives kill -9.

If a write or flush fails the journal stops for good (``failed`` is set and
every later write raises ``StoreUnavailable``): after a failed fsync the page
cache may have dropped the data, and retrying would pretend otherwise.

Each line is ``<crc32 as 8 hex digits> <json>\\n``. At recovery a line whose
checksum or JSON does not hold, or that lacks its newline, can only be the torn
tail of a crash (nothing was acknowledged for it): it and anything after it
are cut off the file.

Compaction rotates first and writes later: under the owner's lock the queued
lines are flushed, a new ``journal.G+1.log`` is started and the owner hands
over a shallow copy of its tables (records are never mutated in place, only
replaced, so the copy is a consistent picture). The snapshot is then
serialised and written without the lock, and the old journal is deleted. A
crash at any point leaves either the old snapshot with both journals, or the
new snapshot (older journals are then ignored and swept).
"""

import errno
import fcntl
import json
import logging
import os
import threading
import time
import zlib

from .errors import StoreLocked, StoreUnavailable

log = logging.getLogger("oxc.store")

SNAPSHOT = "snapshot.json"
LOCK = "oxc.lock"
FORMAT = "oxc-store"
VERSION = 1
TEMP_MARK = ".tmp-"


def write_atomic(path, data):
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}{TEMP_MARK}{os.getpid()}-{threading.get_ident()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_directory(directory)


def fsync_directory(directory):
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_line(record):
    """One journal line for ``record``: checksum, space, compact JSON, newline."""
    body = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode_line(line):
    """The record of a journal line, or None when the line is torn or corrupt."""
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        return json.loads(body)
    except ValueError:
        return None


class DirectoryLock:
    """An exclusive flock on ``oxc.lock``, so one process owns a data directory."""

    def __init__(self, directory):
        self.path = os.path.join(directory, LOCK)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(self._fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(self._fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreLocked(
                    f"data directory {os.path.abspath(directory)} is in use by another "
                    f"oxc process (pid {holder}); stop it or choose another DATA_DIR"
                ) from None
            raise
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode("ascii"))

    def release(self):
        """Give the directory up (closing the descriptor drops the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Journal:
    """Durable ordered records plus the snapshot they extend.

    Args:
        directory: where the files live; created if missing.
        compact_min: never compact before this many journal records.
    """

    def __init__(self, directory, compact_min=10_000):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.compact_min = compact_min
        self.failed = None
        self._lock = DirectoryLock(directory)
        self._cond = threading.Condition()
        self._pending = []
        self._appended = 0
        self._durable = 0
        self._flushing = False
        self._file = None
        self.generation = 0
        self.records_since_snapshot = 0
        self._compacting = False

    # -- recovery ---------------------------------------------------------

    def recover(self, load_snapshot, apply):
        """Feed the snapshot to ``load_snapshot`` and each later record to ``apply``."""
        self._sweep_temp_files()
        started = time.monotonic()
        snapshot_path = os.path.join(self.directory, SNAPSHOT)
        if os.path.exists(snapshot_path):
            with open(snapshot_path, "rb") as f:
                snapshot = json.loads(f.read())
            if snapshot.get("format") != FORMAT or snapshot.get("version") != VERSION:
                raise ValueError(f"{snapshot_path} is not an oxc store snapshot of version {VERSION}")
            self.generation = snapshot["generation"]
            load_snapshot(snapshot)
            log.info("store: loaded snapshot generation %d", self.generation)
        journals = self._journals()
        for generation in [g for g in journals if g < self.generation]:
            os.unlink(self._journal_path(generation))
        replayed = 0
        for generation in [g for g in journals if g >= self.generation]:
            replayed += self._replay(generation, apply)
            self.generation = generation
        self.records_since_snapshot = replayed
        self._file = open(self._journal_path(self.generation), "ab", buffering=0)
        fsync_directory(self.directory)
        log.info("store: recovered %d journal records in %.2f s", replayed, time.monotonic() - started)

    def _replay(self, generation, apply):
        path = self._journal_path(generation)
        size = os.path.getsize(path)
        good = 0
        count = 0
        next_report = time.monotonic() + 2
        with open(path, "rb") as f:
            for line in f:
                record = decode_line(line)
                if record is None:
                    log.warning("store: dropping a torn record at byte %d of %s", good, path)
                    break
                apply(record)
                good += len(line)
                count += 1
                if time.monotonic() >= next_report:
                    log.info("store: replaying %s: %d%%", os.path.basename(path), good * 100 // max(size, 1))
                    next_report = time.monotonic() + 2
        if good < size:
            with open(path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        return count

    def _journals(self):
        found = []
        for name in os.listdir(self.directory):
            parts = name.split(".")
            if len(parts) == 3 and parts[0] == "journal" and parts[2] == "log" and parts[1].isdigit():
                found.append(int(parts[1]))
        return sorted(found)

    def _journal_path(self, generation):
        return os.path.join(self.directory, f"journal.{generation}.log")

    def _sweep_temp_files(self):
        for name in os.listdir(self.directory):
            if name.startswith(".") and TEMP_MARK in name:
                os.unlink(os.path.join(self.directory, name))
                log.info("store: removed leftover temp file %s", name)

    # -- writing ----------------------------------------------------------

    def append(self, record):
        """Queue ``record``; call under the owner's lock. Returns its sequence number."""
        if self.failed is not None:
            raise StoreUnavailable("the store stopped accepting writes after a disk error")
        line = encode_line(record)
        with self._cond:
            self._pending.append(line)
            self._appended += 1
            self.records_since_snapshot += 1
            return self._appended

    def wait_durable(self, number):
        """Return once record ``number`` is on disk; group-commits with other waiters."""
        with self._cond:
            while self._durable < number:
                if self.failed is not None:
                    raise StoreUnavailable("the store stopped accepting writes after a disk error")
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flush_locked()

    def _flush_locked(self):
        # Called holding self._cond; releases it for the disk I/O.
        batch, upto = self._pending, self._appended
        self._pending = []
        self._flushing = True
        self._cond.release()
        try:
            if batch:
                os.write(self._file.fileno(), b"".join(batch))
                os.fdatasync(self._file.fileno())
        except OSError as exc:
            log.critical("store: journal write failed, refusing further writes: %s", exc)
            self.failed = exc
        finally:
            self._cond.acquire()
            self._flushing = False
            if self.failed is None:
                self._durable = upto
            self._cond.notify_all()

    def flush(self):
        """Make everything queued so far durable."""
        with self._cond:
            number = self._appended
        self.wait_durable(number)

    # -- compaction -------------------------------------------------------

    def wants_compaction(self, live_records):
        """True when the journal has grown as large as the state it describes."""
        return (not self._compacting and self.failed is None
                and self.records_since_snapshot >= max(self.compact_min, live_records))

    def claim_compaction(self):
        """Mark a compaction as under way, so that only one is started."""
        self._compacting = True

    def rotate(self):
        """Start a new journal generation; call under the owner's lock. Returns it."""
        self.flush()
        with self._cond:
            while self._flushing:
                self._cond.wait()
            self.generation += 1
            self._file.close()
            self._file = open(self._journal_path(self.generation), "ab", buffering=0)
            self.records_since_snapshot = 0
        fsync_directory(self.directory)
        return self.generation

    def write_snapshot(self, generation, snapshot):
        """Write ``snapshot`` as generation ``generation`` and drop older journals."""
        try:
            started = time.monotonic()
            snapshot = dict(snapshot, format=FORMAT, version=VERSION, generation=generation)
            data = json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            write_atomic(os.path.join(self.directory, SNAPSHOT), data)
            for old in self._journals():
                if old < generation:
                    os.unlink(self._journal_path(old))
            log.info("store: wrote snapshot generation %d (%d kB) in %.2f s",
                     generation, len(data) // 1024, time.monotonic() - started)
        except OSError as exc:
            log.critical("store: snapshot failed, refusing further writes: %s", exc)
            self.failed = exc
        finally:
            self._compacting = False

    def close(self):
        """Flush, close the journal and release the directory."""
        try:
            if self._file is not None and self.failed is None:
                self.flush()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._lock.release()
