"""Exceptions the store raises; none of them knows anything of HTTP."""


class StoreError(Exception):
    """Base class of every store failure."""


class StoreLocked(StoreError):
    """Another process owns the data directory."""


class StoreUnavailable(StoreError):
    """The store refuses writes (a disk write or flush failed, or it is closed)."""


class Conflict(StoreError):
    """A write would break a uniqueness rule (a taken username, say)."""
