"""Slow clients against a real ``oxc serve``: trickled headers never starve other clients.

waitress has no deadline for request headers, so connections that send a
byte now and then stay open for as long as the attacker likes; a few hundred
fill its connection limit. These tests attack a server in a subprocess over
loopback and ask ``/api/health`` from another loopback address (127.0.0.2)
all along: a cap per client address must not punish other clients.
"""

import http.client
import json
import resource
import select
import socket
import threading
import time

import pytest
from server import Server

OTHER_CLIENT = "127.0.0.2"
#: The start of a request whose headers never end.
OPENING = b"GET /api/health HTTP/1.1\r\nHost: oxc\r\nX-Slow: "


@pytest.fixture(autouse=True)
def enough_descriptors():
    """Room for the attack's sockets here and in the server (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Trickle:
    """``count`` connections from 127.0.0.1, each sending one more header byte every ``every`` seconds.

    A connection the server closes is opened again at the next tick, as an
    attacker would. Runs in a thread until ``stop``.
    """

    def __init__(self, port, count, every=0.5, source="127.0.0.1"):
        self.port, self.count, self.every, self.source = port, count, every, source
        self.sockets = []
        self.opened = self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self):
        sock = socket.socket()
        sock.bind((self.source, 0))
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(OPENING)
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        self.opened += 1
        return sock

    def start(self):
        self.sockets = [self._open() for _ in range(self.count)]
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.every):
            live = [sock for sock in self.sockets if sock is not None]
            readable = select.select(live, [], [], 0)[0] if live else []
            for index, sock in enumerate(self.sockets):
                if sock is not None and sock not in readable:
                    try:
                        sock.send(b"a")
                        continue
                    except OSError:
                        pass
                if sock is not None:  # the server closed it (EOF or reset)
                    sock.close()
                    self.closed_by_server += 1
                self.sockets[index] = self._open()

    def open_now(self):
        """How many of the attack's connections are open at this moment (as far as this side knows)."""
        return sum(sock is not None for sock in self.sockets)

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        for sock in self.sockets:
            if sock is not None:
                sock.close()


def health(port, source=OTHER_CLIENT, timeout=5):
    """Seconds one GET /api/health took from ``source`` (``timeout`` when it got no answer)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        connection.request("GET", "/api/health")
        answer = connection.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["status"] == "success"
    except OSError:
        return timeout
    finally:
        connection.close()
    return time.monotonic() - started


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@pytest.fixture
def server(tmp_path):
    running = Server(tmp_path / "data")
    yield running
    running.stop()


def test_three_hundred_trickling_connections_never_keep_health_from_answering(server):
    attack = Trickle(server.port, 300).start()
    try:
        timings, deadline = [], time.monotonic() + 12
        while time.monotonic() < deadline:
            timings.append(health(server.port))
            time.sleep(0.05)
    finally:
        attack.stop()
    p99 = percentile(timings, 0.99)
    print(
        f"\n/api/health during 300 slow connections: {len(timings)} requests, "
        f"p50 {percentile(timings, 0.5) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {max(timings) * 1000:.1f} ms; the attack opened {attack.opened} connections"
    )
    assert max(timings) < 1.0, f"p99 {p99:.3f} s, max {max(timings):.3f} s"
    assert attack.closed_by_server >= 250  # those beyond the cap went at once


def closed_by_server(sock, within):
    """True when the server closes ``sock`` within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_one_address_gets_only_its_share_of_waiting_connections(tmp_path):
    server = Server(tmp_path / "data", MAX_CONNECTIONS_PER_CLIENT=5, HEADER_TIMEOUT=0)
    held = []
    try:
        for _ in range(5):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            held[-1].sendall(OPENING)
        time.sleep(0.3)
        one_more = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        one_more.sendall(OPENING)
        assert closed_by_server(one_more, 2)  # the sixth that waits is one too many
        one_more.close()
        assert health(server.port) < 1.0  # another address is not counted with it
        assert not closed_by_server(held[0], 0.5)  # the five are still served
        held.pop().close()
        time.sleep(0.3)
        assert health(server.port, source="127.0.0.1") < 1.0  # its share has room again
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_headers_not_finished_within_the_deadline_close_the_connection(tmp_path):
    server = Server(tmp_path / "data", HEADER_TIMEOUT=2)
    try:
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        slow.sendall(OPENING)
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 8:
            time.sleep(0.25)
            try:
                slow.send(b"a")  # never idle, so channel_timeout alone would never end it
                slow.setblocking(False)
                if slow.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed_after = time.monotonic() - started
                break
            finally:
                slow.setblocking(True)
        slow.close()
        assert closed_after is not None and 1.5 < closed_after < 4.5, closed_after
        # A client that finishes its headers in time is served, and may stay connected between requests.
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        for _ in range(2):
            connection.request("GET", "/api/health")
            assert connection.getresponse().read()
            time.sleep(2.5)
        connection.close()
    finally:
        server.stop()
