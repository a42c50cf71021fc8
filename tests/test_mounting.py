"""The README's mounting example, run as written: the host's routes and oxc's both answer under one server.

The code block of "Mounting inside another WSGI app" is taken from the README and
run unchanged (in-process through webtest, and saved as ``mysite.py`` under
``waitress-serve`` on loopback), so the documentation cannot drift from what works.
"""

import http.client
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
from wsgiref.validate import validator

import pytest
from webtest import TestApp

from oxc_settings import VARIABLES

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_mounting_example():
    """The Python code block of the README's mounting section, verbatim."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Mounting inside another WSGI app", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the mounting section should hold exactly one Python example"
    return blocks[0]


@pytest.fixture
def site_dir(tmp_path, monkeypatch):
    """An empty working directory and an environment with no oxc settings, as a fresh host project has."""
    for variable in VARIABLES:
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.delenv("FLASK_ENV", raising=False)
    # Only so that registering in the test is quick; the example itself is untouched.
    monkeypatch.setenv("BCRYPT_ROUNDS", "4")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def mysite(site_dir):
    """The README example's module namespace, its oxc app closed afterwards."""
    namespace = {"__name__": "mysite"}
    exec(compile(readme_mounting_example(), "README.md (mounting example)", "exec"), namespace)
    chat = namespace["chat"]
    yield namespace
    chat.core.close()


@pytest.fixture
def browser(mysite):
    # Validate both sides of the mount: the host's environ and the one oxc receives.
    mysite["chat"] = validator(mysite["chat"])
    return TestApp(validator(mysite["site"]))


def test_the_example_has_no_undefined_names(mysite):
    assert callable(mysite["site"]) and callable(mysite["chat"])


def test_the_hosts_own_routes_still_answer(browser):
    assert browser.get("/").text == "the rest of my site\n"
    assert browser.get("/chatroom").text == "the rest of my site\n"


def test_oxc_answers_under_the_mount_point(browser, site_dir):
    assert browser.get("/chat/api/health").json["data"]["store"] == "ok"
    body = {"username": "alice", "password": "correct horse battery"}
    browser.post_json("/chat/api/auth/register", body, status=201)
    token = browser.post_json("/chat/api/auth/login", body).json["data"]["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    browser.post_json("/chat/api/messages", {"content": "mounted"}, headers=headers, status=201)
    assert browser.get("/chat/api/messages", headers=headers).json["messages"][0]["content"] == "mounted"
    assert (site_dir / "chat-data").is_dir()  # the example's relative data_dir, under the working directory
    assert [server["url"] for server in browser.get("/chat/api/openapi.json").json["servers"]] == ["/chat"]


def test_the_mount_point_without_its_slash_redirects_to_it(browser):
    answer = browser.get("/chat", status=308)
    assert answer.headers["Location"] == "/chat/"
    assert answer.json == {"status": "success", "message": "Moved to /chat/"}
    assert browser.get("/chat?lang=en", status=308).headers["Location"] == "/chat/?lang=en"
    # 308 keeps the method: a POST to /chat is told to POST to /chat/ instead.
    assert browser.post("/chat", status=308).headers["Location"] == "/chat/"
    assert browser.head("/chat", status=308).body == b""


def test_the_page_is_served_at_the_mount_point_with_its_slash(browser):
    page = browser.get("/chat/", headers={"Accept": "text/html"})
    assert page.content_type == "text/html" and "/chat/static/" in page.text


def test_an_application_at_the_root_does_not_redirect(site_dir):
    from oxc_wsgi import create_app

    app = create_app(data_dir=None)
    try:
        client = TestApp(validator(app))
        for script_name in ("", "/chat/"):
            answer = client.get("/", extra_environ={"SCRIPT_NAME": script_name})
            assert answer.status_int == 200 and answer.json["data"]["name"] == "oxc"
    finally:
        app.core.close()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(port, path):
    """(status, Location, body) of one GET on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.getheader("Location"), response.read()
    finally:
        connection.close()


def test_the_example_saved_as_mysite_py_runs_under_waitress_serve(site_dir):
    (site_dir / "mysite.py").write_text(readme_mounting_example(), encoding="utf-8")
    port = free_port()
    command = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "mysite:site"]
    # The tree's modules, as an install would provide them (installing is not what this test is about).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen(
        command, cwd=site_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _, body = fetch(port, "/")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"waitress-serve mysite:site did not start: {server.communicate()[0]}"
                    ) from None
                time.sleep(0.1)
        assert (status, body) == (200, b"the rest of my site\n")
        status, _, body = fetch(port, "/chat/api/health")
        assert status == 200 and json.loads(body)["data"]["store"] == "ok"
        assert fetch(port, "/chat")[:2] == (308, "/chat/")
    finally:
        server.terminate()
        server.communicate(timeout=30)
