"""Exceptions the store raises; none of them knows anything of HTTP."""


class StoreError(Exception):
    """Base class of every store failure."""


class StoreLocked(StoreError):
    """Another process owns the data directory."""


class StoreUnavailable(StoreError):
    """The store refuses writes (a disk write or flush failed, or it is closed)."""


class Conflict(StoreError):
    """A write would break a uniqueness rule (a taken username, say)."""


class Missing(StoreError):
    """A record the write depends on is gone (a chat deleted, a membership ended)."""


class StoreCorrupt(StoreError):
    """A data file does not hold what was written; the message names the file and what to do."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        #: What is wrong, without the file's name or the advice (for ``oxc admin verify``).
        self.problem = problem or message


class OutOfSpace(StoreUnavailable):
    """The disk has no room for this write (it is full, or the free-space reserve would be used)."""


class QuotaExceeded(StoreError):
    """An attachment would take its uploader past their quota; ``used`` and ``quota`` in bytes."""

    def __init__(self, used: int, quota: int) -> None:
        super().__init__(f"{used} of {quota} bytes of attachments are used")
        self.used = used
        self.quota = quota


class DamagedBlob(StoreError):
    """A blob's bytes no longer hash to its name: ``digest``, ``path`` and ``actual`` say which."""

    def __init__(self, digest: str, path: str, actual: str) -> None:
        super().__init__(f"blob {digest} at {path} is damaged: its bytes hash to {actual}")
        self.digest = digest
        self.path = path
        self.actual = actual
