"""Moving a whole store between backends: ``oxc migrate-store --from SRC --to DST``.

SRC and DST are each a JSON data directory or a ``postgresql://`` URL::

    copy_store("data", "postgresql://oxc@db/oxc", blob_dir="data/blobs", progress=report)
    copy_store("postgresql://oxc@db/oxc", "data", blob_dir="data/blobs")

Every record of every table is copied as it is, seqs included, and the seq
to continue from comes along, so the copy answers every query as the
original did. ``blob_dir`` is where the PostgreSQL side keeps attachment
bytes; a JSON store keeps its own under ``DIR/blobs``. Referenced blobs are
copied (and their digests checked) when the two places differ.

The destination must be empty; the source is only read (a JSON source is
locked, so no server may run on it meanwhile, and a PostgreSQL source should
have no server writing to it). A copy cut short leaves a partial
destination: empty it (drop the schema, or remove the directory) and run
again. Going to a JSON store builds its state in memory, which suits small
installations only.
"""

import os
import shutil

from .blobs import Blobs
from .errors import StoreError
from .journal import SNAPSHOT
from .jsonstore import JsonStore
from .rules import blob_digests

BATCH = 1000
ASIDE = ".blobs-migrating"


def is_url(location):
    """Whether ``location`` names a PostgreSQL database rather than a directory."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def copy_store(source, destination, blob_dir=None, progress=None):
    """Copy every record from ``source`` to the empty ``destination``; returns {table: records}.

    ``progress(done, total, what)`` is called after each batch and each blob.
    """
    if is_url(source) == is_url(destination) and not is_url(source):
        raise StoreError("one side of migrate-store must be a postgresql:// URL")
    origin = _open_source(source, blob_dir)
    try:
        if is_url(destination):
            return _to_postgres(origin, destination, blob_dir, progress)
        return _to_json(origin, os.fspath(destination), progress)
    finally:
        origin.close()


# ---- reading ------------------------------------------------------------------------


def _json_source(directory):
    if not os.path.exists(os.path.join(directory, SNAPSHOT)) and not any(
        name.startswith("journal.") for name in _listing(directory)
    ):
        raise StoreError(f"{directory} holds no oxc store")
    return JsonStore(directory)


def _postgres_store(url, blob_dir):
    from .postgres import PostgresStore

    return PostgresStore(url, blob_dir=blob_dir, pool_size=2)


def _open_source(source, blob_dir):
    if is_url(source):
        return _postgres_store(source, blob_dir)
    return _json_source(os.fspath(source))


def _listing(directory):
    return os.listdir(directory) if os.path.isdir(directory) else []


def _batches(records):
    """(table, [records]) runs of at most BATCH records of one table."""
    table, batch = None, []
    for name, record in records:
        if batch and (name != table or len(batch) >= BATCH):
            yield table, batch
            batch = []
        table = name
        batch.append(record)
    if batch:
        yield table, batch


def _referenced(attachments):
    return sorted({digest for record in attachments for digest in blob_digests(record)})


def _copy_blobs(digests, source_dir, target, progress):
    """Put each blob of ``digests`` from ``source_dir`` into the Blobs ``target`` (unless there)."""
    if os.path.abspath(source_dir) == os.path.abspath(target.directory):
        return
    source = Blobs(source_dir)
    for number, digest in enumerate(digests, 1):
        if not os.path.exists(target.path(digest)):
            blob = source.open(digest)
            if blob is None:
                raise StoreError(f"the bytes of blob {digest} are missing from {source_dir}")
            with blob:
                copied, _, _ = target.put(blob.read, source.size(digest))
            if copied != digest:
                raise StoreError(f"blob {digest} in {source_dir} is damaged (its bytes hash to {copied})")
        _report(progress, number, len(digests), "blobs")


def _report(progress, done, total, what):
    if progress:
        progress(done, total, what)


# ---- writing --------------------------------------------------------------------------


def _to_postgres(origin, url, blob_dir, progress):
    target = _postgres_store(url, blob_dir)
    try:
        if not target.is_empty():
            raise StoreError(
                "the destination database already holds an oxc store; migrate-store fills only an empty one"
            )
        counts, attachments = _copy_records(origin, target, progress)
        _copy_blobs(_referenced(attachments), origin.blobs.directory, target.blobs, progress)
        return counts
    finally:
        target.close()


def _copy_records(origin, target, progress):
    """Copy every record of ``origin`` into ``target`` batch by batch; ({table: records}, attachments)."""
    counts = origin.count_records()
    total, done, attachments = sum(counts.values()), 0, []
    for table, batch in _batches(origin.export_records(BATCH)):
        target.import_records(table, batch)
        if table == "attachments":
            attachments += batch
        done += len(batch)
        _report(progress, done, total, table)
    target.finish_import(origin.latest_seq() + 1)
    return counts, attachments


def _to_json(origin, directory, progress):
    if os.path.exists(os.path.join(directory, SNAPSHOT)) or any(
        name.startswith("journal.") for name in _listing(directory)
    ):
        raise StoreError(f"{directory} already holds a store; migrate-store fills only an empty directory")
    os.makedirs(directory, exist_ok=True)
    blobs = os.path.join(directory, "blobs")
    aside = os.path.join(directory, ASIDE)
    if os.path.exists(aside):
        raise StoreError(f"{aside} is left from a copy cut short: move its files back into {blobs} first")
    # A new JSON store deletes blob files it has no record of; keep any there
    # (they may be the PostgreSQL store's own) out of its way until it has them.
    if os.path.isdir(blobs):
        os.replace(blobs, aside)
    try:
        target = JsonStore(directory)
        try:
            counts, attachments = _copy_records(origin, target, progress)
        finally:
            target.close()
    finally:
        if os.path.isdir(aside):
            _merge_into(blobs, aside)
            os.replace(aside, blobs)
    _copy_blobs(_referenced(attachments), origin.blobs.directory, Blobs(blobs), progress)
    JsonStore(directory).close()  # it must open cleanly
    return counts


def _merge_into(source, destination):
    """Move every file under ``source`` to the same place under ``destination``; remove ``source``."""
    if not os.path.isdir(source):
        return
    for root, _, names in os.walk(source):
        for name in names:
            moved = os.path.join(destination, os.path.relpath(os.path.join(root, name), source))
            os.makedirs(os.path.dirname(moved), exist_ok=True)
            os.replace(os.path.join(root, name), moved)
    shutil.rmtree(source)
