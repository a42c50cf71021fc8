"""The public-key directory and the shape of encrypted messages, over HTTP.

The keys here are published test vectors (RFC 7748, RFC 8032) and a fixed
RSA key, so these tests need no cryptography library: the server checks keys
with the standard library only. tests/test_e2e.py encrypts for real.
"""

import base64
import hashlib

import pytest
from conftest import assert_error

from handlers import keys
from oxc_wsgi import routes

#: RFC 7748 6.1: Alice's and Bob's X25519 public keys.
X25519_ALICE = base64.b64encode(
    bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
).decode()
X25519_BOB = base64.b64encode(
    bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
).decode()
#: RFC 8032 7.1, tests 1 and 2: Ed25519 public keys.
ED25519_ONE = base64.b64encode(
    bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
).decode()
ED25519_TWO = base64.b64encode(
    bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
).decode()
RSA_2048 = """-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAp4YvFVRXyLlzT++eD8xf
Yb4tsEkxEIW2N2f3jIehtP9mSm6KeIQ1y/nzGXNGM4jaySn3LafShPmJnRapIVnV
+bA32SKy3HIkTHcwDoBy8KxDipE9KrBMfhzg78syJrjqAQp/YyRVAXD2Qib4STze
ebXguzS9l3JxgqAWzkTr5Dpw+L8fs0HVR1XhZD4MZa22Yon+xvZUfBuoUYtDevfV
R4/bQ60jyILDAq6xiLWl8d5zLPeeBxGutj8NnsRmZQ67/wWkUVZdHkta78qbhGp2
OmaPy47/yKRw74sbObBh/RZgV2P4O5jIUzqbElniPvZii5XFhu/lBQx//cGWtQAz
zQIDAQAB
-----END PUBLIC KEY-----
"""
RSA_1024 = """-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDMQFH6DaaABEGfCwZCpQ4GgkOx
6uvnpVJKg+K7YM4FmoYW6S1NSlOmoeKcnTW6zA5Oi6hnhCcajC2ZzY0uV/3Xcl01
8pv10ykX9phaRvnpEttrhKDLhQW/C7WW9TnANeUW/DdPbeG0nhqc9PMtGOJj9dJ4
xLLYcnpBy83IileZ2QIDAQAB
-----END PUBLIC KEY-----
"""


def b64(data):
    return base64.b64encode(data).decode()


def publish(client, user, algorithm="x25519", public_key=X25519_ALICE, device_id="phone", status=201, **extra):
    body = dict(device_id=device_id, algorithm=algorithm, public_key=public_key, **extra)
    return client.post_json("/api/keys", body, headers=user.headers, status=status)


@pytest.fixture
def alice(client):
    return client.user("alice")


@pytest.fixture
def bob(client):
    return client.user("bob")


# -- publishing and listing ---------------------------------------------------------


def test_a_published_key_is_listed_for_its_owner_and_for_everyone_else(client, alice, bob):
    key = publish(client, alice).json["data"]
    assert key["user_id"] == alice.id and key["device_id"] == "phone" and key["algorithm"] == "x25519"
    assert key["public_key"] == X25519_ALICE and key["revoked_at"] is None
    assert key["fingerprint"] == hashlib.sha256(base64.b64decode(X25519_ALICE)).hexdigest()
    assert client.get("/api/keys/me", headers=alice.headers).json["data"] == [key]
    assert client.get(f"/api/users/{alice.id}/keys", headers=bob.headers).json["data"] == [key]
    assert client.get(f"/api/keys/{key['id']}", headers=bob.headers).json["data"] == key


def test_each_device_publishes_an_agreement_and_a_signing_key(client, alice, bob):
    publish(client, alice, "x25519", X25519_ALICE, "phone")
    publish(client, alice, "ed25519", ED25519_ONE, "phone")
    publish(client, alice, "x25519", X25519_BOB, "laptop")
    publish(client, alice, "ed25519", ED25519_TWO, "laptop")
    current = client.get(f"/api/users/{alice.id}/keys", headers=bob.headers).json["data"]
    assert sorted((k["device_id"], k["algorithm"]) for k in current) == [
        ("laptop", "ed25519"),
        ("laptop", "x25519"),
        ("phone", "ed25519"),
        ("phone", "x25519"),
    ]


