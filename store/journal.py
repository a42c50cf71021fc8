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
order is application order) only queues the line and returns a ticket.
``wait_durable`` then waits until the line is on disk. The first waiter to
find no flush under way becomes the leader: it writes every queued line, looping
until the disk has taken every byte, and calls ``fdatasync`` once, while the
others wait on the condition, so concurrent writers share one disk flush (group
commit). A caller acknowledges a write only after ``wait_durable`` returns, so
an acknowledged write survives kill -9.

Failure: when a write is short, fails (ENOSPC, EIO) or the flush fails, the
whole batch fails before anyone is acknowledged, the file is cut back to its
last durable offset (so no unacknowledged record is replayed later), and
``failed`` is set; every ticket of the failed batch, and every later append,
raises ``StoreUnavailable``. The owner rolls its memory back to what is durable
and calls ``restart`` once the disk is usable again: that starts a new journal
generation from a fresh snapshot, so nothing written into the doubtful file
after a failed flush is ever trusted. A free-space ``reserve`` makes ``append``
refuse before the file system is full, so the journal can always record what
it accepted.

Each line is ``<crc32 as 8 hex digits> <json>\\n``. At recovery only the final
line of the newest journal may be torn (it lacks its newline: a crash cut the
write short, and nothing was acknowledged for it); it is cut off. Any other bad
line, a missing snapshot where a later generation exists, or a snapshot whose
checksum does not hold is corruption: recovery raises ``StoreCorrupt`` naming
the file and the offset and changes nothing (``integrity.py`` verifies and
repairs a directory).

Compaction rotates first and writes later: under the owner's lock the queued
lines are flushed, a new ``journal.G+1.log`` is started and the owner hands
over a shallow copy of its tables (records are never mutated in place, only
replaced, so the copy is a consistent picture). The snapshot is then
serialised and written without the lock, and the old journal is deleted. A
crash at any point leaves either the old snapshot with both journals, or the
new snapshot (older journals are then ignored and swept).
"""

import json
import logging
import os
import re
import threading
import time
import zlib

from . import diskspace
from .errors import StoreCorrupt, StoreUnavailable
from .files import TEMP_MARK, DirectoryLock, Disk, fsync_directory, write_all, write_atomic

log = logging.getLogger("oxc.store")

SNAPSHOT = "snapshot.json"
FORMAT = "oxc-store"
VERSION = 1
SNAPSHOT_HEADER = re.compile(rb"oxc-snapshot crc32=([0-9a-f]{8}) length=([0-9]+)")
#: How stale a free-space reading may be; the reserve absorbs what is written meanwhile.
SPACE_CHECK_SECONDS = 0.25
#: Free space needed before writes resume after the disk filled up, whatever the reserve.
REARM_FREE = 1024 * 1024
WHAT_TO_DO = (
    "nothing was changed. Run 'oxc admin verify' to list the damage, then restore a backup "
    "or run 'oxc admin repair' (it keeps a copy of every file it changes)"
)


def encode_line(record):
    """One journal line for ``record``: checksum, space, compact JSON, newline."""
    body = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def check_line(line):
    """(record, None) for a good journal line, or (None, what is wrong with it)."""
    if not line.endswith(b"\n"):
        return None, "the line has no end (torn)"
    if len(line) < 10 or line[8:9] != b" ":
        return None, "not a journal line"
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None, "checksum mismatch"
        return json.loads(body), None
    except (ValueError, RecursionError):
        return None, "not a journal line"


def decode_line(line):
    """The record of a journal line, or None when the line is torn or corrupt."""
    return check_line(line)[0]


def encode_snapshot(snapshot):
    """The bytes of a snapshot file: a header with the body's checksum and length, then JSON."""
    body = json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return b"oxc-snapshot crc32=%08x length=%d\n%s" % (zlib.crc32(body), len(body), body)


