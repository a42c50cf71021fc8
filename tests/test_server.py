"""The real server: waitress on a loopback port, driven with http.client."""

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading

import pytest
from server import ROOT, Server, wait_until


@pytest.fixture
def server(tmp_path):
    running = Server(tmp_path / "data")
    yield running
    running.stop()


def test_the_server_answers_and_says_where_it_listens(server):
    status, answer = server.request("GET", "/")
    assert status == 200 and answer["data"]["name"] == "oxc"
    assert server.request("GET", "/api/health")[0] == 200


def test_800_concurrent_posts_from_8_threads_are_all_kept(server):
    token = server.user("alice")["access_token"]
    failures = []

    def send(worker):
        for number in range(100):
            status, answer = server.request("POST", "/api/messages", {"content": f"{worker}-{number}"}, token)
            if status != 201:
                failures.append((status, answer))

    threads = [threading.Thread(target=send, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    seen, cursor = set(), None
    while True:
        path = "/api/messages?limit=200" + (f"&before={cursor}" if cursor else "")
        status, page = server.request("GET", path, token=token)
        seen.update(message["content"] for message in page["messages"])
        cursor = page["paging"]["before"]
        if cursor is None:
            break
    assert seen == {f"{w}-{n}" for w in range(8) for n in range(100)}


def test_sigterm_stops_cleanly_and_everything_is_there_after_a_restart(tmp_path):
    first = Server(tmp_path / "data")
    token = first.user("alice")["access_token"]
    for number in range(20):
        assert first.request("POST", "/api/messages", {"content": f"m{number}"}, token)[0] == 201
    assert first.stop() == 0
    second = Server(tmp_path / "data")
    try:
        token = second.user("alice")["access_token"]
        status, page = second.request("GET", "/api/messages", token=token)
        assert [m["content"] for m in page["messages"]] == [f"m{n}" for n in range(20)]
    finally:
        assert second.stop() == 0


def test_a_second_server_on_the_same_data_dir_exits_with_a_clear_message(server):
    environment = dict(os.environ, HOST="127.0.0.1", PORT="0", DATA_DIR=server.data_dir)
    result = subprocess.run(
        [sys.executable, "oxc_wsgi.py", "serve"], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "is in use by another oxc process" in result.stderr
    assert server.request("GET", "/api/health")[0] == 200


def _ab64(raw):
    return base64.b64encode(raw).decode().rstrip("=").replace("+", ".")


def _passlib_pbkdf2(password, salt=b"0123456789abcdef", rounds=29000):
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)
    return f"$pbkdf2-sha256${rounds}${_ab64(salt)}${_ab64(digest)}"


def test_an_existing_0xc_data_directory_is_served(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    alice, bob = "550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440003"
    users = {
        alice: {
            "id": alice,
            "username": "user1",
            "email": "user1@example.com",
            "password_hash": _passlib_pbkdf2("password123"),
            "created_at": "2023-09-15T14:30:45.123456",
        },
        bob: {
            "id": bob,
            "username": "user2",
            "email": "user2@example.com",
            "password_hash": _passlib_pbkdf2("hunter2hunter2"),
            "created_at": "2023-09-15T14:31:00.000000",
        },
    }
    messages = [
        {
            "id": "m1",
            "user_id": alice,
            "username": "user1",
            "content": "Hello, world!",
            "timestamp": "2023-09-15T14:35:12.654321",
        },
        {
            "id": "m2",
            "user_id": bob,
            "username": "user2",
            "content": "psst",
            "recipient_id": alice,
            "timestamp": "2023-09-15T14:36:05.123456",
        },
    ]
    tokens = {"a1b2c3d4-e5f6-0000-1111-k1l2m3n4o5p6": {"user_id": alice, "expires_at": "2099-01-01T00:00:00"}}
    (data / "users.json").write_text(json.dumps(users))
    (data / "messages.json").write_text(json.dumps(messages))
    (data / "tokens.json").write_text(json.dumps(tokens))
    server = Server(data)
    try:
        status, refreshed = server.request(
            "POST", "/api/auth/refresh", {"refresh_token": "a1b2c3d4-e5f6-0000-1111-k1l2m3n4o5p6"}
        )
        assert status == 200, refreshed
        login = server.user("user1", "password123")
        assert login["user"]["id"] == alice
        status, page = server.request("GET", "/api/messages", token=login["access_token"])
        assert [m["content"] for m in page["messages"]] == ["Hello, world!", "psst"]
        assert server.request("POST", "/api/auth/login", {"username": "user2", "password": "wrong!!!"})[0] == 401
    finally:
        assert server.stop() == 0
    journal = b"".join(path.read_bytes() for path in data.iterdir() if path.name.startswith(("journal", "snap")))
    assert b"$2b$04$" in journal, "the old hash is replaced with bcrypt at first login"
    assert b"a1b2c3d4-e5f6-0000-1111-k1l2m3n4o5p6" not in journal
    assert (data / "users.json").exists(), "0xC's files are left in place"
    again = Server(data)
    try:
        assert again.user("user1", "password123")["user"]["id"] == alice
    finally:
        again.stop()


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_waitress_serve_can_load_the_module_level_application(tmp_path):
    port = _free_port()
    environment = dict(os.environ, DATA_DIR=str(tmp_path / "data"), BCRYPT_ROUNDS="4")
    process = subprocess.Popen(
        [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "oxc_wsgi:application"],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def answers():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                    connection.sendall(b"GET /api/health HTTP/1.0\r\n\r\n")
                    return connection.recv(100)
            except OSError:
                return None

        assert wait_until(answers, timeout=15).startswith(b"HTTP/1.0 200")
    finally:
        process.terminate()
        process.wait(15)
