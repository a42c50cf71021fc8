"""Sending mail: one-time codes to users, through the configured SMTP server.

``send`` only queues the message; one background thread builds and delivers
each in turn (in the order queued; a connection gives up after 15 s), so that
no request waits on an SMTP server, and a failure is logged (the user can ask
for the code again). The thread starts each mail a random moment (``DELAY``)
after it was queued, so that its work lands after the answer that queued it:
that answer takes as long as one that queued nothing, which is what an
address without an account gets. With no SMTP_HOST in development or
testing, the mail is written to the log instead, which is said once at
start-up; in production without SMTP nothing is sent and a warning says so.
"""

import collections
import email.message
import logging
import random
import smtplib
import ssl
import threading
import time

from .worker import Worker

log = logging.getLogger("oxc.mail")

DELAY = (0.05, 0.25)  # seconds from queueing a mail to starting to send it


class Mailer:
    """Send plain-text mail with the SMTP settings of ``settings``."""

    def __init__(self, settings):
        self.settings = settings
        self._queue = collections.deque()
        self._changed = threading.Condition()
        self._pending = 0  # queued or being delivered
        self._last_due = 0.0
        self._worker = Worker("oxc-mail", self._send_queued)
        if settings.smtp_host:
            # Started now, not by the first mail: a thread started in a request would make that
            # request slower than one for an address without an account.
            self._worker.start()
        elif settings.environment == "production":
            log.warning("mail: SMTP_HOST is not set; verification and reset codes cannot be sent")
        else:
            log.info("mail: SMTP_HOST is not set; codes are written to this log instead (development)")

    def send(self, to, subject, body):
        """Queue one message to ``to``; it leaves within a moment."""
        settings = self.settings
        if not settings.smtp_host:
            if settings.environment != "production":
                log.info("mail to %s: %s\n%s", to, subject, body)
            return
        with self._changed:
            self._last_due = max(self._last_due, time.monotonic() + random.uniform(*DELAY))
            self._queue.append((self._last_due, to, subject, body))
            self._pending += 1
        self._worker.wake()

    def _send_queued(self):
        """Send every queued mail in turn, each when it is due; then sleep until woken."""
        while not self._worker.stopping:
            with self._changed:
                if not self._queue:
                    return None
                due, to, subject, body = self._queue.popleft()
            try:
                time.sleep(max(0.0, due - time.monotonic()))
                message = email.message.EmailMessage()
                message["From"] = self.settings.mail_from
                message["To"] = to
                message["Subject"] = subject
                message.set_content(body)
                self._deliver(message)
            except Exception:
                log.exception("mail: could not send to %s", to)
            finally:
                with self._changed:
                    self._pending -= 1
                    self._changed.notify_all()

    def _deliver(self, message):
        settings = self.settings
        try:
            if settings.smtp_security == "ssl":
                client = smtplib.SMTP_SSL(
                    settings.smtp_host, settings.smtp_port, timeout=15, context=ssl.create_default_context()
                )
            else:
                client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=15)
            with client:
                if settings.smtp_security == "starttls":
                    client.starttls(context=ssl.create_default_context())
                if settings.smtp_user:
                    client.login(settings.smtp_user, settings.smtp_password)
                client.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            log.error("mail: could not send to %s: %s", message["To"], exc)

    def close(self):
        """Stop sending (mail still queued is dropped: its codes can be asked for again)."""
        self._worker.close()

    def flush(self, timeout=10):
        """Wait for mail still queued or being sent (tests and shutdown)."""
        with self._changed:
            self._changed.wait_for(lambda: self._pending == 0, timeout)
