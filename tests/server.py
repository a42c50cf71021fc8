"""Running the real server as a subprocess on an ephemeral loopback port."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

from oxc_client import BadRequest, Client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """``oxc serve`` in a child process; ``request`` talks to it with http.client."""

    def __init__(self, data_dir, **env):
        self.data_dir = str(data_dir)
        environment = {k: v for k, v in os.environ.items() if k not in ("OXC_ENV", "FLASK_ENV")}
        environment.update(
            HOST="127.0.0.1",
            PORT="0",
            DATA_DIR=self.data_dir,
            BCRYPT_ROUNDS="4",
            AUTH_RATE_LIMIT="1000000",
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        environment.update({key: str(value) for key, value in env.items()})
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "oxc_wsgi.py"), "serve"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if not line.startswith("oxc listening on http://"):
            self.process.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.process.stderr.read()}")
        self.port = int(line.split("http://", 1)[1].split()[0].rsplit(":", 1)[1])

    def request(self, method, path, body=None, token=None, timeout=10):
        """(status, parsed JSON) of one raw request on a fresh connection (for tests of HTTP itself)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {}
        if body is not None:
            body = json.dumps(body)
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()

    def client(self, **options):
        """An oxc_client.Client for this server."""
        return Client(f"http://127.0.0.1:{self.port}", **options)

    def user(self, username, password="password123"):
        """Register (if needed) and log in with the client library; returns the login data."""
        client = self.client()
        try:
            client.register(username, password)
        except BadRequest:
            pass  # already registered
        user = client.login(username, password)
        return dict(client.tokens, user=user)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Signal the server and wait; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self.process.stdout.close()
            self.process.stderr.close()

    def kill(self):
        """kill -9, as a crash would."""
        return self.stop(signal.SIGKILL)


def wait_until(predicate, timeout=10, interval=0.05):
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class RawStream:
    """A raw HTTP/1.1 GET of the event stream on ``server``, read as bytes arrive."""

    END = b"\r\n0\r\n\r\n"  # the last chunk: the server ended the stream

    def __init__(self, server, token=None, query=""):
        self.socket = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.socket.sendall(
            f"GET /api/events/stream{query} HTTP/1.1\r\nHost: test\r\n{auth}Accept: text/event-stream\r\n\r\n".encode()
        )
        self.received = b""

    def read_until(self, marker, timeout=5):
        """Read until ``marker`` has arrived (True), or the time is up or the stream ended (False)."""
        deadline = time.monotonic() + timeout
        while marker not in self.received and time.monotonic() < deadline:
            self.socket.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.socket.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                break
            self.received += chunk
        return marker in self.received

    @property
    def status(self):
        return int(self.received.split(b" ", 2)[1]) if self.received.startswith(b"HTTP/1.1 ") else None

    def close(self):
        self.socket.close()
