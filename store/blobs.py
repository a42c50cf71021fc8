"""Content-addressed file storage for attachments and thumbnails.

A blob lives at ``blobs/ab/abcdef...`` under the data directory, named by the
SHA-256 of its bytes, so identical uploads share one file and a name from a
user never becomes a path. A blob is streamed into a temp file beside its
final place while it is hashed and counted (never held in memory whole), then
fsynced and renamed into place, and the directory fsynced: once ``put``
returns, the bytes survive a crash. Leftover temp files from a crash are
swept at start.
"""

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import tempfile

from .errors import StoreError
from .journal import fsync_directory

CHUNK = 64 * 1024
DIGEST = re.compile(r"^[0-9a-f]{64}$")


class TooLarge(StoreError):
    """The stream held more bytes than allowed."""


class Blobs:
    """Blobs under ``directory`` (a temp directory, removed at close, when None)."""

    def __init__(self, directory=None):
        self._temporary = directory is None
        self.directory = tempfile.mkdtemp(prefix="oxc-blobs-") if directory is None else directory
        os.makedirs(self.directory, exist_ok=True)
        for root, _, names in os.walk(self.directory):
            for name in names:
                if name.startswith(".upload-"):
                    os.unlink(os.path.join(root, name))

    def path(self, digest):
        """Where the blob ``digest`` lives (it may not exist)."""
        if not DIGEST.match(digest):
            raise ValueError("not a SHA-256 hex digest")
        return os.path.join(self.directory, digest[:2], digest)

    def put(self, read, limit, guard=None):
        """Store what ``read(n)`` yields, at most ``limit`` bytes; returns (digest, size, head).

        ``head`` is the first 4 kB, for sniffing the type. The file is renamed
        into place inside the context manager ``guard(digest)``, with which an
        owner that deletes blobs under the same guard records the new blob as
        pending, so that it never removes one just written but not referred to yet.
        """
        hasher = hashlib.sha256()
        size, head = 0, b""
        temp = os.path.join(self.directory, f".upload-{secrets.token_hex(8)}")
        try:
            with open(temp, "wb") as out:
                while True:
                    chunk = read(CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"more than {limit} bytes")
                    if len(head) < 4096:
                        head += chunk[:4096 - len(head)]
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = hasher.hexdigest()
            final = self.path(digest)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            with guard(digest) if guard else contextlib.nullcontext():
                os.replace(temp, final)
                fsync_directory(os.path.dirname(final))
            return digest, size, head
        finally:
            if os.path.exists(temp):
                os.unlink(temp)

    def put_bytes(self, data, guard=None):
        """Store ``data`` (small, e.g. a thumbnail); returns its digest."""
        view = memoryview(data)
        offset = [0]

        def read(n):
            chunk = view[offset[0]:offset[0] + n]
            offset[0] += len(chunk)
            return bytes(chunk)

        return self.put(read, len(data), guard)[0]

    def open(self, digest):
        """The blob opened for reading (binary), or None if it is gone."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            return None

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
