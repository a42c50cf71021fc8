"""Delivering notifications to webhooks: signed, retried, durable, off the request path.

A request that causes a notification only adds a job to the store's push
queue (bounded by PUSH_QUEUE_MAX; beyond it the job is kept as a dead letter
at once). A background worker sends due jobs as JSON POSTs signed with
HMAC-SHA256 over ``<timestamp>.<body>`` using PUSH_WEBHOOK_SECRET::

    X-Oxc-Timestamp: 1700000000
    X-Oxc-Signature: sha256=<hex>
    X-Oxc-Delivery: <job id>

A 2xx answer removes the job. Anything else (or no answer) is retried after
1, 2, 4 ... seconds (at most 5 minutes); after PUSH_MAX_ATTEMPTS tries the job
becomes a dead letter, which admins can list. Jobs live in the store, so
nothing queued is lost across a restart; a receiver should use X-Oxc-Delivery
to ignore the rare repeat of a delivery that succeeded just before a crash.
Several processes on one store share the queue: each worker claims due jobs
for twice the send timeout, so each job is sent by one of them (or again by
another once the lease runs out, if its sender died).
"""

import hashlib
import hmac
import json
import logging
import threading
import urllib.error
import urllib.request

log = logging.getLogger("oxc.push")

MAX_BACKOFF = 300
TIMEOUT = 5


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect could lead a delivery off the hosts it was allowed to reach.
    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def sign(secret, timestamp, body):
    """The X-Oxc-Signature value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def backoff(attempts):
    """Seconds to wait after ``attempts`` failed tries."""
    return min(MAX_BACKOFF, 2 ** (attempts - 1))


class PushWorker:
    """One background thread draining the store's push queue."""

    def __init__(self, store, settings, clock):
        self.store = store
        self.settings = settings
        self.clock = clock
        self._wake = threading.Event()
        self._stop = False
        self._thread = None
        self._lock = threading.Lock()

    def start(self):
        """Start the thread if there is or may be work (called on first enqueue and at start-up)."""
        with self._lock:
            if self._thread is None and not self._stop:
                self._thread = threading.Thread(target=self._run, name="oxc-push", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self):
        while not self._stop:
            try:
                # Claimed for a while, so that no other process delivers it meanwhile.
                for job in self.store.claim_push_jobs(self.clock(), lease=2 * TIMEOUT):
                    if self._stop:
                        return
                    self._deliver(job)
            except Exception:
                log.exception("push: the delivery loop failed; retrying shortly")
            following = self.store.next_push_time() if not self._stop else None
            wait = 1.0 if following is None else max(0.01, min(1.0, following - self.clock()))
            self._wake.wait(wait)
            self._wake.clear()

    def _deliver(self, job):
        body = json.dumps(job["payload"], separators=(",", ":")).encode("utf-8")
        timestamp = str(int(self.clock()))
        headers = {"Content-Type": "application/json", "User-Agent": "oxc-push",
                   "X-Oxc-Timestamp": timestamp, "X-Oxc-Delivery": job["id"]}
        if self.settings.push_webhook_secret:
            headers["X-Oxc-Signature"] = sign(self.settings.push_webhook_secret, timestamp, body)
        try:
            request = urllib.request.Request(job["url"], data=body, headers=headers, method="POST")
            with _OPENER.open(request, timeout=TIMEOUT) as answer:
                answer.read(1024)
            self.store.delete_push_job(job["id"])
            return
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
        attempts = job["attempts"] + 1
        if attempts >= self.settings.push_max_attempts:
            log.warning("push: giving up on %s after %d tries: %s", job["url"], attempts, error)
            self.store.update_push_job(job["id"], {"attempts": attempts, "status": "dead", "last_error": error})
        else:
            self.store.update_push_job(job["id"], {"attempts": attempts, "last_error": error,
                                                   "next_attempt_at": self.clock() + backoff(attempts)})

    def close(self):
        """Stop the thread (jobs stay queued in the store)."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT + 2)
