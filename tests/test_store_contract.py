"""Behaviour every storage backend must show, checked through the public ``Store`` interface.

Each test runs once per backend. A new backend joins by adding one param to the
``store`` fixture (and, if it needs a server, skipping when none is configured);
nothing here may reach past ``store/base.py``. The PostgreSQL runs use a fresh
schema of the database at ``OXC_TEST_POSTGRES_URL`` (default
``postgresql:///test``) and skip, saying why, when there is no server.
"""

import hashlib
import threading
import time

import pytest
from pgtest import fresh_schema

from store import Conflict, Page, StoreUnavailable, open_store
from store.base import TABLES


@pytest.fixture(params=["json", "memory", "postgres"])
def store(request, tmp_path):
    if request.param == "postgres":
        with fresh_schema() as (url, _):
            opened = open_store(tmp_path / "data", url=url)
            yield opened
            opened.close()
        return
    opened = open_store(tmp_path / "data") if request.param == "json" else open_store(None)
    yield opened
    opened.close()


# ---- records ------------------------------------------------------------------


def make_user(user_id, username, email=None):
    return {
        "id": user_id,
        "username": username,
        "email": email,
        "password_hash": "$2b$04$" + "x" * 53,
        "created_at": "2024-05-01T12:00:00Z",
    }


def make_message(message_id, user_id, recipient_id=None, content=None):
    return {
        "id": message_id,
        "user_id": user_id,
        "username": user_id,
        "content": content or f"text of {message_id}",
        "timestamp": "2024-05-01T12:00:00Z",
        "recipient_id": recipient_id,
    }


