"""kill -9 the real server under concurrent writers; nothing acknowledged is lost.

Each cycle starts the server on the same data directory, runs writers
(messages, registrations, token refreshes) against it, kills it with SIGKILL
at a random moment, restarts it and checks every acknowledgement against what
the restarted server answers, and every file left on disk. The compaction
threshold is set low so that kills also land during snapshot writing.
"""

import http.client
import json
import os
import random
import threading
import time

from server import Server

from store import journal

CYCLES = 24
WRITERS = 4
# What a client sees when the server dies under it.
GONE = (OSError, http.client.HTTPException)


class Ledger:
    """What the server acknowledged, shared by the writer threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.messages = {}  # content -> username of the author
        self.users = set()
        self.refresh = {}  # username -> last acknowledged refresh token, or None if unsure


def write_messages(server, username, token, ledger, stop):
    number = 0
    while not stop.is_set():
        content = f"{username}-{number}-{random.random()}"
        number += 1
        try:
            status, _ = server.request("POST", "/api/messages", {"content": content}, token, timeout=5)
        except GONE:
            return
        if status == 201:
            with ledger.lock:
                ledger.messages[content] = username


def register_users(server, cycle, ledger, stop):
    number = 0
    while not stop.is_set():
        username = f"u{cycle}x{number}"
        number += 1
        try:
            status, _ = server.request(
                "POST", "/api/auth/register", {"username": username, "password": "password123"}, timeout=5
            )
        except GONE:
            return
        if status == 201:
            with ledger.lock:
                ledger.users.add(username)


def refresh_tokens(server, username, token, ledger, stop):
    while not stop.is_set():
        with ledger.lock:
            ledger.refresh[username] = None  # unknown until this attempt is answered
        try:
            status, answer = server.request("POST", "/api/auth/refresh", {"refresh_token": token}, timeout=5)
        except GONE:
            return
        if status != 200:
            return
        token = answer["data"]["refresh_token"]
        with ledger.lock:
            ledger.refresh[username] = token


def check_files(data_dir):
    names = os.listdir(data_dir)
    assert not [name for name in names if ".tmp-" in name], names
    for name in names:
        path = os.path.join(data_dir, name)
        if name == "snapshot.json":
            journal.read_snapshot(path)
        elif name.startswith("journal."):
            with open(path, "rb") as f:
                for line in f:
                    assert line.endswith(b"\n") and line[8:9] == b" ", (name, line[:40])
                    json.loads(line[9:])


def all_contents(server, token):
    seen, cursor = set(), None
    while True:
        path = "/api/messages/me?limit=200" + (f"&before={cursor}" if cursor else "")
        status, page = server.request("GET", path, token=token)
        assert status == 200, page
        seen.update(message["content"] for message in page["messages"])
        cursor = page["paging"]["before"]
        if cursor is None:
            return seen


def test_acknowledged_writes_survive_repeated_kill_9(tmp_path):
    data_dir = tmp_path / "data"
    ledger = Ledger()
    authors = [f"writer{n}" for n in range(WRITERS)]
    rng = random.Random(1234)
    started = time.monotonic()
    for cycle in range(CYCLES):
        server = Server(data_dir, STORE_COMPACT_MIN=50, THREADS=8)
        try:
            check_files(data_dir)
            assert server.request("GET", "/api/health")[0] == 200
            logins = {name: server.user(name) for name in authors}
            for name, token in list(ledger.refresh.items()):
                if token is not None:
                    status, answer = server.request("POST", "/api/auth/refresh", {"refresh_token": token})
                    assert status == 200, (cycle, name, answer)
            for username in sorted(ledger.users):
                status, answer = server.request(
                    "POST", "/api/auth/login", {"username": username, "password": "password123"}
                )
                assert status == 200, (cycle, username, answer)
            for name in authors:
                expected = {content for content, author in ledger.messages.items() if author == name}
                missing = expected - all_contents(server, logins[name]["access_token"])
                assert not missing, (cycle, name, sorted(missing)[:5])
            ledger.users.clear()  # checked once; keeps the cycles short
            ledger.refresh.clear()

            stop = threading.Event()
            threads = [
                threading.Thread(target=write_messages, args=(server, name, logins[name]["access_token"], ledger, stop))
                for name in authors
            ]
            threads.append(threading.Thread(target=register_users, args=(server, cycle, ledger, stop)))
            refresher = server.user(f"refresher{cycle}")
            threads.append(
                threading.Thread(
                    target=refresh_tokens, args=(server, f"refresher{cycle}", refresher["refresh_token"], ledger, stop)
                )
            )
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            server.kill()
        stop.set()
        for thread in threads:
            thread.join(10)
    final = Server(data_dir)
    try:
        check_files(data_dir)
        for name in authors:
            token = final.user(name)["access_token"]
            expected = {content for content, author in ledger.messages.items() if author == name}
            assert expected <= all_contents(final, token)
    finally:
        assert final.stop() == 0
    assert len(ledger.messages) > CYCLES * 10, "the writers got through"
    assert time.monotonic() - started < 240
