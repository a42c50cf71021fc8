"""What the benchmark scripts share: servers in child processes, wrk, seeding, a table."""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port, process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


class ChildServer:
    """A server in a child process on a loopback port: raw requests and a clean stop."""

    def start(self, command, env=None):
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=dict(os.environ, **(env or {})), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port, self.process)
        self.url = f"http://127.0.0.1:{self.port}"

    def request(self, method, path, body=None, token=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        return response.status, answer

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Served(ChildServer):
    """A WSGI app served by waitress in a child process, on a loopback port."""

    def __init__(self, target, threads, env=None):
        self.port = free_port()
        self.start(
            [
                sys.executable,
                "-m",
                "waitress",
                f"--listen=127.0.0.1:{self.port}",
                f"--threads={threads}",
                "--connection-limit=1000",
                "--channel-timeout=30",
                target,
            ],
            env,
        )


def oxc_server(data_dir, threads):
    return Served(
        "oxc_wsgi:application",
        threads,
        env={"DATA_DIR": data_dir, "BCRYPT_ROUNDS": "4", "LOG_LEVEL": "WARNING", "OXC_ENV": "testing"},
    )


def login(server, username="bench", password="benchmark-password"):
    """Register (if needed) and log in through the client library; returns the tokens."""
    from oxc_client import BadRequest, Client

    client = Client(server.url)
    try:
        client.register(username, password)
    except BadRequest:
        pass  # seeded already
    client.login(username, password)
    return client.tokens


def seed_store(data_dir, count, username="bench"):
    """Put ``count`` public messages by a user ``username`` straight into a stopped store.

    Writers in 16 threads share journal flushes, so 100,000 take seconds.
    """
    from store import open_store

    store = open_store(data_dir)
    try:
        user = store.find_user(username) or bench_user(store, username)

        def write(number):
            store.add_message(
                {
                    "id": str(uuid.uuid4()),
                    "user_id": user["id"],
                    "username": username,
                    "content": f"seed {number}",
                    "timestamp": "2026-01-01T00:00:00+00:00",
                    "recipient_id": None,
                }
            )

        in_parallel(write, count)
        store.compact()
    finally:
        store.close()


BENCH_HASH = []


def bench_user(store, username, password=b"benchmark-password"):
    """Create ``username`` in a stopped store (bcrypt at the cheapest cost, hashed once per run)."""
    import bcrypt

    if not BENCH_HASH:
        BENCH_HASH.append(bcrypt.hashpw(password, bcrypt.gensalt(4)).decode())
    return store.create_user(
        {
            "id": str(uuid.uuid4()),
            "username": username,
            "email": None,
            "password_hash": BENCH_HASH[0],
            "created_at": "2026-01-01T00:00:00+00:00",
        }
    )


def in_parallel(write, count, threads=16):
    """Call ``write(n)`` for n in range(count) from ``threads`` threads, which share journal flushes."""
    workers = [
        threading.Thread(target=lambda first=first: [write(n) for n in range(first, count, threads)])
        for first in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


WRK_POST = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk(url, seconds, connections, token=None, post=False, threads=1, body='{"content": "benchmark message"}'):
    """Run wrk; returns (requests per second, p99 in ms, non-2xx count)."""
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is missing; install it with: apt-get install wrk")
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    script = None
    if post:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(WRK_POST % body)
        script.close()
        command += ["-s", script.name]
    try:
        output = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    finally:
        if script:
            os.unlink(script.name)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p99 = _milliseconds(re.search(r"99%\s+([\d.]+\w+)", output).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return rate, p99, int(bad.group(1)) if bad else 0


def _milliseconds(text):
    number, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def table(title, header, rows):
    """Print one aligned table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(str(cell).ljust(width) for cell, width in zip(header, widths)))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
