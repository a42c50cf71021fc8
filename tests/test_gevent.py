"""oxc under gunicorn with one gevent worker: streams work and bcrypt does not block the loop."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("gevent", reason="the 'gevent' extra (gunicorn, gevent) is not installed")
pytest.importorskip("gunicorn", reason="the 'gevent' extra (gunicorn, gevent) is not installed")

from server import ROOT, wait_until  # noqa: E402

from oxc_client import Client  # noqa: E402


@pytest.fixture
def gunicorn(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, DATA_DIR=str(tmp_path / "data"), BCRYPT_ROUNDS="12", LOG_LEVEL="WARNING")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gevent",
            "-w",
            "1",
            "--worker-connections",
            "200",
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

    def up():
        try:
            return Client(f"http://127.0.0.1:{port}").health()
        except Exception:
            return None

    assert wait_until(up, timeout=30)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(20)


def test_streams_work_and_a_login_does_not_freeze_other_requests(gunicorn):
    alice, bob = Client(gunicorn), Client(gunicorn)
    for client, name in ((alice, "alice"), (bob, "bob")):
        client.register(name, "password123")
        client.login(name, "password123")
    seen = []

    def listen():
        events = bob.stream()
        for event in events:
            if event["type"] == "message.created":
                seen.append(event["data"]["content"])
                events.close()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.5)
    logins = [threading.Thread(target=Client(gunicorn).login, args=("alice", "password123")) for _ in range(3)]
    for login in logins:
        login.start()
    time.sleep(0.05)  # the bcrypt calls (about 0.3 s each at cost 12) are under way now
    started = time.monotonic()
    alice.health()
    quick = time.monotonic() - started
    alice.send_message("through gevent")
    listener.join(10)
    for login in logins:
        login.join(10)
    assert seen == ["through gevent"]
    assert quick < 0.2, f"a health check waited {quick:.2f} s behind bcrypt"
