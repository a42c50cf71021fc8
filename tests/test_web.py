"""The web chat page over HTTP: negotiated at /, its static files, the setting, the headers."""

import configparser
import os
import re
import urllib.parse

import pytest

from handlers import web
from oxc_wsgi import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC = os.path.join(ROOT, "handlers", "static")
CHROME = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
    "application/signed-exchange;v=b3;q=0.7"
)
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
STRICT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def page(client, **kwargs):
    return client.get("/", headers={"Accept": CHROME}, **kwargs)


# -- negotiation at / -----------------------------------------------------------


def test_a_browser_gets_the_chat_page_at_the_root(client):
    answer = page(client)
    assert answer.status_int == 200
    assert answer.content_type == "text/html"
    assert answer.charset == "utf-8"
    assert answer.headers["Vary"] == "Accept"
    assert answer.headers["Cache-Control"] == "no-cache"
    assert '<body data-base="" data-api="/api" data-register="on" data-attachments="on">' in answer.text
    assert client.get("/", headers={"Accept": FIREFOX}).content_type == "text/html"


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "application/json",
        "application/json, text/html",
        "text/html;q=0.5, application/json",
        "text/*;q=0.1, */*",
        "text/html;q=0",
        "text/plain",
        "text/html;q=abc",
        "garbage",
    ],
)
def test_api_clients_still_get_0xc_json_at_the_root(client, accept):
    headers = {"Accept": accept} if accept is not None else {}
    answer = client.get("/", headers=headers)
    assert answer.content_type == "application/json"
    assert answer.json["message"] == "oxc chat API is running"
    assert answer.json["data"]["name"] == "oxc"
    assert answer.headers["Vary"] == "Accept"


@pytest.mark.parametrize(
    "accept, html",
    [
        (CHROME, True),
        (FIREFOX, True),
        ("text/html", True),
        ("text/*", True),
        ("text/html, application/json;q=0.9", True),
        ("application/json;q=0.5, text/html;q=0.6", True),
        ("", False),
        ("*/*", False),
        ("text/html, */*", False),
        ("text/html;q=1.5", False),
        ("application/*, text/html", False),
        ("TEXT/HTML", True),
    ],
)
def test_the_page_goes_to_requests_that_rank_html_above_json(accept, html):
    assert web.prefers_html(accept) is html


def test_the_setting_turns_the_page_and_its_files_off(make_client):
    client = make_client(web_enabled=False)
    answer = page(client)
    assert answer.content_type == "application/json"
    assert answer.json["data"]["name"] == "oxc"
    assert "Vary" not in answer.headers
    refused = client.get("/static/app.js", status=404)
    assert refused.json == {
        "status": "error",
        "message": "The web page is turned off on this server (WEB_UI_ENABLED=0)",
    }


def test_the_setting_comes_from_WEB_UI_ENABLED():
    assert Settings.from_environ({}, env_file=None).web_enabled is True
    assert Settings.from_environ({"WEB_UI_ENABLED": "0"}, env_file=None).web_enabled is False
    assert Settings.from_environ({"WEB_UI_ENABLED": "yes"}, env_file=None).web_enabled is True


# -- what the page holds ------------------------------------------------------------


def test_the_page_carries_a_strict_content_security_policy(client):
    answer = page(client)
    assert answer.headers["Content-Security-Policy"] == STRICT_CSP
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["Referrer-Policy"] == "no-referrer"


def test_the_page_has_no_inline_script_or_style_for_the_policy_to_refuse(client):
    text = page(client).text
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", text, re.S)
    assert scripts and all(body.strip() == "" for body in scripts)
    assert all("src=" in tag for tag in re.findall(r"<script\b[^>]*>", text))
    assert not re.search(r"<style\b", text)
    assert not re.search(r"\sstyle=", text)
    assert not re.search(r"\son[a-z]+=", text)
    assert "javascript:" not in text
    assert "{{" not in text


def test_every_file_the_page_links_is_served(client):
    text = page(client).text
    links = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', text))
    assert {link.split("?")[0] for link in links} == {"/static/app.js", "/static/app.css", "/static/icon.svg"}
    for link in links:
        answer = client.get(link)
        assert answer.status_int == 200
        assert answer.headers["Cache-Control"] == web.IMMUTABLE


def test_the_page_knows_the_api_prefix_and_the_mount_point(make_client):
    client = make_client(api_prefix="/chat/v1", register_enabled=False)
    text = client.get("/", headers={"Accept": CHROME}, extra_environ={"SCRIPT_NAME": "/site"}).text
    assert 'data-base="/site" data-api="/site/chat/v1" data-register="off"' in text
    assert f'<script type="module" src="/site/static/app.js?v={web.asset_version()}"></script>' in text


def test_values_rendered_into_the_page_are_escaped():
    body, _ = web.render_page('/a"><script>x</script>', "/api", True, False)
    text = body.decode()
    assert "<script>x" not in text
    assert 'data-base="/a&quot;&gt;&lt;script&gt;x&lt;/script&gt;"' in text
    assert 'data-attachments="off"' in text


