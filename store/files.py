"""Durable file primitives the store is built on: whole writes, atomic files, one owner.

``Disk`` is the system calls (tests substitute one that fails); ``write_all``
never takes a short count as success; ``write_atomic`` replaces a file so that
a crash leaves the old or the new one; ``write_new`` creates a file only if it
is absent; ``DirectoryLock`` makes one process the owner of a data directory.
"""

import errno
import fcntl
import os
import threading

from . import diskspace
from .errors import StoreLocked

LOCK = "oxc.lock"
TEMP_MARK = ".tmp-"


class Disk:
    """The system calls the journal makes; tests substitute one that fails."""

    def write(self, fd, data):
        return os.write(fd, data)

    def fdatasync(self, fd):
        os.fdatasync(fd)

    def free_bytes(self, directory):
        return diskspace.free_bytes(directory)


def write_all(disk, fd, data):
    """Write every byte of ``data`` or raise: a short count is never taken as success."""
    written = disk.write(fd, data)
    if written == len(data):
        return  # the common case, without a view
    if written <= 0:
        raise OSError(errno.ENOSPC, "the disk took no more bytes")
    view = memoryview(data)[written:]
    while view:
        written = disk.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "the disk took no more bytes")
        view = view[written:]


def _temp_file(path, data, disk, exclusive):
    """Write and flush ``data`` into a new temp file beside ``path`` (mode 0600); returns its name.

    The temp file is removed again if anything fails.
    """
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}{TEMP_MARK}{os.getpid()}-{threading.get_ident()}")
    disk = disk or Disk()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC), 0o600)
    try:
        try:
            write_all(disk, fd, data)
            disk.fdatasync(fd)
        finally:
            os.close(fd)
    except BaseException:
        os.unlink(temp)  # a half-written temp file would only eat the space that failed us
        raise
    return temp


def write_atomic(path, data, disk=None):
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    temp = _temp_file(path, data, disk, exclusive=False)
    try:
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    fsync_directory(os.path.dirname(path))


def write_new(path, data, disk=None):
    """Create ``path`` (mode 0600) holding ``data`` unless it exists; True if this call created it.

    The bytes are written and flushed under a temporary name opened with
    O_EXCL, then hard-linked into place, which fails if ``path`` exists: a
    reader never meets a partial file, and of two callers exactly one creates it.
    """
    temp = _temp_file(path, data, disk, exclusive=True)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temp)
    fsync_directory(os.path.dirname(path))
    return True


def fsync_directory(directory):
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
                    f"oxc process (pid {holder}); stop it or choose another DATA_DIR (the JSON store serves "
                    f"one process: to run several, as gunicorn -w N does, set STORE_URL to a PostgreSQL database)"
                ) from None
            raise
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode("ascii"))

    def release(self):
        """Give the directory up (closing the descriptor drops the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
