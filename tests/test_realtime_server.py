"""Real-time on a real waitress server: first bytes, heartbeats, the cap, departures."""

import time

import pytest
from server import RawStream as Stream
from server import Server, wait_until


@pytest.fixture
def server(tmp_path):
    running = Server(tmp_path / "data", REALTIME_MAX_CLIENTS=3, THREADS=2, SSE_HEARTBEAT=0.3)
    yield running
    running.stop()


def test_a_stream_sends_its_first_bytes_at_once_and_heartbeats(server):
    token = server.user("alice")["access_token"]
    stream = Stream(server, token)
    try:
        started = time.monotonic()
        assert stream.read_until(b": connected", timeout=2)
        assert time.monotonic() - started < 1
        assert b"200 OK" in stream.received and b"text/event-stream" in stream.received
        assert stream.read_until(b": heartbeat", timeout=2)
        status, _ = server.request("POST", "/api/messages", {"content": "live"}, token)
        assert status == 201
        assert stream.read_until(b'"content": "live"', timeout=3)
    finally:
        stream.close()


def test_beyond_the_cap_streams_get_503_and_other_requests_still_answer(server):
    token = server.user("alice")["access_token"]
    streams = [Stream(server, token) for _ in range(3)]
    try:
        for stream in streams:
            assert stream.read_until(b": connected")
        extra = Stream(server, token)
        assert extra.read_until(b"503 Service Unavailable")
        assert b"Retry-After" in extra.received
        extra.close()
        started = time.monotonic()
        assert server.request("POST", "/api/messages", {"content": "still here"}, token)[0] == 201
        assert server.request("GET", "/api/messages", token=token)[0] == 200
        assert time.monotonic() - started < 2
    finally:
        for stream in streams:
            stream.close()


def test_a_departed_client_frees_its_slot_within_seconds(server):
    token = server.user("alice")["access_token"]
    streams = [Stream(server, token) for _ in range(3)]
    for stream in streams:
        assert stream.read_until(b": connected")
    streams[0].close()
    departed = time.monotonic()

    def a_new_stream_opens():
        stream = Stream(server, token)
        opened = stream.read_until(b"HTTP/1.1 ", timeout=2) and stream.read_until(b"\r\n\r\n", timeout=2)
        ok = opened and b"200 OK" in stream.received
        stream.close()
        return ok

    assert wait_until(a_new_stream_opens, timeout=6, interval=0.2)
    assert time.monotonic() - departed < 6
    for stream in streams[1:]:
        stream.close()