def test_the_page_is_revalidated_with_its_etag(client):
    first = page(client)
    again = client.get("/", headers={"Accept": CHROME, "If-None-Match": first.headers["ETag"]}, status=304)
    assert again.body == b""
    assert again.headers["ETag"] == first.headers["ETag"]
    assert page(client, extra_environ={"HTTP_IF_NONE_MATCH": '"other"'}).status_int == 200


def test_head_of_the_page_has_no_body(client):
    answer = client.head("/", headers={"Accept": CHROME})
    assert answer.status_int == 200
    assert answer.content_type == "text/html"
    assert answer.body == b""


# -- static files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content_type",
    [
        ("app.js", "text/javascript"),
        ("dom.js", "text/javascript"),
        ("app.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ],
)
def test_static_files_are_served_from_the_package_with_their_type(client, name, content_type):
    answer = client.get(f"/static/{name}")
    assert answer.content_type == content_type
    with open(os.path.join(ROOT, "handlers", "static", name), "rb") as f:
        # A module's imports of its siblings carry the page's ?v= (see web.py); the rest is the file.
        assert answer.body.replace(b"?v=" + web.asset_version().encode(), b"") == f.read()
    assert answer.headers["Content-Length"] == str(len(answer.body))
    assert answer.headers["Cache-Control"] == "no-cache"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Content-Security-Policy"] == STRICT_CSP
    assert re.fullmatch(r'"[0-9a-f]{32}"', answer.headers["ETag"])


def imports_of(script):
    """The module specifiers a script imports from (static imports and re-exports)."""
    return re.findall(r'^(?:import|export)\s[^;"]*?\bfrom\s*"([^"]+)"|^import\s*"([^"]+)"', script, re.M)


def test_every_module_the_page_imports_is_served_as_javascript_and_versioned(client):
    entry = re.search(r'<script type="module" src="([^"]+)"></script>', page(client).text)[1]
    seen, waiting = set(), [entry]
    while waiting:
        url = waiting.pop()
        if url in seen:
            continue
        seen.add(url)
        answer = client.get(url)
        assert answer.content_type == "text/javascript", url
        assert answer.charset == "utf-8", url
        assert answer.headers["Cache-Control"] == web.IMMUTABLE, url
        for specifiers in imports_of(answer.text):
            specifier = "".join(specifiers)
            assert specifier.startswith("./"), (url, specifier)
            waiting.append(urllib.parse.urljoin(url, specifier))
    served = {urllib.parse.urlsplit(url).path.removeprefix("/static/") for url in seen}
    assert served == set(web.SCRIPT_MODULES)
    assert served == {name for name in os.listdir(STATIC) if name.endswith(".js")}


def test_no_static_script_is_over_600_lines():
    scripts = [name for name in os.listdir(STATIC) if name.endswith(".js")]
    assert "app.js" in scripts
    for name in scripts:
        with open(os.path.join(STATIC, name), encoding="utf-8") as f:
            assert len(f.read().splitlines()) <= 600, name


def test_the_modules_import_their_siblings_with_the_page_version(client):
    body = client.get("/static/app.js").text
    version = web.asset_version()
    assert imports_of(body)
    assert all("".join(found).endswith(f".js?v={version}") for found in imports_of(body))


def test_a_versioned_static_url_may_be_cached_for_a_year(client):
    current = client.get(f"/static/app.css?v={web.asset_version()}")
    assert current.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert client.get("/static/app.css?v=old").headers["Cache-Control"] == "no-cache"


def test_a_current_etag_gets_304_without_a_body(client):
    etag = client.get("/static/app.js").headers["ETag"]
    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        answer = client.get("/static/app.js", headers={"If-None-Match": header}, status=304)
        assert answer.body == b""
        assert answer.headers["ETag"] == etag
    assert client.get("/static/app.js", headers={"If-None-Match": '"nope"'}).status_int == 200


@pytest.mark.parametrize(
    "path",
    [
        "/static/index.html",
        "/static/web.py",
        "/static/..",
        "/static/.",
        "/static/%2e%2e",
        "/static/app.js.bak",
        "/static/APP.JS",
        "/static/app.js%00",
        "/static/..%2fweb.py",
        "/static/..%2F..%2Foxc_wsgi.py",
        "/static/../web.py",
        "/static/static/app.js",
        "/static/",
        "/static",
        "/static/%5c..%5cweb.py",
        "/static/js/app.js",
        "/static/%2e/dom.js",
        "/static/dom",
    ],
)
def test_only_the_listed_files_are_reachable(client, path):
    answer = client.get(path, status=404)
    assert answer.json["status"] == "error"
    assert "def " not in answer.text and "<html" not in answer.text


def test_other_methods_on_static_files_are_refused(client):
    answer = client.post("/static/app.js", status=405)
    assert "GET" in answer.headers["Allow"]


def test_the_static_files_ship_in_the_wheel():
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    assert config["options.package_data"]["handlers"].split() == ["static/*"]
    shipped = set(os.listdir(os.path.join(ROOT, "handlers", "static")))
    assert set(web.STATIC_TYPES) | {web.PAGE_FILE} <= shipped
