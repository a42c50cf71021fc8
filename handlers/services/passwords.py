"""Password hashing: bcrypt, bounded in concurrency, plus 0xC's old hashes.

bcrypt at cost 12 takes about 0.3 s of CPU. At most ``concurrency`` hashes run
at once and at most ``queue`` callers wait for a slot, each for ``wait``
seconds at most; anyone beyond that gets 429 with Retry-After at once. So a
flood of logins holds at most ``concurrency + queue`` worker threads and
leaves the rest of the server (and the rest of the CPU) to everyone else,
instead of parking every thread in a queue for a hashing slot. On Linux the
hashing itself runs on a few threads of lower CPU priority (nice +10), so
that while bcrypt keeps every core busy, the requests that need little CPU
(everything but logins) still get it at once.

0xC stored passlib ``$pbkdf2-sha256$rounds$salt$hash`` strings; they verify
here with hashlib and ``needs_rehash`` says to replace them with bcrypt.
"""

import base64
import concurrent.futures
import hashlib
import hmac
import os
import sys
import threading

import bcrypt

from ..http import TooManyRequests

MAX_PASSWORD_BYTES = 72  # bcrypt ignores (bcrypt 5: rejects) anything longer
HASHING_NICENESS = 10


def _ab64_decode(text):
    # passlib's "adapted base64": '.' instead of '+', no padding.
    text = text.replace(".", "+")
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _off_the_event_loop():
    """Under gevent, a runner that moves blocking hashing to gevent's thread pool.

    bcrypt holds a real thread for ~0.3 s; on a gevent worker that would
    freeze every connection of the process. Elsewhere: None (run in place).
    """
    try:
        from gevent import monkey
    except ImportError:
        return None
    if not monkey.is_module_patched("threading"):
        return None
    import gevent

    return lambda work, *args: gevent.get_hub().threadpool.apply(work, args)


def _lower_priority():
    try:  # on Linux, PRIO_PROCESS with a thread id sets that thread's niceness only
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)
    except OSError:
        pass


def _on_low_priority_threads(concurrency):
    """On Linux, a runner that hashes on ``concurrency`` threads of lower CPU priority; elsewhere None."""
    if not sys.platform.startswith("linux"):
        return None
    pool = concurrent.futures.ThreadPoolExecutor(
        concurrency, thread_name_prefix="oxc-hash", initializer=_lower_priority
    )
    return lambda work, *args: pool.submit(work, *args).result()


def _verify_pbkdf2(password, stored):
    try:
        _, scheme, rounds, salt, checksum = stored.split("$")
        if scheme != "pbkdf2-sha256":
            return False
        expected = _ab64_decode(checksum)
        derived = hashlib.pbkdf2_hmac("sha256", password, _ab64_decode(salt), int(rounds), len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(derived, expected)


BUSY = "The server is busy checking passwords; try again shortly"


class Passwords:
    """Hash and verify passwords at ``rounds``: ``concurrency`` at a time, ``queue`` more waiting."""

    def __init__(self, rounds=12, concurrency=2, queue=None, wait=0.5):
        self.rounds = rounds
        self.wait = wait
        self.queue = concurrency if queue is None else queue
        self._slots = threading.BoundedSemaphore(concurrency)
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._offload = _off_the_event_loop() or _on_low_priority_threads(concurrency)
        # Checked against when the user does not exist, so that answering
        # "no such user" costs as long as "wrong password".
        self._dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds))

    def _acquire(self):
        if self._slots.acquire(blocking=False):
            return
        with self._waiting_lock:
            if self._waiting >= self.queue:
                raise TooManyRequests(BUSY, 1)
            self._waiting += 1
        try:
            acquired = self._slots.acquire(timeout=self.wait)
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        if not acquired:
            raise TooManyRequests(BUSY, 1)

    def _run(self, work, *args):
        self._acquire()
        try:
            if self._offload is not None:
                return self._offload(work, *args)
            return work(*args)
        finally:
            self._slots.release()

    def hash(self, password):
        """A bcrypt hash of ``password`` (which must fit in 72 bytes)."""
        return self._run(bcrypt.hashpw, password.encode("utf-8"), bcrypt.gensalt(self.rounds)).decode("ascii")

    def verify(self, password, stored):
        """True when ``password`` matches ``stored``; with ``stored`` None, burn the same time."""
        secret = password.encode("utf-8")
        if stored is None:
            self._run(bcrypt.checkpw, secret, self._dummy)
            return False
        if stored.startswith("$pbkdf2-sha256$"):
            return self._run(_verify_pbkdf2, secret, stored)
        try:
            return self._run(bcrypt.checkpw, secret, stored.encode("ascii"))
        except ValueError:
            return False

    def needs_rehash(self, stored):
        """True for hashes that are not bcrypt at the configured cost or higher."""
        if not stored.startswith("$2"):
            return True
        try:
            return int(stored.split("$")[2]) < self.rounds
        except (IndexError, ValueError):
            return True
