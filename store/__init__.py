"""Persistence for oxc: the ``Store`` interface and its backends.

Nothing outside this package opens a data file. ``open_store`` picks the
backend: the embedded JSON store under a data directory, or PostgreSQL when a
``postgresql://`` URL is given (attachment bytes then live in ``data_dir/blobs``)::

    store = open_store("data")        # durable, journaled, one process only
    store = open_store(None)          # in memory, for embedding and tests
    store = open_store("data", url="postgresql://oxc@db/oxc", pool_size=10)
"""

import os

from . import backup as backup
from .base import ChatChange, Page, Store, search_terms
from .blobs import TooLarge
from .errors import (
    Conflict,
    DamagedBlob,
    Missing,
    OutOfSpace,
    QuotaExceeded,
    StoreCorrupt,
    StoreError,
    StoreLocked,
    StoreUnavailable,
)
from .jsonstore import JsonStore
from .legacy import has_legacy_data, read_legacy

#: Uploads leave this many reserves free: a full disk of attachments still lets text messages
#: through (the journal stops only at the reserve itself).
UPLOAD_RESERVE_FACTOR = 2


def open_store(
    data_dir: str | os.PathLike[str] | None,
    compact_min: int = 10_000,
    url: str | None = None,
    pool_size: int = 10,
    reserve: int = 0,
) -> Store:
    """The store for ``data_dir`` (None: in memory); imports 0xC data if found there.

    With a ``postgresql://`` ``url`` the store is that database (needs the
    ``postgres`` extra); ``data_dir`` then only holds attachment bytes.
    ``reserve`` is the free space (bytes) below which the JSON store refuses writes;
    attachment uploads stop at ``UPLOAD_RESERVE_FACTOR`` times as much.
    """
    if url:
        store = _open_postgres(url, data_dir, pool_size)
    else:
        legacy = read_legacy if data_dir is not None and has_legacy_data(data_dir) else None
        store = JsonStore(data_dir, compact_min=compact_min, legacy_import=legacy, reserve=reserve)
    store.blobs.reserve = UPLOAD_RESERVE_FACTOR * reserve
    return store


def _open_postgres(url: str, data_dir: str | os.PathLike[str] | None, pool_size: int) -> Store:
    if not url.startswith(("postgresql://", "postgres://")):
        raise StoreError(f"STORE_URL must start with postgresql:// (got {url.split(':', 1)[0]!r})")
    try:
        from .postgres import PostgresStore
    except ImportError as exc:
        raise StoreError(f"a postgresql:// STORE_URL needs psycopg 3: pip install 'oxc[postgres]' ({exc})") from None
    blob_dir = None if data_dir is None else os.path.join(os.fspath(data_dir), "blobs")
    return PostgresStore(url, blob_dir=blob_dir, pool_size=pool_size)


__all__ = [
    "ChatChange",
    "Conflict",
    "DamagedBlob",
    "JsonStore",
    "Missing",
    "OutOfSpace",
    "QuotaExceeded",
    "TooLarge",
    "Page",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreLocked",
    "StoreUnavailable",
    "has_legacy_data",
    "open_store",
    "read_legacy",
    "search_terms",
]