def token_hash(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def make_session(session_id, user_id, token):
    return {
        "id": session_id,
        "user_id": user_id,
        "token_hash": token_hash(token),
        "previous_hash": None,
        "rotated_at": None,
        "created_at": 1_700_000_000.0,
        "expires_at": 1_700_000_000.0 + 86400,
    }


def post(store, message_id, user_id="alice", recipient_id=None):
    """Add a message and return its seq."""
    return store.add_message(make_message(message_id, user_id, recipient_id))["seq"]


def ids(page):
    return [message["id"] for message in page.items]


def seqs(page):
    return [message["seq"] for message in page.items]


# ---- users --------------------------------------------------------------------


def test_created_user_is_found_by_id_and_by_username_in_any_case(store):
    user = make_user("u1", "Alice", "alice@example.com")
    assert store.create_user(user) == user
    assert store.get_user("u1") == user
    assert store.find_user("Alice") == user
    assert store.find_user("aLICE") == user


def test_unknown_users_are_none(store):
    store.create_user(make_user("u1", "alice"))
    assert store.get_user("nobody") is None
    assert store.find_user("bob") is None


def test_username_taken_in_another_case_conflicts_and_leaves_no_trace(store):
    store.create_user(make_user("u1", "alice"))
    with pytest.raises(Conflict):
        store.create_user(make_user("u2", "ALICE"))
    assert store.get_user("u2") is None
    assert store.find_user("alice")["id"] == "u1"


def test_email_taken_by_another_user_conflicts(store):
    store.create_user(make_user("u1", "alice", "shared@example.com"))
    with pytest.raises(Conflict):
        store.create_user(make_user("u2", "bob", "shared@example.com"))
    assert store.get_user("u2") is None
    assert store.find_user("bob") is None


def test_users_without_an_email_do_not_conflict_with_each_other(store):
    store.create_user(make_user("u1", "alice"))
    store.create_user(make_user("u2", "bob"))
    assert store.find_user("bob")["id"] == "u2"


def test_update_user_returns_the_new_record_and_lookups_follow_a_rename(store):
    store.create_user(make_user("u1", "alice", "alice@example.com"))
    updated = store.update_user("u1", {"username": "alicia", "email": "alicia@example.com"})
    assert updated["username"] == "alicia" and updated["email"] == "alicia@example.com"
    assert updated["password_hash"] == make_user("u1", "alice")["password_hash"]
    assert store.get_user("u1") == updated
    assert store.find_user("ALICIA") == updated
    assert store.find_user("alice") is None
    # The old name and email are free again.
    store.create_user(make_user("u2", "alice", "alice@example.com"))


def test_renaming_to_a_taken_username_conflicts_and_changes_nothing(store):
    store.create_user(make_user("u1", "alice"))
    bob = store.create_user(make_user("u2", "bob"))
    with pytest.raises(Conflict):
        store.update_user("u2", {"username": "Alice"})
    assert store.get_user("u2") == bob
    assert store.find_user("bob") == bob
    assert store.find_user("alice")["id"] == "u1"


def test_changing_email_to_a_taken_one_conflicts(store):
    store.create_user(make_user("u1", "alice", "alice@example.com"))
    store.create_user(make_user("u2", "bob", "bob@example.com"))
    with pytest.raises(Conflict):
        store.update_user("u2", {"email": "alice@example.com"})
    assert store.get_user("u2")["email"] == "bob@example.com"


def test_a_user_may_change_the_case_of_their_own_username(store):
    store.create_user(make_user("u1", "alice", "alice@example.com"))
    assert store.update_user("u1", {"username": "Alice"})["username"] == "Alice"
    assert store.find_user("alice")["username"] == "Alice"


def test_an_update_with_expected_values_applies_only_while_they_hold(store):
    alice = store.create_user(make_user("u1", "alice", "alice@example.com"))
    assert store.update_user("u1", {"full_name": "Al"}, expected={"email": "bob@example.com"}) is None
    assert store.get_user("u1") == alice
    changed = store.update_user(
        "u1", {"email_verified": True}, expected={"email": "alice@example.com", "password_hash": alice["password_hash"]}
    )
    assert changed["email_verified"] is True and store.get_user("u1") == changed


def test_concurrent_password_changes_from_one_hash_have_exactly_one_winner(store):
    old = store.create_user(make_user("u1", "alice"))["password_hash"]
    for round_number in range(20):
        results = all_at_once(
            2,
            lambda slot: store.update_user(
                "u1", {"password_hash": f"new-{round_number}-{slot}"}, expected={"password_hash": old}
            ),
        )
        winners = [result for result in results if result is not None]
        assert len(winners) == 1, f"round {round_number}: {results}"
        assert store.get_user("u1")["password_hash"] == winners[0]["password_hash"]
        old = winners[0]["password_hash"]


# ---- messages -----------------------------------------------------------------


def test_add_message_assigns_rising_seqs_and_get_message_returns_the_record(store):
    first = store.add_message(make_message("m1", "alice"))
    second = store.add_message(make_message("m2", "bob", recipient_id="alice"))
    assert second["seq"] > first["seq"]
    assert first["content"] == "text of m1" and second["recipient_id"] == "alice"
    assert store.get_message("m1") == first
    assert store.get_message("m2") == second
    assert store.get_message("m3") is None


def test_seqs_keep_rising_after_the_newest_message_is_deleted(store):
    newest = post(store, "m1")
    store.delete_message("m1")
    assert post(store, "m2") > newest


def test_delete_message_returns_the_removed_record_then_none(store):
    message = store.add_message(make_message("m1", "alice"))
    assert store.delete_message("m1") == message
    assert store.get_message("m1") is None
    assert store.delete_message("m1") is None
    assert store.delete_message("never-there") is None


def test_visible_messages_are_public_ones_and_private_ones_to_or_from_the_user(store):
    post(store, "public-by-alice", "alice")
    post(store, "alice-to-bob", "alice", "bob")
    post(store, "carol-to-dave", "carol", "dave")
    post(store, "bob-to-alice", "bob", "alice")
    post(store, "public-by-carol", "carol")
    post(store, "dave-to-carol", "dave", "carol")
    post(store, "alice-to-herself", "alice", "alice")

    assert ids(store.visible_messages("alice")) == [
        "public-by-alice",
        "alice-to-bob",
        "bob-to-alice",
        "public-by-carol",
        "alice-to-herself",
    ]
    assert ids(store.visible_messages("bob")) == ["public-by-alice", "alice-to-bob", "bob-to-alice", "public-by-carol"]
    assert ids(store.visible_messages("carol")) == [
        "public-by-alice",
        "carol-to-dave",
        "public-by-carol",
        "dave-to-carol",
    ]
    assert ids(store.visible_messages("eve")) == ["public-by-alice", "public-by-carol"]


def test_sent_messages_are_every_message_the_user_sent_and_no_other(store):
    post(store, "a1", "alice")
    post(store, "b1", "bob")
    post(store, "a2", "alice", "bob")
    post(store, "b2", "bob", "alice")
    post(store, "a3", "alice", "alice")
    assert ids(store.sent_messages("alice")) == ["a1", "a2", "a3"]
    assert ids(store.sent_messages("bob")) == ["b1", "b2"]
    assert store.sent_messages("carol") == Page([], False, False)


def test_pages_of_an_empty_store_are_empty_with_no_neighbours(store):
    assert store.visible_messages("alice") == Page([], False, False)
    assert store.visible_messages("alice", before=10) == Page([], False, False)
    assert store.visible_messages("alice", after=10) == Page([], False, False)
    assert store.sent_messages("alice", after=0) == Page([], False, False)


@pytest.fixture
def ten(store):
    """Ten public messages m0..m9; returns their seqs."""
    return [post(store, f"m{i}") for i in range(10)]


def test_the_default_page_is_the_newest_messages_oldest_first(store, ten):
    page = store.visible_messages("bob", limit=4)
    assert ids(page) == ["m6", "m7", "m8", "m9"]
    assert seqs(page) == sorted(seqs(page))
    assert (page.older, page.newer) == (True, False)


def test_a_page_holding_everything_has_no_neighbours(store, ten):
    page = store.visible_messages("bob", limit=10)
    assert ids(page) == [f"m{i}" for i in range(10)]
    assert (page.older, page.newer) == (False, False)
    assert ids(store.visible_messages("bob")) == ids(page)  # the default limit is larger


def test_before_pages_back_from_an_exclusive_cursor(store, ten):
    page = store.visible_messages("bob", before=ten[6], limit=3)
    assert ids(page) == ["m3", "m4", "m5"]
    assert (page.older, page.newer) == (True, True)


def test_before_stops_exactly_at_the_oldest_message(store, ten):
    page = store.visible_messages("bob", before=ten[4], limit=4)
    assert ids(page) == ["m0", "m1", "m2", "m3"]
    assert (page.older, page.newer) == (False, True)
    short = store.visible_messages("bob", before=ten[2], limit=5)
    assert ids(short) == ["m0", "m1"]
    assert (short.older, short.newer) == (False, True)


def test_before_the_oldest_message_is_an_empty_page_with_only_newer(store, ten):
    assert store.visible_messages("bob", before=ten[0], limit=5) == Page([], False, True)


def test_after_pages_forward_from_an_exclusive_cursor(store, ten):
    page = store.visible_messages("bob", after=ten[2], limit=3)
    assert ids(page) == ["m3", "m4", "m5"]
    assert (page.older, page.newer) == (True, True)


def test_after_stops_exactly_at_the_newest_message(store, ten):
    page = store.visible_messages("bob", after=ten[5], limit=4)
    assert ids(page) == ["m6", "m7", "m8", "m9"]
    assert (page.older, page.newer) == (True, False)
    short = store.visible_messages("bob", after=ten[7], limit=5)
    assert ids(short) == ["m8", "m9"]
    assert (short.older, short.newer) == (True, False)


def test_after_from_before_the_first_message_returns_the_oldest_page(store, ten):
    page = store.visible_messages("bob", after=0, limit=3)
    assert ids(page) == ["m0", "m1", "m2"]
    assert (page.older, page.newer) == (False, True)


def test_after_the_newest_message_is_an_empty_page_with_only_older(store, ten):
    assert store.visible_messages("bob", after=ten[9], limit=5) == Page([], True, False)


def test_walking_back_with_before_visits_every_message_once(store, ten):
    seen, page = [], store.visible_messages("bob", limit=3)
    seen[:0] = ids(page)
    while page.older:
        page = store.visible_messages("bob", before=page.items[0]["seq"], limit=3)
        seen[:0] = ids(page)
    assert seen == [f"m{i}" for i in range(10)]


def test_walking_forward_with_after_visits_every_message_once(store, ten):
    seen, page = [], store.visible_messages("bob", after=0, limit=4)
    seen += ids(page)
    while page.newer:
        page = store.visible_messages("bob", after=page.items[-1]["seq"], limit=4)
        seen += ids(page)
    assert seen == [f"m{i}" for i in range(10)]


def test_deleted_messages_vanish_from_pages_and_from_their_flags(store, ten):
    store.delete_message("m0")
    store.delete_message("m5")
    store.delete_message("m9")
    assert ids(store.visible_messages("bob")) == ["m1", "m2", "m3", "m4", "m6", "m7", "m8"]
    newest = store.visible_messages("bob", limit=2)
    assert ids(newest) == ["m7", "m8"] and newest.newer is False
    oldest = store.visible_messages("bob", before=ten[3], limit=5)
    assert ids(oldest) == ["m1", "m2"] and oldest.older is False
    # A deleted message's seq still works as a cursor.
    assert ids(store.visible_messages("bob", before=ten[5], limit=2)) == ["m3", "m4"]
    assert ids(store.visible_messages("bob", after=ten[5], limit=2)) == ["m6", "m7"]
    assert store.visible_messages("bob", after=ten[9]) == Page([], True, False)
    assert ids(store.sent_messages("alice", after=ten[0], limit=1)) == ["m1"]


def test_other_peoples_private_messages_neither_appear_in_pages_nor_set_flags(store):
    post(store, "hidden-old", "carol", "dave")
    post(store, "p1", "alice")
    post(store, "to-bob", "alice", "bob")
    post(store, "hidden-mid", "dave", "carol")
    post(store, "from-bob", "bob", "carol")
    post(store, "p2", "carol")
    post(store, "hidden-new", "carol", "dave")

    everything = store.visible_messages("bob", limit=5)
    assert ids(everything) == ["p1", "to-bob", "from-bob", "p2"]
    assert (everything.older, everything.newer) == (False, False)
    newest = store.visible_messages("bob", limit=2)
    assert ids(newest) == ["from-bob", "p2"]
    assert (newest.older, newest.newer) == (True, False)
    oldest = store.visible_messages("bob", after=0, limit=2)
    assert ids(oldest) == ["p1", "to-bob"]
    assert (oldest.older, oldest.newer) == (False, True)


def test_sent_messages_page_with_the_same_cursors(store):
    sent = []
    for i in range(6):
        sent.append(post(store, f"a{i}", "alice", "bob" if i % 2 else None))
        post(store, f"b{i}", "bob")
    newest = store.sent_messages("alice", limit=2)
    assert ids(newest) == ["a4", "a5"]
    assert (newest.older, newest.newer) == (True, False)
    middle = store.sent_messages("alice", before=sent[4], limit=2)
    assert ids(middle) == ["a2", "a3"]
    assert (middle.older, middle.newer) == (True, True)
    first = store.sent_messages("alice", after=0, limit=2)
    assert ids(first) == ["a0", "a1"]
    assert (first.older, first.newer) == (False, True)
    assert store.sent_messages("alice", after=sent[5]) == Page([], True, False)


def test_concurrent_writers_get_distinct_seqs_and_every_message_is_kept(store):
    threads, per_thread = 8, 100
    barrier = threading.Barrier(threads)
    results = [[] for _ in range(threads)]

    def write(number):
        barrier.wait()
        for i in range(per_thread):
            results[number].append(store.add_message(make_message(f"t{number}-{i}", f"user{number}")))

    workers = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    written = [message for result in results for message in result]
    assert len({message["seq"] for message in written}) == threads * per_thread
    for result in results:
        assert [m["seq"] for m in result] == sorted(m["seq"] for m in result)
    for message in written:
        assert store.get_message(message["id"]) == message
    page = store.visible_messages("anyone", limit=threads * per_thread + 1)
    assert sorted(ids(page)) == sorted(message["id"] for message in written)
    assert seqs(page) == sorted(message["seq"] for message in written)


# ---- sessions -----------------------------------------------------------------


def test_added_session_is_found_by_id_and_by_token_hash(store):
    session = make_session("s1", "alice", "token-1")
    assert store.add_session(session) == session
    assert store.get_session("s1") == session
    assert store.find_session(token_hash("token-1")) == session
    assert store.get_session("s2") is None
    assert store.find_session(token_hash("token-2")) is None


def test_rotation_with_the_current_hash_swaps_it_and_keeps_the_previous_one(store):
    store.add_session(make_session("s1", "alice", "old"))
    rotated = store.rotate_session("s1", token_hash("old"), token_hash("new"), 1_700_000_100.0, 1_700_090_000.0)
    assert rotated["token_hash"] == token_hash("new")
    assert rotated["previous_hash"] == token_hash("old")
    assert rotated["rotated_at"] == 1_700_000_100.0
    assert rotated["expires_at"] == 1_700_090_000.0
    assert rotated["user_id"] == "alice" and rotated["id"] == "s1"
    assert store.get_session("s1") == rotated
    assert store.find_session(token_hash("new")) == rotated
    assert store.find_session(token_hash("old")) is None


def test_rotation_with_a_stale_hash_returns_none_and_changes_nothing(store):
    store.add_session(make_session("s1", "alice", "first"))
    store.rotate_session("s1", token_hash("first"), token_hash("second"), 1.0, 2.0)
    current = store.get_session("s1")
    assert store.rotate_session("s1", token_hash("first"), token_hash("third"), 3.0, 4.0) is None
    assert store.get_session("s1") == current
    assert store.find_session(token_hash("third")) is None
    assert store.find_session(token_hash("second")) == current


def test_rotating_an_unknown_session_returns_none(store):
    assert store.rotate_session("nope", token_hash("a"), token_hash("b"), 1.0, 2.0) is None
    assert store.find_session(token_hash("b")) is None


def test_delete_session_reports_whether_it_existed(store):
    store.add_session(make_session("s1", "alice", "token"))
    assert store.delete_session("s1") is True
    assert store.get_session("s1") is None
    assert store.find_session(token_hash("token")) is None
    assert store.delete_session("s1") is False


def test_delete_user_sessions_ends_all_but_the_kept_one_and_spares_other_users(store):
    for number in range(3):
        store.add_session(make_session(f"a{number}", "alice", f"alice-{number}"))
    store.add_session(make_session("b0", "bob", "bob-0"))

    assert store.delete_user_sessions("alice", keep="a1") == 2
    assert store.get_session("a0") is None and store.get_session("a2") is None
    assert store.find_session(token_hash("alice-0")) is None
    assert store.get_session("a1")["user_id"] == "alice"
    assert store.get_session("b0")["user_id"] == "bob"

    assert store.delete_user_sessions("alice") == 1
    assert store.get_session("a1") is None
    assert store.delete_user_sessions("alice") == 0
    assert store.find_session(token_hash("bob-0"))["id"] == "b0"


def test_two_concurrent_rotations_of_one_token_have_exactly_one_winner(store):
    for round_number in range(50):
        session_id = f"s{round_number}"
        presented = token_hash(f"token-{round_number}")
        store.add_session(make_session(session_id, "alice", f"token-{round_number}"))
        barrier = threading.Barrier(2)
        results = [None, None]

        def rotate(slot):
            barrier.wait()
            results[slot] = store.rotate_session(
                session_id, presented, token_hash(f"new-{round_number}-{slot}"), 1.0, 2.0
            )

        racers = [threading.Thread(target=rotate, args=(slot,)) for slot in (0, 1)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        winners = [result for result in results if result is not None]
        assert len(winners) == 1, f"round {round_number}: {results}"
        assert store.get_session(session_id) == winners[0]
        assert store.find_session(winners[0]["token_hash"]) == winners[0]


def test_a_session_tied_to_a_password_hash_starts_only_while_that_hash_is_current(store):
    alice = store.create_user(make_user("alice", "alice"))
    assert store.add_session(make_session("s1", "alice", "one"), password_hash="stale") is None
    assert store.add_session(make_session("s2", "nobody", "two"), password_hash=alice["password_hash"]) is None
    assert store.get_session("s1") is None and store.get_session("s2") is None
    session = make_session("s3", "alice", "three")
    assert store.add_session(session, password_hash=alice["password_hash"]) == session
    assert store.find_session(token_hash("three")) == session


# ---- the signing key and stream tickets -------------------------------------------


def test_the_first_signing_key_offered_is_kept_and_every_later_caller_gets_it(store):
    key, where = store.signing_key("k" * 64)
    assert key == "k" * 64
    assert store.signing_key("another candidate, never kept" * 2) == (key, where)


def test_concurrent_first_offers_of_a_signing_key_agree_on_one(store):
    barrier = threading.Barrier(8)
    keys = []

    def offer(number):
        barrier.wait()
        keys.append(store.signing_key(f"candidate-{number}-" + "x" * 48)[0])

    threads = [threading.Thread(target=offer, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1


def test_a_ticket_is_used_once_and_others_are_not_affected(store):
    now = 1_700_000_000.0
    assert store.use_ticket("t1", now + 60, now) is True
    assert store.use_ticket("t1", now + 60, now + 1) is False
    assert store.use_ticket("t2", now + 60, now + 1) is True
    # Long after expiry the record may be pruned; until well past expiry it is not.
    assert store.use_ticket("t3", now + 61, now + 200) is True
    assert store.use_ticket("t1", now + 60, now + 200) is False


def test_of_concurrent_uses_of_one_ticket_exactly_one_succeeds(store):
    now = 1_700_000_000.0
    for round_number in range(20):
        barrier = threading.Barrier(4)
        results = []

        def use():
            barrier.wait()
            results.append(store.use_ticket(f"ticket-{round_number}", now + 60, now))

        racers = [threading.Thread(target=use) for _ in range(4)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert sorted(results) == [False, False, False, True], f"round {round_number}"


# ---- lifecycle ----------------------------------------------------------------


def test_a_closed_store_is_not_writable_and_refuses_writes(store):
    store.close()
    assert store.writable is False
    with pytest.raises(StoreUnavailable):
        store.add_message(make_message("m1", "alice"))
    with pytest.raises(StoreUnavailable):
        store.create_user(make_user("u1", "alice"))
    store.close()  # closing twice is harmless


# ---- people ---------------------------------------------------------------------


def test_users_by_prefix_are_case_insensitive_sorted_by_username_and_paged(store):
    for number, name in enumerate(["bob", "Alice", "alfred", "ALBERT", "carol", "al_x", "al%y"]):
        store.create_user(make_user(f"u{number}", name))
    found, more = store.users_by_prefix("AL")
    assert [user["username"] for user in found] == ["al%y", "al_x", "ALBERT", "alfred", "Alice"]
    assert more is False
    first, more = store.users_by_prefix("al", limit=2)
    assert [user["username"] for user in first] == ["al%y", "al_x"] and more is True
    rest, more = store.users_by_prefix("al", limit=2, after="AL_X")
    assert [user["username"] for user in rest] == ["ALBERT", "alfred"] and more is True
    # The wildcards of LIKE are plain characters in a prefix.
    assert [user["username"] for user in store.users_by_prefix("al_")[0]] == ["al_x"]
    assert [user["username"] for user in store.users_by_prefix("al%")[0]] == ["al%y"]
    assert store.users_by_prefix("zed") == ([], False)


def test_touch_user_records_last_seen_and_ignores_unknown_users(store):
    store.create_user(make_user("u1", "alice"))
    touched = store.touch_user("u1", 1_700_000_123.5)
    assert touched["last_seen"] == 1_700_000_123.5 and touched["username"] == "alice"
    assert store.get_user("u1")["last_seen"] == 1_700_000_123.5
    assert store.touch_user("nobody", 1.0) is None


def test_import_legacy_takes_users_messages_and_sessions(store):
    users = [make_user("u1", "alice"), make_user("u2", "bob")]
    messages = [make_message("m1", "u1"), make_message("m2", "u2", recipient_id="u1")]
    store.import_legacy((users, messages, [make_session("s1", "u1", "legacy")]))
    assert store.find_user("BOB")["id"] == "u2"
    assert ids(store.visible_messages("u1")) == ["m1", "m2"]
    assert store.get_message("m2")["seq"] > store.get_message("m1")["seq"]
    assert store.find_session(token_hash("legacy"))["id"] == "s1"


# ---- chats --------------------------------------------------------------------


def member(user_id, role="member", **extra):
    return dict(
        {
            "user_id": user_id,
            "role": role,
            "joined_at": "2024-05-01T12:00:00Z",
            "muted": False,
            "read_seq": 0,
            "delivered_seq": 0,
        },
        **extra,
    )


def make_chat(chat_id, kind="group", name=None):
    return {
        "id": chat_id,
        "type": kind,
        "name": name or chat_id,
        "description": None,
        "created_by": "alice",
        "created_at": "2024-05-01T12:00:00Z",
    }


def group(store, chat_id, *user_ids):
    """Create a group of ``user_ids`` (the first one owns it)."""
    return store.create_chat(
        make_chat(chat_id), [member(uid, "owner" if i == 0 else "member") for i, uid in enumerate(user_ids)]
    )


def say(store, chat_id, message_id, user_id="alice", content=None, **extra):
    """Add a chat message and return it."""
    return store.add_chat_message(
        dict(
            {
                "id": message_id,
                "chat_id": chat_id,
                "user_id": user_id,
                "content": content or f"text of {message_id}",
                "created_at": "2024-05-01T12:00:00Z",
            },
            **extra,
        )
    )


def test_a_created_chat_has_a_seq_and_its_members_in_the_order_given(store):
    chat = group(store, "c1", "alice", "bob", "carol")
    assert chat["seq"] >= 1 and chat["name"] == "c1"
    assert store.get_chat("c1") == chat
    assert [m["user_id"] for m in store.members("c1")] == ["alice", "bob", "carol"]
    assert store.get_member("c1", "bob") == dict(member("bob"), chat_id="c1")
    assert store.get_member("c1", "dave") is None
    assert store.get_chat("nope") is None and store.members("nope") == []


def test_chats_messages_and_notifications_share_one_rising_seq(store):
    first = post(store, "m1")
    chat = group(store, "c1", "alice")
    said = say(store, "c1", "cm1")
    notes, _, _ = store.add_notifications([{"id": "n1", "user_id": "bob", "kind": "mention", "read": False}])
    second = post(store, "m2")
    assert first < chat["seq"] < said["seq"] < notes[0]["seq"] < second
    assert store.latest_seq() == second


def test_latest_seq_is_zero_for_a_new_store_and_counts_deleted_messages(store):
    assert store.latest_seq() == 0
    seq = post(store, "m1")
    store.delete_message("m1")
    assert store.latest_seq() == seq


def test_direct_chat_is_created_once_and_found_again_from_either_side(store):
    chat, created = store.direct_chat(make_chat("d1", "direct"), member("bob"), member("alice"))
    assert created is True and chat["pair"] == ["alice", "bob"] and chat["seq"] >= 1
    again, created = store.direct_chat(make_chat("d2", "direct"), member("alice"), member("bob"))
    assert created is False and again == chat
    assert store.get_chat("d2") is None
    assert [m["user_id"] for m in store.members("d1")] == ["bob", "alice"]
    other, created = store.direct_chat(make_chat("d3", "direct"), member("alice"), member("carol"))
    assert created is True and other["id"] == "d3"
    assert store.chat_ids("alice") == {"d1", "d3"}


def test_concurrent_direct_chats_for_one_pair_make_one_chat(store):
    for round_number in range(10):
        threads = 6
        barrier = threading.Barrier(threads)
        results = [None] * threads

        def open_chat(slot):
            barrier.wait()
            results[slot] = store.direct_chat(
                make_chat(f"r{round_number}-{slot}", "direct"), member(f"a{round_number}"), member(f"b{round_number}")
            )

        racers = [threading.Thread(target=open_chat, args=(slot,)) for slot in range(threads)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert sum(created for _, created in results) == 1, results
        assert len({chat["id"] for chat, _ in results}) == 1
        assert store.chat_ids(f"a{round_number}") == {results[0][0]["id"]}
        assert len(store.members(results[0][0]["id"])) == 2


def test_user_chats_are_newest_activity_first_and_page_by_chat_id(store):
    for chat_id in ("c1", "c2", "c3", "c4"):
        group(store, chat_id, "alice", "bob")
    group(store, "other", "carol")
    say(store, "c2", "m1")
    chats, more = store.user_chats("alice")
    assert [chat["id"] for chat in chats] == ["c2", "c4", "c3", "c1"] and more is False
    say(store, "c1", "m2")
    first, more = store.user_chats("bob", limit=2)
    assert [chat["id"] for chat in first] == ["c1", "c2"] and more is True
    rest, more = store.user_chats("bob", limit=2, before="c2")
    assert [chat["id"] for chat in rest] == ["c4", "c3"] and more is False
    assert store.user_chats("bob", limit=2, before="unknown")[0] == first
    assert store.user_chats("dave") == ([], False)


def test_delete_chat_removes_its_members_messages_and_search_postings(store):
    group(store, "c1", "alice", "bob")
    group(store, "c2", "alice")
    say(store, "c1", "m1", content="secret plans")
    say(store, "c2", "m2", content="secret recipes")
    assert store.delete_chat("c1") is True
    assert store.get_chat("c1") is None and store.members("c1") == []
    assert store.get_member("c1", "alice") is None and store.get_chat_message("m1") is None
    assert store.chat_ids("bob") == set() and store.chat_ids("alice") == {"c2"}
    assert [m["id"] for m in store.search(["c1", "c2"], ["secret"])[0]] == ["m2"]
    assert store.chat_history("c1") == Page([], False, False)
    assert store.delete_chat("c1") is False


# ---- members ------------------------------------------------------------------


def test_add_member_appends_and_a_second_add_conflicts(store):
    group(store, "c1", "alice")
    added = store.add_member(dict(member("bob"), chat_id="c1"))
    assert added["user_id"] == "bob"
    with pytest.raises(Conflict):
        store.add_member(dict(member("bob", "admin"), chat_id="c1"))
    assert store.get_member("c1", "bob")["role"] == "member"
    assert [m["user_id"] for m in store.members("c1")] == ["alice", "bob"]
    assert store.chat_ids("bob") == {"c1"}


def test_concurrent_adds_of_one_member_have_exactly_one_winner(store):
    group(store, "c1", "alice")
    for round_number in range(10):
        barrier = threading.Barrier(2)
        outcomes = [None, None]

        def add(slot):
            barrier.wait()
            try:
                store.add_member(dict(member(f"user{round_number}"), chat_id="c1"))
                outcomes[slot] = "added"
            except Conflict:
                outcomes[slot] = "conflict"

        racers = [threading.Thread(target=add, args=(slot,)) for slot in (0, 1)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert sorted(outcomes) == ["added", "conflict"]
    assert len(store.members("c1")) == 11


def test_update_members_changes_several_at_once_and_keeps_the_join_order(store):
    group(store, "c1", "alice", "bob", "carol")
    records = store.update_members({("c1", "alice"): {"role": "admin"}, ("c1", "bob"): {"role": "owner"}})
    assert [(r["user_id"], r["role"]) for r in records] == [("alice", "admin"), ("bob", "owner")]
    assert store.get_member("c1", "bob")["role"] == "owner"
    assert store.get_member("c1", "bob")["joined_at"] == "2024-05-01T12:00:00Z"
    assert [m["user_id"] for m in store.members("c1")] == ["alice", "bob", "carol"]


def test_remove_member_reports_whether_it_existed_and_a_rejoin_goes_last(store):
    group(store, "c1", "alice", "bob", "carol")
    assert store.remove_member("c1", "alice") is True
    assert store.remove_member("c1", "alice") is False
    assert store.get_member("c1", "alice") is None and store.chat_ids("alice") == set()
    store.add_member(dict(member("alice"), chat_id="c1"))
    assert [m["user_id"] for m in store.members("c1")] == ["bob", "carol", "alice"]


# ---- messages in chats --------------------------------------------------------


def test_a_chat_message_moves_its_authors_read_and_delivered_pointers(store):
    group(store, "c1", "alice", "bob")
    message = say(store, "c1", "m1", "bob")
    assert store.get_chat_message("m1") == message and message["content"] == "text of m1"
    author = store.get_member("c1", "bob")
    assert author["read_seq"] == message["seq"] and author["delivered_seq"] == message["seq"]
    assert store.get_member("c1", "alice")["read_seq"] == 0
    assert store.get_chat_message("m2") is None


def test_update_chat_message_edits_and_tombstones(store):
    group(store, "c1", "alice")
    said = say(store, "c1", "m1")
    edited = store.update_chat_message("m1", {"content": "new words", "edited_at": "later"})
    assert edited["content"] == "new words" and edited["seq"] == said["seq"]
    assert store.get_chat_message("m1") == edited
    gone = store.update_chat_message("m1", {"deleted": True, "content": None})
    assert gone["deleted"] is True and store.get_chat_message("m1") == gone
    assert ids(store.chat_history("c1")) == ["m1"]


def test_chat_history_pages_like_visible_messages(store):
    group(store, "c1", "alice")
    group(store, "c2", "alice")
    seqs_of = []
    for i in range(10):
        seqs_of.append(say(store, "c1", f"m{i}")["seq"])
        say(store, "c2", f"other{i}")
    newest = store.chat_history("c1", limit=4)
    assert ids(newest) == ["m6", "m7", "m8", "m9"] and (newest.older, newest.newer) == (True, False)
    middle = store.chat_history("c1", before=seqs_of[6], limit=3)
    assert ids(middle) == ["m3", "m4", "m5"] and (middle.older, middle.newer) == (True, True)
    oldest = store.chat_history("c1", after=0, limit=2)
    assert ids(oldest) == ["m0", "m1"] and (oldest.older, oldest.newer) == (False, True)
    assert store.chat_history("c1", after=seqs_of[9]) == Page([], True, False)
    assert store.chat_history("c1", before=seqs_of[0]) == Page([], False, True)
    assert ids(store.chat_history("c1", limit=1)) == ["m9"]
    assert store.chat_history("empty") == Page([], False, False)


def test_unread_count_is_what_lies_after_the_read_pointer(store):
    group(store, "c1", "alice", "bob")
    said = [say(store, "c1", f"m{i}", "alice") for i in range(5)]
    assert store.unread_count("c1", "bob") == 5
    assert store.unread_count("c1", "alice") == 0
    store.update_members({("c1", "bob"): {"read_seq": said[2]["seq"]}})
    assert store.unread_count("c1", "bob") == 2
    say(store, "c1", "m5", "bob")
    assert store.unread_count("c1", "bob") == 0
    assert store.unread_count("c1", "alice") == 1
    assert store.unread_count("nope", "bob") == 0


def test_chat_messages_after_a_seq_come_in_seq_order_without_other_kinds(store):
    group(store, "c1", "alice")
    group(store, "c2", "alice")
    start = store.latest_seq()
    say(store, "c1", "m1")
    post(store, "public")
    say(store, "c2", "m2")
    store.add_notifications([{"id": "n1", "user_id": "alice", "kind": "mention", "read": False}])
    third = say(store, "c1", "m3")
    assert [m["id"] for m in store.chat_messages_after(start)] == ["m1", "m2", "m3"]
    assert [m["id"] for m in store.chat_messages_after(start, limit=2)] == ["m1", "m2"]
    assert store.chat_messages_after(third["seq"]) == []


# ---- search -------------------------------------------------------------------


def found(result):
    messages, more = result
    return [message["id"] for message in messages], more


def test_search_finds_messages_holding_every_term_newest_first_in_the_scopes_given(store):
    # Terms come tokenised by search_terms (case-folded); the text they match is any case.
    group(store, "c1", "alice")
    group(store, "c2", "alice")
    say(store, "c1", "m1", content="Lunch at noon?")
    say(store, "c2", "m2", content="lunch is at one")
    say(store, "c1", "m3", content="no LUNCH today")
    say(store, "c1", "m4", content="dinner at noon")
    assert found(store.search(["c1", "c2"], ["lunch"])) == (["m3", "m2", "m1"], False)
    assert found(store.search(["c1"], ["lunch"])) == (["m3", "m1"], False)
    assert found(store.search(["c1", "c2"], ["noon", "at"])) == (["m4", "m1"], False)
    assert found(store.search(["c1", "c2"], ["lunch", "dinner"])) == ([], False)
    assert found(store.search(["c3"], ["lunch"])) == ([], False)
    assert store.search(["c1"], []) == ([], False)


def test_search_pages_with_before_and_says_when_there_is_more(store):
    group(store, "c1", "alice")
    said = [say(store, "c1", f"m{i}", content=f"word number {i}") for i in range(5)]
    assert found(store.search(["c1"], ["word"], limit=2)) == (["m4", "m3"], True)
    assert found(store.search(["c1"], ["word"], before=said[3]["seq"], limit=2)) == (["m2", "m1"], True)
    assert found(store.search(["c1"], ["word"], before=said[1]["seq"], limit=2)) == (["m0"], False)


def test_search_follows_edits_and_skips_deleted_and_encrypted_messages(store):
    group(store, "c1", "alice")
    say(store, "c1", "m1", content="apples and pears")
    say(store, "c1", "m2", content="apples again")
    say(store, "c1", "m3", content="apples sealed", encrypted=True)
    store.update_chat_message("m1", {"content": "oranges and pears"})
    store.update_chat_message("m2", {"deleted": True})
    assert found(store.search(["c1"], ["apples"])) == ([], False)
    assert found(store.search(["c1"], ["oranges"])) == (["m1"], False)
    assert found(store.search(["c1"], ["pears"])) == (["m1"], False)


def test_search_covers_0xc_messages_by_public_and_user_scopes(store):
    store.add_message(make_message("pub", "alice", content="meeting tomorrow"))
    store.add_message(make_message("priv", "alice", recipient_id="bob", content="meeting tonight"))
    store.add_message(make_message("other", "carol", recipient_id="dave", content="meeting never"))
    assert found(store.search(["public", "user:bob"], ["meeting"])) == (["priv", "pub"], False)
    assert found(store.search(["public", "user:alice"], ["meeting"])) == (["priv", "pub"], False)
    assert found(store.search(["user:dave"], ["meeting"])) == (["other"], False)
    store.delete_message("priv")
    assert found(store.search(["public", "user:bob"], ["meeting"])) == (["pub"], False)


# ---- attachments and blobs ------------------------------------------------------


def chunks_of(data, size=7):
    view = {"offset": 0}

    def read(n):
        n = min(n, size)
        chunk = data[view["offset"] : view["offset"] + n]
        view["offset"] += len(chunk)
        return chunk

    return read


def attachment(attachment_id, digest, chat_id="c1", thumbnail=None):
    record = {
        "id": attachment_id,
        "chat_id": chat_id,
        "uploader_id": "alice",
        "message_id": None,
        "name": "file.bin",
        "size": 3,
        "sha256": digest,
        "created_at": "2024-05-01T12:00:00Z",
    }
    if thumbnail:
        record["thumbnail_sha256"] = thumbnail
    return record


def test_blobs_are_content_addressed_and_read_back(store):
    data = b"hello blob " * 100
    digest, size, head = store.save_blob(chunks_of(data), limit=10_000)
    assert digest == hashlib.sha256(data).hexdigest() and size == len(data) and head == data[:4096]
    with store.open_blob(digest) as f:
        assert f.read() == data
    assert store.save_blob_bytes(b"thumb") == hashlib.sha256(b"thumb").hexdigest()
    assert store.open_blob(hashlib.sha256(b"never").hexdigest()) is None


def test_a_blob_over_the_limit_is_refused(store):
    from store import TooLarge

    with pytest.raises(TooLarge):
        store.save_blob(chunks_of(b"x" * 100), limit=50)


def test_attachments_are_recorded_claimed_and_deleted(store):
    group(store, "c1", "alice")  # attachments belong to a chat that exists
    digest = store.save_blob_bytes(b"abc")
    record = store.add_attachment(attachment("a1", digest))
    assert store.get_attachment("a1") == record
    say(store, "c1", "m1", attachment_id="a1")
    assert store.get_attachment("a1") == dict(record, message_id="m1")
    assert store.delete_attachment("a1", unsent_only=True) is False  # a message claimed it
    assert store.delete_attachment("a1") is True
    assert store.get_attachment("a1") is None
    assert store.delete_attachment("a1") is False


def test_blob_bytes_go_only_when_no_attachment_refers_to_them(store):
    group(store, "c1", "alice")  # attachments belong to a chat that exists
    shared = store.save_blob_bytes(b"shared bytes")
    thumb = store.save_blob_bytes(b"a thumbnail")
    store.add_attachment(attachment("a1", shared, thumbnail=thumb))
    store.add_attachment(attachment("a2", shared))
    store.add_attachment(attachment("a3", thumb))
    store.delete_attachment("a1")
    assert store.open_blob(shared) is not None and store.open_blob(thumb) is not None
    store.delete_attachment("a2")
    assert store.open_blob(shared) is None
    assert store.open_blob(thumb) is not None
    store.delete_attachment("a3")
    assert store.open_blob(thumb) is None


def test_deleting_a_chat_deletes_its_attachments_and_their_unshared_bytes(store):
    group(store, "c1", "alice")
    group(store, "c2", "alice")
    own = store.save_blob_bytes(b"only in c1")
    shared = store.save_blob_bytes(b"in both")
    store.add_attachment(attachment("a1", own))
    store.add_attachment(attachment("a2", shared))
    store.add_attachment(attachment("a3", shared, chat_id="c2"))
    store.delete_chat("c1")
    assert store.get_attachment("a1") is None and store.get_attachment("a2") is None
    assert store.open_blob(own) is None
    with store.open_blob(shared) as f:
        assert f.read() == b"in both"


def sized(attachment_id, digest, size, uploader="alice", **extra):
    return dict(attachment(attachment_id, digest, **extra), uploader_id=uploader, size=size)


def test_an_attachment_of_a_chat_deleted_meanwhile_is_refused_and_nothing_is_written(store):
    from store import Missing

    digest = store.save_blob_bytes(b"abc")
    with pytest.raises(Missing):
        store.add_attachment(attachment("a1", digest, chat_id="gone"))
    assert store.get_attachment("a1") is None


def test_attachment_usage_sums_sizes_per_uploader_without_thumbnails_and_frees_on_delete(store):
    group(store, "c1", "alice")
    data, thumb = store.save_blob_bytes(b"some bytes"), store.save_blob_bytes(b"a thumbnail")
    assert store.attachment_usage("alice") == 0
    store.add_attachment(sized("a1", data, 1000, thumbnail=thumb))
    store.add_attachment(sized("a2", data, 500))  # the same bytes again still count: each is its uploader's
    store.add_attachment(sized("b1", data, 70, uploader="bob"))
    assert (store.attachment_usage("alice"), store.attachment_usage("bob")) == (1500, 70)
    say(store, "c1", "m1", attachment_id="a1")  # claimed by a message: still counted
    assert store.attachment_usage("alice") == 1500
    store.delete_attachment("a1")
    assert store.attachment_usage("alice") == 500
    store.delete_chat("c1")
    assert (store.attachment_usage("alice"), store.attachment_usage("bob")) == (0, 0)


def test_an_attachment_past_the_quota_is_refused_and_nothing_is_written(store):
    group(store, "c1", "alice")  # attachments belong to a chat that exists
    from store import QuotaExceeded

    store.create_user(make_user("alice", "alice"))
    digest = store.save_blob_bytes(b"abc")
    store.add_attachment(sized("a1", digest, 600), quota=1000)
    with pytest.raises(QuotaExceeded) as refused:
        store.add_attachment(sized("a2", digest, 401), quota=1000)
    assert (refused.value.used, refused.value.quota) == (600, 1000)
    assert store.get_attachment("a2") is None and store.attachment_usage("alice") == 600
    store.add_attachment(sized("a3", digest, 400), quota=1000)  # exactly full is allowed
    store.add_attachment(sized("a4", digest, 10**9))  # no quota given: none checked
    assert store.attachment_usage("alice") == 1000 + 10**9


def test_concurrent_attachments_never_take_their_uploader_past_the_quota(store):
    group(store, "c1", "alice")  # attachments belong to a chat that exists
    from store import QuotaExceeded

    store.create_user(make_user("alice", "alice"))
    digest = store.save_blob_bytes(b"abc")
    threads, outcomes = 8, []
    barrier = threading.Barrier(threads)

    def add(slot):
        barrier.wait()
        try:
            store.add_attachment(sized(f"a{slot}", digest, 3000), quota=10_000)
            outcomes.append("stored")
        except QuotaExceeded:
            outcomes.append("refused")

    racers = [threading.Thread(target=add, args=(slot,)) for slot in range(threads)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["stored"] * 3
    assert store.attachment_usage("alice") == 9000


def test_a_discarded_blob_goes_unless_an_attachment_refers_to_it(store):
    group(store, "c1", "alice")  # attachments belong to a chat that exists
    kept = store.save_blob_bytes(b"kept")
    store.add_attachment(attachment("a1", kept))
    assert store.save_blob_bytes(b"kept") == kept  # saved again for an upload that is then refused
    store.discard_blob(kept)
    with store.open_blob(kept) as f:
        assert f.read() == b"kept"
    dropped = store.save_blob_bytes(b"dropped")
    store.discard_blob(dropped)
    assert store.open_blob(dropped) is None


# ---- public keys and one-time codes ---------------------------------------------


def make_key(key_id, user_id, created_at):
    return {
        "id": key_id,
        "user_id": user_id,
        "device_id": "d1",
        "algorithm": "x25519",
        "public_key": "AAAA",
        "created_at": created_at,
        "revoked_at": None,
    }


def test_keys_are_listed_per_user_oldest_first_revoked_ones_too(store):
    store.add_key(make_key("k2", "alice", "2024-05-02T00:00:00Z"))
    store.add_key(make_key("k1", "alice", "2024-05-01T00:00:00Z"))
    store.add_key(make_key("k3", "alice", "2024-05-03T00:00:00Z"))
    store.add_key(make_key("kb", "bob", "2024-05-01T00:00:00Z"))
    revoked = store.update_key("k2", {"revoked_at": "2024-05-03T00:00:00Z"})
    assert revoked["revoked_at"] == "2024-05-03T00:00:00Z" and store.get_key("k2") == revoked
    assert [key["id"] for key in store.user_keys("alice")] == ["k1", "k2", "k3"]
    assert [key["id"] for key in store.user_keys("bob")] == ["kb"]
    assert store.user_keys("carol") == [] and store.get_key("nope") is None


def test_codes_are_stored_replaced_and_deleted(store):
    code = {"id": "verify:u1", "user_id": "u1", "purpose": "verify", "digest": "d1", "attempts": 0}
    assert store.put_code(code) == code and store.get_code("verify:u1") == code
    store.put_code(dict(code, attempts=1))
    assert store.get_code("verify:u1")["attempts"] == 1
    assert store.delete_code("verify:u1") is True
    assert store.get_code("verify:u1") is None
    assert store.delete_code("verify:u1") is False


def all_at_once(count, work):
    """Run ``work(slot)`` in ``count`` threads released together; their results by slot."""
    barrier = threading.Barrier(count)
    results = [None] * count

    def run(slot):
        barrier.wait()
        results[slot] = work(slot)

    racers = [threading.Thread(target=run, args=(slot,)) for slot in range(count)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    return results


def make_code(code_id="verify:u1", code_hash="h1", expires_at=1000.0):
    return {
        "id": code_id,
        "user_id": "u1",
        "purpose": "verify",
        "email": "a@example.com",
        "code_hash": code_hash,
        "attempts": 0,
        "expires_at": expires_at,
    }


def test_each_guess_spends_an_attempt_until_the_code_is_gone(store):
    store.put_code(make_code())
    assert [store.spend_code("verify:u1", 10.0, 3)["attempts"] for _ in range(3)] == [1, 2, 3]
    assert store.get_code("verify:u1")["attempts"] == 3
    assert store.spend_code("verify:u1", 10.0, 3) is None
    assert store.get_code("verify:u1") is None
    assert store.spend_code("verify:u1", 10.0, 3) is None


def test_an_expired_code_is_gone_at_the_first_guess(store):
    store.put_code(make_code(expires_at=100.0))
    assert store.spend_code("verify:u1", 100.5, 5) is None
    assert store.get_code("verify:u1") is None


def test_a_code_deleted_by_its_hash_spares_a_newer_code(store):
    store.put_code(make_code(code_hash="old"))
    store.put_code(make_code(code_hash="new"))
    assert store.delete_code("verify:u1", "old") is False
    assert store.get_code("verify:u1")["code_hash"] == "new"
    assert store.delete_code("verify:u1", "new") is True
    assert store.get_code("verify:u1") is None


def test_concurrent_guesses_at_one_code_spend_exactly_its_attempts(store):
    for round_number in range(10):
        code_id = f"verify:r{round_number}"
        store.put_code(make_code(code_id))
        spent = all_at_once(8, lambda slot: store.spend_code(code_id, 10.0, 5))
        assert sorted(code["attempts"] for code in spent if code is not None) == [1, 2, 3, 4, 5], spent
        assert store.spend_code(code_id, 10.0, 5) is None


def test_concurrent_redemptions_of_one_code_have_exactly_one_winner(store):
    for round_number in range(20):
        code_id = f"reset:r{round_number}"
        store.put_code(make_code(code_id))
        assert sorted(all_at_once(2, lambda slot: store.delete_code(code_id, "h1"))) == [False, True]


# ---- attempts counted in a window -------------------------------------------------------


def test_attempts_are_counted_per_key_in_a_window_that_starts_again_once_it_ends(store):
    assert store.count_attempt("login:a", 100.0, 60) == (1, 160.0)
    assert store.count_attempt("login:a", 130.0, 60) == (2, 160.0)
    assert store.count_attempt("login:b", 130.0, 60) == (1, 190.0)
    assert store.count_attempt("login:a", 160.0, 60) == (1, 220.0)


def test_an_attempt_taken_back_or_cleared_no_longer_counts(store):
    for _ in range(3):
        store.count_attempt("login:a", 100.0, 60)
    store.take_back_attempt("login:a")
    assert store.count_attempt("login:a", 100.0, 60) == (3, 160.0)
    store.clear_attempts("login:a")
    assert store.count_attempt("login:a", 110.0, 60) == (1, 170.0)
    store.take_back_attempt("login:unknown")
    store.clear_attempts("login:unknown")
    assert store.count_attempt("login:unknown", 110.0, 60) == (1, 170.0)


def test_concurrent_attempts_are_each_counted_once(store):
    counted = all_at_once(8, lambda slot: [store.count_attempt("login:a", 100.0, 60)[0] for _ in range(10)])
    assert sorted(count for counts in counted for count in counts) == list(range(1, 81))


# ---- notifications, devices and the push queue --------------------------------------


def note(note_id, user_id="bob", kind="mention", read=False):
    return {
        "id": note_id,
        "user_id": user_id,
        "kind": kind,
        "chat_id": "c1",
        "read": read,
        "created_at": "2024-05-01T12:00:00Z",
    }


def job(job_id, due, created_at="2024-05-01T12:00:00Z"):
    return {
        "id": job_id,
        "url": "https://push.example/hook",
        "payload": {"deliveries": []},
        "attempts": 0,
        "last_error": None,
        "next_attempt_at": due,
        "created_at": created_at,
    }


def test_add_notifications_assigns_seqs_and_stores_the_mark_in_the_same_write(store):
    assert store.add_notifications([]) == ([], [], [])
    assert store.get_meta("notified_seq") is None
    notes, accepted, refused = store.add_notifications([note("n1"), note("n2", "carol")], mark=41)
    assert [n["id"] for n in notes] == ["n1", "n2"] and notes[0]["seq"] < notes[1]["seq"]
    assert accepted == [] and refused == []
    assert store.get_notification("n1") == notes[0]
    assert store.get_meta("notified_seq") == 41
    store.add_notifications([], mark=42)
    assert store.get_meta("notified_seq") == 42
    assert store.get_meta("unknown") is None and store.get_notification("nope") is None


def test_a_mark_expected_elsewhere_refuses_the_whole_write(store):
    store.add_notifications([], mark=10, expected=None)
    with pytest.raises(Conflict):
        store.add_notifications([note("n1")], [job("j1", 1.0)], max_pending=5, mark=20, expected=None)
    with pytest.raises(Conflict):
        store.add_notifications([note("n2")], mark=20, expected=15)
    assert store.get_meta("notified_seq") == 10
    assert store.get_notification("n1") is None and store.get_notification("n2") is None
    assert store.due_push_jobs(100.0) == []
    notes, _, _ = store.add_notifications([note("n3")], mark=20, expected=10)
    assert store.get_meta("notified_seq") == 20 and store.get_notification("n3") == notes[0]


def test_push_jobs_are_queued_up_to_max_pending_and_the_rest_are_dead_letters(store):
    _, accepted, refused = store.add_notifications(
        [note("n1")], [job("j1", 10.0), job("j2", 11.0), job("j3", 12.0)], max_pending=2
    )
    assert [(j["id"], j["status"]) for j in accepted] == [("j1", "pending"), ("j2", "pending")]
    assert [(j["id"], j["status"]) for j in refused] == [("j3", "dead")]
    assert refused[0]["last_error"] == "the push queue is full"
    _, accepted, refused = store.add_notifications([], [job("j4", 13.0)], max_pending=2)
    assert accepted == [] and [j["id"] for j in refused] == ["j4"]
    _, accepted, _ = store.add_notifications([], [job("j5", 14.0)], max_pending=3)
    assert [j["id"] for j in accepted] == ["j5"]


def test_user_notifications_are_newest_first_with_filters_and_paging(store):
    notes, _, _ = store.add_notifications(
        [note("n1"), note("n2", kind="direct_message"), note("n3"), note("n4", read=True), note("x", "carol")]
    )
    seq_of = {n["id"]: n["seq"] for n in notes}
    assert found(store.user_notifications("bob")) == (["n4", "n3", "n2", "n1"], False)
    assert found(store.user_notifications("bob", limit=2)) == (["n4", "n3"], True)
    assert found(store.user_notifications("bob", before=seq_of["n3"], limit=2)) == (["n2", "n1"], False)
    assert found(store.user_notifications("bob", kind="mention")) == (["n4", "n3", "n1"], False)
    assert found(store.user_notifications("bob", unread_only=True)) == (["n3", "n2", "n1"], False)
    assert found(store.user_notifications("bob", kind="mention", unread_only=True, limit=1)) == (["n3"], True)
    assert store.user_notifications("dave") == ([], False)


def test_marking_notifications_read_counts_only_unread_ones_of_that_user(store):
    store.add_notifications([note("n1"), note("n2"), note("n3"), note("x", "carol")])
    assert store.unread_notification_count("bob") == 3
    assert store.mark_notifications_read("bob", ["n1", "x", "unknown"]) == 1
    assert store.get_notification("n1")["read"] is True
    assert store.get_notification("x")["read"] is False
    assert store.unread_notification_count("bob") == 2
    assert store.mark_notifications_read("bob", ["n1"]) == 0
    assert store.mark_notifications_read("bob") == 2
    assert store.unread_notification_count("bob") == 0
    assert store.user_notifications("bob", unread_only=True) == ([], False)
    assert store.unread_notification_count("carol") == 1


def about(note_id, message_id, preview, user_id="bob"):
    return dict(note(note_id, user_id), message_id=message_id, preview=preview)


def delivering(job_id, due, *notes):
    return dict(job(job_id, due), payload={"deliveries": [{"user_id": n["user_id"], "notification": n} for n in notes]})


def test_scrubbing_a_message_takes_its_previews_out_of_notifications_and_push_jobs_alone(store):
    m1, m1_carol = about("n1", "m1", "the secret"), about("n2", "m1", "the secret", "carol")
    m2 = about("n3", "m2", "kept")
    store.add_notifications(
        [m1, m1_carol, m2], [delivering("j1", 10.0, m1, m2), delivering("j2", 11.0, m1_carol)], max_pending=1
    )  # j2 is a dead letter
    store.scrub_message("m1", lambda type, data: None)
    assert [store.get_notification(n)["preview"] for n in ("n1", "n2", "n3")] == [None, None, "kept"]
    assert store.get_notification("n1")["message_id"] == "m1"  # the notification stays, without the text
    [queued], [dead] = store.due_push_jobs(100.0), store.dead_push_jobs()
    assert [d["notification"]["preview"] for d in queued["payload"]["deliveries"]] == [None, "kept"]
    assert dead["payload"]["deliveries"][0]["notification"]["preview"] is None
    assert dead["status"] == "dead" and dead["last_error"] == "the push queue is full"
    store.scrub_message("m2", lambda type, data: None)
    assert store.due_push_jobs(100.0)[0]["payload"]["deliveries"][1]["notification"]["preview"] is None
    store.scrub_message("unknown", lambda type, data: None)  # nothing refers to it: nothing happens


def test_scrubbing_a_message_rewrites_the_event_log_rows_about_it(store):
    log = store.event_log()
    created = log.append("chat.message.created", {"id": "m1", "content": "the secret"}, None, "c1", 1.0)
    note_event = log.append(
        "notification.created", {"id": "n1", "message_id": "m1", "preview": "the secret"}, ["bob"], None, 2.0
    )
    other = log.append("chat.message.created", {"id": "m2", "content": "kept"}, None, "c1", 3.0)
    seen = []

    def retract(type, data):
        seen.append(type)
        return {"id": "m1", "content": None} if type == "chat.message.created" else dict(data, preview=None)

    store.scrub_message("m1", retract)
    rows = {row[0]: row[2] for row in log.after(0, 10)}
    assert sorted(seen) == ["chat.message.created", "notification.created"]
    assert rows[created] == {"id": "m1", "content": None}
    assert rows[note_event] == {"id": "n1", "message_id": "m1", "preview": None}
    assert rows[other] == {"id": "m2", "content": "kept"}


def test_the_event_log_hands_out_rising_ids_and_reads_after_recent_and_prunes(store):
    log = store.event_log()
    assert store.event_log() is log and log.epoch
    assert log.newest() == 0 and log.after(0, 10) == [] and log.recent(10) == []
    ids = [log.append("typing.started", {"n": n}, ["bob", "alice"] if n else None, "c1", float(n)) for n in range(5)]
    assert ids == [1, 2, 3, 4, 5] and log.newest() == 5
    first, second = log.after(0, 2)
    assert tuple(first) == (1, "typing.started", {"n": 0}, None, "c1", 0.0)
    assert tuple(second) == (2, "typing.started", {"n": 1}, ["alice", "bob"], "c1", 1.0)
    assert [row[0] for row in log.after(3, 10)] == [4, 5]
    assert [row[0] for row in log.recent(2)] == [4, 5]
    assert log.prune(2) == 3
    assert [row[0] for row in log.after(0, 10)] == [4, 5] and log.newest() == 5
    assert log.append("typing.stopped", {}, None, None, 6.0) == 6  # ids go on after a prune


def test_following_the_event_log_wakes_on_an_append_and_ends_when_stopped(store):
    log = store.event_log()
    woken, stop = threading.Event(), threading.Event()
    follower = threading.Thread(target=log.follow, args=(woken.set, stop.is_set))
    follower.start()
    try:
        time.sleep(0.3)  # let it start listening
        woken.clear()
        log.append("typing.started", {}, None, None, 1.0)
        assert woken.wait(5)
    finally:
        stop.set()
        follower.join(5)
    assert not follower.is_alive()


def populate(store):
    """A record in every table (a 0xC message and a chat one, a mark, an attachment ...)."""
    store.create_user(make_user("alice", "Alice", "alice@example.com"))
    store.create_user(make_user("bob", "bob"))
    post(store, "m1", "alice")
    post(store, "m2", "alice", "bob")
    post(store, "gone", "bob")
    store.delete_message("gone")  # its seq must not be handed out again
    store.add_session(make_session("s1", "alice", "token"))
    group(store, "c1", "alice", "bob")
    store.direct_chat(make_chat("d1", "direct"), member("alice"), member("bob"))
    store.add_attachment(attachment("a1", store.save_blob_bytes(b"abc")))
    say(store, "c1", "cm1", content="dinner at noon", attachment_id="a1")
    store.add_key(make_key("k1", "alice", "2024-05-01T00:00:00Z"))
    store.put_code({"id": "verify:alice", "code_hash": "h", "expires_at": 10.0, "attempts": 0})
    note = about("n1", "cm1", "dinner", "bob")
    store.add_notifications([note], [delivering("j1", 10.0, note)], max_pending=10, mark=7)
    store.add_device(
        {"id": "d1", "user_id": "bob", "platform": "web", "token": "t", "endpoint": None, "created_at": "t"}
    )


def test_every_record_exported_imports_into_an_empty_store_unchanged(store):
    populate(store)
    counts = store.count_records()
    exported = list(store.export_records(batch=2))
    assert not store.is_empty() and set(counts) == set(TABLES)
    assert {table: sum(1 for t, _ in exported if t == table) for table in TABLES} == counts
    assert [table for table in TABLES if counts[table]] == list(dict.fromkeys(t for t, _ in exported))
    copy = open_store(None)
    try:
        assert copy.is_empty()
        for table in TABLES:
            copy.import_records(table, [record for t, record in exported if t == table])
        copy.finish_import(store.latest_seq() + 1)
        assert list(copy.export_records()) == exported
        assert copy.latest_seq() == store.latest_seq()
        assert copy.find_user("ALICE")["id"] == "alice" and copy.get_meta("notified_seq") == 7
        assert [m["id"] for m in copy.search(["c1"], ["noon"])[0]] == ["cm1"]
        assert copy.direct_chat(make_chat("d2", "direct"), member("bob"), member("alice"))[0]["id"] == "d1"
        assert copy.add_message(make_message("new", "bob"))["seq"] == store.latest_seq() + 1
    finally:
        copy.close()


def test_compacting_keeps_every_record(store):
    store.create_user(make_user("u1", "alice"))
    post(store, "m1", "u1")
    store.compact()
    assert store.get_user("u1")["username"] == "alice" and store.get_message("m1")["content"] == "text of m1"


def test_devices_are_listed_per_user_in_the_order_they_were_added(store):
    for device_id, user_id in (("d2", "alice"), ("d1", "alice"), ("d3", "bob")):
        store.add_device(
            {
                "id": device_id,
                "user_id": user_id,
                "platform": "web",
                "token": f"t-{device_id}",
                "endpoint": None,
                "created_at": "2024-05-01T12:00:00Z",
            }
        )
    assert [d["id"] for d in store.user_devices("alice")] == ["d2", "d1"]
    assert store.get_device("d3")["token"] == "t-d3"
    assert store.delete_device("d2") is True and store.delete_device("d2") is False
    assert store.get_device("d2") is None
    assert [d["id"] for d in store.user_devices("alice")] == ["d1"] and store.user_devices("carol") == []


def test_due_push_jobs_come_earliest_first_and_follow_updates(store):
    assert store.next_push_time() is None and store.due_push_jobs(100.0) == []
    store.add_notifications([], [job("j1", 30.0), job("j2", 10.0), job("j3", 20.0), job("j4", 10.0)], max_pending=10)
    assert store.next_push_time() == 10.0
    assert [j["id"] for j in store.due_push_jobs(20.0)] == ["j2", "j4", "j3"]
    assert [j["id"] for j in store.due_push_jobs(20.0, limit=1)] == ["j2"]
    retried = store.update_push_job("j2", {"attempts": 1, "last_error": "HTTP 500", "next_attempt_at": 40.0})
    assert retried["attempts"] == 1 and retried["status"] == "pending"
    assert [j["id"] for j in store.due_push_jobs(100.0)] == ["j4", "j3", "j1", "j2"]
    assert store.delete_push_job("j4") is True and store.delete_push_job("j4") is False
    assert store.next_push_time() == 20.0


def test_claimed_push_jobs_are_not_due_again_until_their_lease_ends(store):
    store.add_notifications([], [job("j1", 10.0), job("j2", 20.0), job("j3", 50.0)], max_pending=10)
    claimed = store.claim_push_jobs(25.0, lease=10.0)
    assert [(j["id"], j["next_attempt_at"]) for j in claimed] == [("j1", 35.0), ("j2", 35.0)]
    assert store.claim_push_jobs(30.0, lease=10.0) == []
    assert [j["id"] for j in store.due_push_jobs(30.0)] == []
    assert [j["id"] for j in store.claim_push_jobs(36.0, lease=10.0, limit=1)] == ["j1"]
    assert store.next_push_time() == 35.0
    assert [j["id"] for j in store.claim_push_jobs(60.0, lease=10.0)] == ["j2", "j1", "j3"]  # 35, 46, 50


def test_dead_push_jobs_leave_the_queue_and_are_listed_newest_first(store):
    store.add_notifications(
        [],
        [
            job("j1", 1.0, "2024-05-01T10:00:00Z"),
            job("j2", 1.0, "2024-05-01T12:00:00Z"),
            job("j3", 1.0, "2024-05-01T11:00:00Z"),
        ],
        max_pending=10,
    )
    assert store.dead_push_jobs() == []
    store.update_push_job("j1", {"status": "dead", "last_error": "HTTP 404"})
    store.update_push_job("j2", {"status": "dead", "last_error": "HTTP 410"})
    assert [j["id"] for j in store.due_push_jobs(5.0)] == ["j3"]
    assert [j["id"] for j in store.dead_push_jobs()] == ["j2", "j1"]
    assert [j["id"] for j in store.dead_push_jobs(limit=1)] == ["j2"]
    assert store.next_push_time() == 1.0


def test_bytes_uploaded_again_survive_the_deletion_of_an_older_copy(store):
    group(store, "c1", "alice")  # attachments belong to a chat that exists
    payload = b"same bytes twice"
    digest = store.save_blob_bytes(payload)
    store.add_attachment(attachment("a1", digest))
    # A second upload of the same bytes is written before its record exists...
    assert store.save_blob_bytes(payload) == digest
    # ...and the first attachment is deleted in between: the bytes must stay.
    store.delete_attachment("a1")
    store.add_attachment(attachment("a2", digest))
    with store.open_blob(digest) as f:
        assert f.read() == payload
    store.delete_attachment("a2")
    assert store.open_blob(digest) is None


# ---- rules decided inside one atomic write ----------------------------------------------


class Refused(Exception):
    """What rule code raises to refuse a change."""


def refuse(*args):
    raise Refused("no")


def run_together(count, work):
    """Run ``work(slot)`` in ``count`` threads released at once; their results (or exceptions)."""

    def outcome(slot):
        try:
            return work(slot)
        except Exception as exc:  # the outcome is what is checked
            return exc

    return all_at_once(count, outcome)


def test_change_chat_decides_on_the_records_as_they_are_and_writes_what_it_decided(store):
    from store import ChatChange

    group(store, "c1", "alice", "bob")
    seen = []

    def transfer(chat, members, count):
        seen.append((chat["name"], {uid: m and m["role"] for uid, m in members.items()}, count))
        return ChatChange(
            members={
                "bob": dict(members["bob"], role="owner"),
                "alice": dict(members["alice"], role="admin"),
                "carol": member("carol"),
            },
            chat={"name": "renamed"},
        )

    chat, members = store.change_chat("c1", ["alice", "bob", "carol"], transfer)
    assert seen == [("c1", {"alice": "owner", "bob": "member", "carol": None}, 2)]
    assert chat["name"] == "renamed" and store.get_chat("c1") == chat
    assert {uid: m["role"] for uid, m in members.items()} == {"alice": "admin", "bob": "owner", "carol": "member"}
    assert members["carol"]["chat_id"] == "c1" and store.get_member("c1", "carol") == members["carol"]
    assert [m["user_id"] for m in store.members("c1")] == ["alice", "bob", "carol"]
    assert store.chat_ids("carol") == {"c1"}
    assert store.change_chat("c1", ["bob"], lambda chat, members, count: None) == (chat, {"bob": members["bob"]})


def test_change_chat_writes_nothing_when_the_decision_refuses_or_oversteps(store):
    from store import ChatChange

    group(store, "c1", "alice", "bob")
    before = store.members("c1")
    with pytest.raises(Refused):
        store.change_chat("c1", ["alice", "bob"], refuse)
    with pytest.raises(ValueError):  # a decision may only write the members it was shown
        store.change_chat(
            "c1", ["alice"], lambda chat, members, count: ChatChange(members={"alice": None, "bob": None})
        )
    assert store.members("c1") == before and store.get_chat("c1")["name"] == "c1"
    seen = []
    assert store.change_chat("gone", ["alice"], lambda *args: seen.append(args)) == (None, {"alice": None})
    assert seen == [(None, {"alice": None}, 0)]


def test_change_chat_deletes_a_group_left_without_members_or_asked_to(store):
    from store import ChatChange

    group(store, "c1", "alice")
    say(store, "c1", "m1")
    digest = store.save_blob_bytes(b"only in c1")
    store.add_attachment(attachment("a1", digest))
    chat, members = store.change_chat("c1", ["alice"], lambda chat, members, count: ChatChange(members={"alice": None}))
    assert (chat, members) == (None, {"alice": None})
    assert store.get_chat("c1") is None and store.get_chat_message("m1") is None
    assert store.get_attachment("a1") is None and store.open_blob(digest) is None
    assert store.chat_ids("alice") == set()
    group(store, "c2", "alice", "bob")
    assert store.change_chat("c2", ["bob"], lambda *args: ChatChange(delete=True)) == (None, {"bob": None})
    assert store.get_chat("c2") is None and store.members("c2") == []
    group(store, "c3", "alice", "bob")
    store.change_chat("c3", ["bob"], lambda chat, members, count: ChatChange(members={"bob": None}))
    assert [m["user_id"] for m in store.members("c3")] == ["alice"]


def test_concurrent_ownership_transfers_through_change_chat_leave_one_owner(store):
    from store import ChatChange

    for round_number in range(5):
        chat_id = f"c{round_number}"
        group(store, chat_id, "alice", *(f"u{n}" for n in range(6)))

        def transfer(slot, chat_id=chat_id):
            def decide(chat, members, count):
                if members["alice"]["role"] != "owner":
                    raise Refused("alice is no longer the owner")
                return ChatChange(
                    members={
                        f"u{slot}": dict(members[f"u{slot}"], role="owner"),
                        "alice": dict(members["alice"], role="admin"),
                    }
                )

            return store.change_chat(chat_id, ["alice", f"u{slot}"], decide)

        results = run_together(6, transfer)
        assert sum(not isinstance(result, Exception) for result in results) == 1, results
        assert all(isinstance(result, (Refused, tuple)) for result in results), results
        assert len([m for m in store.members(chat_id) if m["role"] == "owner"]) == 1


def test_a_chat_message_claims_its_attachment_once_and_only_from_a_member(store):
    from store import Missing

    group(store, "c1", "alice", "bob")
    group(store, "c2", "alice")
    digest = store.save_blob_bytes(b"abc")
    store.add_attachment(attachment("a1", digest))
    store.add_attachment(attachment("other", digest, chat_id="c2"))
    with pytest.raises(Missing):
        say(store, "c1", "m0", "carol")
    sent = say(store, "c1", "m1", "bob", attachment_id="a1")
    assert store.get_attachment("a1")["message_id"] == "m1" and sent["attachment_id"] == "a1"
    for message_id, attachment_id in (("m2", "a1"), ("m3", "other"), ("m4", "nope")):
        with pytest.raises(Conflict):
            say(store, "c1", message_id, "alice", attachment_id=attachment_id)
    assert ids(store.chat_history("c1")) == ["m1"]
    assert store.get_attachment("other")["message_id"] is None
    assert store.get_member("c1", "alice")["read_seq"] == 0


def test_concurrent_messages_naming_one_attachment_have_one_winner(store):
    group(store, "c1", "alice", "bob")
    digest = store.save_blob_bytes(b"abc")
    for round_number in range(5):
        store.add_attachment(attachment(f"a{round_number}", digest))
        results = run_together(
            4,
            lambda slot: say(
                store, "c1", f"m{round_number}-{slot}", ("alice", "bob")[slot % 2], attachment_id=f"a{round_number}"
            ),
        )
        winners = [result for result in results if not isinstance(result, Exception)]
        assert len(winners) == 1 and all(isinstance(r, Conflict) for r in results if r not in winners), results
        assert store.get_attachment(f"a{round_number}")["message_id"] == winners[0]["id"]
    assert len(store.chat_history("c1").items) == 5


def test_change_chat_message_decides_on_the_fresh_message_and_a_tombstone_takes_its_attachment(store):
    group(store, "c1", "alice", "bob")
    digest = store.save_blob_bytes(b"only here")
    store.add_attachment(attachment("a1", digest))
    say(store, "c1", "m1", "bob", content="look", attachment_id="a1")
    seen = []

    def look(message, member):
        seen.append((message["id"], member and member["user_id"]))
        return None

    assert store.change_chat_message("m1", "alice", look)["id"] == "m1"
    store.change_chat_message("m1", "carol", look)
    assert seen == [("m1", "alice"), ("m1", None)]
    with pytest.raises(Refused):
        store.change_chat_message("m1", "alice", refuse)
    edited = store.change_chat_message("m1", "bob", lambda message, member: {"content": message["content"] + "!"})
    assert edited["content"] == "look!" and store.get_attachment("a1")["message_id"] == "m1"
    gone = store.change_chat_message("m1", "alice", lambda message, member: {"deleted": True, "content": None})
    assert gone["deleted"] is True and store.get_chat_message("m1") == gone
    assert store.get_attachment("a1") is None and store.open_blob(digest) is None
    assert store.change_chat_message("nope", "alice", lambda *args: seen.append(args)) is None
    assert seen[-1] == (None, None)


def test_a_message_that_stops_naming_its_attachment_takes_it_along(store):
    group(store, "c1", "alice")
    digest = store.save_blob_bytes(b"abc")
    store.add_attachment(attachment("a1", digest))
    say(store, "c1", "m1", attachment_id="a1")
    message = store.change_chat_message("m1", "alice", lambda *args: {"attachment_id": None, "attachment": None})
    assert message["attachment_id"] is None and message.get("deleted") is not True
    assert store.get_attachment("a1") is None


def test_concurrent_tombstones_of_one_message_have_one_winner(store):
    group(store, "c1", "alice", "bob")
    for round_number in range(5):
        say(store, "c1", f"m{round_number}")

        def tombstone(slot, message_id=f"m{round_number}"):
            def decide(message, member):
                if message.get("deleted"):
                    raise Refused("already deleted")
                return {"deleted": True, "content": None, "deleted_by": slot}

            return store.change_chat_message(message_id, ("alice", "bob")[slot % 2], decide)

        results = run_together(4, tombstone)
        winners = [result for result in results if not isinstance(result, Exception)]
        assert len(winners) == 1 and all(isinstance(r, Refused) for r in results if r not in winners), results
        assert store.get_chat_message(f"m{round_number}")["deleted_by"] == winners[0]["deleted_by"]


def test_delete_attachment_unsent_only_leaves_a_sent_attachment_alone(store):
    group(store, "c1", "alice")
    digest = store.save_blob_bytes(b"abc")
    store.add_attachment(attachment("a1", digest))
    store.add_attachment(attachment("a2", digest))
    say(store, "c1", "m1", attachment_id="a1")
    assert store.delete_attachment("a1", unsent_only=True) is False
    assert store.get_attachment("a1")["message_id"] == "m1"
    assert store.delete_attachment("a2", unsent_only=True) is True and store.get_attachment("a2") is None
    assert store.open_blob(digest) is not None


def test_change_user_keys_writes_new_and_changed_keys_in_one_go(store):
    store.add_key(make_key("k1", "alice", "2024-05-01T00:00:00Z"))
    store.add_key(make_key("kb", "bob", "2024-05-01T00:00:00Z"))
    seen = []

    def rotate(keys):
        seen.append([key["id"] for key in keys])
        return [make_key("k2", "alice", "2024-05-02T00:00:00Z")], {"k1": {"revoked_at": "t", "replaced_by": "k2"}}

    added, changed = store.change_user_keys("alice", rotate)
    assert seen == [["k1"]] and [key["id"] for key in added] == ["k2"]
    assert changed == [dict(make_key("k1", "alice", "2024-05-01T00:00:00Z"), revoked_at="t", replaced_by="k2")]
    assert [(key["id"], key["revoked_at"]) for key in store.user_keys("alice")] == [("k1", "t"), ("k2", None)]
    with pytest.raises(Refused):
        store.change_user_keys("alice", refuse)
    assert len(store.user_keys("alice")) == 2 and store.user_keys("bob")[0]["revoked_at"] is None


def test_concurrent_key_publications_decided_on_fresh_keys_have_one_winner(store):
    store.create_user(make_user("alice", "alice"))

    def publish(slot):
        def decide(keys):
            if any(key["revoked_at"] is None for key in keys):
                raise Refused("the device has a live key")
            return [make_key(f"k{slot}", "alice", f"2024-05-01T00:00:0{slot}Z")], {}

        return store.change_user_keys("alice", decide)

    results = run_together(6, publish)
    assert sum(not isinstance(result, Exception) for result in results) == 1, results
    assert len(store.user_keys("alice")) == 1


def test_add_device_with_a_limit_refuses_past_it_even_when_concurrent(store):
    store.create_user(make_user("alice", "alice"))

    def register(slot):
        return store.add_device(
            {
                "id": f"d{slot}",
                "user_id": "alice",
                "platform": "web",
                "token": f"t{slot}",
                "endpoint": None,
                "created_at": "2024-05-01T12:00:00Z",
            },
            limit=3,
        )

    results = run_together(8, register)
    assert sum(not isinstance(result, Exception) for result in results) == 3, results
    assert all(isinstance(result, Conflict) for result in results if isinstance(result, Exception))
    assert len(store.user_devices("alice")) == 3
