"""Rules about chat membership and attachments hold under concurrent requests.

Each rule is hammered with pairs of requests released together (a barrier),
many pairs at a time: on PostgreSQL at two real server processes sharing one
database (one request of each pair to each process), on the JSON store at one
in-process app from threads (with a tiny GIL switch interval, so threads
interleave inside handlers). Afterwards the store itself is read: exactly one
owner in every group, every attachment in at most one message, one tombstone
per deleted message, one direct chat per pair; no answer is a 5xx. Run
against the code from before the rules moved into the store, they failed on
both backends (two owners, ownerless groups, KeyError 500s, two successful
deletes), and on PostgreSQL an attachment joined two messages (a lock held in
one process); direct chats were already safe and are kept so here.

The second half provokes each new refusal deterministically: a store method
is wrapped so that what a concurrent request would do happens just before it
(``interleave``).
"""

import concurrent.futures
import http.client
import io
import json
import sys
import threading
import uuid
from wsgiref.util import setup_testing_defaults

import pytest
from conftest import assert_error
from server import Server

from oxc_wsgi import Settings, create_app
from store import open_store

TRIALS = 100
PARALLEL = 6  # pairs in flight at once
PASSWORD = "password123"


# =============================================================================
# Two ways in: real server processes, or one app in this process
# =============================================================================


class Servers:
    """Requests over HTTP to real servers; ``to`` picks the server (modulo how many there are)."""

    def __init__(self, servers):
        self.servers = servers

    def call(self, to, method, path, body=None, token=None, raw=None, content_type=None):
        server = self.servers[to % len(self.servers)]
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            raw, content_type = json.dumps(body).encode(), "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        try:
            connection.request(method, path, body=raw, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()


class InProcess:
    """Requests straight into one WSGI app, safe to make from many threads."""

    def __init__(self, app):
        self.app = app

    def call(self, to, method, path, body=None, token=None, raw=None, content_type=None):
        if body is not None:
            raw, content_type = json.dumps(body).encode(), "application/json"
        raw = raw or b""
        path, _, query = path.partition("?")
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_LENGTH": str(len(raw)),
            "wsgi.input": io.BytesIO(raw),
        }
        if content_type:
            environ["CONTENT_TYPE"] = content_type
        if token:
            environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        setup_testing_defaults(environ)
        answer = {}

        def start_response(status, headers, exc_info=None):
            answer["status"] = int(status.split()[0])

        chunks = self.app(environ, start_response)
        try:
            data = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        return answer["status"], json.loads(data or b"null")


@pytest.fixture
def service(backend, tmp_path):
    """(the way in, a store on the same data to check it with)."""
    if "store_url" in backend:
        servers = [Server(tmp_path / "data", STORE_URL=backend["store_url"]) for _ in range(2)]
        checker = open_store(None, url=backend["store_url"])
        try:
            yield Servers(servers), checker
        finally:
            checker.close()
            for server in servers:
                server.stop()
        return
    app = create_app(Settings(), data_dir=tmp_path / "data", bcrypt_rounds=4, auth_rate_limit=1_000_000)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield InProcess(app), app.core.ctx.store
    finally:
        sys.setswitchinterval(interval)
        app.core.close()


# =============================================================================
# Helpers
# =============================================================================


def ok(answer, status=None):
    code, body = answer
    assert code < 300 if status is None else code == status, answer
    return body["data"] if isinstance(body, dict) and "data" in body else body


def people(way, *names):
    """{name: (user id, access token)}, registered and logged in."""
    found = {}
    for name in names:
        ok(way.call(0, "POST", "/api/auth/register", {"username": name, "password": PASSWORD}), 201)
        data = ok(way.call(1, "POST", "/api/auth/login", {"username": name, "password": PASSWORD}), 200)
        found[name] = (data["user"]["id"], data["access_token"])
    return found


def each(setup, count=TRIALS):
    """``setup(number)`` for every trial, a few at a time."""
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(setup, range(count)))


