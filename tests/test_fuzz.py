"""Schemathesis fuzzes every operation of the served OpenAPI document, in process.

Two apps per module, each over a temporary data directory:

* the default settings, with a registered user whose bearer token goes with
  every request, and a group chat of theirs that every chat operation (but
  deleting the chat) is pointed at, so that the chat handlers run past 404;
* locked down (API key required, rate limiting on with a budget the fuzzer
  never exhausts), so that the document's conditional parts are exercised too.

The default checks apply: no 5xx, only documented statuses, content types and
headers, bodies that match their schemas, schema-violating input refused,
schema-conforming input accepted. Generation is deterministic (fixed seed,
derandomized, no example database) and bounded so that the module runs in
about two minutes on two cores.
"""

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from webtest import TestApp

from oxc_wsgi import Settings, create_app

PREFIX = "/api"
PASSWORD = "correct horse battery"
API_KEY = "k-0123456789abcdef"
LOCKED_DOWN = dict(
    secret_key_enabled=True,
    secret_key=API_KEY,
    rate_limit_enabled=True,
    rate_limit=1_000_000,
    auth_rate_limit=1_000_000,
)

#: Operations that answer 400 to requests the schema cannot tell from good ones
#: because they name things that do not exist or are taken: a username or
#: e-mail already registered, a user (recipient, member, peer) who does not
#: exist, a message to reply to outside the chat, a paging cursor outside the
#: list or given with the other cursor, a member in the path who is not in the
#: chat (400, as seed 003 specifies), a one-time code that is wrong, a push
#: endpoint on a host the server does not allow. Their documented 400s say so.
STATE_DEPENDENT_400 = [
    "post_register",
    "post_message",
    "get_messages",
    "get_my_messages",
    "get_chats",
    "post_group_chat",
    "post_direct_chat",
    "post_member",
    "get_chat_messages",
    "post_chat_message",
    "get_search",
    "patch_member",
    "delete_member",
    "post_verification",
    "post_password_reset",
    "post_device",
    "get_notifications",
    "get_mentions",
]
#: Operations that answer 400 to input the schema cannot judge: a public key that
#: must be a point on the curve or an RSA structure, an uploaded file that is empty.
FORMAT_400 = ["post_key", "post_attachment"]
#: Operations whose body may be anything: an upload that is not multipart/form-data is the file
#: itself, whatever its bytes (a body that a mutation made from the multipart form is a file too).
ANY_BODY = ["post_attachment"]
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
#: A 1x1 PNG, so that the attachment the fuzzer reads is an image with a thumbnail.
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201b5e2f0ea0000000049454e44ae426082"
)


