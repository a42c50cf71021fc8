"""Persistence for oxc: the ``Store`` interface and its backends.

Nothing outside this package opens a data file. ``open_store`` picks the
backend; today that is the embedded JSON store under a data directory::

    store = open_store("data")        # durable, journaled, one process only
    store = open_store(None)          # in memory, for embedding and tests
"""

from . import backup
from .base import Page, Store, search_terms
from .blobs import TooLarge
from .errors import Conflict, StoreError, StoreLocked, StoreUnavailable
from .jsonstore import JsonStore
from .legacy import has_legacy_data, read_legacy


def open_store(data_dir, compact_min=10_000):
    """The store for ``data_dir`` (None: in memory); imports 0xC data if found there."""
    legacy = read_legacy if data_dir is not None and has_legacy_data(data_dir) else None
    return JsonStore(data_dir, compact_min=compact_min, legacy_import=legacy)


__all__ = [
    "Conflict", "JsonStore", "TooLarge", "Page", "Store", "StoreError", "StoreLocked",
    "StoreUnavailable", "has_legacy_data", "open_store", "read_legacy", "search_terms",
]
