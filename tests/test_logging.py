"""oxc logs wherever it runs: under waitress-serve and gunicorn as under ``oxc serve``, and says where to go."""

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from server import ROOT
from webtest import TestApp

from middleware.accesslog import DefaultHandler, install_default_handler
from oxc_wsgi import create_app

BIN = os.path.dirname(sys.executable)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment(tmp_path, **values):
    env = {key: value for key, value in os.environ.items() if key not in ("JWT_SECRET_KEY", "STORE_URL", "OXC_ENV")}
    env.update(DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1", **values)
    return env


def get(port, path, headers=None, timeout=20):
    """The status of GET ``path``, retried until the server answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def serve_and_collect(command, env, port, path="/api/health"):
    """Run a server, make one request, stop it; its stderr."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert get(port, path, headers={"X-Forwarded-For": "203.0.113.66"}) == 200
        time.sleep(0.2)  # the access line follows the answer's close
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=20)
    return errors


def test_waitress_serve_shows_the_access_line_and_the_start_up_warnings(tmp_path):
    port = free_port()
    command = [os.path.join(BIN, "waitress-serve"), f"--listen=127.0.0.1:{port}", "oxc_wsgi:application"]
    errors = serve_and_collect(command, environment(tmp_path), port)
    assert "WARNING oxc: JWT_SECRET_KEY is not set" in errors
    assert "WARNING oxc: OXC_ENV is development" in errors
    assert "the chat page at /, the API at /api/, its docs at /api/docs; data in " + str(tmp_path / "data") in errors
    # X-Forwarded-For is not believed without TRUSTED_PROXY.
    assert "INFO oxc.access: GET /api/health 200 " in errors and " client=127.0.0.1 rid=" in errors
    assert "203.0.113.66" not in errors


def test_log_format_json_gives_one_object_per_line_and_trusted_proxy_names_the_client(tmp_path):
    port = free_port()
    command = [os.path.join(BIN, "waitress-serve"), f"--listen=127.0.0.1:{port}", "oxc_wsgi:application"]
    # waitress strips X-Forwarded-For unless told to trust it; gunicorn passes it on and leaves it to the app.
    command = [os.path.join(BIN, "gunicorn"), "-b", f"127.0.0.1:{port}", "oxc_wsgi:application"]
    env = environment(tmp_path, LOG_FORMAT="json", TRUSTED_PROXY="127.0.0.1")
    errors = serve_and_collect(command, env, port)
    entries = [json.loads(line) for line in errors.splitlines() if line.startswith("{")]
    others = [line for line in errors.splitlines() if line.strip() and not line.startswith("{")]
    assert entries and all(line.startswith("[") for line in others), others  # gunicorn's own lines
    access = [entry for entry in entries if entry["logger"] == "oxc.access"]
    assert len(access) == 1
    assert (access[0]["path"], access[0]["status"], access[0]["client"]) == ("/api/health", 200, "203.0.113.66")
    assert access[0]["bytes"] > 0 and access[0]["duration_ms"] >= 0
    assert any(entry["level"] == "WARNING" and "JWT_SECRET_KEY" in entry["message"] for entry in entries)


