"""How much room the disk under the data directory has left, and whether a write may use it.

The store keeps a free-space reserve (``STORE_FREE_SPACE_RESERVE``) that
attachment uploads never eat into, so that the journal can always record the
writes it has acknowledged. Blobs check it before every chunk they write; the
journal can ask the same question::

    if not has_room(data_dir, reserve, needed=len(record)):
        ...  # refuse (503) rather than half-write

``free`` is injectable so that tests can pretend the disk is nearly full.
"""

import errno
import os

#: errno values that mean "no room" (a full filesystem, or the user's disk quota).
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def free_bytes(path):
    """Bytes an unprivileged process may still write on the filesystem holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def has_room(path, reserve, needed=0, free=free_bytes):
    """Whether ``needed`` more bytes fit on ``path``'s filesystem and still leave ``reserve`` free.

    A ``reserve`` of 0 switches the check off (always True, without a statvfs).
    """
    if reserve <= 0:
        return True
    return free(path) - needed >= reserve


def is_no_room(exc):
    """Whether the OSError ``exc`` says the disk (or the disk quota) is full."""
    return isinstance(exc, OSError) and exc.errno in NO_ROOM
