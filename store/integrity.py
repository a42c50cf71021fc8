"""Checking and repairing a JSON store's data directory (``oxc admin verify`` / ``repair``).

``verify`` reads every file and changes nothing: each journal record's
checksum, the run of journal generations, the snapshot's checksum and every
blob's SHA-256 against its name. It returns ``Damage`` rows, each naming the
file, the byte offset and what is wrong, in the words start-up would use.

``repair`` holds the directory's lock (no server may run on it), copies every
damaged file into ``damaged-<time>/`` inside the data directory before it
touches anything, and then does the least that lets the store open again:
journal records that do not hold are dropped (the records around them stay),
a missing journal generation becomes an empty one, a missing or unreadable
snapshot becomes an empty one of its generation, and a damaged blob is moved
out of service. It returns one line for every record or file it could not
keep, so the operator knows exactly what was lost.
"""

import os
import shutil
import time
from typing import NamedTuple

from .blobs import Blobs
from .errors import StoreCorrupt
from .files import DirectoryLock, write_atomic
from .journal import (
    FORMAT,
    SNAPSHOT,
    VERSION,
    check_line,
    decode_snapshot,
    encode_snapshot,
    journal_generations,
    journal_name,
    missing_generation,
)


class Damage(NamedTuple):
    """One thing that does not hold: the file, where in it (or None), and what is wrong."""

    path: str
    offset: object
    problem: str

    def __str__(self):
        where = "" if self.offset is None else f" at byte {self.offset}"
        return f"{self.path}{where}: {self.problem}"


def _snapshot_damage(data_dir):
    path = os.path.join(data_dir, SNAPSHOT)
    generations = journal_generations(data_dir)
    if not os.path.exists(path):
        if generations and generations[0] > 0:
            return None, [
                Damage(
                    path,
                    None,
                    f"missing, though {journal_name(generations[0])} exists: the "
                    f"records before generation {generations[0]} are gone",
                )
            ]
        return None, []
    try:
        with open(path, "rb") as f:
            return decode_snapshot(f.read(), path), []
    except StoreCorrupt as exc:
        return None, [Damage(path, None, exc.problem)]


def _journal_damage(data_dir, first):
    generations = [g for g in journal_generations(data_dir) if g >= first]
    found = []
    gap = missing_generation(data_dir, first, generations)
    if gap is not None:
        found.append(
            Damage(
                os.path.join(data_dir, journal_name(gap)), None, "missing before a later journal: its records are gone"
            )
        )
    for generation in generations:
        path = os.path.join(data_dir, journal_name(generation))
        offset = number = 0
        with open(path, "rb") as f:
            for line in f:
                number += 1
                _, problem = check_line(line)
                torn_tail = generation == generations[-1] and not line.endswith(b"\n")
                if problem is not None and not torn_tail:
                    found.append(Damage(path, offset, f"record {number}: {problem}"))
                offset += len(line)
    return found


def _blob_damage(blob_dir):
    if not os.path.isdir(blob_dir):
        return []
    # shared: a running server's uploads in flight are left alone.
    return [
        Damage(path, None, problem.removeprefix("damaged: "))
        for _, path, problem in Blobs(blob_dir, shared=True).check_all()
    ]


def verify(data_dir, blobs_only=False):
    """Every Damage in ``data_dir`` (a JSON store, or with ``blobs_only`` just its blobs)."""
    blob_dir = os.path.join(data_dir, "blobs")
    if blobs_only:
        return _blob_damage(blob_dir)
    snapshot, found = _snapshot_damage(data_dir)
    first = snapshot["generation"] if snapshot is not None else min(journal_generations(data_dir) or [0])
    return found + _journal_damage(data_dir, first) + _blob_damage(blob_dir)


def repair(data_dir, report=print):
    """Make ``data_dir`` open again, keeping a copy of every damaged file; returns what was lost.

    ``report(line)`` hears each step. Raises StoreLocked while a server runs on it.
    """
    lock = DirectoryLock(data_dir)
    try:
        damage = verify(data_dir)
        if not damage:
            return []
        keep = os.path.join(data_dir, time.strftime("damaged-%Y%m%d-%H%M%S"))
        os.makedirs(keep, exist_ok=True)
        for path in sorted({row.path for row in damage if os.path.exists(row.path)}):
            shutil.copy2(path, os.path.join(keep, os.path.basename(path)))
            report(f"kept a copy of {path} in {keep}")
        lost = []
        snapshot_rows = [row for row in damage if os.path.basename(row.path) == SNAPSHOT]
        if snapshot_rows:
            lost += _repair_snapshot(data_dir, snapshot_rows[0])
        for path in sorted({row.path for row in damage if os.path.basename(row.path).startswith("journal.")}):
            lost += _repair_journal(path)
        for row in damage:
            if os.path.dirname(os.path.dirname(row.path)) == os.path.join(data_dir, "blobs"):
                os.replace(row.path, os.path.join(keep, os.path.basename(row.path)))
                lost.append(f"{row.path}: damaged bytes moved out of service; downloads of it now fail")
        for line in lost:
            report(f"could not keep: {line}")
        return lost
    finally:
        lock.release()


def _repair_snapshot(data_dir, row):
    path = os.path.join(data_dir, SNAPSHOT)
    generations = journal_generations(data_dir)
    generation = generations[0] if generations else 0
    salvaged = None
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = f.read()
        body = data if data.startswith(b"{") else data.partition(b"\n")[2]
        try:
            # Read the body as a bare JSON snapshot: when only the checksum fails,
            # the records may still parse.
            salvaged = decode_snapshot(body, path)
        except StoreCorrupt:
            salvaged = None
    if salvaged is not None:
        write_atomic(path, encode_snapshot(salvaged))
        return [
            f"{path}: {row.problem}; its records were read and kept, but one of them may hold a changed "
            "byte (compare with a backup)"
        ]
    empty = {"format": FORMAT, "version": VERSION, "generation": generation, "next_seq": 1, "tables": {}}
    write_atomic(path, encode_snapshot(empty))
    return [f"{path}: {row.problem}; every record before journal generation {generation} is lost"]


def _repair_journal(path):
    if not os.path.exists(path):
        write_atomic(path, b"")
        return [f"{path}: was missing; its records are lost"]
    kept, lost, offset = [], [], 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            _, problem = check_line(line)
            if problem is None:
                kept.append(line)
            else:
                lost.append(f"{path} byte {offset} (record {number}, {len(line)} bytes): {problem}")
            offset += len(line)
    write_atomic(path, b"".join(kept))
    return lost