def fuzz_config(max_examples, chat_id=None, attachment_id=None):
    operations = [
        {
            "include-operation-id": ANY_BODY,
            "checks": {
                "positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES + ["400"]},
                "negative_data_rejection": {"enabled": False},
            },
        },
        {
            "include-operation-id": [name for name in STATE_DEPENDENT_400 + FORMAT_400 if name not in ANY_BODY],
            "checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES + ["400"]}},
        },
        # A Range past the end of the file is unsatisfiable (416), as documented.
        {
            "include-operation-id": ["get_attachment_content", "get_attachment_thumbnail"],
            "checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES + ["416"]}},
        },
        # A cursor the server did not hand out is "gone" (410): resync, as documented.
        {
            "include-operation-id": "get_events",
            "parameters": {"timeout": 0},
            "checks": {"positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES + ["410"]}},
        },
        # An endless text/event-stream; tests/test_events.py covers it.
        {"include-operation-id": "get_event_stream", "enabled": False},
    ]
    if chat_id is not None:
        operations.append(
            {
                "include-path-regex": r"^/api/chats/\{chat_id\}",
                "exclude-operation-id": "delete_chat",
                "parameters": {"chat_id": chat_id},
            }
        )
    if attachment_id is not None:
        operations.append(
            {
                "include-path-regex": r"^/api/attachments/\{attachment_id\}",
                "exclude-operation-id": "delete_attachment",
                "parameters": {"attachment_id": attachment_id},
            }
        )
    return SchemathesisConfig.from_dict(
        {
            "seed": 3012,
            "generation": {
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
                # Unknown query parameters are ignored by design (0xC did too), not refused.
                "allow-extra-parameters": False,
            },
            "operations": operations,
        }
    )


def serve(tmp_path_factory, **overrides):
    # The per-client auth throttle (on by default) would answer most auth cases 429 before their handler.
    overrides.setdefault("auth_rate_limit", 1_000_000)
    return create_app(Settings(), data_dir=tmp_path_factory.mktemp("fuzz") / "data", bcrypt_rounds=4, **overrides)


def user_headers(app, headers):
    """Register and log in a user through ``app``; the headers to send with every case."""
    client = TestApp(app)
    body = {"username": "fuzzer", "password": PASSWORD}
    client.post_json(f"{PREFIX}/auth/register", body, headers=headers, status=201)
    token = client.post_json(f"{PREFIX}/auth/login", body, headers=headers, status=200).json["data"]
    return {**headers, "Authorization": f"Bearer {token['access_token']}"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    wsgi = serve(tmp_path_factory)
    yield wsgi
    wsgi.core.close()


@pytest.fixture(scope="module")
def auth_headers(app):
    return user_headers(app, {})


@pytest.fixture(scope="module")
def chat_id(app, auth_headers):
    """A group the fuzzer owns, with another member and a message in it."""
    client = TestApp(app)
    client.post_json(f"{PREFIX}/auth/register", {"username": "buddy", "password": PASSWORD}, status=201)
    chat = client.post_json(
        f"{PREFIX}/chats/group", {"name": "Fuzz", "members": ["buddy"]}, headers=auth_headers, status=201
    ).json["data"]
    client.post_json(
        f"{PREFIX}/chats/{chat['id']}/messages", {"content": "Hello @buddy"}, headers=auth_headers, status=201
    )
    return chat["id"]


@pytest.fixture(scope="module")
def attachment_id(app, auth_headers, chat_id):
    """An image uploaded to the fuzzer's group, for the attachment operations to read."""
    client = TestApp(app)
    headers = {**auth_headers, "Content-Type": "image/png"}
    return client.post(f"{PREFIX}/chats/{chat_id}/attachments?name=pixel.png", PIXEL, headers=headers, status=201).json[
        "data"
    ]["id"]


@pytest.fixture(scope="module")
def api_schema(app, chat_id, attachment_id):
    return schemathesis.openapi.from_wsgi(
        f"{PREFIX}/openapi.json", app, config=fuzz_config(60, chat_id=chat_id, attachment_id=attachment_id)
    )


@pytest.fixture(scope="module")
def locked_app(tmp_path_factory):
    wsgi = serve(tmp_path_factory, **LOCKED_DOWN)
    yield wsgi
    wsgi.core.close()


@pytest.fixture(scope="module")
def locked_headers(locked_app):
    return user_headers(locked_app, {"X-API-Key": API_KEY})


@pytest.fixture(scope="module")
def locked_schema(locked_app):
    return schemathesis.openapi.from_wsgi(
        f"{PREFIX}/openapi.json", locked_app, config=fuzz_config(15), headers={"X-API-Key": API_KEY}
    )


@pytest.fixture(scope="module")
def stream_schema(app):
    """The event stream, fuzzed without credentials so that every case is answered at once (401).

    With a valid token the stream never ends (tests/test_events.py and
    tests/test_realtime_server.py cover it); without one, random tickets,
    cursors and Last-Event-ID values must still be refused cleanly, as documented.
    """
    config = SchemathesisConfig.from_dict(
        {
            "seed": 3012,
            "generation": {
                "max-examples": 40,
                "deterministic": True,
                "database": "none",
                "allow-extra-parameters": False,
            },
        }
    )
    return schemathesis.openapi.from_wsgi(f"{PREFIX}/openapi.json", app, config=config)


schema = schemathesis.pytest.from_fixture("api_schema")
locked = schemathesis.pytest.from_fixture("locked_schema")
stream = schemathesis.pytest.from_fixture("stream_schema").include(operation_id="get_event_stream")


@schema.parametrize()
def test_every_operation_keeps_its_documented_contract(case, auth_headers):
    case.call_and_validate(headers=auth_headers)


@locked.parametrize()
def test_with_api_key_and_rate_limit_every_operation_keeps_its_contract(case, locked_headers):
    case.call_and_validate(headers=locked_headers)


@stream.parametrize()
def test_the_event_stream_refuses_every_unauthenticated_request_at_once(case):
    response = case.call(headers={})
    # The coverage phase also tries other methods on the path: those must get 405.
    expected = 401 if case.method.upper() in ("GET", "HEAD") else 405
    assert response.status_code == expected, (case.method, response.text)
    if case.method.upper() != "HEAD":
        assert response.json()["status"] == "error"
