"""End-to-end encryption for oxc chats, done by the clients: the server only sees envelopes.

Every device holds two private keys that never leave it, X25519 (to receive)
and Ed25519 (to sign), and publishes their public halves in the server's key
directory (``POST /api/keys``). To send, a client encrypts the message once
with a fresh AES-256-GCM content key and wraps that key for each current
agreement key of every member of the chat (its own devices included):

* X25519: one ephemeral key pair per message; for each recipient key,
  ECDH with it, HKDF-SHA256 (salt: both public keys; info names the key id)
  gives a key-encryption key, and AES-256-GCM wraps the content key;
* RSA-OAEP-SHA256, for the recipient keys of clients that insist on RSA.

The sender signs the canonical JSON of the envelope together with the chat
id with its Ed25519 key, so an envelope cannot be altered or moved to
another chat. A reader verifies that signature with the sender's published
key (which must belong to the message's author) *before* anything is
decrypted, then unwraps the content key with its own device's private key.

Usage, with ``oxc_client`` (or any client with the same ``call``)::

    import oxc_client, oxc_e2e

    chat = oxc_client.Client("http://127.0.0.1:5000")
    chat.login("alice", "correct horse battery")
    api = oxc_e2e.Api(chat)
    device = oxc_e2e.Device.generate("laptop")      # keep device.private_bytes() safe
    api.publish(device)                             # POST /keys twice; remembers the key ids
    api.send(chat_id, "meet at noon", device)       # encrypts for every member device
    text = api.read(message, device)                # verifies, then decrypts (str)

or the pure functions ``encrypt`` and ``decrypt`` with key records fetched
however the client likes. The module is one file, standard library plus the
``cryptography`` package (the ``e2e`` extra: ``pip install 'oxc[e2e]'``),
which is imported only when needed, so the server never depends on it.

What it does not do: forward secrecy (a device's X25519 private key opens
every message wrapped for it until the key is rotated, so rotate keys now and
then); replay protection (a server could deliver the same envelope twice in
the same chat); proving that a published key is really the person's (compare
``fingerprint`` out of band).
"""

import base64
import json
import os

VERSION = 1
NONCE_BYTES = 12
KEY_BYTES = 32
AGREEMENT_ALGORITHMS = ("x25519", "rsa-oaep-sha256")

__all__ = [
    "Api",
    "DecryptionError",
    "Device",
    "MissingCryptography",
    "decrypt",
    "encrypt",
    "open_message",
    "recipient_keys",
    "verify",
]


class MissingCryptography(ImportError):
    """The ``cryptography`` package is not installed."""


class DecryptionError(Exception):
    """The envelope is not for this device, or its signature or ciphertext does not verify."""


def _crypto():
    """The parts of ``cryptography`` used here, imported on first use."""
    try:
        from cryptography.exceptions import InvalidSignature, InvalidTag
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, x25519
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError as exc:
        raise MissingCryptography(
            "oxc_e2e needs the 'cryptography' package: pip install 'oxc[e2e]' "
            f"(or pip install cryptography); import failed: {exc}"
        ) from exc
    return {
        "InvalidSignature": InvalidSignature,
        "InvalidTag": InvalidTag,
        "hashes": hashes,
        "serialization": serialization,
        "ed25519": ed25519,
        "padding": padding,
        "rsa": rsa,
        "x25519": x25519,
        "AESGCM": AESGCM,
        "HKDF": HKDF,
    }


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _unb64(text):
    return base64.b64decode(text, validate=True)


def _raw_public(key):
    c = _crypto()
    return key.public_bytes(c["serialization"].Encoding.Raw, c["serialization"].PublicFormat.Raw)


