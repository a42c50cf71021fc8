"""Guessing one-time codes over days: caps per address, per purpose and per day, kept in the store.

Before, each new code brought five new guesses and a new code could be asked
for every minute, with nothing capping the day: about 7,200 guesses per
account per day. Now an address gets 10 codes and 20 wrong guesses a day for
each purpose (verification, reset), counted by the store in one atomic step,
so that two processes on one database share the counts.
"""

import pytest
from test_accounts import inbox, mail_client  # noqa: F401 (fixtures)
from test_code_races import hammer, register, senders, wrong  # noqa: F401 (fixtures)

from handlers.accounts import CODES_PER_DAY, DAY, RESEND_AFTER, WRONG_GUESSES_PER_DAY

ADDRESS = "alice@example.com"
PATHS = {"verify": "/api/auth/verify-email", "reset": "/api/auth/password-reset"}


def ask(client, purpose, address, status=200):
    return client.post_json(PATHS[purpose] + "/request", {"email": address}, status=status)


def guess(client, purpose, address, code, status):
    body = {"email": address, "code": code}
    if purpose == "reset":
        body["new_password"] = "a brand new password"
    return client.post_json(PATHS[purpose], body, status=status)


@pytest.mark.parametrize("purpose", ["verify", "reset"])
@pytest.mark.parametrize("address", [ADDRESS, "nobody@example.com"])
def test_an_address_gets_ten_codes_a_day_then_429_until_the_day_is_over(mail_client, inbox, clock, purpose, address):
    mail_client.register("alice", email=ADDRESS)
    for _ in range(CODES_PER_DAY):
        clock.advance(RESEND_AFTER + 1)
        ask(mail_client, purpose, address)
    clock.advance(RESEND_AFTER + 1)
    refused = ask(mail_client, purpose, address, status=429)
    assert DAY - CODES_PER_DAY * (RESEND_AFTER + 1) - 1 <= int(refused.headers["Retry-After"]) <= DAY
    assert "today" in refused.json["message"]
    clock.advance(DAY)
    ask(mail_client, purpose, address)
    if address == ADDRESS:
        inbox.code_for(ADDRESS, count=1 + CODES_PER_DAY + 1)
        assert len(inbox.to(ADDRESS)) == 1 + CODES_PER_DAY + 1  # the registration's code, then the day's, then one


@pytest.mark.parametrize("purpose", ["verify", "reset"])
def test_new_codes_do_not_bring_new_guesses_beyond_twenty_wrong_ones_a_day(mail_client, inbox, clock, purpose):
    mail_client.register("alice", email=ADDRESS)
    mails = 1
    wrong_guesses = 0
    while wrong_guesses < WRONG_GUESSES_PER_DAY:  # the old attack: a fresh code, five guesses, again
        clock.advance(RESEND_AFTER + 1)
        ask(mail_client, purpose, ADDRESS)
        mails += 1
        code = inbox.code_for(ADDRESS, count=mails)
        for _ in range(5):
            guess(mail_client, purpose, ADDRESS, wrong(code), status=400)
            wrong_guesses += 1
    clock.advance(RESEND_AFTER + 1)
    ask(mail_client, purpose, ADDRESS)
    mails += 1
    code = inbox.code_for(ADDRESS, count=mails)
    refused = guess(mail_client, purpose, ADDRESS, code, status=429)  # even the right one: it is never compared
    assert int(refused.headers["Retry-After"]) >= DAY - 10 * (RESEND_AFTER + 1)
    clock.advance(DAY)
    ask(mail_client, purpose, ADDRESS)
    guess(mail_client, purpose, ADDRESS, inbox.code_for(ADDRESS, count=mails + 1), status=200)


def test_right_guesses_do_not_count_against_the_day(mail_client, inbox, clock):
    mail_client.register("alice", email=ADDRESS)
    for mails in range(2, 2 + CODES_PER_DAY):
        clock.advance(RESEND_AFTER + 1)
        ask(mail_client, "reset", ADDRESS)
        code = inbox.code_for(ADDRESS, count=mails)
        guess(mail_client, "reset", ADDRESS, wrong(code), status=400)
        guess(mail_client, "reset", ADDRESS, code, status=200)
    for _ in range(WRONG_GUESSES_PER_DAY - CODES_PER_DAY):
        guess(mail_client, "reset", ADDRESS, "000000", status=400)
    guess(mail_client, "reset", ADDRESS, "000000", status=429)


def test_an_unknown_address_is_capped_like_a_known_one(mail_client, clock):
    for _ in range(WRONG_GUESSES_PER_DAY):
        guess(mail_client, "reset", "nobody@example.com", "123456", status=400)
    assert "today" in guess(mail_client, "reset", "nobody@example.com", "123456", status=429).json["message"]


def test_asking_for_a_reset_does_not_block_asking_for_a_verification(mail_client, inbox):
    mail_client.register("alice", email=ADDRESS)
    ask(mail_client, "reset", ADDRESS)
    ask(mail_client, "verify", ADDRESS)
    ask(mail_client, "verify", ADDRESS, status=429)  # each purpose keeps its own minute
    ask(mail_client, "reset", ADDRESS, status=429)
    assert len([inbox.code_for(ADDRESS, count=3)]) == 1


def test_a_spent_reset_day_leaves_verification_alone(mail_client, inbox, clock):
    mail_client.register("alice", email=ADDRESS)
    code = inbox.code_for(ADDRESS)
    for _ in range(WRONG_GUESSES_PER_DAY):
        guess(mail_client, "reset", ADDRESS, "000000", status=400)
    guess(mail_client, "reset", ADDRESS, "000000", status=429)
    guess(mail_client, "verify", ADDRESS, code, status=200)


def test_parallel_wrong_guesses_across_processes_get_twenty_comparisons_a_day(hammer, inbox):  # noqa: F811
    names = [f"cap{number}" for number in range(20)]
    register(hammer, names)
    addresses = [f"{name}@example.com" for name in names]
    codes = {address: inbox.code_for(address) for address in addresses}
    attempts = 2 * WRONG_GUESSES_PER_DAY
    statuses = hammer.all(
        [
            ("/auth/verify-email", {"email": address, "code": wrong(codes[address])})
            for address in addresses
            for _ in range(attempts)
        ]
    )
    assert set(statuses) <= {400, 429}
    compared = {
        address: statuses[index * attempts : (index + 1) * attempts].count(400)
        for index, address in enumerate(addresses)
    }
    assert set(compared.values()) == {WRONG_GUESSES_PER_DAY}, compared
    right = hammer.all([("/auth/verify-email", {"email": address, "code": codes[address]}) for address in addresses])
    assert set(right) == {429}
