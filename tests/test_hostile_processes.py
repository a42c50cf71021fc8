"""Hostile clients against real server processes: the signing key and stream tickets.

Served as the README shows, without JWT_SECRET_KEY, a server signs with a key
generated on first start and kept with the data: a file of mode 0600 under
DATA_DIR that survives a restart, or a row in the database that every process
on it shares. A stream ticket opens one stream, whichever process it is shown
to, and a stream held on one process ends when the session ends on another.
"""

import os
import signal
import stat
import threading
import time

import jwt
import pytest
from pgtest import fresh_schema
from server import RawStream, Server

from oxc_wsgi import DEV_JWT_SECRET

ENDS_WITHIN = 5.0
#: Served as the README shows: no JWT_SECRET_KEY (empty means unset; blanked only if this shell has one).
NO_KEY = {"JWT_SECRET_KEY": ""} if "JWT_SECRET_KEY" in os.environ else {}


def opened(stream):
    """Whether the stream answered 200 and started (else its refusal was read whole)."""
    stream.read_until(b"\r\n\r\n")
    if stream.status == 200:
        return stream.read_until(b": connected")
    return False


def stop_and_read_log(server):
    """Stop ``server``; its stderr (the log)."""
    server.process.send_signal(signal.SIGTERM)
    _, log = server.process.communicate(timeout=15)
    return log


def me(server, token):
    return server.request("GET", "/api/users/me", token=token)


def forged_with_the_published_key(token):
    """``token``'s claims, fresh, signed with the development key that .env.example used to print."""
    claims = jwt.decode(token, options={"verify_signature": False})
    now = int(time.time())
    return [
        jwt.encode(forged, DEV_JWT_SECRET, algorithm="HS256", headers={"typ": "at+jwt"})
        for forged in ({"sub": claims["sub"], "iat": now, "exp": now + 600}, dict(claims, iat=now, exp=now + 600))
    ]


def test_a_server_run_without_a_key_generates_one_keeps_it_private_and_across_restarts(tmp_path):
    data = tmp_path / "data"
    first = Server(data, **NO_KEY)
    try:
        alice = first.user("alice")
        status, body = me(first, alice["access_token"])
        assert status == 200 and body["data"]["username"] == "alice"
        # The attack of the published key: a token forged with it, with or without the real session.
        for token in forged_with_the_published_key(alice["access_token"]):
            assert me(first, token)[0] == 401
    finally:
        log = stop_and_read_log(first)
        first.stop()
    key_file = data / "signing.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 64 and key != DEV_JWT_SECRET
    warnings = [line for line in log.splitlines() if "JWT_SECRET_KEY is not set" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and str(key_file) in warnings[0]
    jwt.decode(alice["access_token"], key, algorithms=["HS256"])

    second = Server(data, **NO_KEY)
    try:
        assert me(second, alice["access_token"])[0] == 200  # still valid after the restart
    finally:
        second.stop()
    assert key_file.read_text().strip() == key


@pytest.fixture
def two(tmp_path):
    """Two server processes on one fresh PostgreSQL schema, neither given a key."""
    with fresh_schema() as (url, _):
        running = [
            Server(tmp_path / f"data{number}", STORE_URL=url, REALTIME_MAX_PER_USER=50, **NO_KEY) for number in range(2)
        ]
        try:
            yield running
        finally:
            for server in running:
                server.stop()


def test_two_processes_on_one_database_share_the_generated_key(two):
    first, second = two
    alice = first.user("alice")
    assert me(second, alice["access_token"])[0] == 200
    bob = second.user("bob")
    assert me(first, bob["access_token"])[0] == 200
    for token in forged_with_the_published_key(alice["access_token"]):
        assert me(first, token)[0] == 401 and me(second, token)[0] == 401
    assert not os.path.exists(os.path.join(first.data_dir, "signing.key"))  # the database keeps it


def ticket_of(server, token):
    status, body = server.request("POST", "/api/events/ticket", {}, token)
    assert status == 201
    return body["data"]["ticket"]


def test_a_ticket_opens_one_stream_whichever_process_sees_it_first(two):
    first, second = two
    token = first.user("bob")["access_token"]
    for shown_first, shown_second in ((first, second), (second, first)):
        ticket = ticket_of(first, token)
        stream = RawStream(shown_first, query=f"?ticket={ticket}")
        try:
            assert opened(stream)
            status, body = shown_second.request("GET", f"/api/events/stream?ticket={ticket}")
            assert status == 401 and "used already" in body["message"]
        finally:
            stream.close()


def test_a_ticket_shown_to_both_processes_at_once_opens_one_stream(two):
    first, second = two
    token = first.user("bob")["access_token"]
    for trial in range(20):
        ticket = ticket_of((first, second)[trial % 2], token)
        streams = [RawStream(server, query=f"?ticket={ticket}") for server in (first, second)]
        try:
            results = [None, None]
            readers = [
                threading.Thread(target=lambda n=n: results.__setitem__(n, opened(streams[n]))) for n in range(2)
            ]
            for reader in readers:
                reader.start()
            for reader in readers:
                reader.join()
            assert sorted(results) == [False, True], f"trial {trial}: {[s.received[:40] for s in streams]}"
            assert sorted(stream.status for stream in streams) == [200, 401]
        finally:
            for stream in streams:
                stream.close()


def test_a_logout_on_one_process_ends_a_stream_held_on_the_other(two):
    first, second = two
    alice, bob = first.user("alice"), first.user("bob")
    status, chat = first.request("POST", "/api/chats/direct", {"user_id": bob["user"]["id"]}, alice["access_token"])
    chat_id = chat["data"]["id"]
    stream = RawStream(first, token=bob["access_token"])
    try:
        assert opened(stream)
        assert second.request("POST", "/api/auth/logout", {"refresh_token": bob["refresh_token"]})[0] == 200
        logged_out = time.monotonic()
        second.request(
            "POST", f"/api/chats/{chat_id}/messages", {"content": "secret after the logout"}, alice["access_token"]
        )
        assert stream.read_until(RawStream.END, timeout=ENDS_WITHIN), "the stream outlived its session"
        took = time.monotonic() - logged_out
        print(f"\nlogout on one process -> stream end on the other (a message sent meanwhile): {took:.2f} s")
        assert b"secret after the logout" not in stream.received
        assert took < ENDS_WITHIN
    finally:
        stream.close()


def test_an_idle_stream_on_a_real_server_ends_within_seconds_of_a_logout(tmp_path):
    server = Server(tmp_path / "data")
    try:
        bob = server.user("bob")
        stream = RawStream(server, token=bob["access_token"])
        try:
            assert opened(stream)
            time.sleep(0.5)
            assert server.request("POST", "/api/auth/logout", {"refresh_token": bob["refresh_token"]})[0] == 200
            logged_out = time.monotonic()
            assert stream.read_until(RawStream.END, timeout=ENDS_WITHIN), "the stream outlived its session"
            took = time.monotonic() - logged_out
            print(f"\nlogout -> idle stream end on a real server: {took:.2f} s")
            assert took < ENDS_WITHIN
            assert me(server, bob["access_token"])[0] == 401
        finally:
            stream.close()
    finally:
        server.stop()
