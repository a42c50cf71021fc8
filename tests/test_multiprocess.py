"""Real server processes sharing one PostgreSQL database behave as one service.

Two ``oxc serve`` processes on their own loopback ports (as behind a load
balancer), and gunicorn with two gevent workers on one port: an event reaches
a stream held on another process within a second, and a kill -9 of one
process loses nothing it acknowledged.
"""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from server import ROOT, Server, wait_until
from test_crash import Ledger, write_messages

from oxc_client import Client

pytestmark = pytest.mark.backends("postgres")


@pytest.fixture
def servers(backend, tmp_path):
    """Two ``oxc serve`` processes on one database and one data directory."""
    running = [Server(tmp_path / "data", STORE_URL=backend["store_url"]) for _ in range(2)]
    yield running
    for server in running:
        server.stop()


def login(url, name):
    client = Client(url)
    client.register(name, "password123")
    client.login(name, "password123")
    return client


def listen(client, seen, wanted):
    """Collect (arrival time, event) of chat messages from ``client``'s stream until ``wanted`` came."""

    def run():
        events = client.stream()
        for event in events:
            if event["type"] == "chat.message.created":
                seen.append((time.monotonic(), event))
                if len(seen) >= wanted:
                    events.close()
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_message_posted_to_one_process_reaches_a_stream_on_the_other_within_a_second(servers):
    first, second = (f"http://127.0.0.1:{server.port}" for server in servers)
    alice, bob = login(first, "alice"), login(second, "bob")
    chat_id = alice.create_group("g", members=[bob.me()["id"]])["id"]
    seen = []
    listener = listen(bob, seen, wanted=3)
    time.sleep(0.5)  # the stream is open on the second process
    sent = []
    for number in range(3):
        sent.append(time.monotonic())
        alice.send(chat_id, f"across {number}")
        time.sleep(0.2)
    listener.join(10)
    assert [event["data"]["content"] for _, event in seen] == [f"across {number}" for number in range(3)]
    delays = [arrived - posted for (arrived, _), posted in zip(seen, sent)]
    assert max(delays) < 1.0, delays


def test_a_kill_9_of_one_process_loses_nothing_it_acknowledged(servers):
    first, second = servers
    token = first.user("alice")["access_token"]
    ledger, stop = Ledger(), threading.Event()
    writers = [threading.Thread(target=write_messages, args=(first, "alice", token, ledger, stop)) for _ in range(4)]
    for writer in writers:
        writer.start()
    assert wait_until(lambda: len(ledger.messages) >= 50, timeout=20)
    first.kill()
    stop.set()
    for writer in writers:
        writer.join(10)
    # Every acknowledged message is there, read through the process that lived.
    reader = second.client()
    reader.login("alice", "password123")
    stored = {message["content"] for message in reader.iter_messages()}
    missing = set(ledger.messages) - stored
    assert not missing, f"{len(missing)} acknowledged messages lost"


def test_gunicorn_gevent_workers_on_one_database_deliver_every_event_to_a_stream(backend, tmp_path):
    pytest.importorskip("gevent", reason="the 'gevent' extra (gunicorn, gevent) is not installed")
    pytest.importorskip("gunicorn", reason="the 'gevent' extra (gunicorn, gevent) is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(
        os.environ,
        DATA_DIR=str(tmp_path / "data"),
        STORE_URL=backend["store_url"],
        BCRYPT_ROUNDS="4",
        LOG_LEVEL="WARNING",
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gevent",
            "-w",
            "2",
            "--graceful-timeout",
            "3",
            "-b",
            f"127.0.0.1:{port}",
            "oxc_wsgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return Client(url).health()
            except Exception:
                return None

        assert wait_until(up, timeout=30)
        alice, bob = login(url, "alice"), login(url, "bob")
        chat_id = alice.create_group("g", members=[bob.me()["id"]])["id"]
        seen = []
        listener = listen(bob, seen, wanted=10)
        time.sleep(0.5)
        for number in range(10):
            Client(url, tokens=alice.tokens).send(chat_id, f"m{number}")  # a new connection
        listener.join(15)
        # The stream is held by one worker; the posts landed on either.
        assert sorted(event["data"]["content"] for _, event in seen) == sorted(f"m{number}" for number in range(10))
    finally:
        process.terminate()
        process.wait(20)