def decode_snapshot(data, path):
    """The snapshot held by ``data`` (read from ``path``); StoreCorrupt when it does not hold."""

    def damaged(why):
        return StoreCorrupt(f"{path} is damaged ({why}); {WHAT_TO_DO}", problem=why)

    if data.startswith(b"{"):
        body = data  # written before snapshots carried a checksum: JSON must do
    else:
        header, newline, body = data.partition(b"\n")
        found = SNAPSHOT_HEADER.fullmatch(header)
        if not newline or found is None:
            raise damaged("no snapshot header at byte 0")
        if int(found[2]) != len(body):
            raise damaged(f"{len(body)} bytes of content where the header promises {int(found[2])}")
        if int(found[1], 16) != zlib.crc32(body):
            raise damaged("checksum mismatch")
    try:
        snapshot = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise damaged(f"not JSON: {exc}") from None
    if not isinstance(snapshot, dict) or snapshot.get("format") != FORMAT or snapshot.get("version") != VERSION:
        raise damaged(f"not an oxc store snapshot of version {VERSION}")
    return snapshot


def read_snapshot(path):
    """The snapshot at ``path``, checked; StoreCorrupt names the file when it is damaged."""
    with open(path, "rb") as f:
        return decode_snapshot(f.read(), path)


def journal_name(generation):
    return f"journal.{generation}.log"


def journal_generations(directory):
    """The generations of the journal files in ``directory``, ascending."""
    found = []
    for name in os.listdir(directory):
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "journal" and parts[2] == "log" and parts[1].isdigit():
            found.append(int(parts[1]))
    return sorted(found)


def missing_generation(directory, first, generations):
    """The first generation from ``first`` on that is missing before a later one, or None."""
    expected = first
    for generation in generations:
        if generation < first:
            continue
        if generation != expected:
            return expected
        expected += 1
    return None


