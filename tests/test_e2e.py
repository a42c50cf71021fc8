"""End-to-end encryption for real: oxc_e2e on the clients, the real app in between.

Users publish their devices' public keys, encrypt for every member device
of a chat, and read each other's messages; the server stores envelopes it
cannot read, and nothing in its data directory holds the text or a private
key. Needs the ``cryptography`` package (the ``e2e`` extra).
"""

import base64
import copy
import sys

import pytest

pytest.importorskip("cryptography", reason="oxc_e2e needs the 'cryptography' package (pip install '.[e2e]')")

from conftest import stored_bytes  # noqa: E402
from server import Server  # noqa: E402

import oxc_e2e  # noqa: E402
from oxc_e2e import Api, DecryptionError, Device  # noqa: E402

SECRET = "the eagle lands at noon \N{EAGLE}"


class Through:
    """What oxc_e2e.Api calls: ``call(method, path, body)`` through the webtest client, as ``user``."""

    def __init__(self, client, user):
        self.client = client
        self.user = user

    def call(self, method, path, body=None):
        url = f"/api{path}"
        if body is None:
            response = getattr(self.client, method.lower())(url, headers=self.user.headers)
        else:
            response = getattr(self.client, f"{method.lower()}_json")(url, body, headers=self.user.headers)
        return response.json


@pytest.fixture
def world(client):
    """Alice (a phone), Bob (a laptop and a phone), Carol (an RSA-insisting client) in one group."""
    users = {name: client.user(name) for name in ("alice", "bob", "carol")}
    apis = {name: Api(Through(client, user)) for name, user in users.items()}
    devices = {
        "alice": [apis["alice"].publish(Device.generate("phone"))],
        "bob": [apis["bob"].publish(Device.generate("laptop")), apis["bob"].publish(Device.generate("phone"))],
        "carol": [apis["carol"].publish(Device.generate("desktop", rsa_bits=2048))],
    }
    chat = client.post_json(
        "/api/chats/group", {"name": "plans", "members": ["bob", "carol"]}, headers=users["alice"].headers
    ).json["data"]
    return users, apis, devices, chat


def test_members_read_each_others_encrypted_messages_on_every_device(client, world):
    users, apis, devices, chat = world
    sent = apis["alice"].send(chat["id"], SECRET, devices["alice"][0])
    assert sent["encrypted"] is True and sent["content"] is None
    # One wrap per current agreement key: Alice 1, Bob 2, Carol 2 (X25519 and RSA-OAEP).
    assert len(sent["envelope"]["recipients"]) == 5
    history = client.get(f"/api/chats/{chat['id']}/messages", headers=users["bob"].headers).json["messages"]
    received = history[-1]
    for name, owned in devices.items():
        for device in owned:
            assert apis[name].read(received, device) == SECRET
    reply = apis["bob"].send(chat["id"], "copy that", devices["bob"][1])
    assert apis["alice"].read(reply, devices["alice"][0]) == "copy that"


def test_nothing_stored_holds_plaintext_or_a_private_key(client, world, tmp_path):
    users, apis, devices, chat = world
    apis["alice"].send(chat["id"], SECRET, devices["alice"][0])
    apis["carol"].send(chat["id"], "second secret, in reply", devices["carol"][0])
    answer = client.get(f"/api/chats/{chat['id']}/messages", headers=users["bob"].headers).body
    private = [
        base64.b64decode(value)
        for owned in devices.values()
        for device in owned
        for name, value in device.private_bytes().items()
        if name in ("x25519", "ed25519", "rsa")
    ]
    needles = [SECRET.encode(), b"eagle", b"second secret"] + private + [base64.b64encode(p) for p in private]
    stored = stored_bytes(client, tmp_path / "data")
    assert b"sender_key_id" in stored  # the envelopes are there...
    for needle in needles:  # ...and nothing they hide
        assert needle not in stored and needle not in answer


def test_search_does_not_find_encrypted_messages(client, world):
    users, apis, devices, chat = world
    apis["alice"].send(chat["id"], SECRET, devices["alice"][0])
    assert client.get("/api/search", {"q": "eagle"}, headers=users["bob"].headers).json["messages"] == []


def test_a_device_that_was_not_a_recipient_cannot_read(client, world):
    users, apis, devices, chat = world
    message = apis["alice"].send(chat["id"], SECRET, devices["alice"][0])
    late = apis["bob"].publish(Device.generate("tablet"))
    with pytest.raises(DecryptionError, match="not encrypted for this device"):
        apis["bob"].read(message, late)


