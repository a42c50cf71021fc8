"""Publish-to-receive latency of SSE listeners, and memory per listener, in one run.

    python bench/bench_events.py [--listeners 1,100,500] [--messages 30] [--server waitress,gevent]
                                 [--gevent-held 2000]

For each server (oxc under ``oxc serve`` on waitress, and under
``gunicorn -k gevent -w 1`` when gunicorn and gevent are installed: the
``gevent`` extra) and each number of listeners: opens that many SSE streams on
loopback, posts public messages one at a time and records when each listener
sees each one; prints p50/p99 of those delays and the server's resident memory
per listener. On gevent it also holds ``--gevent-held`` streams while it times
plain authenticated GETs one after another (the latency an ordinary request
sees) and then saturates the server with wrk (throughput; gevent's p99 under
saturation is poor even for a bare app, so it is shown, not targeted).
Stops by itself.
"""

import argparse
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from common import ChildServer, free_port, login, table, wrk


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server(ChildServer):
    """oxc under ``oxc serve`` (waitress) or ``gunicorn -k gevent -w 1``."""

    def __init__(self, kind, listeners, data_dir):
        self.port = free_port()
        self.kind = kind
        env = dict(
            DATA_DIR=data_dir,
            BCRYPT_ROUNDS="4",
            LOG_LEVEL="WARNING",
            OXC_ENV="testing",
            REALTIME_MAX_CLIENTS=str(listeners + 20),
            REALTIME_MAX_PER_USER=str(listeners + 20),
            HOST="127.0.0.1",
            PORT=str(self.port),
        )
        if kind == "waitress":
            command = [sys.executable, "oxc_wsgi.py", "serve"]
        else:
            command = [
                sys.executable,
                "-m",
                "gunicorn",
                "-k",
                "gevent",
                "-w",
                "1",
                "--worker-connections",
                str(listeners + 500),
                "-b",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
                "oxc_wsgi:application",
            ]
        self.start(command, env)

    def worker_pid(self):
        if self.kind == "waitress":
            return self.process.pid
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return int(children.split()[0]) if children.split() else self.process.pid


class Listeners:
    """Many SSE connections read by one thread with a selector."""

    def __init__(self, server, token, count):
        self.selector = selectors.DefaultSelector()
        self.buffers = {}
        request = (
            f"GET /api/events/stream HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            f"Accept: text/event-stream\r\n\r\n"
        ).encode()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(request)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
            self.buffers[sock] = b""
        self.wanted = None
        self.arrivals = []
        self.lock = threading.Lock()

    def pump(self, until, stop_when=None):
        """Read whatever arrives until ``until`` (monotonic) or ``stop_when()``."""
        while time.monotonic() < until and not (stop_when and stop_when()):
            for key, _ in self.selector.select(timeout=0.01):
                try:
                    chunk = key.fileobj.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                now = time.perf_counter()
                if not chunk:
                    self.selector.unregister(key.fileobj)
                    continue
                buffer = self.buffers[key.fileobj] + chunk
                if self.wanted and self.wanted in buffer:
                    with self.lock:
                        self.arrivals.append(now)
                    buffer = buffer.split(self.wanted, 1)[1]
                self.buffers[key.fileobj] = buffer[-4096:]

    def connected(self):
        return all(b": connected" in buffer or b"id: " in buffer for buffer in self.buffers.values())

    def close(self):
        for sock in list(self.buffers):
            sock.close()


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def measure(kind, listeners, messages, work):
    server = Server(kind, listeners, os.path.join(work, f"{kind}-{listeners}"))
    try:
        token = login(server)["access_token"]
        pid = server.worker_pid()
        server.request("GET", "/api/health")
        before = rss_kb(pid)
        crowd = Listeners(server, token, listeners)
        crowd.pump(time.monotonic() + 30, crowd.connected)
        if not crowd.connected():
            raise RuntimeError(f"{kind}: not every listener connected")
        after = rss_kb(pid)
        delays = []
        for number in range(messages):
            marker = f"bench-{number}-{time.monotonic_ns()}"
            crowd.wanted = marker.encode()
            crowd.arrivals = []
            sent = time.perf_counter()
            threading.Thread(target=server.request, args=("POST", "/api/messages", {"content": marker}, token)).start()
            crowd.pump(time.monotonic() + 5, lambda: len(crowd.arrivals) >= listeners)
            delays += [(arrival - sent) * 1000 for arrival in crowd.arrivals]
            delays += [float("inf")] * (listeners - len(crowd.arrivals))
            time.sleep(0.05)
        crowd.close()
        return percentile(delays, 0.5), percentile(delays, 0.99), (after - before) / listeners
    finally:
        server.stop()


def sequential_get(port, path, token, count):
    """Latencies (ms) of ``count`` GETs one after another on one keep-alive connection."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        response.read()
        times.append((time.perf_counter() - started) * 1000)
    connection.close()
    return times


def held_get(listeners, seconds, work):
    server = Server("gevent", listeners, os.path.join(work, "gevent-held"))
    try:
        token = login(server)["access_token"]
        _, answer = server.request("POST", "/api/messages", {"content": "one"}, token)
        crowd = Listeners(server, token, listeners)
        crowd.pump(time.monotonic() + 60, crowd.connected)
        held = sum(1 for buffer in crowd.buffers.values() if b": connected" in buffer)
        path = f"/api/messages/{answer['data']['id']}"
        one_by_one = sequential_get(server.port, path, token, 500)
        rate, saturated_p99, bad = wrk(server.url + path, seconds, 16, token)
        crowd.close()
        return held, percentile(one_by_one, 0.5), percentile(one_by_one, 0.99), rate, saturated_p99, bad
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listeners", default="1,100,500")
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--server", default="waitress,gevent")
    parser.add_argument("--gevent-held", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    kinds = args.server.split(",")
    if "gevent" in kinds:
        try:
            import gevent  # noqa: F401
            import gunicorn  # noqa: F401
        except ImportError:
            print(
                "bench: gunicorn/gevent missing (pip install -e '.[gevent]'); measuring waitress only", file=sys.stderr
            )
            kinds = [kind for kind in kinds if kind != "gevent"]
    work = tempfile.mkdtemp(prefix="oxc-bench-events-")
    rows = []
    try:
        for kind in kinds:
            for count in (int(n) for n in args.listeners.split(",")):
                print(f"{kind}: {count} listeners ...", file=sys.stderr, flush=True)
                p50, p99, per_listener = measure(kind, count, args.messages, work)
                rows.append((kind, count, f"{p50:.1f}", f"{p99:.1f}", f"{per_listener:.0f}"))
        held = held_get(args.gevent_held, args.seconds, work) if "gevent" in kinds and args.gevent_held else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table(
        f"publish-to-receive latency over SSE ({args.messages} public messages, each to every listener)",
        ("server", "listeners", "p50 ms", "p99 ms", "RSS kB per listener"),
        rows,
    )
    if held:
        count, p50, p99, rate, saturated, bad = held
        table(
            f"gunicorn -k gevent -w 1 holding {count} SSE listeners: GET one message, 500 in a row "
            f"(target p99 <= 10 ms), then wrk -c16 for {args.seconds} s",
            ("listeners held", "p50 ms", "p99 ms", "wrk req/s", "wrk p99 ms", "non-2xx"),
            [(count, f"{p50:.2f}", f"{p99:.2f}", f"{rate:.0f}", f"{saturated:.1f}", bad)],
        )


if __name__ == "__main__":
    main()