def test_rsa_keys_are_taken_as_pem_or_base64_der_and_kept_as_der(client, alice):
    key = publish(client, alice, "rsa-oaep-sha256", RSA_2048).json["data"]
    der = base64.b64decode("".join(RSA_2048.strip().splitlines()[1:-1]))
    assert base64.b64decode(key["public_key"]) == der
    publish(client, alice, "rsa-oaep-sha256", b64(der), "tablet", status=409)  # the same key again


def test_rotating_a_key_revokes_the_old_one_which_stays_readable(client, alice, bob):
    old = publish(client, alice).json["data"]
    new = publish(client, alice, public_key=X25519_BOB, replaces=old["id"]).json
    assert new["message"] == "Key rotated" and new["data"]["replaces"] == old["id"]
    current = client.get(f"/api/users/{alice.id}/keys", headers=bob.headers).json["data"]
    assert [k["id"] for k in current] == [new["data"]["id"]]
    mine = {k["id"]: k for k in client.get("/api/keys/me", headers=alice.headers).json["data"]}
    assert mine[old["id"]]["revoked_at"] is not None and mine[old["id"]]["replaced_by"] == new["data"]["id"]
    assert client.get(f"/api/keys/{old['id']}", headers=bob.headers).json["data"]["revoked_at"] is not None


def test_revoking_a_key_removes_it_from_the_current_ones(client, alice, bob):
    key = publish(client, alice).json["data"]
    revoked = client.delete(f"/api/keys/{key['id']}", headers=alice.headers).json["data"]
    assert revoked["revoked_at"] is not None
    assert client.get(f"/api/users/{alice.id}/keys", headers=bob.headers).json["data"] == []
    assert client.get("/api/keys/me", headers=alice.headers).json["data"][0]["revoked_at"] is not None
    publish(client, alice)  # the device may publish again once nothing is live


def test_the_server_has_no_way_to_encrypt_decrypt_or_generate_keys():
    paths = [route.template for route in routes("/api")]
    assert not [path for path in paths if any(word in path for word in ("encrypt", "decrypt", "generate"))]
    key_routes = {(route.method, route.template) for route in routes("/api") if "keys" in route.template}
    assert key_routes == {
        ("POST", "/api/keys"),
        ("GET", "/api/keys/me"),
        ("GET", "/api/keys/{key_id}"),
        ("DELETE", "/api/keys/{key_id}"),
        ("GET", "/api/users/{user_id}/keys"),
    }


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("post", "/api/keys"),
        ("get", "/api/keys/me"),
        ("get", "/api/keys/x"),
        ("delete", "/api/keys/x"),
        ("get", "/api/users/x/keys"),
    ],
)
def test_every_key_endpoint_needs_a_token(client, method, path):
    response = getattr(client, method)(path, status=401)
    assert_error(response, 401)


PRIVATE_PEM = (
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n"
    "-----END PRIVATE KEY-----\n"
)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"algorithm": "x25519", "public_key": X25519_ALICE}, "device_id"),
        ({"device_id": "has space", "algorithm": "x25519", "public_key": X25519_ALICE}, "device_id"),
        ({"device_id": "d", "algorithm": "dsa", "public_key": X25519_ALICE}, "algorithm"),
        ({"device_id": "d", "algorithm": "x25519"}, "public_key"),
        ({"device_id": "d", "algorithm": "x25519", "public_key": 5}, "public_key"),
        ({"device_id": "d", "algorithm": "x25519", "public_key": "not base64!"}, "base64"),
        ({"device_id": "d", "algorithm": "x25519", "public_key": b64(b"\x09" * 31)}, "32-byte"),
        ({"device_id": "d", "algorithm": "x25519", "public_key": b64(bytes(32))}, "low-order"),
        ({"device_id": "d", "algorithm": "ed25519", "public_key": b64(b"\x02" + bytes(31))}, "not a point"),
        ({"device_id": "d", "algorithm": "ed25519", "public_key": b64(bytes(range(64)))}, "private key"),
        (
            {
                "device_id": "d",
                "algorithm": "x25519",
                "public_key": b64(bytes.fromhex("302e020100300506032b656e04220420") + bytes(32)),
            },
            "private key",
        ),
        ({"device_id": "d", "algorithm": "ed25519", "public_key": PRIVATE_PEM}, "private key"),
        ({"device_id": "d", "algorithm": "rsa-oaep-sha256", "public_key": PRIVATE_PEM}, "private key"),
        ({"device_id": "d", "algorithm": "rsa-oaep-sha256", "public_key": RSA_1024}, "2048"),
        ({"device_id": "d", "algorithm": "rsa-oaep-sha256", "public_key": X25519_ALICE}, "RSA public key"),
        ({"device_id": "d", "algorithm": "x25519", "public_key": "A" * 9000}, "at most"),
    ],
)
def test_bad_keys_and_anything_like_a_private_key_are_400(client, alice, body, message):
    assert_error(client.post_json("/api/keys", body, headers=alice.headers, status=400), 400, message)