def test_oxc_serve_names_the_chat_page_and_the_docs(tmp_path):
    port = free_port()
    env = environment(tmp_path, HOST="127.0.0.1", PORT=str(port))
    process = subprocess.Popen(
        [sys.executable, "oxc_wsgi.py", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = process.stdout.readline()
        lines = [first, process.stdout.readline(), process.stdout.readline()]
        assert get(port, "/api/docs") == 200
    finally:
        process.terminate()
        process.communicate(timeout=20)
    base = f"http://127.0.0.1:{port}"
    assert first == f"oxc listening on {base} (data in {tmp_path / 'data'})\n"
    assert lines[1:] == [f"  chat page: {base}/\n", f"  API docs:  {base}/api/docs\n"]


@pytest.mark.parametrize(("trusted_proxy", "client"), [("", "127.0.0.1"), ("127.0.0.1", "203.0.113.66")])
def test_oxc_serve_believes_x_forwarded_for_only_from_the_trusted_proxy(tmp_path, trusted_proxy, client):
    port = free_port()
    env = environment(tmp_path, HOST="127.0.0.1", PORT=str(port), TRUSTED_PROXY=trusted_proxy)
    errors = serve_and_collect([sys.executable, "oxc_wsgi.py", "serve"], env, port)
    assert "INFO oxc.access: GET /api/health 200 " in errors and f" client={client} rid=" in errors


def test_a_port_in_use_names_the_port_and_the_variable(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = environment(tmp_path, HOST="127.0.0.1", PORT=str(port))
        result = subprocess.run(
            [sys.executable, "oxc_wsgi.py", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 4
    assert f"oxc: port {port} on 127.0.0.1 is already in use (another server?); set PORT to choose another" in (
        result.stderr
    )
    assert "Errno" not in result.stderr


def test_several_gunicorn_workers_on_the_json_store_stop_at_once_with_one_line(tmp_path):
    port = free_port()
    command = [os.path.join(BIN, "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", "oxc_wsgi:application"]
    result = subprocess.run(command, cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    refusals = [line for line in result.stderr.splitlines() if line.startswith("oxc: data directory")]
    assert len(refusals) == 1, result.stderr
    assert "set STORE_URL to a PostgreSQL database" in refusals[0]
    assert "Traceback" not in result.stderr


@pytest.fixture
def lone_logger():
    """A logger outside the hierarchy pytest hooks into, as if the host had configured nothing."""
    host = logging.getLogger("oxc_test_lone")
    host.propagate = False
    logger = logging.getLogger("oxc_test_lone.oxc")
    yield logger
    logger.handlers.clear()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
    host.handlers.clear()


def test_with_no_logging_configured_oxc_writes_to_stderr_at_the_configured_level(lone_logger, capsys):
    assert install_default_handler(lone_logger, "INFO", "text")
    assert install_default_handler(lone_logger, "WARNING", "json")  # re-tuned, not doubled
    assert len(lone_logger.handlers) == 1 and isinstance(lone_logger.handlers[0], DefaultHandler)
    lone_logger.info("quiet")
    lone_logger.warning("heard")
    written = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in written] == ["heard"]


def test_when_the_host_configured_logging_oxc_adds_nothing(lone_logger):
    host_handler = logging.Handler()
    lone_logger.parent.addHandler(host_handler)
    assert not install_default_handler(lone_logger, "DEBUG", "text")
    assert lone_logger.handlers == [] and lone_logger.level == logging.NOTSET


def test_a_host_that_configures_logging_later_gets_the_records_from_the_next_app(lone_logger):
    assert install_default_handler(lone_logger, "INFO", "text")
    assert not lone_logger.propagate  # else waitress's later basicConfig() prints every line twice
    host_handler = logging.Handler()
    lone_logger.parent.addHandler(host_handler)
    assert not install_default_handler(lone_logger, "INFO", "text")
    assert lone_logger.handlers == [] and lone_logger.propagate and lone_logger.level == logging.NOTSET


def test_the_access_line_names_the_user_once_the_token_is_checked(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oxc.access")
    app = TestApp(create_app(data_dir=tmp_path / "data", clock=time.time))
    try:
        account = {"username": "alice", "password": "alices-password"}
        app.post_json("/api/auth/register", account, status=201)
        answer = app.post_json("/api/auth/login", account).json["data"]
        app.get("/api/chats", headers={"Authorization": f"Bearer {answer['access_token']}"})
    finally:
        app.app.core.close()
    lines = [record.getMessage() for record in caplog.records if record.name == "oxc.access"]
    assert lines[0].startswith("POST /api/auth/register 201 ") and " user=" not in lines[0]
    assert lines[2].startswith("GET /api/chats 200 ") and f" user={answer['user']['id']} rid=" in lines[2]
