"""The oxc command line, driven as a subprocess: exit codes, output, files."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from server import ROOT, Server

PASSWORD = "password123\n"


def oxc(*args, env, stdin=PASSWORD, timeout=30):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "oxc_wsgi.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def server(tmp_path):
    running = Server(tmp_path / "data")
    yield running
    running.stop()


@pytest.fixture
def env(server, tmp_path):
    return dict(
        os.environ,
        OXC_URL=f"http://127.0.0.1:{server.port}",
        OXC_CONFIG_DIR=str(tmp_path / "config"),
        DATA_DIR=str(tmp_path / "data"),
        BCRYPT_ROUNDS="4",
    )


def logged_in(env, name):
    assert oxc("register", name, env=env).returncode == 0
    result = oxc("login", name, env=env)
    assert result.returncode == 0 and result.stdout.strip() == f"logged in as {name}"
    return dict(env, OXC_CONFIG_DIR=env["OXC_CONFIG_DIR"])


def test_login_keeps_the_token_in_a_private_file_and_never_prints_it(env, tmp_path):
    logged_in(env, "alice")
    credentials = tmp_path / "config" / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    tokens = json.loads(credentials.read_text())[env["OXC_URL"]]
    assert tokens["username"] == "alice" and tokens["access_token"]
    whoami = oxc("whoami", env=env)
    assert whoami.returncode == 0 and whoami.stdout.startswith("alice (")
    assert tokens["access_token"] not in whoami.stdout + whoami.stderr
    assert json.loads(oxc("whoami", "--json", env=env).stdout)["username"] == "alice"
    assert oxc("logout", env=env).returncode == 0
    assert oxc("whoami", env=env).returncode == 1


def test_send_chats_history_members_and_search(env):
    logged_in(env, "bob")
    logged_in(env, "alice")
    assert oxc("send", "hello everyone", env=env).returncode == 0
    direct = oxc("send", "hi bob", "--to", "bob", "--json", env=env)
    assert direct.returncode == 0
    chats = json.loads(oxc("chats", "--json", env=env).stdout)
    chat_id = chats[0]["id"]
    assert chats[0]["peer"]["username"] == "bob"
    assert oxc("send", "second", "--chat", chat_id, env=env).returncode == 0
    history = oxc("history", "--chat", chat_id, env=env)
    assert history.returncode == 0 and history.stdout.splitlines()[-1].endswith("alice: second")
    assert "alice: hello everyone" in oxc("history", env=env).stdout
    members = oxc("members", chat_id, env=env).stdout
    assert "alice" in members and "bob" in members
    found = json.loads(oxc("search", "second", "--json", env=env).stdout)
    assert [m["content"] for m in found] == ["second"]


def test_exit_codes_mean_refused_usage_and_unreachable(env):
    assert oxc("register", "alice", env=env).returncode == 0
    taken = oxc("register", "alice", env=env)
    assert taken.returncode == 1 and "Username already exists" in taken.stderr
    assert oxc("send", env=env).returncode == 2
    unreachable = oxc("whoami", env=dict(env, OXC_URL="http://127.0.0.1:9"))
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr


def test_tail_follows_live_events_and_ctrl_c_exits_cleanly(env):
    logged_in(env, "alice")
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "oxc_wsgi.py"), "tail", "-f"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "no messages"
        time.sleep(0.5)
        assert oxc("send", "live line", env=env).returncode == 0
        line = process.stdout.readline()
        assert "public alice: live line" in line
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.communicate()


def test_admin_commands_act_on_a_stopped_servers_data(env, server, tmp_path):
    logged_in(env, "alice")
    assert oxc("send", "keep me", env=env).returncode == 0
    busy = oxc("admin", "compact", env=env)
    assert busy.returncode == 3 and "in use by another oxc process" in busy.stderr
    server.stop()
    created = oxc("admin", "create-user", "carol", "--password-stdin", env=env, stdin="carols-password\n")
    assert created.returncode == 0, created.stderr
    assert oxc("admin", "create-user", "carol", env=env, stdin="carols-password\n").returncode == 1
    reset = oxc("admin", "reset-password", "alice", "--password-stdin", env=env, stdin="another-password\n")
    assert reset.returncode == 0 and "1 sessions ended" in reset.stdout
    assert oxc("admin", "compact", env=env).returncode == 0
    archive = tmp_path / "backup.tar.gz"
    backed = oxc("admin", "backup", str(archive), env=env)
    assert backed.returncode == 0 and archive.exists() and "/" in backed.stderr
    target = dict(env, DATA_DIR=str(tmp_path / "restored"))
    restored = oxc("admin", "restore", str(archive), env=target)
    assert restored.returncode == 0, restored.stderr
    assert oxc("admin", "restore", str(archive), env=target).returncode == 1
    again = Server(tmp_path / "restored")
    try:
        token = again.user("carol", "carols-password")["access_token"]
        status, page = again.request("GET", "/api/messages", token=token)
        assert [m["content"] for m in page["messages"]] == ["keep me"]
        assert again.request("POST", "/api/auth/login", {"username": "alice", "password": "another-password"})[0] == 200
    finally:
        again.stop()


def test_admin_imports_a_0xc_data_directory(tmp_path):
    from test_server import _passlib_pbkdf2

    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "users.json").write_text(
        json.dumps([{"id": "u1", "username": "user1", "email": None, "password_hash": _passlib_pbkdf2("password123")}])
    )
    (legacy / "messages.json").write_text(
        json.dumps(
            [
                {
                    "id": "m1",
                    "user_id": "u1",
                    "username": "user1",
                    "content": "from 0xC",
                    "timestamp": "2023-09-15T14:35:12",
                }
            ]
        )
    )
    env = dict(os.environ, DATA_DIR=str(tmp_path / "data"), BCRYPT_ROUNDS="4")
    result = oxc("admin", "import-0xc", str(legacy), env=env)
    assert result.returncode == 0 and "imported 1 users, 1 messages" in result.stdout
    assert oxc("admin", "import-0xc", str(legacy), env=env).returncode == 1
    server = Server(tmp_path / "data")
    try:
        token = server.user("user1", "password123")["access_token"]
        assert server.request("GET", "/api/messages", token=token)[1]["messages"][0]["content"] == "from 0xC"
    finally:
        server.stop()


def test_upload_and_download_show_progress_for_large_files(env, tmp_path):
    logged_in(env, "bob")
    logged_in(env, "alice")
    chat_id = json.loads(oxc("send", "file coming", "--to", "bob", "--json", env=env).stdout)["chat_id"]
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(1_500_000))
    uploaded = oxc("upload", chat_id, str(source), "--message", "here it is", "--json", env=env)
    assert uploaded.returncode == 0, uploaded.stderr
    attachment = json.loads(uploaded.stdout)
    assert attachment["size"] == 1_500_000 and "100%" in uploaded.stderr
    target = tmp_path / "copy.bin"
    downloaded = oxc("download", attachment["id"], "-o", str(target), env=env)
    assert downloaded.returncode == 0, downloaded.stderr
    assert target.read_bytes() == source.read_bytes() and "100%" in downloaded.stderr
    missing = oxc("download", "no-such-attachment", "-o", str(tmp_path / "x"), env=env)
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr


def test_admin_create_user_checks_its_fields_as_registration_does(tmp_path):
    from webtest import TestApp

    from oxc_wsgi import create_app

    env = dict(os.environ, DATA_DIR=str(tmp_path / "data"), BCRYPT_ROUNDS="4")
    api = create_app(data_dir=tmp_path / "api", bcrypt_rounds=4, auth_rate_limit_enabled=False)
    try:
        web = TestApp(api)
        for username, password, email in (
            ("carol", "carols-password", "not an address"),
            ("carol", "short", None),
            ("c!", "carols-password", None),
        ):
            refused = web.post_json(
                "/api/auth/register", {"username": username, "password": password, "email": email}, status=400
            )
            message = refused.json["message"]
            given = ("--email", email) if email else ()
            result = oxc("admin", "create-user", username, *given, "--password-stdin", env=env, stdin=password + "\n")
            assert result.returncode == 1 and result.stderr.endswith(f"\noxc: {message}\n")
    finally:
        api.core.close()
    assert oxc("admin", "create-user", "carol", "--email", "carol@example.com", env=env).returncode == 0
    taken = oxc("admin", "create-user", "dave", "--email", "carol@example.com", env=env)
    assert taken.returncode == 1 and taken.stderr.endswith("\noxc: Email already registered\n")