def together(*calls):
    """Run ``calls`` at once (released by one barrier); their answers in order."""
    barrier = threading.Barrier(len(calls))
    answers = [None] * len(calls)

    def run(slot):
        barrier.wait()
        answers[slot] = calls[slot]()

    threads = [threading.Thread(target=run, args=(slot,)) for slot in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def race(trials, pair):
    """Run ``pair(trial)`` (a tuple of calls) for every trial, several pairs in flight; the answers."""
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        outcomes = list(pool.map(lambda trial: together(*pair(trial)), trials))
    failures = [answer for answers in outcomes for answer in answers if answer[0] >= 500]
    assert not failures, f"{len(failures)} answers were 5xx, e.g. {failures[0]}"
    return outcomes


def group(way, owner, members, to=0, name="g"):
    ids = [member[0] for member in members]
    return ok(way.call(to, "POST", "/api/chats/group", {"name": name, "members": ids}, owner[1]), 201)["id"]


def owners(store, chat_id):
    return [m["user_id"] for m in store.members(chat_id) if m["role"] == "owner"]


# =============================================================================
# The rules, hammered
# =============================================================================


def test_two_concurrent_ownership_transfers_leave_exactly_one_owner(service):
    way, store = service
    cast = people(way, "alice", "bob", "carol")
    alice, bob, carol = cast["alice"], cast["bob"], cast["carol"]
    chats = each(lambda n: group(way, alice, [bob, carol], to=n))

    def pair(chat_id):
        def transfer(to, user):
            return lambda: way.call(to, "PATCH", f"/api/chats/{chat_id}/members/{user[0]}", {"role": "owner"}, alice[1])

        return transfer(0, bob), transfer(1, carol)

    outcomes = race(chats, pair)
    for chat_id, answers in zip(chats, outcomes):
        assert sorted(code for code, _ in answers) == [200, 403], answers
        winner = bob[0] if answers[0][0] == 200 else carol[0]
        assert owners(store, chat_id) == [winner]
        assert store.get_member(chat_id, alice[0])["role"] == "admin"


def test_a_transfer_racing_the_new_owners_leave_leaves_exactly_one_owner(service):
    way, store = service
    cast = people(way, "alice", "bob")
    alice, bob = cast["alice"], cast["bob"]
    chats = each(lambda n: group(way, alice, [bob], to=n))
    outcomes = race(
        chats,
        lambda chat_id: (
            lambda: way.call(0, "PATCH", f"/api/chats/{chat_id}/members/{bob[0]}", {"role": "owner"}, alice[1]),
            lambda: way.call(1, "DELETE", f"/api/chats/{chat_id}/members/{bob[0]}", token=bob[1]),
        ),
    )
    for chat_id, (transfer, leave) in zip(chats, outcomes):
        assert (transfer[0], leave[0]) in {(200, 400), (409, 200), (400, 200)}, (transfer, leave)
        assert owners(store, chat_id) == [bob[0] if transfer[0] == 200 else alice[0]]
        assert len(store.members(chat_id)) == (2 if transfer[0] == 200 else 1)


def test_a_promotion_racing_a_removal_of_the_same_member_never_both_succeed(service):
    # The owner makes carol an admin while bob, an admin, removes her: an admin may
    # remove a member but not another admin, so exactly one of the two can happen.
    way, store = service
    cast = people(way, "alice", "bob", "carol")
    alice, bob, carol = cast["alice"], cast["bob"], cast["carol"]

    def setup(number):
        chat_id = group(way, alice, [bob, carol], to=number)
        ok(way.call(number + 1, "PATCH", f"/api/chats/{chat_id}/members/{bob[0]}", {"role": "admin"}, alice[1]))
        return chat_id

    chats = each(setup)
    outcomes = race(
        chats,
        lambda chat_id: (
            lambda: way.call(0, "PATCH", f"/api/chats/{chat_id}/members/{carol[0]}", {"role": "admin"}, alice[1]),
            lambda: way.call(1, "DELETE", f"/api/chats/{chat_id}/members/{carol[0]}", token=bob[1]),
        ),
    )
    for chat_id, (promote, remove) in zip(chats, outcomes):
        assert (promote[0], remove[0]) in {(200, 403), (409, 200), (400, 200)}, (promote, remove)
        carols = store.get_member(chat_id, carol[0])
        assert (carols["role"] if carols else None) == ("admin" if promote[0] == 200 else None)
        assert owners(store, chat_id) == [alice[0]]


def test_an_attachment_sent_by_two_concurrent_messages_joins_exactly_one(service):
    way, store = service
    cast = people(way, "alice", "bob")
    alice, bob = cast["alice"], cast["bob"]
    chat_id = group(way, alice, [bob])

    def upload(number):
        return ok(
            way.call(
                number,
                "POST",
                f"/api/chats/{chat_id}/attachments?name=n{number}.txt",
                token=alice[1],
                raw=f"note {number} {uuid.uuid4()}\n".encode(),
                content_type="text/plain",
            ),
            201,
        )["id"]

    attachments = each(upload)
    outcomes = race(
        attachments,
        lambda attachment_id: tuple(
            (
                lambda to=to, user=user: way.call(
                    to,
                    "POST",
                    f"/api/chats/{chat_id}/messages",
                    {"content": f"from {to}", "attachment_id": attachment_id},
                    user[1],
                )
            )
            for to, user in ((0, alice), (1, bob))
        ),
    )
    carrying = {}
    for message in store.chat_history(chat_id, limit=10 * TRIALS).items:
        carrying.setdefault(message.get("attachment_id"), []).append(message["id"])
    for attachment_id, answers in zip(attachments, outcomes):
        assert sorted(code for code, _ in answers) == [201, 400], answers
        sent = next(body["data"]["id"] for code, body in answers if code == 201)
        assert carrying.get(attachment_id) == [sent]
        assert store.get_attachment(attachment_id)["message_id"] == sent


def test_two_concurrent_deletes_of_one_message_give_one_success(service):
    way, store = service
    cast = people(way, "alice", "bob")
    alice, bob = cast["alice"], cast["bob"]
    chat_id = group(way, alice, [bob])
    ok(way.call(0, "PATCH", f"/api/chats/{chat_id}/members/{bob[0]}", {"role": "admin"}, alice[1]))
    messages = each(
        lambda number: ok(
            way.call(number, "POST", f"/api/chats/{chat_id}/messages", {"content": f"say {number}"}, alice[1]), 201
        )["id"]
    )
    outcomes = race(
        messages,
        lambda message_id: (
            lambda: way.call(0, "DELETE", f"/api/chats/{chat_id}/messages/{message_id}", token=alice[1]),
            lambda: way.call(1, "DELETE", f"/api/chats/{chat_id}/messages/{message_id}", token=bob[1]),
        ),
    )
    for message_id, answers in zip(messages, outcomes):
        assert sorted(code for code, _ in answers) == [200, 400], answers
        deleter = alice[0] if answers[0][0] == 200 else bob[0]
        message = store.get_chat_message(message_id)
        assert message["deleted"] is True and message["deleted_by"] == deleter


def test_concurrent_direct_chat_requests_of_one_pair_make_one_chat(service):
    way, store = service
    cast = people(way, *(f"user{number}" for number in range(15)))
    pairs = [
        (first, second) for index, first in enumerate(cast.values()) for second in list(cast.values())[index + 1 :]
    ][:TRIALS]
    outcomes = race(
        pairs,
        lambda pair: (
            lambda: way.call(0, "POST", "/api/chats/direct", {"user_id": pair[1][0]}, pair[0][1]),
            lambda: way.call(1, "POST", "/api/chats/direct", {"user_id": pair[0][0]}, pair[1][1]),
        ),
    )
    for (first, second), answers in zip(pairs, outcomes):
        assert sorted(code for code, _ in answers) == [200, 201], answers
        chat_ids = {body["data"]["id"] for _, body in answers}
        assert len(chat_ids) == 1 and store.chat_ids(first[0]) & store.chat_ids(second[0]) == chat_ids


# =============================================================================
# Each refusal, provoked deterministically
# =============================================================================


def interleave(monkeypatch, store, method, meanwhile):
    """Run ``meanwhile()`` once, just before the store's next ``method`` call, as a concurrent request would."""
    original = getattr(store, method)
    pending = [meanwhile]

    def wrapped(*args, **kwargs):
        if pending:
            pending.pop()()
        return original(*args, **kwargs)

    monkeypatch.setattr(store, method, wrapped)


@pytest.fixture
def crowd(client):
    return {name: client.user(name) for name in ("alice", "bob", "carol")}


def make_group(client, owner, *members):
    return client.post_json(
        "/api/chats/group", {"name": "g", "members": [m.id for m in members]}, headers=owner.headers, status=201
    ).json["data"]["id"]


def test_a_role_change_for_a_member_who_left_meanwhile_is_409(client, crowd, monkeypatch):
    alice, bob = crowd["alice"], crowd["bob"]
    chat_id = make_group(client, alice, bob)
    store = client.wsgi.core.ctx.store
    interleave(monkeypatch, store, "change_chat", lambda: store.remove_member(chat_id, bob.id))
    answer = client.patch_json(
        f"/api/chats/{chat_id}/members/{bob.id}", {"role": "owner"}, headers=alice.headers, status=409
    )
    assert_error(answer, 409, "no longer a member")
    assert owners(store, chat_id) == [alice.id]


def test_removing_a_member_who_left_meanwhile_is_409(client, crowd, monkeypatch):
    alice, bob = crowd["alice"], crowd["bob"]
    chat_id = make_group(client, alice, bob)
    store = client.wsgi.core.ctx.store
    interleave(monkeypatch, store, "change_chat", lambda: store.remove_member(chat_id, bob.id))
    assert_error(
        client.delete(f"/api/chats/{chat_id}/members/{bob.id}", headers=alice.headers, status=409),
        409,
        f"User {bob.id} is no longer a member",
    )


def test_an_owner_who_transferred_meanwhile_may_no_longer_change_roles_or_delete_the_group(client, crowd, monkeypatch):
    alice, bob, carol = crowd["alice"], crowd["bob"], crowd["carol"]
    chat_id = make_group(client, alice, bob, carol)
    store = client.wsgi.core.ctx.store

    def owned_by(new, old):
        return lambda: store.update_members(
            {(chat_id, new.id): {"role": "owner"}, (chat_id, old.id): {"role": "admin"}}
        )

    for request in [
        lambda: client.patch_json(
            f"/api/chats/{chat_id}/members/{carol.id}", {"role": "owner"}, headers=alice.headers, status=403
        ),
        lambda: client.delete(f"/api/chats/{chat_id}", headers=alice.headers, status=403),
    ]:
        owned_by(alice, bob)()  # alice owns the group when the request starts ...
        interleave(monkeypatch, store, "change_chat", owned_by(bob, alice))  # ... and bob when it writes
        assert_error(request(), 403, "owner")
        monkeypatch.undo()
        assert owners(store, chat_id) == [bob.id]
    assert store.get_member(chat_id, carol.id)["role"] == "member" and store.get_chat(chat_id) is not None


def test_an_admin_demoted_meanwhile_cannot_remove_rename_or_moderate(client, crowd, monkeypatch):
    alice, bob, carol = crowd["alice"], crowd["bob"], crowd["carol"]
    chat_id = make_group(client, alice, bob, carol)
    client.patch_json(f"/api/chats/{chat_id}/members/{bob.id}", {"role": "admin"}, headers=alice.headers)
    said = client.post_json(
        f"/api/chats/{chat_id}/messages", {"content": "hi"}, headers=carol.headers, status=201
    ).json["data"]["id"]
    store = client.wsgi.core.ctx.store

    def demote():
        store.update_members({(chat_id, bob.id): {"role": "member"}})

    def promote():
        store.update_members({(chat_id, bob.id): {"role": "admin"}})

    for method, request in [
        (
            "change_chat",
            lambda: client.delete(f"/api/chats/{chat_id}/members/{carol.id}", headers=bob.headers, status=403),
        ),
        (
            "change_chat",
            lambda: client.patch_json(f"/api/chats/{chat_id}", {"name": "mine"}, headers=bob.headers, status=403),
        ),
        (
            "change_chat_message",
            lambda: client.delete(f"/api/chats/{chat_id}/messages/{said}", headers=bob.headers, status=403),
        ),
    ]:
        promote()
        interleave(monkeypatch, store, method, demote)
        assert_error(request(), 403)
        monkeypatch.undo()
    assert store.get_member(chat_id, carol.id) is not None and store.get_chat(chat_id)["name"] == "g"
    assert store.get_chat_message(said)["deleted"] is False


def test_a_caller_removed_meanwhile_gets_409_for_what_they_try(client, crowd, monkeypatch):
    alice, bob = crowd["alice"], crowd["bob"]
    chat_id = make_group(client, alice, bob)
    said = client.post_json(
        f"/api/chats/{chat_id}/messages", {"content": "mine"}, headers=bob.headers, status=201
    ).json["data"]["id"]
    store = client.wsgi.core.ctx.store
    for method, request in [
        (
            "add_chat_message",
            lambda: client.post_json(
                f"/api/chats/{chat_id}/messages", {"content": "late"}, headers=bob.headers, status=409
            ),
        ),
        (
            "change_chat",
            lambda: client.put_json(f"/api/chats/{chat_id}/mute", {"muted": True}, headers=bob.headers, status=409),
        ),
        (
            "change_chat",
            lambda: client.post_json(
                f"/api/chats/{chat_id}/read", {"message_id": said}, headers=bob.headers, status=409
            ),
        ),
        (
            "change_chat",
            lambda: client.delete(f"/api/chats/{chat_id}/members/{bob.id}", headers=bob.headers, status=409),
        ),
        (
            "change_chat_message",
            lambda: client.patch_json(
                f"/api/chats/{chat_id}/messages/{said}", {"content": "edited"}, headers=bob.headers, status=409
            ),
        ),
        (
            "change_chat_message",
            lambda: client.delete(f"/api/chats/{chat_id}/messages/{said}", headers=bob.headers, status=409),
        ),
    ]:
        if store.get_member(chat_id, bob.id) is None:
            client.post_json(f"/api/chats/{chat_id}/members", {"user_id": bob.id}, headers=alice.headers)
        interleave(monkeypatch, store, method, lambda: store.remove_member(chat_id, bob.id))
        assert_error(request(), 409, "no longer a member")
        monkeypatch.undo()
    message = store.get_chat_message(said)
    assert message["content"] == "mine" and message["deleted"] is False
    assert [m["content"] for m in store.chat_history(chat_id).items] == ["mine"]


def test_a_request_into_a_group_deleted_meanwhile_is_404(client, crowd, monkeypatch):
    alice, bob = crowd["alice"], crowd["bob"]
    chat_id = make_group(client, alice, bob)
    store = client.wsgi.core.ctx.store
    interleave(monkeypatch, store, "add_chat_message", lambda: store.delete_chat(chat_id))
    assert_error(
        client.post_json(f"/api/chats/{chat_id}/messages", {"content": "late"}, headers=bob.headers, status=404),
        404,
        "not found",
    )
    assert store.chat_history(chat_id).items == []


def test_adding_a_member_who_joined_meanwhile_is_400(client, crowd, monkeypatch):
    alice, bob = crowd["alice"], crowd["bob"]
    chat_id = make_group(client, alice)
    store = client.wsgi.core.ctx.store
    record = {
        "user_id": bob.id,
        "role": "member",
        "joined_at": "t",
        "muted": False,
        "read_seq": 0,
        "delivered_seq": 0,
        "chat_id": chat_id,
    }
    interleave(monkeypatch, store, "change_chat", lambda: store.add_member(record))
    assert_error(
        client.post_json(f"/api/chats/{chat_id}/members", {"user_id": bob.id}, headers=alice.headers, status=400),
        400,
        "already a member",
    )
    assert len(store.members(chat_id)) == 2


def test_an_attachment_sent_meanwhile_is_refused_and_stays_with_its_message(client, crowd, monkeypatch):
    alice, bob = crowd["alice"], crowd["bob"]
    chat_id = make_group(client, alice, bob)
    attachment_id = client.post(
        f"/api/chats/{chat_id}/attachments?name=a.txt",
        b"hello\n",
        headers=dict(alice.headers, **{"Content-Type": "text/plain"}),
        status=201,
    ).json["data"]["id"]
    store = client.wsgi.core.ctx.store
    first = {}

    def send_first():
        first.update(
            store.add_chat_message(
                {
                    "id": "first",
                    "chat_id": chat_id,
                    "user_id": bob.id,
                    "username": "bob",
                    "content": None,
                    "attachment_id": attachment_id,
                    "created_at": "2024-05-01T12:00:00Z",
                    "mentions": [],
                }
            )
        )

    interleave(monkeypatch, store, "add_chat_message", send_first)
    answer = client.post_json(
        f"/api/chats/{chat_id}/messages", {"attachment_id": attachment_id}, headers=alice.headers, status=400
    )
    assert_error(answer, 400, "already sent")
    assert store.get_attachment(attachment_id)["message_id"] == "first"
    assert [m["id"] for m in store.chat_history(chat_id).items] == ["first"]


def test_deleting_an_unsent_attachment_that_was_sent_meanwhile_takes_it_out_of_its_message(client, crowd, monkeypatch):
    alice, bob = crowd["alice"], crowd["bob"]
    chat_id = make_group(client, alice, bob)
    attachment_id = client.post(
        f"/api/chats/{chat_id}/attachments?name=a.txt",
        b"hello\n",
        headers=dict(alice.headers, **{"Content-Type": "text/plain"}),
        status=201,
    ).json["data"]["id"]
    store = client.wsgi.core.ctx.store
    attachment = store.get_attachment(attachment_id)

    def send_first():
        store.add_chat_message(
            {
                "id": "first",
                "chat_id": chat_id,
                "user_id": bob.id,
                "username": "bob",
                "content": "see this",
                "attachment_id": attachment_id,
                "attachment": dict(attachment, message_id="first"),
                "created_at": "2024-05-01T12:00:00Z",
                "mentions": [],
            }
        )

    interleave(monkeypatch, store, "delete_attachment", send_first)
    client.delete(f"/api/attachments/{attachment_id}", headers=alice.headers, status=200)
    assert store.get_attachment(attachment_id) is None
    message = store.get_chat_message("first")
    assert message["content"] == "see this" and message["attachment"] is None and not message.get("deleted")
    assert_error(client.delete(f"/api/attachments/{attachment_id}", headers=alice.headers, status=404), 404)


def test_the_second_of_two_deletes_of_a_message_is_400_and_an_edit_after_a_delete_too(client, crowd, monkeypatch):
    alice, bob = crowd["alice"], crowd["bob"]
    chat_id = make_group(client, alice, bob)
    said = client.post_json(
        f"/api/chats/{chat_id}/messages", {"content": "oops"}, headers=alice.headers, status=201
    ).json["data"]["id"]
    store = client.wsgi.core.ctx.store

    def delete_first():
        store.change_chat_message(
            said, alice.id, lambda message, member: {"deleted": True, "content": None, "deleted_by": bob.id}
        )

    interleave(monkeypatch, store, "change_chat_message", delete_first)
    assert_error(
        client.delete(f"/api/chats/{chat_id}/messages/{said}", headers=alice.headers, status=400),
        400,
        "already deleted",
    )
    assert store.get_chat_message(said)["deleted_by"] == bob.id
    monkeypatch.undo()
    said = client.post_json(
        f"/api/chats/{chat_id}/messages", {"content": "typo"}, headers=alice.headers, status=201
    ).json["data"]["id"]
    interleave(monkeypatch, store, "change_chat_message", delete_first)
    assert_error(
        client.patch_json(
            f"/api/chats/{chat_id}/messages/{said}", {"content": "fixed"}, headers=alice.headers, status=400
        ),
        400,
        "deleted",
    )
    assert store.get_chat_message(said)["content"] is None


def test_a_read_pointer_moved_further_meanwhile_stays_where_it_is(client, crowd, monkeypatch):
    alice, bob = crowd["alice"], crowd["bob"]
    chat_id = make_group(client, alice, bob)
    said = [
        client.post_json(
            f"/api/chats/{chat_id}/messages", {"content": f"m{n}"}, headers=alice.headers, status=201
        ).json["data"]["id"]
        for n in range(3)
    ]
    store = client.wsgi.core.ctx.store
    newest = store.get_chat_message(said[2])["seq"]
    interleave(
        monkeypatch, store, "change_chat", lambda: store.update_members({(chat_id, bob.id): {"read_seq": newest}})
    )
    answer = client.post_json(f"/api/chats/{chat_id}/read", {"message_id": said[0]}, headers=bob.headers, status=200)
    assert answer.json["data"]["unread_count"] == 0
    assert store.get_member(chat_id, bob.id)["read_seq"] == newest


def test_a_second_key_for_one_device_published_meanwhile_is_409(client, crowd, monkeypatch):
    import base64
    import os

    alice = crowd["alice"]
    store = client.wsgi.core.ctx.store

    def x25519():
        return base64.b64encode(os.urandom(31) + b"\x01").decode()

    def publish_first():
        store.add_key(
            {
                "id": "k0",
                "user_id": alice.id,
                "device_id": "phone",
                "algorithm": "x25519",
                "public_key": x25519(),
                "fingerprint": "f" * 64,
                "created_at": "2024-05-01T12:00:00Z",
                "revoked_at": None,
                "replaces": None,
                "replaced_by": None,
            }
        )

    interleave(monkeypatch, store, "change_user_keys", publish_first)
    assert_error(
        client.post_json(
            "/api/keys",
            {"device_id": "phone", "algorithm": "x25519", "public_key": x25519()},
            headers=alice.headers,
            status=409,
        ),
        409,
        "already has a live",
    )
    assert [key["id"] for key in store.user_keys(alice.id)] == ["k0"]
