"""Password hashing: bcrypt, bounded in concurrency, plus 0xC's old hashes.

bcrypt at cost 12 takes about 0.3 s of CPU. A semaphore keeps hashing from
occupying every worker thread (a burst of logins would otherwise stall the
whole server); a caller that cannot get a slot in time gets 429 with Retry-After.

0xC stored passlib ``$pbkdf2-sha256$rounds$salt$hash`` strings; they verify
here with hashlib and ``needs_rehash`` says to replace them with bcrypt.
"""

import base64
import hashlib
import hmac
import threading

import bcrypt

from .http import TooManyRequests

MAX_PASSWORD_BYTES = 72  # bcrypt ignores (bcrypt 5: rejects) anything longer


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


class Passwords:
    """Hash and verify passwords at ``rounds``, at most ``concurrency`` at a time."""

    def __init__(self, rounds=12, concurrency=2, wait=2.0):
        self.rounds = rounds
        self.wait = wait
        self._slots = threading.BoundedSemaphore(concurrency)
        self._offload = _off_the_event_loop()
        # Checked against when the user does not exist, so that answering
        # "no such user" costs as long as "wrong password".
        self._dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds))

    def _run(self, work, *args):
        if not self._slots.acquire(timeout=self.wait):
            raise TooManyRequests("The server is busy checking passwords; try again shortly", 1)
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
