"""The drift test bites: an answer that leaves the document fails the test that asked for it.

Every app the suite builds through ``make_client`` is wrapped in
``conftest.DocumentCheck``; these tests show that it refuses what it must (a
field the document does not list, a required field left out, an event of an
undeclared type) and accepts the compositions the document uses (allOf,
anyOf, nullable references).
"""

import io

import pytest
from conftest import DocumentCheck, DriftError, strict, validate

from handlers.http import views
from handlers.http.views import UndeclaredField, View, field
from handlers.services.event_types import EVENT_TYPES

# -- strict schemas --------------------------------------------------------------------------


def test_strict_forbids_a_property_an_object_does_not_list():
    schema = strict({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    validate(schema, {"a": 1}, "a")
    with pytest.raises(DriftError, match="'b' was unexpected"):
        validate(schema, {"a": 1, "b": 2}, "a")


def test_strict_folds_all_of_so_that_each_part_admits_the_others_fields():
    base = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    more = {"type": "object", "properties": {"b": {"type": "integer"}}, "required": []}
    schema = strict({"allOf": [base, more]})
    validate(schema, {"a": 1, "b": 2}, "both")
    validate(schema, {"a": 1}, "b is optional")
    with pytest.raises(DriftError, match="'c' was unexpected"):
        validate(schema, {"a": 1, "c": 3}, "c is not listed")


def test_strict_keeps_any_of_branches_whole():
    one = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    other = {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}
    schema = strict({"anyOf": [one, other, {"type": "null"}]})
    for answer in ({"a": 1}, {"b": 1}, None):
        validate(schema, answer, "a branch")
    with pytest.raises(DriftError):
        validate(schema, {"a": 1, "b": 1}, "no branch holds both")


def test_the_document_s_own_strict_schemas_accept_the_views_examples(client):
    check = DocumentCheck(client.wsgi)
    schemas = check.document()["doc"]["components"]["schemas"]
    for name in ("User", "Profile", "MyProfile", "ChatDetails", "SearchHit", "Event", "UploadedAttachment"):
        assert check.strict_schema(f"#/components/schemas/{name}"), name
    assert "online" in schemas["Profile"]["properties"]
    assert "notifications_pending" in schemas["Health"]["properties"]
    assert schemas["Event"]["properties"]["type"]["enum"] == list(EVENT_TYPES)


# -- views ------------------------------------------------------------------------------------


def test_a_view_refuses_to_carry_a_key_it_does_not_declare():
    view = View("Thing", None, [field("a", "integer", "A.")], lambda thing: {"a": thing, "secret": thing})
    with pytest.raises(UndeclaredField, match="undeclared \\['secret'\\]"):
        view(1)


def test_a_view_refuses_to_leave_out_a_required_key():
    view = View("Thing", None, [field("a", "integer", "A."), field("b", "integer", "B.")], lambda thing: {"a": thing})
    with pytest.raises(UndeclaredField, match="missing \\['b'\\]"):
        view(1)


def test_every_declared_view_renders_a_schema_with_its_fields(client):
    settings = client.wsgi.core.ctx.settings
    for name, view in views.COMPONENTS.items():
        schema = view.schema(settings)
        own = schema["allOf"][1] if "allOf" in schema else schema
        assert set(own["properties"]) == {f.name for f in view.own_fields}, name


# -- the checker on a live app ------------------------------------------------------------------


def _profile_without(name):
    """A Profile view that leaves ``name`` out, as an edit forgetting the document would."""
    original = views.public_profile
    kept = [f for f in original.fields if f.name != name]
    return View(
        "Profile", None, kept, lambda user, **more: {k: v for k, v in original(user, **more).items() if k != name}
    )


def _profile_with(name, value):
    """A Profile view that sends ``name`` too, declared in the view but absent from the document."""
    original = views.public_profile
    return View(
        "Profile",
        None,
        [*original.fields, field(name, "string", "Undocumented.")],
        lambda user, **more: dict(original(user, **more), **{name: value}),
    )


def test_an_undocumented_field_in_an_answer_fails_the_request(client, monkeypatch):
    alice = client.user("alice")
    monkeypatch.setattr(views, "public_profile", _profile_with("shoe_size", "42"))
    with pytest.raises(DriftError, match=r"GET /api/users/\{user_id\} answered 200(.|\n)*'shoe_size' was unexpected"):
        client.get(f"/api/users/{alice.id}", headers=alice.headers)


def test_a_documented_field_left_out_of_an_answer_fails_the_request(client, monkeypatch):
    alice = client.user("alice")
    monkeypatch.setattr(views, "public_profile", _profile_without("bio"))
    with pytest.raises(DriftError, match=r"at \$\.data: 'bio' is a required property"):
        client.get(f"/api/users/{alice.id}", headers=alice.headers)


def test_a_wrong_type_in_a_nested_answer_fails_the_request(client, monkeypatch):
    alice = client.user("alice")
    original = views.public_profile
    monkeypatch.setattr(
        views,
        "public_profile",
        View("Profile", None, original.fields, lambda user, **more: dict(original(user), bio=7)),
    )
    with pytest.raises(DriftError, match=r"at \$\.data\.bio: 7 is not of type"):
        client.get(f"/api/users/{alice.id}", headers=alice.headers)


def test_an_event_of_an_undeclared_shape_fails_the_long_poll(client, monkeypatch):
    alice = client.user("alice")
    original = views.event
    monkeypatch.setattr(
        views,
        "event",
        View(
            "Event", None, original.fields, lambda cursor, type, at, data: original(cursor, type, at, dict(data, x=1))
        ),
    )
    since = client.get("/api/events?timeout=0", headers=alice.headers).json["next"]
    client.post_json("/api/messages", {"content": "hi"}, headers=alice.headers, status=201)
    with pytest.raises(DriftError, match="'x' was unexpected"):
        client.get(f"/api/events?timeout=0&since={since}", headers=alice.headers)


def test_answers_the_document_describes_pass(client):
    alice = client.user("alice")
    bob = client.user("bob")
    since = client.get("/api/events?timeout=0", headers=bob.headers).json["next"]
    chat = client.post_json(
        "/api/chats/direct", {"user_id": bob.id, "content": "hello"}, headers=alice.headers, status=201
    ).json["data"]
    assert chat["message"]["content"] == "hello" and chat["peer"]["id"] == bob.id
    client.get("/api/chats", headers=bob.headers)
    client.get(f"/api/users/{bob.id}", headers=alice.headers)
    client.get("/api/health")
    events = client.get(f"/api/events?timeout=0&since={since}", headers=bob.headers).json["events"]
    assert {"chat.created", "chat.message.created"} <= {event["type"] for event in events}


def _open_stream(app, user):
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/api/events/stream",
        "QUERY_STRING": "",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SCRIPT_NAME": "",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_AUTHORIZATION": user.headers["Authorization"],
    }
    body = app(environ, lambda status, headers, exc_info=None: None)
    chunks = iter(body)
    assert next(chunks).startswith(b": connected")
    return body, chunks


def test_each_streamed_event_is_held_against_the_event_schema(client, monkeypatch):
    alice = client.user("alice")
    body, chunks = _open_stream(DocumentCheck(client.wsgi), alice)
    try:
        client.post_json("/api/messages", {"content": "fine"}, headers=alice.headers, status=201)
        assert b"message.created" in next(chunks)
        original = views.event
        monkeypatch.setattr(
            views,
            "event",
            View("Event", None, original.fields, lambda cursor, type, at, data: original(cursor, "made.up", at, data)),
        )
        client.post_json("/api/messages", {"content": "odd"}, headers=alice.headers, status=201)
        with pytest.raises(DriftError, match=r"events/stream sent an event(.|\n)*'made.up' is not one of"):
            next(chunks)
    finally:
        body.close()
