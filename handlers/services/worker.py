"""One background thread per service: started once on demand, woken when there is work, stopped and joined.

The push worker, the mailer and the notifier each drain a queue off the
request path. They share this one pattern instead of each keeping its own
thread, event, lock and stop flag::

    worker = Worker("oxc-push", drain)   # drain() returns seconds until it wants to run again, or None
    worker.start()                        # on the first piece of work (or at start-up); later calls only wake
    worker.wake()                         # more work: run drain() now
    worker.close()                        # at shutdown: stop and join

``step`` runs in a loop on the thread: after each run the thread sleeps until
woken or until the number of seconds ``step`` returned has passed (None:
until woken). A step that raises is logged and run again after
``retry_after`` seconds, so one failure never ends the thread. Long steps
should look at :attr:`Worker.stopping` and return early.
"""

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("oxc.worker")

__all__ = ["Worker"]


class Worker:
    """A daemon thread running ``step`` whenever it is woken (or its wait runs out), until closed."""

    def __init__(
        self,
        name: str,
        step: Callable[[], float | None],
        *,
        linger: float = 0.0,
        retry_after: float = 1.0,
        join_timeout: float = 10.0,
    ) -> None:
        """``linger``: seconds to wait after a wake-up before stepping, to gather what arrives meanwhile."""
        self.name = name
        self._step = step
        self._linger = linger
        self._retry_after = retry_after
        self._join_timeout = join_timeout
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = False

    @property
    def stopping(self) -> bool:
        """True once close() was called: a step in progress should return."""
        return self._stop

    def start(self) -> None:
        """Start the thread unless it runs (or was closed), and wake it."""
        with self._lock:
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._wake.set()

    def wake(self) -> None:
        """Make a running thread step now (a thread not yet started stays so)."""
        self._wake.set()

    def close(self) -> None:
        """Stop the thread and wait (at most join_timeout seconds) for its step to return."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self._join_timeout)

    def _run(self) -> None:
        while not self._stop:
            try:
                wait = self._step()
            except Exception:
                log.exception("%s: a step failed; retrying shortly", self.name)
                wait = self._retry_after
            if self._stop:
                return
            # Cleared after the wait, before the next step: work queued from here on wakes it again.
            if self._wake.wait(wait) and self._linger:
                # Let the request that woke us finish its answer first (the interpreter
                # is shared), and gather what arrives meanwhile.
                time.sleep(self._linger)
            self._wake.clear()
