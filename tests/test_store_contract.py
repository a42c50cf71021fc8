"""Behaviour every storage backend must show, checked through the public ``Store`` interface.

Each test runs once per backend. A new backend joins by adding one param to the
``store`` fixture (and, if it needs a server, skipping when none is configured);
nothing here may reach past ``store/base.py``.
"""

import hashlib
import threading

import pytest

from store import Conflict, Page, StoreUnavailable, open_store


@pytest.fixture(params=["json", "memory"])
def store(request, tmp_path):
    opened = open_store(tmp_path / "data") if request.param == "json" else open_store(None)
    yield opened
    opened.close()


# ---- records ------------------------------------------------------------------


def make_user(user_id, username, email=None):
    return {"id": user_id, "username": username, "email": email,
            "password_hash": "$2b$04$" + "x" * 53, "created_at": "2024-05-01T12:00:00Z"}


def make_message(message_id, user_id, recipient_id=None, content=None):
    return {"id": message_id, "user_id": user_id, "username": user_id,
            "content": content or f"text of {message_id}", "timestamp": "2024-05-01T12:00:00Z",
            "recipient_id": recipient_id}


def token_hash(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def make_session(session_id, user_id, token):
    return {"id": session_id, "user_id": user_id, "token_hash": token_hash(token),
            "previous_hash": None, "rotated_at": None, "created_at": 1_700_000_000.0,
            "expires_at": 1_700_000_000.0 + 86400}


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
        "public-by-alice", "alice-to-bob", "bob-to-alice", "public-by-carol", "alice-to-herself"]
    assert ids(store.visible_messages("bob")) == [
        "public-by-alice", "alice-to-bob", "bob-to-alice", "public-by-carol"]
    assert ids(store.visible_messages("carol")) == [
        "public-by-alice", "carol-to-dave", "public-by-carol", "dave-to-carol"]
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
                session_id, presented, token_hash(f"new-{round_number}-{slot}"), 1.0, 2.0)

        racers = [threading.Thread(target=rotate, args=(slot,)) for slot in (0, 1)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        winners = [result for result in results if result is not None]
        assert len(winners) == 1, f"round {round_number}: {results}"
        assert store.get_session(session_id) == winners[0]
        assert store.find_session(winners[0]["token_hash"]) == winners[0]


# ---- lifecycle ----------------------------------------------------------------


def test_a_closed_store_is_not_writable_and_refuses_writes(store):
    store.close()
    assert store.writable is False
    with pytest.raises(StoreUnavailable):
        store.add_message(make_message("m1", "alice"))
    with pytest.raises(StoreUnavailable):
        store.create_user(make_user("u1", "alice"))
    store.close()  # closing twice is harmless
