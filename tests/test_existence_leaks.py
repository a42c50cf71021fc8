"""Nobody learns who has an account from the answers or the timing of the account endpoints.

Asking for a verification or reset code does the same store work for an
address with no account as for one with (a decoy code record, the same
counts): the medians of 20 tries differ by less than 25%. Registering with a
taken address, when verification is required, answers exactly as a new
address would; either way the owner of the address is told by mail.
"""

import re
import statistics
import time

import pytest
from conftest import PASSWORD, assert_error
from test_accounts import inbox, mail_client  # noqa: F401 (fixtures)

TRIES = 20
ROUNDS = 3  # a shared machine may stall one round; a real difference shows in all of them
MAX_DIFFERENCE = 0.25
ASKS = {"verify": "/api/auth/verify-email/request", "reset": "/api/auth/password-reset/request"}


def timed(client, path, body, status):
    started = time.perf_counter()
    client.post_json(path, body, status=status)
    took = time.perf_counter() - started
    client.wsgi.core.ctx.mailer.flush()  # the mail leaves on its own thread; keep it out of the next try
    return took


def known_and_unknown(client):
    """Addresses of accounts awaiting verification, and as many with no account."""
    known = [f"user{number}@example.com" for number in range(TRIES * ROUNDS)]
    for number, address in enumerate(known):
        client.register(f"user{number}", email=address)
    client.wsgi.core.ctx.mailer.flush()
    return {"known": known, "unknown": [f"nobody{number}@example.com" for number in range(TRIES * ROUNDS)]}


def assert_same_time(label, addresses, measure, capsys):
    """Medians of TRIES ``measure(address)`` for known and unknown addresses differ by < MAX_DIFFERENCE."""
    differences = []
    for round_number in range(ROUNDS):
        times = {"known": [], "unknown": []}
        for number in range(round_number * TRIES, (round_number + 1) * TRIES):
            kinds = ["known", "unknown"] if number % 2 else ["unknown", "known"]  # alternate who goes first
            for kind in kinds:
                times[kind].append(measure(addresses[kind][number]))
        medians = {kind: statistics.median(values) for kind, values in times.items()}
        difference = abs(medians["known"] - medians["unknown"]) / min(medians.values())
        differences.append(difference)
        with capsys.disabled():
            print(
                f"\n{label}, median of {TRIES}: known {medians['known'] * 1000:.2f} ms, "
                f"unknown {medians['unknown'] * 1000:.2f} ms ({difference:.0%} apart)"
            )
        if difference < MAX_DIFFERENCE:
            break
    assert min(differences) < MAX_DIFFERENCE, differences


@pytest.mark.parametrize("purpose", ["verify", "reset"])
def test_asking_for_a_code_takes_as_long_for_an_unknown_address(mail_client, inbox, purpose, capsys):
    addresses = known_and_unknown(mail_client)
    assert_same_time(
        f"{purpose} code request",
        addresses,
        lambda address: timed(mail_client, ASKS[purpose], {"email": address}, 200),
        capsys,
    )
    inbox.code_for(addresses["known"][0], count=2)  # the known address did get its code
    assert not [recipient for recipient, _ in inbox.messages if recipient.startswith("nobody")]


@pytest.mark.parametrize("purpose", ["verify", "reset"])
def test_a_wrong_guess_after_asking_takes_as_long_for_an_unknown_address(mail_client, purpose, capsys):
    addresses = known_and_unknown(mail_client)
    for address in addresses["known"] + addresses["unknown"]:
        mail_client.post_json(ASKS[purpose], {"email": address})  # a pending code, or what stands in for one
    mail_client.wsgi.core.ctx.mailer.flush()
    path = ASKS[purpose].removesuffix("/request")
    extra = {"new_password": "a brand new password"} if purpose == "reset" else {}
    assert_same_time(
        f"wrong {purpose} code",
        addresses,
        lambda address: timed(mail_client, path, {"email": address, "code": "000000", **extra}, 400),
        capsys,
    )


def notices(inbox, address):
    """Where in the mails to ``address`` the "someone tried to register" notices are."""
    return [
        index
        for index, mail in enumerate(inbox.to(address))
        if "Subject: Someone tried to register with your e-mail address" in mail
    ]


def register(client, username, address, status=201):
    return client.post_json(
        "/api/auth/register", {"username": username, "password": PASSWORD, "email": address}, status=status
    )


@pytest.fixture
def verified_only(make_client, inbox):  # noqa: F811
    return make_client(smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_security="none", require_verified_email=True)


def test_with_verification_required_a_taken_address_registers_like_a_new_one(verified_only, inbox):
    register(verified_only, "alice", "alice@example.com")
    fresh = register(verified_only, "bob", "bob@example.com").json
    taken = register(verified_only, "mallory", "alice@example.com").json
    assert taken["message"] == fresh["message"] and taken["status"] == fresh["status"]
    assert set(taken["data"]) == set(fresh["data"])
    assert (taken["data"]["username"], taken["data"]["email"], taken["data"]["email_verified"]) == (
        "mallory",
        "alice@example.com",
        False,
    )
    # What comes next answers the same too: the password is right, the address unverified.
    for username in ("bob", "mallory"):
        assert_error(verified_only.login(username, status=403), 403, "Verify your e-mail address first")
    # The owner hears of it, and keeps the address and the account.
    verified_only.wsgi.core.ctx.mailer.flush()
    assert len(inbox.to("alice@example.com")) == 2 and len(notices(inbox, "alice@example.com")) == 1
    code = re.search(r"code to verify this e-mail address is (\d{6})", "".join(inbox.to("alice@example.com")))[1]
    verified_only.post_json("/api/auth/verify-email", {"email": "alice@example.com", "code": code})
    assert verified_only.login("alice").json["data"]["user"]["email"] == "alice@example.com"
    # The registrant's account never gets the address, so it can never be verified.
    store = verified_only.wsgi.core.ctx.store
    assert store.find_user("mallory")["email"] is None
    assert store.find_user_by_email("alice@example.com")["username"] == "alice"


def test_without_verification_a_taken_address_is_refused_and_its_owner_told(mail_client, inbox):
    mail_client.register("alice", email="alice@example.com")
    assert_error(register(mail_client, "mallory", "alice@example.com", status=400), 400, "Email already registered")
    mail_client.wsgi.core.ctx.mailer.flush()
    assert len(inbox.to("alice@example.com")) == 2 and len(notices(inbox, "alice@example.com")) == 1
    assert mail_client.wsgi.core.ctx.store.find_user("mallory") is None


def test_the_owner_of_a_taken_address_gets_at_most_ten_notices_a_day(verified_only, inbox, clock):
    register(verified_only, "alice", "alice@example.com")
    for number in range(15):
        register(verified_only, f"mallory{number}", "alice@example.com")
    verified_only.wsgi.core.ctx.mailer.flush()
    assert len(inbox.to("alice@example.com")) == 1 + 10 and len(notices(inbox, "alice@example.com")) == 10
    clock.advance(24 * 60 * 60)
    register(verified_only, "mallory99", "alice@example.com")
    verified_only.wsgi.core.ctx.mailer.flush()
    assert len(inbox.to("alice@example.com")) == 1 + 10 + 1