def test_a_tampered_or_moved_envelope_is_refused_before_decrypting(client, world):
    users, apis, devices, chat = world
    message = apis["alice"].send(chat["id"], SECRET, devices["alice"][0])
    sender_key = apis["bob"].key(message["envelope"]["sender_key_id"])
    bob = devices["bob"][0]

    altered = copy.deepcopy(message)
    ciphertext = bytearray(base64.b64decode(altered["envelope"]["ciphertext"]))
    ciphertext[0] ^= 1
    altered["envelope"]["ciphertext"] = base64.b64encode(bytes(ciphertext)).decode()
    with pytest.raises(DecryptionError, match="signature"):
        oxc_e2e.open_message(altered, bob, sender_key)

    moved = dict(message, chat_id="another-chat")
    with pytest.raises(DecryptionError, match="signature"):
        oxc_e2e.open_message(moved, bob, sender_key)

    dropped = copy.deepcopy(message)
    dropped["envelope"]["recipients"] = dropped["envelope"]["recipients"][1:]
    with pytest.raises(DecryptionError, match="signature"):
        oxc_e2e.open_message(dropped, bob, sender_key)


def test_a_signature_only_counts_from_the_authors_own_live_key(client, world):
    users, apis, devices, chat = world
    message = apis["alice"].send(chat["id"], SECRET, devices["alice"][0])
    bob = devices["bob"][0]
    carols_key = apis["bob"].key(devices["carol"][0].key_ids["ed25519"])
    with pytest.raises(DecryptionError, match="not the Ed25519 key"):
        oxc_e2e.decrypt(message["envelope"], chat["id"], bob, carols_key)
    alices_key = apis["bob"].key(message["envelope"]["sender_key_id"])
    with pytest.raises(DecryptionError, match="author"):
        oxc_e2e.open_message(dict(message, user_id=users["carol"].id), bob, alices_key)
    revoked_early = dict(alices_key, revoked_at="2000-01-01T00:00:00+00:00")
    with pytest.raises(DecryptionError, match="revoked"):
        oxc_e2e.open_message(message, bob, revoked_early)


def test_after_a_rotation_old_messages_still_verify_and_new_ones_use_the_new_key(client, world):
    users, apis, devices, chat = world
    alice = devices["alice"][0]
    old_message = apis["alice"].send(chat["id"], "before", alice)
    fresh = Device.generate("phone")
    for body in fresh.key_bodies():
        body["replaces"] = alice.key_ids[body["algorithm"]]
        fresh.key_ids[body["algorithm"]] = client.post_json(
            "/api/keys", body, headers=users["alice"].headers, status=201
        ).json["data"]["id"]
    new_message = apis["alice"].send(chat["id"], "after", fresh)
    assert apis["bob"].read(old_message, devices["bob"][0]) == "before"
    assert apis["bob"].read(new_message, devices["bob"][0]) == "after"
    assert len(new_message["envelope"]["recipients"]) == 5  # the old X25519 key is no longer current
    with pytest.raises(oxc_e2e.DecryptionError):  # the old device key was not a recipient
        apis["alice"].read(new_message, alice)


def test_a_device_survives_being_saved_and_loaded(client, world):
    users, apis, devices, chat = world
    message = apis["alice"].send(chat["id"], SECRET, devices["alice"][0])
    restored = Device.from_private_bytes(devices["carol"][0].private_bytes())
    assert restored.key_ids == devices["carol"][0].key_ids
    assert apis["carol"].read(message, restored) == SECRET


def test_without_cryptography_the_module_imports_and_says_what_to_install(monkeypatch):
    for name in [name for name in sys.modules if name == "cryptography" or name.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(oxc_e2e.MissingCryptography, match=r"pip install 'oxc\[e2e\]'"):
        Device.generate("phone")
    assert isinstance(oxc_e2e.MissingCryptography(), ImportError)


def test_two_users_exchange_an_encrypted_message_through_the_real_server(tmp_path):
    server = Server(tmp_path / "data")
    try:
        clients = {}
        for name in ("alice", "bob"):
            clients[name] = server.client()
            clients[name].register(name, "password123")
            clients[name].login(name, "password123")
        apis = {name: Api(client) for name, client in clients.items()}
        phone, laptop = apis["alice"].publish(Device.generate("phone")), apis["bob"].publish(Device.generate("laptop"))
        chat = clients["alice"].direct_chat("bob")
        sent = apis["alice"].send(chat["id"], SECRET, phone)
        received = clients["bob"].history(chat["id"])["messages"][-1]
        assert received["id"] == sent["id"] and apis["bob"].read(received, laptop) == SECRET
    finally:
        assert server.stop() == 0