def test_a_pkcs8_rsa_private_key_in_der_is_refused_as_private(client, alice):
    # SEQUENCE { INTEGER 0, ... }: what every private key structure starts with.
    der = bytes.fromhex("30820122020100") + bytes(0x122 - 3)
    response = publish(client, alice, "rsa-oaep-sha256", b64(der), status=400)
    assert_error(response, 400, "private key")


def test_a_second_live_key_for_a_device_needs_replaces(client, alice):
    first = publish(client, alice).json["data"]
    response = publish(client, alice, public_key=X25519_BOB, status=409)
    assert_error(response, 409, "replaces")
    assert first["id"] in response.json["message"]


def test_replaces_must_name_my_live_key_of_the_same_device_and_algorithm(client, alice, bob):
    mine = publish(client, alice).json["data"]
    theirs = publish(client, bob, public_key=X25519_BOB).json["data"]
    signing = publish(client, alice, "ed25519", ED25519_ONE).json["data"]
    assert_error(publish(client, alice, public_key=X25519_BOB, replaces=theirs["id"], status=400), 400, "no key")
    assert_error(publish(client, alice, public_key=X25519_BOB, replaces="nope", status=400), 400, "no key")
    assert_error(
        publish(client, alice, public_key=X25519_BOB, replaces=signing["id"], status=400),
        400,
        "same device and algorithm",
    )
    client.delete(f"/api/keys/{mine['id']}", headers=alice.headers)
    assert_error(publish(client, alice, public_key=X25519_BOB, replaces=mine["id"], status=400), 400, "revoked")


def test_only_the_owner_revokes_and_only_once(client, alice, bob):
    key = publish(client, alice).json["data"]
    assert_error(client.delete(f"/api/keys/{key['id']}", headers=bob.headers, status=403), 403, "owner")
    client.delete(f"/api/keys/{key['id']}", headers=alice.headers)
    assert_error(client.delete(f"/api/keys/{key['id']}", headers=alice.headers, status=400), 400, "already")
    assert_error(client.delete("/api/keys/unknown", headers=alice.headers, status=404), 404)


def test_unknown_users_and_keys_are_404(client, alice):
    assert_error(client.get("/api/users/nobody/keys", headers=alice.headers, status=404), 404, "nobody")
    assert_error(client.get("/api/keys/nokey", headers=alice.headers, status=404), 404, "nokey")


def test_live_keys_per_user_are_limited(client, alice, monkeypatch):
    monkeypatch.setattr(keys, "MAX_LIVE_KEYS", 2)
    publish(client, alice, device_id="a")
    publish(client, alice, public_key=X25519_BOB, device_id="b")
    assert_error(publish(client, alice, "ed25519", ED25519_ONE, "c", status=409), 409, "revoke some")


def test_the_point_checks_accept_every_rfc_vector():
    for value in (X25519_ALICE, X25519_BOB):
        assert len(keys.check_public_key("x25519", value)) == 32
    for value in (ED25519_ONE, ED25519_TWO):
        assert len(keys.check_public_key("ed25519", value)) == 32
    assert 290 < len(keys.check_public_key("rsa-oaep-sha256", RSA_2048)) < 300


# -- encrypted messages: shape only --------------------------------------------------------


@pytest.fixture
def signing_key(client, alice):
    return publish(client, alice, "ed25519", ED25519_ONE).json["data"]


@pytest.fixture
def chat(client, alice, bob):
    return client.post_json("/api/chats/group", {"name": "secret", "members": [bob.id]}, headers=alice.headers).json[
        "data"
    ]


def envelope(signing_key, **changes):
    value = {
        "v": 1,
        "sender_key_id": signing_key["id"],
        "ephemeral_key": X25519_BOB,
        "nonce": b64(bytes(12)),
        "ciphertext": b64(b"opaque bytes, not text" * 2),
        "recipients": [
            {"key_id": "k1", "nonce": b64(bytes(12)), "wrapped_key": b64(bytes(48))},
            {"key_id": "k2", "wrapped_key": b64(bytes(256))},
        ],
        "signature": b64(bytes(64)),
    }
    value.update(changes)
    return {name: item for name, item in value.items() if item is not None}


