"""Content-addressed file storage for attachments and thumbnails.

A blob lives at ``blobs/ab/abcdef...`` under the data directory, named by the
SHA-256 of its bytes, so identical uploads share one file and a name from a
user never becomes a path. Thumbnails are blobs like any other (named by the
SHA-256 of the thumbnail's own bytes; an attachment record names it in
``thumbnail_sha256``). A blob is streamed into a temp file beside its final
place while it is hashed and counted (never held in memory whole), then
fsynced and renamed into place, and the directory fsynced: once ``put``
returns, the bytes survive a crash. Leftover temp files from a crash are
swept at start.

Room: before each chunk, ``put`` checks that the file system keeps
``reserve`` bytes free after it (``diskspace.has_room``) and raises
``OutOfSpace`` (a ``StoreUnavailable``) rather than eat into it; a full disk
(ENOSPC, EDQUOT) raises the same. Either way the temp file is gone, nothing is
left to clean up, and the next ``put`` simply tries again.

Integrity: ``open`` hands out a blob only if its bytes still hash to its name,
else it raises ``DamagedBlob``. The first open of a file reads it whole; the
verdict is then remembered per process under the file's identity (device,
inode, size, mtime), so opening it again costs one ``fstat``. A file that
changes on disk gets a new identity and is read again; bit rot that leaves the
identity alone is found by ``check_all`` (``oxc admin verify``), which reads
every file afresh.
"""

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import threading
import time

from . import diskspace
from .errors import DamagedBlob, OutOfSpace, StoreError
from .files import Disk, fsync_directory, write_all

CHUNK = 64 * 1024
VERIFY_BLOCK = 1024 * 1024
DIGEST = re.compile(r"^[0-9a-f]{64}$")
TEMP_PREFIX = ".upload-"
#: Verdicts remembered per process; the oldest is forgotten beyond this.
MAX_VERDICTS = 100_000
#: A temp file untouched this long in a shared directory is a crashed upload's (a live one writes on).
STALE_TEMP_SECONDS = 3600


class TooLarge(StoreError):
    """The stream held more bytes than allowed."""


def _identity(stats):
    return stats.st_dev, stats.st_ino, stats.st_size, stats.st_mtime_ns


def _hash_file(f):
    hasher = hashlib.sha256()
    while True:
        block = f.read(VERIFY_BLOCK)
        if not block:
            return hasher.hexdigest()
        hasher.update(block)


