"""The event hub on its own, over a store's event log (HTTP behaviour is in test_events.py)."""

import pytest

from handlers.services.event_types import EVENT_TYPES
from handlers.services.hub import CursorGone, Hub
from store import open_store


@pytest.fixture
def store():
    opened = open_store(None)
    yield opened
    opened.close()


@pytest.fixture
def hub(store):
    made = Hub(store, clock=lambda: 1_700_000_000.0)
    yield made
    made.close()


def test_publishing_an_undeclared_event_type_is_refused_naming_it(hub, store):
    with pytest.raises(ValueError, match="'chat.message.exploded'"):
        hub.publish("chat.message.exploded", {"id": "m1"})
    assert store.event_log().newest() == 0  # nothing reached the log
    assert hub.read("alice", 0) == ([], 0)


def test_every_declared_event_type_is_published(hub):
    for type in EVENT_TYPES:
        hub.publish(type, {"id": "m1", "user_id": "alice"}, ["alice"])
    events, _ = hub.read("alice", 0, limit=len(EVENT_TYPES))
    assert [event.type for event in events] == list(EVENT_TYPES)


def test_published_events_go_through_the_stores_log_and_cursors_name_its_epoch(hub, store):
    event = hub.publish("presence.online", {"user_id": "bob"}, ["alice"])
    log = store.event_log()
    assert event.seq == log.newest() == 1
    assert [row[1] for row in log.after(0, 10)] == ["presence.online"]
    assert hub.cursor() == f"{log.epoch}-1" and hub.position(hub.cursor()) == 1


def test_a_hub_started_later_on_the_same_store_resumes_its_cursors(hub, store):
    hub.publish("presence.online", {"user_id": "bob"}, ["alice"])
    cursor = hub.cursor(0)
    later = Hub(store)
    try:
        assert later.position(cursor) == 0
        assert [event.type for event in later.read("alice", 0)[0]] == ["presence.online"]
    finally:
        later.close()


def test_a_cursor_from_a_store_opened_anew_is_gone(hub):
    hub.publish("presence.online", {"user_id": "bob"}, ["alice"])
    cursor = hub.cursor()
    fresh_store = open_store(None)
    fresh = Hub(fresh_store)
    try:
        with pytest.raises(CursorGone):
            fresh.position(cursor)
    finally:
        fresh.close()
        fresh_store.close()