def test_an_envelope_is_stored_and_forwarded_as_it_came(client, alice, bob, chat, signing_key):
    sent = envelope(signing_key)
    message = client.post_json(
        f"/api/chats/{chat['id']}/messages", {"encrypted": sent}, headers=alice.headers, status=201
    ).json["data"]
    assert message["encrypted"] is True and message["content"] is None and message["envelope"] == sent
    shown = client.get(f"/api/chats/{chat['id']}/messages", headers=bob.headers).json["messages"][-1]
    assert shown["envelope"] == sent and shown["mentions"] == []


def test_encrypted_messages_are_never_found_by_search(client, alice, chat, signing_key):
    client.post_json(f"/api/chats/{chat['id']}/messages", {"encrypted": envelope(signing_key)}, headers=alice.headers)
    for word in ("opaque", "k1", signing_key["id"].split("-")[0]):
        assert client.get("/api/search", {"q": word}, headers=alice.headers).json["messages"] == []


def test_an_encrypted_message_cannot_be_edited_and_deleting_drops_the_envelope(client, alice, chat, signing_key):
    message = client.post_json(
        f"/api/chats/{chat['id']}/messages", {"encrypted": envelope(signing_key)}, headers=alice.headers
    ).json["data"]
    url = f"/api/chats/{chat['id']}/messages/{message['id']}"
    assert_error(client.patch_json(url, {"content": "plain"}, headers=alice.headers, status=400), 400, "encrypted")
    client.delete(url, headers=alice.headers)
    tombstone = client.get(f"/api/chats/{chat['id']}/messages", headers=alice.headers).json["messages"][-1]
    assert tombstone["deleted"] is True and tombstone["envelope"] is None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"v": 2}, "encrypted.v"),
        ({"nonce": b64(bytes(11))}, "encrypted.nonce"),
        ({"nonce": None}, "encrypted.nonce"),
        ({"signature": b64(bytes(63))}, "encrypted.signature"),
        ({"ephemeral_key": "AAAA"}, "encrypted.ephemeral_key"),
        ({"ciphertext": "not base64"}, "encrypted.ciphertext"),
        ({"ciphertext": b64(bytes(8))}, "encrypted.ciphertext"),
        ({"ciphertext": b64(bytes(6000))}, "encrypted.ciphertext"),
        ({"recipients": []}, "encrypted.recipients"),
        ({"recipients": [{"key_id": "k1"}]}, "recipients[0]"),
        ({"recipients": [{"key_id": "k1", "wrapped_key": b64(bytes(48)), "plaintext": "oops"}]}, "recipients[0]"),
        ({"recipients": [{"key_id": "k", "wrapped_key": b64(bytes(48))}] * 2}, "repeats"),
        ({"recipients": [{"key_id": "k", "wrapped_key": b64(bytes(4))}]}, "wrapped_key"),
        ({"text": "smuggled"}, "unknown fields"),
        ({"sender_key_id": "nope"}, "live Ed25519 key of yours"),
    ],
)
def test_malformed_envelopes_are_400(client, alice, chat, signing_key, changes, message):
    body = {"encrypted": envelope(signing_key, **changes)}
    response = client.post_json(f"/api/chats/{chat['id']}/messages", body, headers=alice.headers, status=400)
    assert_error(response, 400, message)


def test_the_sender_key_must_be_my_live_signing_key(client, alice, bob, chat, signing_key):
    url = f"/api/chats/{chat['id']}/messages"
    # Bob may not sign with Alice's key, nor with an agreement key of his own.
    bobs = publish(client, bob, public_key=X25519_BOB).json["data"]
    for user, key_id in ((bob, signing_key["id"]), (bob, bobs["id"])):
        body = {"encrypted": envelope(signing_key, sender_key_id=key_id)}
        assert_error(client.post_json(url, body, headers=user.headers, status=400), 400, "Ed25519 key of yours")
    client.delete(f"/api/keys/{signing_key['id']}", headers=alice.headers)
    revoked = client.post_json(url, {"encrypted": envelope(signing_key)}, headers=alice.headers, status=400)
    assert_error(revoked, 400, "live")


def test_content_and_an_envelope_together_are_refused(client, alice, chat, signing_key):
    body = {"content": "plain text too", "encrypted": envelope(signing_key)}
    response = client.post_json(f"/api/chats/{chat['id']}/messages", body, headers=alice.headers, status=400)
    assert_error(response, 400, "not both")
