"""The web chat page in headless Chromium against a real server: two people chat live.

Playwright for Python (the ``browser`` extra) drives a Chromium the machine
already has: Debian's ``chromium`` package, which ``.ci/run`` installs where it
can, or the one named by ``OXC_CHROMIUM``. No browser is ever downloaded.
Without Playwright or a Chromium the module skips and says which is missing.

A screenshot of each main screen (login, register, chat list, conversation,
at desktop and phone widths) is written to ``tests/artifacts/``, which git
ignores.
"""

import os
import re
import shutil
import struct
import time
import urllib.parse
import zlib

import pytest
from server import Server

from handlers import web

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[test,browser]' brings it)"
)


def find_chromium():
    """The path of a Chromium on this machine, or None."""
    named = os.environ.get("OXC_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = find_chromium()
if CHROMIUM is None:
    pytest.skip(
        "no Chromium on this machine (apt-get install chromium, or set OXC_CHROMIUM); "
        "the browser tests need one and never download their own",
        allow_module_level=True,
    )

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
#: Flags for a sandboxed machine with no network beyond loopback (see the machine notes).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 780}
PASSWORD = "password123"
TIMEOUT_MS = 10_000

expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)


def png(width, height, rgb):
    """A small solid-colour PNG, made without Pillow."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def server(tmp_path):
    running = Server(tmp_path / "data", SSE_HEARTBEAT=2)
    yield running
    running.stop()


class Person:
    """One browser context (its own storage) with one page, and what went wrong in it."""

    def __init__(self, browser, server, viewport, **options):
        self.context = browser.new_context(viewport=viewport, **options)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.problems = []
        self.page.on("console", lambda message: self.problems.append(message.text) if message.type == "error" else None)
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))
        self.url = f"http://127.0.0.1:{server.port}/"

    def open(self):
        self.page.goto(self.url)

    def live(self):
        """Wait until the event stream is open."""
        expect(self.page.locator("body[data-live=on]")).to_have_count(1)

    def log_in(self, username):
        form = self.page.locator("#login-form")
        form.get_by_label("Username").fill(username)
        form.get_by_label("Password").fill(PASSWORD)
        form.get_by_role("button", name="Log in").click()
        expect(self.page.locator("#app-view")).to_be_visible()
        self.live()

    def message(self, text):
        """The message whose text is exactly ``text``."""
        exact = self.page.locator(".text", has_text=re.compile(f"^{re.escape(text)}$"))
        return self.page.locator("#message-list .message").filter(has=exact)

    def send(self, text):
        box = self.page.get_by_label("Message", exact=True)
        box.fill(text)
        box.press("Enter")
        expect(self.message(text)).to_have_count(1)

    def act(self, text, action):
        """Point at a message (its actions show on hover) and press one of them."""
        message = self.message(text)
        message.hover()
        message.get_by_role("button", name=action).click()

    def shot(self, name):
        os.makedirs(ARTIFACTS, exist_ok=True)
        self.page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"))

    def close(self):
        self.context.close()


def test_two_people_chat_live_and_a_reload_keeps_the_session(browser, server):
    started = time.monotonic()
    server.user("bob", PASSWORD)
    alice = Person(browser, server, DESKTOP)
    bob = Person(browser, server, PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    try:
        # Alice registers through the page; Bob, registered already, logs in on a phone.
        alice.open()
        expect(alice.page.get_by_role("heading", name="Log in")).to_be_visible()
        alice.shot("login-desktop")
        alice.page.get_by_role("button", name="Create one").click()
        form = alice.page.locator("#register-form")
        form.get_by_label("Username").fill("alice")
        form.get_by_label("Password").fill(PASSWORD)
        alice.shot("register-desktop")
        form.get_by_role("button", name="Create account").click()
        expect(alice.page.get_by_text("Signed in as")).to_contain_text("alice")
        alice.live()

        # Bob logs in with the keyboard alone: the page puts focus in the first field.
        bob.open()
        bob.shot("login-phone")
        bob.page.keyboard.type("bob")
        bob.page.keyboard.press("Tab")
        bob.page.keyboard.type(PASSWORD)
        bob.page.keyboard.press("Enter")
        expect(bob.page.get_by_text("Signed in as")).to_contain_text("bob")
        bob.live()

        # Alice opens a direct chat with Bob and writes; Bob's list shows it unread, live.
        alice.page.get_by_role("button", name="New chat").click()
        alice.page.get_by_label("Their username").fill("bob")
        alice.shot("new-chat-desktop")
        alice.page.get_by_role("button", name="Open chat").click()
        expect(alice.page.locator("#chat-title")).to_have_text("bob")
        alice.send("Hello Bob!")
        bob_item = bob.page.locator(".chat-item", has_text="alice")
        expect(bob_item.locator(".badge")).to_have_text("1")
        bob.shot("chat-list-phone")

        # Bob opens it (that reads it: Alice sees the receipt) and answers while Alice watches.
        bob_item.click()
        expect(bob.message("Hello Bob!")).to_have_count(1)
        expect(alice.message("Hello Bob!").locator(".receipt")).to_have_text("✓✓ Read")
        bob.page.get_by_label("Message", exact=True).press_sequentially("Hi")
        expect(alice.page.locator("#chat-status")).to_have_text("bob is typing…")
        bob.page.get_by_label("Message", exact=True).press_sequentially(" Alice")
        bob.page.get_by_label("Message", exact=True).press("Enter")
        expect(alice.message("Hi Alice")).to_have_count(1)
        expect(alice.page.locator("#chat-status")).not_to_have_text("bob is typing…")
        expect(bob.message("Hi Alice").locator(".receipt")).to_have_text("✓✓ Read")
        expect(alice.page.locator(".chat-item .badge")).to_have_count(0)

        # A reply, an edit and a picture reach Bob as they happen.
        alice.act("Hi Alice", "Reply")
        expect(alice.page.locator("#composer-context")).to_contain_text("Replying to bob: Hi Alice")
        alice.send("How are you?")
        expect(bob.message("How are you?").locator(".quote")).to_have_text("You: Hi Alice")
        alice.act("Hello Bob!", "Edit")
        box = alice.page.get_by_label("Message", exact=True)
        box.fill("Hello Bob, again!")
        box.press("Enter")
        expect(bob.message("Hello Bob, again!").locator(".edited")).to_have_text("edited")
        alice.page.locator("#attach-input").set_input_files(
            files=[{"name": "square.png", "mimeType": "image/png", "buffer": png(48, 32, (47, 111, 222))}]
        )
        expect(alice.page.locator("#attachment-preview")).to_contain_text("square.png")
        alice.send("A picture")
        picture = bob.message("A picture").locator(".attachment")
        expect(picture.locator("img, .file")).to_have_count(1)
        if picture.locator("img").count():  # the server has Pillow, so the image has a thumbnail
            expect(picture.locator("img")).to_have_attribute("src", re.compile(r"^blob:"))
            bob.page.wait_for_function(
                "() => [...document.querySelectorAll('.attachment img')].every(i => i.complete && i.naturalWidth)"
            )
        expect(alice.message("A picture").locator(".receipt")).to_have_text("✓✓ Read")
        alice.shot("conversation-desktop")
        bob.shot("conversation-phone")

        # Deleting leaves a tombstone on both sides.
        alice.act("How are you?", "Delete")
        alice.page.locator("#confirm-dialog").get_by_role("button", name="Delete").click()
        expect(bob.page.locator("#message-list .deleted")).to_have_text("This message was deleted.")

        # A reload keeps Alice signed in, in the same chat, and live.
        alice.page.reload()
        expect(alice.page.locator("#app-view")).to_be_visible()
        expect(alice.page.locator("#chat-title")).to_have_text("bob")
        expect(alice.message("Hi Alice")).to_have_count(1)
        alice.live()
        bob.send("Still there?")
        expect(alice.message("Still there?")).to_have_count(1)

        # On the phone, back goes to the list; logging out ends the session for good.
        bob.page.get_by_role("button", name="Back to the chat list").click()
        expect(bob.page.get_by_role("heading", name="Chats")).to_be_visible()
        alice.page.get_by_role("button", name="Log out").click()
        expect(alice.page.get_by_role("heading", name="Log in")).to_be_visible()
        alice.page.reload()
        expect(alice.page.get_by_role("heading", name="Log in")).to_be_visible()

        assert alice.problems == [] and bob.problems == [], (alice.problems, bob.problems)
    finally:
        alice.close()
        bob.close()
    assert time.monotonic() - started < 60


def test_the_page_loads_its_script_as_modules_under_the_strict_policy(browser, server):
    carol = Person(browser, server, DESKTOP)
    scripts = {}

    def saw(response):
        path = urllib.parse.urlsplit(response.url).path
        if path.startswith("/static/") and path.endswith(".js"):
            scripts[path.removeprefix("/static/")] = (response.status, response.headers.get("content-type"))

    carol.page.on("response", saw)
    try:
        carol.open()
        # The form shows once app.js has run, which is after every module it imports has loaded.
        expect(carol.page.get_by_role("heading", name="Log in")).to_be_visible()
        assert set(scripts) == set(web.SCRIPT_MODULES)
        assert set(scripts.values()) == {(200, web.JAVASCRIPT)}
        assert carol.problems == [], carol.problems
    finally:
        carol.close()


def test_older_history_loads_on_scroll_and_a_group_shows_who_is_typing(browser, server):
    for name in ("carol", "dave"):
        server.request("POST", "/api/auth/register", {"username": name, "password": PASSWORD})
    status, answer = server.request("POST", "/api/auth/login", {"username": "carol", "password": PASSWORD})
    assert status == 200, answer
    carol = answer["data"]["access_token"]
    status, answer = server.request("POST", "/api/chats/group", {"name": "Team", "members": ["dave"]}, token=carol)
    assert status == 201, answer
    chat = answer["data"]["id"]
    for number in range(1, 121):
        status, _ = server.request("POST", f"/api/chats/{chat}/messages", {"content": f"message {number}"}, token=carol)
        assert status == 201

    dave = Person(browser, server, DESKTOP, color_scheme="dark")
    try:
        dave.open()
        dave.log_in("dave")
        team = dave.page.locator(".chat-item", has_text="Team")
        expect(team.locator(".badge")).to_have_text("99+")
        team.click()
        expect(dave.message("message 120")).to_be_visible()
        expect(dave.page.locator("#chat-status")).to_have_text("2 members")
        expect(dave.page.locator("#message-list .message")).to_have_count(50)
        expect(team.locator(".badge")).to_have_count(0)

        # Scrolling to the top fetches older pages until the start of the conversation.
        for _ in range(5):
            dave.page.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
            if dave.page.locator("#history-start").is_visible():
                break
            dave.page.wait_for_timeout(300)
        expect(dave.page.locator("#history-start")).to_be_visible()
        expect(dave.page.locator("#message-list .message")).to_have_count(120)
        expect(dave.message("message 1")).to_have_count(1)

        server.request("POST", f"/api/chats/{chat}/typing", {"typing": True}, token=carol)
        expect(dave.page.locator("#chat-status")).to_have_text("carol is typing…")
        expect(team.locator(".chat-preview")).to_have_text("carol is typing…")
        dave.shot("group-dark-desktop")
        server.request("POST", f"/api/chats/{chat}/messages", {"content": "done @dave"}, token=carol)
        expect(dave.page.locator("#chat-status")).to_have_text("2 members")
        expect(dave.message("done @dave").locator(".mention")).to_have_text("@dave")
        assert dave.problems == [], dave.problems
    finally:
        dave.close()


def test_the_page_refreshes_its_tokens_and_keeps_the_new_refresh_token(browser, tmp_path):
    # refresh_at one second after issue (the page waits at least five); a replayed
    # old refresh token is then only refused, within the long grace, not a revocation.
    server = Server(tmp_path / "data", TOKEN_REFRESH_SECONDS=1, REFRESH_REUSE_GRACE=300)
    erin = None
    try:
        server.request("POST", "/api/auth/register", {"username": "erin", "password": PASSWORD})
        erin = Person(browser, server, PHONE)
        erin.open()
        erin.log_in("erin")
        stored = "() => JSON.parse(localStorage.getItem('oxc.session:/api')).refresh_token"
        first = erin.page.evaluate(stored)
        erin.page.wait_for_function(f"first => ({stored})() !== first", arg=first, timeout=15_000)
        status, answer = server.request("POST", "/api/auth/refresh", {"refresh_token": first})
        assert status == 401, answer  # the page's refresh rotated it: the old one is spent

        erin.page.reload()
        expect(erin.page.get_by_text("Signed in as")).to_contain_text("erin")
        erin.live()
        assert erin.problems == [], erin.problems
    finally:
        if erin is not None:
            erin.close()
        server.stop()
