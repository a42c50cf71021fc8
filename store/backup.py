"""Backing up and restoring a JSON store as one .tar.gz file, with progress.

A backup holds the directory's lock for its whole run (so no server can
write meanwhile), compacts the store so that ``snapshot.json`` alone is the
state, and archives that snapshot with every blob. A restore refuses a
directory that already holds a store unless told to replace it, unpacks into
a temporary directory beside the target, checks that the result opens, and
only then moves it into place.
"""

import os
import shutil
import tarfile
import tempfile
import time

from .blobs import DIGEST
from .files import LOCK
from .journal import SNAPSHOT
from .jsonstore import JsonStore

FORMAT_NOTE = "oxc-backup-1"


def _report(progress, done, total, what):
    if progress:
        progress(done, total, what)


def backup(data_dir, destination, progress=None):
    """Write the store at ``data_dir`` to ``destination`` (.tar.gz); returns the file count.

    ``progress(done, total, name)`` is called after each file.
    """
    store = JsonStore(data_dir)
    try:
        store.compact()
        blobs = []
        for root, _, names in os.walk(store.blobs.directory):
            blobs += [os.path.join(root, name) for name in names if DIGEST.match(name)]
        files = [os.path.join(data_dir, SNAPSHOT)] + sorted(blobs)
        temp = f"{destination}.partial"
        with tarfile.open(temp, "w:gz") as archive:
            note = tarfile.TarInfo(FORMAT_NOTE)
            note.mtime = int(time.time())
            archive.addfile(note)
            for number, path in enumerate(files, 1):
                archive.add(path, arcname=os.path.relpath(path, data_dir), recursive=False)
                _report(progress, number, len(files), os.path.relpath(path, data_dir))
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, destination)
        return len(files)
    finally:
        store.close()


def restore(source, data_dir, replace=False, progress=None):
    """Unpack the backup ``source`` into ``data_dir``; returns the file count."""
    data_dir = os.path.abspath(data_dir)
    if os.path.exists(os.path.join(data_dir, SNAPSHOT)) or any(
        name.startswith("journal.") for name in (os.listdir(data_dir) if os.path.isdir(data_dir) else ())
    ):
        if not replace:
            raise FileExistsError(f"{data_dir} already holds a store; pass replace=True (--force) to overwrite it")
    parent = os.path.dirname(data_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".restore-", dir=parent)
    try:
        with tarfile.open(source, "r:gz") as archive:
            members = archive.getmembers()
            if not members or members[0].name != FORMAT_NOTE:
                raise ValueError(f"{source} is not an oxc backup")
            wanted = [m for m in members[1:] if m.isfile() and _safe(m.name)]
            if len(wanted) != len(members) - 1:
                raise ValueError(f"{source} holds entries that are not part of an oxc store")
            for number, member in enumerate(wanted, 1):
                archive.extract(member, staging, filter="data")
                _report(progress, number, len(wanted), member.name)
        JsonStore(staging).close()  # it must open cleanly before it replaces anything
        os.unlink(os.path.join(staging, LOCK))
        if os.path.exists(data_dir):
            # Hold the old directory's lock while swapping, so no server is using it.
            old = JsonStore(data_dir)
            old.close()
            shutil.rmtree(data_dir)
        os.replace(staging, data_dir)
        return len(wanted)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _safe(name):
    parts = name.split("/")
    if name == SNAPSHOT:
        return True
    return len(parts) == 3 and parts[0] == "blobs" and len(parts[1]) == 2 and DIGEST.match(parts[2]) is not None
