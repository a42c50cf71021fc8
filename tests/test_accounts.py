"""E-mail verification and password reset, with a real SMTP server on loopback."""

import re
import socket
import threading

import pytest
from aiosmtpd.controller import Controller
from conftest import PASSWORD, assert_error


class Inbox:
    """An aiosmtpd handler keeping every message it receives."""

    def __init__(self):
        self.messages = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server, session, envelope):
        with self.arrived:
            self.messages.append((envelope.rcpt_tos[0], envelope.content.decode("utf-8", "replace")))
            self.arrived.notify_all()
        return "250 OK"

    def code_for(self, address, count=1, timeout=10):
        """The six-digit code in the ``count``-th mail to ``address``."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.to(address)) >= count, timeout)
        mails = self.to(address)
        assert len(mails) >= count, f"no mail #{count} to {address}: {self.messages}"
        return re.search(r"\b(\d{6})\b", mails[count - 1]).group(1)

    def to(self, address):
        return [body for recipient, body in self.messages if recipient == address]


@pytest.fixture
def inbox():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    handler.port = port
    yield handler
    controller.stop()


@pytest.fixture
def mail_client(make_client, inbox):
    return make_client(smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_security="none", mail_from="chat@example.com")


def verify(client, address, code, status=200):
    return client.post_json("/api/auth/verify-email", {"email": address, "code": code}, status=status)


def test_registering_with_an_address_mails_a_code_that_verifies_it(mail_client, inbox):
    alice = mail_client.user("alice", email="alice@example.com")
    code = inbox.code_for("alice@example.com")
    assert "From: chat@example.com" in inbox.to("alice@example.com")[0]
    assert mail_client.get("/api/users/me", headers=alice.headers).json["data"]["email_verified"] is False
    verify(mail_client, "ALICE@example.com", code)
    assert mail_client.get("/api/users/me", headers=alice.headers).json["data"]["email_verified"] is True
    assert_error(verify(mail_client, "alice@example.com", code, status=400), 400, "Invalid or expired code")


def test_a_wrong_code_counts_and_five_wrong_guesses_burn_it(mail_client, inbox):
    mail_client.register("alice", email="alice@example.com")
    code = inbox.code_for("alice@example.com")
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(5):
        assert_error(verify(mail_client, "alice@example.com", wrong, status=400), 400, "Invalid")
    assert_error(verify(mail_client, "alice@example.com", code, status=400), 400, "Invalid")


def test_the_fifth_guess_may_be_the_right_one(mail_client, inbox):
    mail_client.register("alice", email="alice@example.com")
    code = inbox.code_for("alice@example.com")
    for _ in range(4):
        assert_error(verify(mail_client, "alice@example.com", f"{(int(code) + 1) % 10**6:06d}", status=400), 400)
    verify(mail_client, "alice@example.com", code)


def test_a_reset_code_works_once(mail_client, inbox):
    mail_client.register("alice", email="alice@example.com")
    mail_client.post_json("/api/auth/password-reset/request", {"email": "alice@example.com"})
    body = {
        "email": "alice@example.com",
        "code": inbox.code_for("alice@example.com", count=2),
        "new_password": "brand new password",
    }
    mail_client.post_json("/api/auth/password-reset", body)
    again = mail_client.post_json("/api/auth/password-reset", dict(body, new_password="another new one"), status=400)
    assert_error(again, 400, "Invalid or expired code")
    mail_client.login("alice", "brand new password")


@pytest.mark.parametrize(
    "path, extra",
    [("/api/auth/verify-email", {}), ("/api/auth/password-reset", {"new_password": "brand new password"})],
)
def test_a_code_redeemed_while_the_address_changes_proves_nothing(mail_client, inbox, monkeypatch, path, extra):
    alice_id = mail_client.register("alice", email="alice@example.com").json["data"]["id"]
    code = inbox.code_for("alice@example.com")
    if "reset" in path:
        mail_client.post_json("/api/auth/password-reset/request", {"email": "alice@example.com"})
        code = inbox.code_for("alice@example.com", count=2)
    ctx = mail_client.wsgi.core.ctx
    check = ctx.codes.check

    def check_while_the_address_changes(*args):
        # What an address change finishing in another request at this moment does.
        ctx.store.update_user(alice_id, {"email": "other@example.com", "email_verified": False})
        return check(*args)

    monkeypatch.setattr(ctx.codes, "check", check_while_the_address_changes)
    answer = mail_client.post_json(path, {"email": "alice@example.com", "code": code, **extra}, status=400)
    assert_error(answer, 400, "Invalid or expired code")
    user = ctx.store.get_user(alice_id)
    assert user["email_verified"] is False
    mail_client.login("alice", PASSWORD)


@pytest.mark.backends("postgres")
def test_every_app_on_one_database_shares_the_cool_down(make_client, inbox):
    mail = dict(smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_security="none")
    first, second = make_client(**mail), make_client(**mail)
    first.post_json("/api/auth/password-reset/request", {"email": "alice@example.com"})
    assert_error(
        second.post_json("/api/auth/password-reset/request", {"email": "alice@example.com"}, status=429),
        429,
        "a moment ago",
    )


def test_a_code_expires(mail_client, inbox, clock):
    mail_client.register("alice", email="alice@example.com")
    code = inbox.code_for("alice@example.com")
    clock.advance(15 * 60 + 1)
    assert_error(verify(mail_client, "alice@example.com", code, status=400), 400, "expired")


def test_asking_again_waits_for_the_cool_down_whether_or_not_the_address_exists(mail_client, inbox, clock):
    mail_client.register("alice", email="alice@example.com")
    inbox.code_for("alice@example.com")
    for address in ("alice@example.com", "nobody@example.com"):
        first = mail_client.post_json("/api/auth/verify-email/request", {"email": address})
        assert "If that address" in first.json["message"]
        again = mail_client.post_json("/api/auth/verify-email/request", {"email": address}, status=429)
        assert_error(again, 429)
        assert int(again.headers["Retry-After"]) >= 1
    new_code = inbox.code_for("alice@example.com", count=2)
    clock.advance(61)
    mail_client.post_json("/api/auth/verify-email/request", {"email": "alice@example.com"})
    newest = inbox.code_for("alice@example.com", count=3)
    assert_error(verify(mail_client, "alice@example.com", new_code, status=400), 400)
    verify(mail_client, "alice@example.com", newest)
    mail_client.wsgi.core.ctx.mailer.flush()
    assert inbox.to("nobody@example.com") == []


def test_when_verification_is_required_unverified_users_cannot_log_in(make_client, inbox):
    client = make_client(smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_security="none", require_verified_email=True)
    assert_error(client.register("bob", status=400), 400, "email")
    client.register("alice", email="alice@example.com")
    assert_error(client.login("alice", status=403), 403, "Verify your e-mail")
    assert_error(client.login("alice", "wrong password", status=401), 401)
    verify(client, "alice@example.com", inbox.code_for("alice@example.com"))
    client.login("alice")


def test_a_password_reset_sets_a_new_password_and_ends_every_session(mail_client, inbox):
    alice = mail_client.user("alice", email="alice@example.com")
    mail_client.post_json("/api/auth/password-reset/request", {"email": "alice@example.com"})
    code = inbox.code_for("alice@example.com", count=2)
    answer = mail_client.post_json(
        "/api/auth/password-reset", {"email": "alice@example.com", "code": code, "new_password": "brand new password"}
    )
    assert answer.json["data"]["sessions_ended"] == 1
    assert_error(mail_client.post_json("/api/auth/refresh", {"refresh_token": alice.refresh_token}, status=401), 401)
    assert_error(mail_client.get("/api/users/me", headers=alice.headers, status=401), 401)
    mail_client.login("alice", PASSWORD, status=401)
    mail_client.login("alice", "brand new password")


def test_a_reset_for_an_unknown_address_answers_the_same_and_sends_nothing(mail_client, inbox):
    mail_client.register("alice", email="alice@example.com")
    known = mail_client.post_json("/api/auth/password-reset/request", {"email": "alice@example.com"}).json
    unknown = mail_client.post_json("/api/auth/password-reset/request", {"email": "ghost@example.com"}).json
    assert known == unknown
    assert_error(
        mail_client.post_json(
            "/api/auth/password-reset",
            {"email": "ghost@example.com", "code": "123456", "new_password": "whatever123"},
            status=400,
        ),
        400,
        "Invalid or expired code",
    )
    mail_client.wsgi.core.ctx.mailer.flush()
    assert inbox.to("ghost@example.com") == []


def test_changing_the_address_needs_the_password_and_verifying_the_new_one(mail_client, inbox):
    alice = mail_client.user("alice", email="alice@example.com")
    verify(mail_client, "alice@example.com", inbox.code_for("alice@example.com"))
    changed = mail_client.patch_json(
        "/api/users/me", {"email": "new@example.com", "password": PASSWORD}, headers=alice.headers
    ).json["data"]
    assert changed["email"] == "new@example.com" and changed["email_verified"] is False
    assert_error(verify(mail_client, "alice@example.com", "000000", status=400), 400)
    verify(mail_client, "new@example.com", inbox.code_for("new@example.com"))
    assert mail_client.get("/api/users/me", headers=alice.headers).json["data"]["email_verified"] is True


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/api/auth/verify-email/request", {}, "email"),
        ("/api/auth/verify-email/request", {"email": "not an address"}, "e-mail"),
        ("/api/auth/verify-email", {"email": "a@example.com"}, "code"),
        ("/api/auth/verify-email", {"email": "a@example.com", "code": "12345"}, "six digits"),
        ("/api/auth/verify-email", {"email": "a@example.com", "code": "12345x"}, "six digits"),
        ("/api/auth/password-reset/request", {"email": 4}, "must be a string"),
        ("/api/auth/password-reset", {"email": "a@example.com", "code": "123456"}, "new_password"),
        (
            "/api/auth/password-reset",
            {"email": "a@example.com", "code": "123456", "new_password": "short"},
            "at least 8",
        ),
    ],
)
def test_bad_account_requests_are_400(mail_client, path, body, message):
    assert_error(mail_client.post_json(path, body, status=400), 400, message)


def test_without_smtp_in_development_codes_go_to_the_log(client, caplog):
    caplog.set_level("INFO", logger="oxc.mail")
    client.register("alice", email="alice@example.com")
    logged = [record.getMessage() for record in caplog.records if record.name == "oxc.mail"]
    assert any("alice@example.com" in line and re.search(r"\b\d{6}\b", line) for line in logged)
