"""Sending mail: one-time codes to users, through the configured SMTP server.

Mail leaves on a background thread so that no request waits on an SMTP
server; a failure is logged (the user can ask for the code again). With no
SMTP_HOST in development or testing, the mail is written to the log instead,
which is said once at start-up; in production without SMTP nothing is sent
and a warning says so.
"""

import email.message
import logging
import smtplib
import ssl
import threading

log = logging.getLogger("oxc.mail")


class Mailer:
    """Send plain-text mail with the SMTP settings of ``settings``."""

    def __init__(self, settings):
        self.settings = settings
        self._threads = []
        if not settings.smtp_host:
            if settings.environment == "production":
                log.warning("mail: SMTP_HOST is not set; verification and reset codes cannot be sent")
            else:
                log.info("mail: SMTP_HOST is not set; codes are written to this log instead (development)")

    def send(self, to, subject, body):
        """Queue one message to ``to``; returns the thread sending it (or None)."""
        settings = self.settings
        if not settings.smtp_host:
            if settings.environment != "production":
                log.info("mail to %s: %s\n%s", to, subject, body)
            return None
        message = email.message.EmailMessage()
        message["From"] = settings.mail_from
        message["To"] = to
        message["Subject"] = subject
        message.set_content(body)
        thread = threading.Thread(target=self._deliver, args=(message,), name="oxc-mail", daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return thread

    def _deliver(self, message):
        settings = self.settings
        try:
            if settings.smtp_security == "ssl":
                client = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=15,
                                          context=ssl.create_default_context())
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

    def flush(self, timeout=10):
        """Wait for mail still being sent (tests and shutdown)."""
        for thread in self._threads:
            thread.join(timeout)