def canonical(value):
    """The bytes that are signed: JSON with sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _signed_bytes(envelope, chat_id):
    unsigned = {name: value for name, value in envelope.items() if name != "signature"}
    return b"oxc-e2e v1 signature\n" + canonical({"chat_id": chat_id, "envelope": unsigned})


def _content_aad(chat_id, sender_key_id):
    return f"oxc-e2e v1 message|{chat_id}|{sender_key_id}".encode()


def _wrap_aad(chat_id, sender_key_id, key_id):
    return f"oxc-e2e v1 wrap|{chat_id}|{sender_key_id}|{key_id}".encode()


def _key_encryption_key(shared, ephemeral_public, recipient_public, key_id):
    c = _crypto()
    return c["HKDF"](
        algorithm=c["hashes"].SHA256(),
        length=KEY_BYTES,
        salt=ephemeral_public + recipient_public,
        info=b"oxc-e2e v1 key wrap " + key_id.encode(),
    ).derive(shared)


def _oaep():
    c = _crypto()
    return c["padding"].OAEP(
        mgf=c["padding"].MGF1(algorithm=c["hashes"].SHA256()), algorithm=c["hashes"].SHA256(), label=None
    )


# =============================================================================
# Devices
# =============================================================================


class Device:
    """One client device: its private keys (kept here, never sent) and the ids of its published keys."""

    def __init__(self, device_id, agreement_private, signing_private, rsa_private=None):
        self.device_id = device_id
        self.agreement_private = agreement_private
        self.signing_private = signing_private
        self.rsa_private = rsa_private
        self.key_ids = {}  # algorithm -> key id in the directory, once published

    @classmethod
    def generate(cls, device_id, rsa_bits=None):
        """A device with fresh keys (and an RSA key of ``rsa_bits`` for a client that insists on RSA)."""
        c = _crypto()
        rsa_private = None
        if rsa_bits:
            rsa_private = c["rsa"].generate_private_key(public_exponent=65537, key_size=rsa_bits)
        return cls(
            device_id, c["x25519"].X25519PrivateKey.generate(), c["ed25519"].Ed25519PrivateKey.generate(), rsa_private
        )

    def private_bytes(self):
        """The raw private keys as base64, for the client to keep (encrypted at rest, ideally)."""
        c = _crypto()
        raw = c["serialization"]
        data = {"device_id": self.device_id, "key_ids": dict(self.key_ids)}
        for name, key in (("x25519", self.agreement_private), ("ed25519", self.signing_private)):
            data[name] = _b64(key.private_bytes(raw.Encoding.Raw, raw.PrivateFormat.Raw, raw.NoEncryption()))
        if self.rsa_private is not None:
            data["rsa"] = _b64(
                self.rsa_private.private_bytes(raw.Encoding.DER, raw.PrivateFormat.PKCS8, raw.NoEncryption())
            )
        return data

    @classmethod
    def from_private_bytes(cls, data):
        """The device ``private_bytes`` described."""
        c = _crypto()
        rsa_private = None
        if data.get("rsa"):
            rsa_private = c["serialization"].load_der_private_key(_unb64(data["rsa"]), password=None)
        device = cls(
            data["device_id"],
            c["x25519"].X25519PrivateKey.from_private_bytes(_unb64(data["x25519"])),
            c["ed25519"].Ed25519PrivateKey.from_private_bytes(_unb64(data["ed25519"])),
            rsa_private,
        )
        device.key_ids = dict(data.get("key_ids", {}))
        return device

    def key_bodies(self):
        """The bodies to POST to /keys: the public halves only."""
        c = _crypto()
        bodies = [
            {
                "device_id": self.device_id,
                "algorithm": "x25519",
                "public_key": _b64(_raw_public(self.agreement_private.public_key())),
            },
            {
                "device_id": self.device_id,
                "algorithm": "ed25519",
                "public_key": _b64(_raw_public(self.signing_private.public_key())),
            },
        ]
        if self.rsa_private is not None:
            der = self.rsa_private.public_key().public_bytes(
                c["serialization"].Encoding.DER, c["serialization"].PublicFormat.SubjectPublicKeyInfo
            )
            bodies.append({"device_id": self.device_id, "algorithm": "rsa-oaep-sha256", "public_key": _b64(der)})
        return bodies


def recipient_keys(keys):
    """The key records, of those given, that a message can be encrypted to (current agreement keys)."""
    return [key for key in keys if key.get("algorithm") in AGREEMENT_ALGORITHMS and not key.get("revoked_at")]


# =============================================================================
# Encrypting and decrypting
# =============================================================================


def encrypt(plaintext, chat_id, sender, recipients):
    """The envelope of ``plaintext`` (str or bytes) for ``recipients`` (key records) in ``chat_id``.

    ``sender`` is the Device whose published Ed25519 key signs it. Include
    the sender's own devices among the recipients to read it back later.
    """
    c = _crypto()
    sender_key_id = sender.key_ids.get("ed25519")
    if not sender_key_id:
        raise ValueError("The sender's Ed25519 key has no id yet: publish the device's keys first")
    recipients = recipient_keys(recipients)
    if not recipients:
        raise ValueError("No current X25519 or RSA-OAEP key among the recipients")
    if isinstance(plaintext, str):
        plaintext = plaintext.encode("utf-8")
    content_key = c["AESGCM"].generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    envelope = {"v": VERSION, "sender_key_id": sender_key_id, "nonce": _b64(nonce)}
    ephemeral = ephemeral_public = None
    if any(key["algorithm"] == "x25519" for key in recipients):
        ephemeral = c["x25519"].X25519PrivateKey.generate()
        ephemeral_public = _raw_public(ephemeral.public_key())
        envelope["ephemeral_key"] = _b64(ephemeral_public)
    wraps = []
    for key in recipients:
        aad = _wrap_aad(chat_id, sender_key_id, key["id"])
        if key["algorithm"] == "x25519":
            public = _unb64(key["public_key"])
            shared = ephemeral.exchange(c["x25519"].X25519PublicKey.from_public_bytes(public))
            kek = _key_encryption_key(shared, ephemeral_public, public, key["id"])
            wrap_nonce = os.urandom(NONCE_BYTES)
            wraps.append(
                {
                    "key_id": key["id"],
                    "nonce": _b64(wrap_nonce),
                    "wrapped_key": _b64(c["AESGCM"](kek).encrypt(wrap_nonce, content_key, aad)),
                }
            )
        else:
            public = c["serialization"].load_der_public_key(_unb64(key["public_key"]))
            wraps.append({"key_id": key["id"], "wrapped_key": _b64(public.encrypt(content_key, _oaep()))})
    envelope["recipients"] = wraps
    envelope["ciphertext"] = _b64(
        c["AESGCM"](content_key).encrypt(nonce, plaintext, _content_aad(chat_id, sender_key_id))
    )
    envelope["signature"] = _b64(sender.signing_private.sign(_signed_bytes(envelope, chat_id)))
    return envelope


def verify(envelope, chat_id, sender_key):
    """Raise DecryptionError unless ``sender_key`` (a key record) signed ``envelope`` for ``chat_id``."""
    c = _crypto()
    if sender_key.get("id") != envelope.get("sender_key_id") or sender_key.get("algorithm") != "ed25519":
        raise DecryptionError("The sender key given is not the Ed25519 key that the envelope names")
    try:
        public = c["ed25519"].Ed25519PublicKey.from_public_bytes(_unb64(sender_key["public_key"]))
        public.verify(_unb64(envelope["signature"]), _signed_bytes(envelope, chat_id))
    except (c["InvalidSignature"], ValueError, KeyError, TypeError) as exc:
        raise DecryptionError(
            "The envelope's signature does not verify: it was altered, moved to another chat, or not signed by this key"
        ) from exc


def decrypt(envelope, chat_id, recipient, sender_key):
    """The plaintext bytes of ``envelope``, after verifying its signature with ``sender_key``.

    ``recipient`` is this Device; ``sender_key`` the key record of
    ``envelope["sender_key_id"]`` (``GET /keys/{id}``).
    """
    c = _crypto()
    verify(envelope, chat_id, sender_key)
    sender_key_id = envelope["sender_key_id"]
    mine = {key_id: algorithm for algorithm, key_id in recipient.key_ids.items()}
    wrap = next((entry for entry in envelope["recipients"] if entry.get("key_id") in mine), None)
    if wrap is None:
        raise DecryptionError("The message was not encrypted for this device")
    try:
        aad = _wrap_aad(chat_id, sender_key_id, wrap["key_id"])
        if mine[wrap["key_id"]] == "x25519":
            ephemeral_public = _unb64(envelope["ephemeral_key"])
            shared = recipient.agreement_private.exchange(
                c["x25519"].X25519PublicKey.from_public_bytes(ephemeral_public)
            )
            own_public = _raw_public(recipient.agreement_private.public_key())
            kek = _key_encryption_key(shared, ephemeral_public, own_public, wrap["key_id"])
            content_key = c["AESGCM"](kek).decrypt(_unb64(wrap["nonce"]), _unb64(wrap["wrapped_key"]), aad)
        elif mine[wrap["key_id"]] == "rsa-oaep-sha256" and recipient.rsa_private is not None:
            content_key = recipient.rsa_private.decrypt(_unb64(wrap["wrapped_key"]), _oaep())
        else:
            raise DecryptionError("This device has no private key for the wrap addressed to it")
        return c["AESGCM"](content_key).decrypt(
            _unb64(envelope["nonce"]), _unb64(envelope["ciphertext"]), _content_aad(chat_id, sender_key_id)
        )
    except (c["InvalidTag"], ValueError, KeyError, TypeError) as exc:
        raise DecryptionError("The envelope does not decrypt with this device's key") from exc


def open_message(message, recipient, sender_key):
    """The text (str) of an encrypted chat message as the API shows it.

    Checks, beyond ``decrypt``, that the signing key belongs to the message's
    author and was not revoked before the message was sent.
    """
    if not message.get("encrypted") or not message.get("envelope"):
        raise DecryptionError("The message is not encrypted")
    if sender_key.get("user_id") != message.get("user_id"):
        raise DecryptionError("The signing key does not belong to the message's author")
    revoked_at = sender_key.get("revoked_at")
    if revoked_at and message.get("created_at", "") > revoked_at:
        raise DecryptionError("The message was signed with a key revoked before it was sent")
    return decrypt(message["envelope"], message["chat_id"], recipient, sender_key).decode("utf-8")


# =============================================================================
# Talking to the server
# =============================================================================


class Api:
    """The few calls end-to-end encryption needs, through ``client``.

    ``client`` is anything with ``call(method, path, body=None)`` that returns
    the parsed answer and raises on a refusal: an ``oxc_client.Client``.
    """

    def __init__(self, client):
        self.client = client

    def publish(self, device):
        """Publish the device's public keys and remember their ids on it."""
        for body in device.key_bodies():
            key = self.client.call("POST", "/keys", body)["data"]
            device.key_ids[key["algorithm"]] = key["id"]
        return device

    def chat_keys(self, chat_id):
        """The current agreement keys of every device of every member of the chat."""
        keys = []
        for member in self.client.call("GET", f"/chats/{chat_id}/members")["data"]:
            keys += recipient_keys(self.client.call("GET", f"/users/{member['user_id']}/keys")["data"])
        return keys

    def key(self, key_id):
        """One key record by id (revoked ones too)."""
        return self.client.call("GET", f"/keys/{key_id}")["data"]

    def send(self, chat_id, plaintext, device, **extra):
        """Encrypt for every member device of the chat and send; the message as the server stored it."""
        envelope = encrypt(plaintext, chat_id, device, self.chat_keys(chat_id))
        return self.client.call("POST", f"/chats/{chat_id}/messages", dict(extra, encrypted=envelope))["data"]

    def read(self, message, device):
        """Verify and decrypt a chat message (a dict as the API shows it); its text."""
        return open_message(message, device, self.key(message["envelope"]["sender_key_id"]))