class Journal:
    """Durable ordered records plus the snapshot they extend.

    Args:
        directory: where the files live; created if missing.
        compact_min: never compact before this many journal records.
        reserve: bytes of free space below which new records are refused.
        disk: the system calls to use (tests inject failures).
    """

    def __init__(self, directory, compact_min=10_000, reserve=0, disk=None):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.compact_min = compact_min
        self.reserve = reserve
        self.disk = disk or Disk()
        self.failed = None
        self.doubtful = False
        self._lock = DirectoryLock(directory)
        self._cond = threading.Condition()
        self._pending = []
        self._epoch = 0
        self._appended = 0
        self._durable = 0
        self._durable_offset = 0
        self._flushing = False
        self._file = None
        self._room_checked_at = float("-inf")
        self._free = None
        self.generation = 0
        self.records_since_snapshot = 0
        self._compacting = False
        self._compact_not_before = 0.0

    # -- recovery ---------------------------------------------------------

    def recover(self, load_snapshot, apply):
        """Feed the snapshot to ``load_snapshot`` and each later record to ``apply``.

        Raises StoreCorrupt, having changed nothing, when a file does not hold.
        """
        self._sweep_temp_files()
        started = time.monotonic()
        snapshot_path = os.path.join(self.directory, SNAPSHOT)
        journals = journal_generations(self.directory)
        snapshot = None
        if os.path.exists(snapshot_path):
            snapshot = read_snapshot(snapshot_path)
            self.generation = snapshot["generation"]
        elif journals and journals[0] > 0:
            raise StoreCorrupt(
                f"{snapshot_path} is missing but {self._journal_path(journals[0])} exists, so the records "
                f"before generation {journals[0]} are gone; {WHAT_TO_DO}"
            )
        gap = missing_generation(self.directory, self.generation, journals)
        if gap is not None:
            raise StoreCorrupt(f"{self._journal_path(gap)} is missing before a later journal; {WHAT_TO_DO}")
        live = [g for g in journals if g >= self.generation]
        for generation in live:
            self._check_journal(generation, newest=generation == live[-1])
        # Everything holds: only now is anything applied or changed.
        if snapshot is not None:
            load_snapshot(snapshot)
            log.info("store: loaded snapshot generation %d", self.generation)
        for generation in [g for g in journals if g < self.generation]:
            os.unlink(self._journal_path(generation))
        replayed = 0
        for generation in live:
            replayed += self._replay(generation, apply)
            self.generation = generation
        self.records_since_snapshot = replayed
        self._file = open(self._journal_path(self.generation), "ab", buffering=0)
        self._durable_offset = self._file.tell()
        fsync_directory(self.directory)
        log.info("store: recovered %d journal records in %.2f s", replayed, time.monotonic() - started)

    def _check_journal(self, generation, newest):
        """Raise StoreCorrupt unless every line holds, but for a torn final line of the newest journal."""
        path = self._journal_path(generation)
        offset = number = 0
        with open(path, "rb") as f:
            for line in f:
                number += 1
                _, problem = check_line(line)
                if problem is not None and not (newest and not line.endswith(b"\n")):
                    raise StoreCorrupt(f"{path} is damaged at byte {offset} (record {number}: {problem}); {WHAT_TO_DO}")
                offset += len(line)

    def _replay(self, generation, apply):
        path = self._journal_path(generation)
        size = os.path.getsize(path)
        good = count = 0
        next_report = time.monotonic() + 2
        with open(path, "rb") as f:
            for line in f:
                record = decode_line(line)
                if record is None:
                    break  # the torn final line: _check_journal let nothing else through
                apply(record)
                good += len(line)
                count += 1
                if time.monotonic() >= next_report:
                    log.info("store: replaying %s: %d%%", os.path.basename(path), good * 100 // max(size, 1))
                    next_report = time.monotonic() + 2
        if good < size:
            log.warning(
                "store: cutting a torn final record (%d bytes, never acknowledged) off %s at byte %d",
                size - good,
                path,
                good,
            )
            with open(path, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        return count

    def _journal_path(self, generation):
        return os.path.join(self.directory, journal_name(generation))

    def _sweep_temp_files(self):
        for name in os.listdir(self.directory):
            if name.startswith(".") and TEMP_MARK in name:
                os.unlink(os.path.join(self.directory, name))
                log.info("store: removed leftover temp file %s", name)

    # -- room on the disk ---------------------------------------------------

    def has_room(self):
        """True while the file system keeps more than ``reserve`` bytes free."""
        if not self.reserve:
            return True
        now = time.monotonic()
        if now - self._room_checked_at >= SPACE_CHECK_SECONDS:
            try:
                self._free = self.disk.free_bytes(self.directory)
            except OSError:
                self._free = 0
            self._room_checked_at = now
        return self._free > self.reserve

    def problem(self):
        """Why the journal refuses writes, for people; None while it accepts them."""
        if self.failed is not None:
            return f"a journal write failed ({self.failed}); retrying every second"
        if not self.has_room():
            return (
                f"the disk is nearly full ({self._free // 1024} KiB free; the store keeps "
                f"{self.reserve // 1024} KiB in reserve)"
            )
        return None

    # -- writing ----------------------------------------------------------

    def append(self, record):
        """Queue ``record``; call under the owner's lock. Returns a ticket for ``wait_durable``."""
        if self.failed is not None or (self.reserve and not self.has_room()):
            raise StoreUnavailable(f"the store refuses writes: {self.problem()}")
        line = encode_line(record)
        with self._cond:
            self._pending.append(line)
            self._appended += 1
            self.records_since_snapshot += 1
            return self._epoch, self._appended

    def latest(self):
        """The ticket of the last record appended: waiting for it covers everything visible so far."""
        with self._cond:
            return self._epoch, self._appended

    def all_durable(self):
        """True when every record appended so far is on disk (no lock: read for the common case)."""
        appended = self._appended  # read first: durable only grows, so a later read that is not
        return self._durable >= appended  # below it proves that everything appended then is durable

    def is_durable(self, ticket):
        """True when the record behind ``ticket`` is on disk (False for one that was lost)."""
        epoch, number = ticket
        return epoch == self._epoch and number <= self._durable

    def wait_durable(self, ticket):
        """Return once the record behind ``ticket`` is on disk; group-commits with other waiters."""
        epoch, number = ticket
        with self._cond:
            while True:
                if epoch != self._epoch:
                    raise StoreUnavailable(
                        "the store refuses writes: this write was lost to a disk error before it was durable"
                    )
                if self._durable >= number:
                    return
                if self.failed is not None:
                    raise StoreUnavailable(f"the store refuses writes: {self.problem()}")
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
        data = b"".join(batch)
        try:
            if data:
                fd = self._file.fileno()
                write_all(self.disk, fd, data)
                self.disk.fdatasync(fd)
        except OSError as exc:
            log.critical("store: journal write failed, refusing writes until the disk recovers: %s", exc)
            self.failed = exc
            # After a failed flush the page cache may hold what the disk lost: the file is
            # not trusted again. After a failed write, a file cut back cleanly is.
            self.doubtful = not diskspace.is_no_room(exc) or not self._cut_back()
        finally:
            self._cond.acquire()
            self._flushing = False
            if self.failed is None:
                self._durable = upto
                self._durable_offset += len(data)
            self._cond.notify_all()

    def _cut_back(self):
        """Cut the journal back to its last durable offset, so no record of a failed batch is replayed."""
        try:
            os.ftruncate(self._file.fileno(), self._durable_offset)
            os.fsync(self._file.fileno())
            return True
        except OSError as exc:
            log.critical("store: could not cut %s back to byte %d: %s", self._file.name, self._durable_offset, exc)
            return False

    def room_to_rearm(self):
        """True when the disk has room again: more than the reserve, and at least REARM_FREE."""
        try:
            free = self.disk.free_bytes(self.directory)
        except OSError:
            return False
        return free > max(self.reserve, REARM_FREE)

    def resume(self):
        """After a failed write that was cut back cleanly: accept writes again in the same file."""
        with self._cond:
            self.failed = None
        log.warning("store: writes accepted again (%s)", self._file.name)

    def discard(self):
        """Forget every record that is not durable (after a failure); call under the owner's lock.

        Their tickets now raise StoreUnavailable; returns the number below which
        records are durable, so the owner can roll back the rest.
        """
        with self._cond:
            while self._flushing:
                self._cond.wait()
            self._pending = []
            self._epoch += 1
            self._appended = self._durable
            self._cond.notify_all()
            return self._durable

    def restart(self):
        """After a failure: start journal G+1 for a fresh snapshot; call under the owner's lock.

        Returns the new generation. The caller writes the snapshot with
        ``write_snapshot(generation, ..., rearm=True)``, which accepts writes
        again only once it is durable.
        """
        with self._cond:
            while self._flushing:
                self._cond.wait()
        self._cut_back()
        generation = self.generation + 1
        path = self._journal_path(generation)
        new_file = open(path, "wb", buffering=0)
        try:
            self.disk.fdatasync(new_file.fileno())  # the very call that failed must work again
            fsync_directory(self.directory)
        except OSError:
            new_file.close()
            os.unlink(path)
            raise
        old, self._file = self._file, new_file
        old.close()
        self.generation = generation
        self._durable_offset = 0
        self.records_since_snapshot = 0
        return generation

    def flush(self):
        """Make everything queued so far durable."""
        self.wait_durable(self.latest())

    # -- compaction -------------------------------------------------------

    def may_compact(self):
        """False while too few records were written since the snapshot for any compaction."""
        return self.records_since_snapshot >= self.compact_min

    def wants_compaction(self, live_records):
        """True when the journal has grown as large as the state it describes."""
        return (
            self.records_since_snapshot >= max(self.compact_min, live_records)
            and not self._compacting
            and self.failed is None
            and time.monotonic() >= self._compact_not_before
        )

    def claim_compaction(self):
        """Mark a compaction as under way, so that only one is started."""
        self._compacting = True

    def rotate(self):
        """Start a new journal generation; call under the owner's lock. Returns it."""
        try:
            self.flush()
        except StoreUnavailable:
            self._compacting = False
            raise
        with self._cond:
            while self._flushing:
                self._cond.wait()
            self.generation += 1
            self._file.close()
            self._file = open(self._journal_path(self.generation), "ab", buffering=0)
            self._durable_offset = 0
            self.records_since_snapshot = 0
        fsync_directory(self.directory)
        return self.generation

    def write_snapshot(self, generation, snapshot, rearm=False):
        """Write ``snapshot`` as generation ``generation`` and drop older journals.

        A snapshot that cannot be written loses nothing (the journals still
        hold every record), so it is logged and tried again later, unless
        ``rearm``: then the error is raised and the journal stays failed.
        """
        try:
            started = time.monotonic()
            snapshot = dict(snapshot, format=FORMAT, version=VERSION, generation=generation)
            data = encode_snapshot(snapshot)
            write_atomic(os.path.join(self.directory, SNAPSHOT), data, self.disk)
            for old in journal_generations(self.directory):
                if old < generation:
                    os.unlink(self._journal_path(old))
            log.info(
                "store: wrote snapshot generation %d (%d kB) in %.2f s",
                generation,
                len(data) // 1024,
                time.monotonic() - started,
            )
            if rearm:
                with self._cond:
                    self.failed = None
                    self.doubtful = False
                log.warning("store: writes accepted again (journal generation %d)", generation)
        except OSError as exc:
            if rearm:
                raise
            log.error("store: snapshot failed (the journals still hold every record; trying again later): %s", exc)
            self._compact_not_before = time.monotonic() + 30
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