class Blobs:
    """Blobs under ``directory`` (a temp directory, removed at close, when None).

    ``reserve``: bytes of free space that ``put`` leaves on the file system (0:
    no check). ``free``: how free space is measured, ``free(path) -> bytes``
    (tests put in a fake). Both are plain attributes and may be set later.
    ``shared``: other processes write here too, so only temp files untouched
    for ``STALE_TEMP_SECONDS`` are swept at start, never an upload in flight.
    """

    def __init__(self, directory=None, reserve=0, free=diskspace.free_bytes, shared=False):
        self._temporary = directory is None
        self.directory = tempfile.mkdtemp(prefix="oxc-blobs-") if directory is None else directory
        self.reserve = reserve
        self.free = free
        self._verdicts = {}  # digest -> (file identity, the digest its bytes had when read)
        self._verdicts_lock = threading.Lock()
        os.makedirs(self.directory, exist_ok=True)
        stale = time.time() - STALE_TEMP_SECONDS if shared else float("inf")
        for root, _, names in os.walk(self.directory):
            for name in names:
                if name.startswith(TEMP_PREFIX):
                    with contextlib.suppress(FileNotFoundError):  # another process's upload just ended
                        if os.stat(os.path.join(root, name)).st_mtime < stale:
                            os.unlink(os.path.join(root, name))

    def path(self, digest):
        """Where the blob ``digest`` lives (it may not exist)."""
        if not DIGEST.match(digest):
            raise ValueError("not a SHA-256 hex digest")
        return os.path.join(self.directory, digest[:2], digest)

    def has_room(self, needed=0):
        """Whether ``needed`` more bytes fit and still leave ``reserve`` free."""
        return diskspace.has_room(self.directory, self.reserve, needed, free=self.free)

    def put(self, read, limit, guard=None):
        """Store what ``read(n)`` yields, at most ``limit`` bytes; returns (digest, size, head).

        ``head`` is the first 4 kB, for sniffing the type. The file is renamed
        into place inside the context manager ``guard(digest)``, with which an
        owner that deletes blobs under the same guard records the new blob as
        pending, so that it never removes one just written but not referred to yet.
        Raises TooLarge past ``limit`` and OutOfSpace when the disk has no room.
        """
        hasher = hashlib.sha256()
        size, head = 0, b""
        temp = os.path.join(self.directory, f"{TEMP_PREFIX}{secrets.token_hex(8)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                while True:
                    chunk = read(CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"more than {limit} bytes")
                    if not self.has_room(len(chunk)):
                        raise OutOfSpace(
                            f"the disk under {self.directory} is nearly full (the store keeps "
                            f"{self.reserve} bytes free)"
                        )
                    if len(head) < 4096:
                        head += chunk[: 4096 - len(head)]
                    hasher.update(chunk)
                    write_all(Disk(), fd, chunk)
                os.fsync(fd)
                written = _identity(os.fstat(fd))
            finally:
                os.close(fd)
            digest = hasher.hexdigest()
            final = self.path(digest)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            with guard(digest) if guard else contextlib.nullcontext():
                os.replace(temp, final)
                fsync_directory(os.path.dirname(final))
            self._remember(digest, written, digest)  # hashed on the way in: no need to read it back
            return digest, size, head
        except OSError as exc:
            if diskspace.is_no_room(exc):
                raise OutOfSpace(f"the disk under {self.directory} is full: {exc.strerror}") from exc
            raise
        finally:
            if os.path.exists(temp):
                os.unlink(temp)

    def put_bytes(self, data, guard=None):
        """Store ``data`` (small, e.g. a thumbnail); returns its digest."""
        view = memoryview(data)
        offset = [0]

        def read(n):
            chunk = view[offset[0] : offset[0] + n]
            offset[0] += len(chunk)
            return bytes(chunk)

        return self.put(read, len(data), guard)[0]

    def open(self, digest):
        """The blob opened for reading (binary), or None if it is gone.

        Raises DamagedBlob when its bytes no longer hash to ``digest``.
        """
        path = self.path(digest)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return None
        try:
            identity = _identity(os.fstat(f.fileno()))
            actual = self._verdict(digest, identity)
            if actual is None:
                actual = _hash_file(f)
                self._remember(digest, identity, actual)
                f.seek(0)
            if actual != digest:
                raise DamagedBlob(digest, path, actual)
        except BaseException:
            f.close()
            raise
        return f

    def check_all(self):
        """Yield (digest, path, problem) for every blob file whose bytes do not match its name.

        Reads every file (thumbnails too) afresh, whatever was remembered;
        temp files of uploads in flight and files not named by a digest are
        not blobs and are skipped. Problems: ``damaged: ...`` (the bytes hash
        to something else), ``misplaced: ...`` (filed under the wrong
        directory), ``unreadable: ...``. To check a directory that a running
        server uses, open it with ``Blobs(directory, shared=True)``, which
        leaves that server's uploads in flight alone.
        """
        for root, dirs, names in os.walk(self.directory):
            dirs.sort()
            for name in sorted(names):
                if not DIGEST.match(name):
                    continue
                path = os.path.join(root, name)
                if path != self.path(name):
                    yield name, path, f"misplaced: a blob of this name belongs at {self.path(name)}"
                    continue
                try:
                    with open(path, "rb") as f:
                        identity = _identity(os.fstat(f.fileno()))
                        actual = _hash_file(f)
                except FileNotFoundError:
                    continue  # deleted meanwhile
                except OSError as exc:
                    yield name, path, f"unreadable: {exc}"
                    continue
                self._remember(name, identity, actual)
                if actual != name:
                    yield name, path, f"damaged: its bytes hash to {actual}"

    def size(self, digest):
        """The blob's size in bytes."""
        return os.path.getsize(self.path(digest))

    def delete(self, digest):
        """Remove a blob (callers check that nothing refers to it)."""
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def close(self):
        """Remove the directory if it was a temporary one."""
        if self._temporary:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- remembered verdicts ---------------------------------------------------------

    def _verdict(self, digest, identity):
        """The digest remembered for this very file's bytes, or None when they must be read."""
        known = self._verdicts.get(digest)
        return known[1] if known is not None and known[0] == identity else None

    def _remember(self, digest, identity, actual):
        with self._verdicts_lock:
            self._verdicts.pop(digest, None)
            self._verdicts[digest] = (identity, actual)
            if len(self._verdicts) > MAX_VERDICTS:
                del self._verdicts[next(iter(self._verdicts))]
