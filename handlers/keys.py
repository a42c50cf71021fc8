"""The public-key directory, and the shape of end-to-end encrypted messages.

Each user publishes public keys per device: X25519 (key agreement) and
Ed25519 (signatures), or RSA-OAEP-SHA256 for a client that insists. Anyone
signed in may fetch a user's current keys; the owner lists all of theirs,
revoked ones included, and rotates a key by publishing its successor with
``replaces``. A device has at most one live key per algorithm.

The server never receives, generates or stores a private key and has no
encrypt or decrypt endpoint: anything that looks like a private key (a PEM
"PRIVATE KEY" block, a 64-byte NaCl secret key, a PKCS#8 structure) is
refused with 400. Keys are checked with the standard library only: raw keys
must be 32 bytes (an Ed25519 key must be a point on the curve, an X25519 key
must not be one of the few low-order points), an RSA key must be a DER or PEM
SubjectPublicKeyInfo of 2048 to 16384 bits.

An encrypted chat message carries an envelope that the server stores and
forwards without reading (see ``oxc_e2e.py`` for how clients build one);
``check_envelope`` only checks its shape and sizes and that it names a live
Ed25519 key of the sender.
"""

import base64
import hashlib
import re
import uuid

from .http import BadRequest, Conflict, Forbidden, NotFound, success, views
from .http.declare import (
    KEY_PATH,
    MAX_ID,
    NOT_BLANK,
    USER_PATH,
    Choice,
    Link,
    Match,
    Text,
    array,
    endpoint,
    envelope,
    obj,
    ref,
    refuses,
    returns,
    string,
)

ALGORITHMS = ("x25519", "ed25519", "rsa-oaep-sha256")
RAW_KEY_BYTES = 32
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 16384
MAX_PUBLIC_KEY = 8192  # characters: a 16384-bit RSA key in PEM is about 2,900
MAX_LIVE_KEYS = 64
DEVICE_ID = r"[A-Za-z0-9._:-]{1,64}"

#: Base64 (RFC 4648, with padding) in general and of a given number of bytes.
BASE64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
BASE64_12 = r"[A-Za-z0-9+/]{16}"
BASE64_32 = r"[A-Za-z0-9+/]{43}="
BASE64_64 = r"[A-Za-z0-9+/]{86}=="

#: A public key for the document's examples.
EXAMPLE_X25519 = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
EXAMPLE_KEY_ID = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"

ENVELOPE_VERSION = 1
MIN_WRAPPED_KEY, MAX_WRAPPED_KEY = 16, 2048  # bytes: an AES-GCM wrap is 48, an RSA-16384 OAEP wrap 2048
CIPHERTEXT_SLACK = 1024  # bytes beyond 4 per character: tag, padding, a small wrapper (a file's key)

_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
#: u-coordinates of the X25519 points of small order (RFC 7748; Bernstein's list).
_LOW_ORDER_U = {
    0,
    1,
    _P - 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
}
_RSA_OID = bytes.fromhex("2a864886f70d010101")


def max_ciphertext_bytes(settings):
    """The largest ciphertext an envelope may carry under ``settings``."""
    return 4 * settings.max_message_length + CIPHERTEXT_SLACK


def base64_chars(size):
    """How many base64 characters ``size`` bytes take (with padding)."""
    return 4 * ((size + 2) // 3)


def _decode(value, pattern, field):
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise BadRequest(f"Field '{field}' must be base64 (RFC 4648, with padding) of the right length")
    return base64.b64decode(value, validate=True)


# =============================================================================
# Checking public keys (standard library only)
# =============================================================================


def _looks_private(text_value, raw=None):
    if "PRIVATE" in text_value.upper():
        return True
    if raw is not None and len(raw) in (48, 64, 96):
        return True  # PKCS#8 Ed25519/X25519 (48), NaCl secret key (64) ...
    return raw is not None and raw[:5] == b"\x30\x2e\x02\x01\x00"


def _ed25519_on_curve(raw):
    """True when ``raw`` decodes to a point of edwards25519 (RFC 8032 5.1.3)."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return False
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x2 = u * pow(v, _P - 2, _P) % _P
    if x2 == 0:
        return sign == 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    return (x * x - x2) % _P == 0


def _raw_key(value, algorithm):
    stripped = value.strip()
    try:
        raw = base64.b64decode(stripped, validate=True)
    except ValueError:
        if _looks_private(stripped):
            raise _private() from None
        raise BadRequest(
            f"Field 'public_key' must be the base64 of the raw {RAW_KEY_BYTES}-byte {algorithm} public key"
        ) from None
    if _looks_private(stripped, raw):
        raise _private()
    if len(raw) != RAW_KEY_BYTES:
        raise BadRequest(
            f"Field 'public_key' must be the base64 of the raw {RAW_KEY_BYTES}-byte {algorithm} "
            f"public key (got {len(raw)} bytes)"
        )
    if algorithm == "ed25519" and not _ed25519_on_curve(raw):
        raise BadRequest("Field 'public_key' is not a valid Ed25519 public key (not a point on the curve)")
    if algorithm == "x25519":
        u = int.from_bytes(raw, "little") & ((1 << 255) - 1)
        if u >= _P or u in _LOW_ORDER_U:
            raise BadRequest("Field 'public_key' is a low-order or non-canonical X25519 point, not a usable key")
    return raw


def _private():
    return BadRequest(
        "Field 'public_key' looks like a private key. Publish only public keys: the server "
        "never accepts, generates or stores private keys"
    )


def _der(data, offset, tag):
    """(start, end) of the DER element with ``tag`` at ``offset``; ValueError if it is not there."""
    if offset + 2 > len(data) or data[offset] != tag:
        raise ValueError("unexpected DER element")
    length, offset = data[offset + 1], offset + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or offset + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise ValueError("DER element runs past the end")
    return offset, offset + length


def _rsa_bits(der):
    """The modulus size of an RSA SubjectPublicKeyInfo; ValueError for anything else."""
    start, end = _der(der, 0, 0x30)
    if der[start : start + 1] == b"\x02":
        raise PermissionError("a private key")  # PKCS#1 or PKCS#8 private keys start with a version
    if end != len(der):
        raise ValueError("trailing bytes")
    algorithm_start, algorithm_end = _der(der, start, 0x30)
    oid_start, oid_end = _der(der, algorithm_start, 0x06)
    if der[oid_start:oid_end] != _RSA_OID:
        raise ValueError("not an RSA key")
    bits_start, bits_end = _der(der, algorithm_end, 0x03)
    if bits_end != end or der[bits_start] != 0:
        raise ValueError("bad BIT STRING")
    key_start, key_end = _der(der, bits_start + 1, 0x30)
    n_start, n_end = _der(der, key_start, 0x02)
    e_start, e_end = _der(der, n_end, 0x02)
    if e_end != key_end or key_end != bits_end:
        raise ValueError("bad RSAPublicKey")
    modulus = int.from_bytes(der[n_start:n_end], "big")
    exponent = int.from_bytes(der[e_start:e_end], "big")
    if der[n_start] & 0x80 or exponent < 3 or exponent % 2 == 0:
        raise ValueError("bad modulus or exponent")
    return modulus.bit_length()


def _rsa_key(value):
    stripped = value.strip()
    if _looks_private(stripped):
        raise _private()
    if stripped.startswith("-----BEGIN PUBLIC KEY-----"):
        match = re.fullmatch(r"-----BEGIN PUBLIC KEY-----([A-Za-z0-9+/=\s]+)-----END PUBLIC KEY-----", stripped)
        body = re.sub(r"\s+", "", match.group(1)) if match else ""
    else:
        body = stripped
    try:
        der = base64.b64decode(body, validate=True)
        bits = _rsa_bits(der)
    except PermissionError:
        raise _private() from None
    except ValueError:
        raise BadRequest(
            "Field 'public_key' must be an RSA public key as a PEM 'PUBLIC KEY' block or "
            "base64 DER (SubjectPublicKeyInfo)"
        ) from None
    if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise BadRequest(f"Field 'public_key' must be an RSA key of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits (got {bits})")
    return der


def check_public_key(algorithm, value):
    """The key's bytes (raw, or DER for RSA) after checking them; BadRequest otherwise."""
    if algorithm == "rsa-oaep-sha256":
        return _rsa_key(value)
    return _raw_key(value, algorithm)


# =============================================================================
# Handlers
# =============================================================================


def _now(req):
    return views.iso_time(req.ctx.clock())


def _live(keys):
    return [key for key in keys if key.get("revoked_at") is None]


@endpoint(
    "keys",
    "Publish a public key",
    "Publishes one public key of one of my devices. A device has one live key per algorithm: to rotate, "
    "publish the new one with replaces (the old one is revoked). The server never takes private keys.",
    answers={
        201: returns(envelope(ref("PublicKey"), message="Key published"), "Published."),
        400: refuses(
            "A field is invalid: the device id, the algorithm, a key of the wrong length or "
            "format, not on the curve, low-order, RSA under 2048 bits, something that looks like a "
            "private key, or replaces naming no live key of mine for the same device and algorithm."
        ),
        409: refuses(
            "The key is already published, the device already has a live key of that algorithm "
            "(rotate with replaces), or I have too many live keys."
        ),
    },
    body={
        "device_id": Match(
            "Which of my devices the key is for: 1 to 64 letters, digits, '.', '_', ':' or '-'.",
            "laptop",
            required=True,
            pattern=DEVICE_ID,
            message="Field 'device_id' must be 1 to 64 letters, digits, '.', '_', ':' or '-'",
        ),
        "algorithm": Choice(
            "x25519 for key agreement, ed25519 for signatures, or rsa-oaep-sha256 for clients that insist on RSA.",
            "x25519",
            required=True,
            values=ALGORITHMS,
            message=f"Field 'algorithm' must be one of: {', '.join(ALGORITHMS)}",
        ),
        "public_key": Text(
            "For x25519 and ed25519: the base64 of the raw 32-byte public key. For "
            "rsa-oaep-sha256: a PEM 'PUBLIC KEY' block or base64 DER "
            "SubjectPublicKeyInfo of 2048 to 16384 bits. Anything that looks like a "
            "private key is refused.",
            EXAMPLE_X25519,
            required=True,
            max_length=MAX_PUBLIC_KEY,
            strip=False,
        ),
        "replaces": Text(
            "My live key of the same device and algorithm that this one replaces (rotation: that one is revoked).",
            max_length=MAX_ID,
            strip=False,
        ),
    },
    body_name="NewKey",
    links={201: (Link("key_id"),)},
    body_example={"device_id": "laptop", "algorithm": "x25519", "public_key": EXAMPLE_X25519},
    writes=True,
)
def post_key(req, *, body):
    """Publish a public key for one of my devices; with ``replaces``, rotate that key."""
    device_id, algorithm = body["device_id"], body["algorithm"]
    public_key, replaces = body["public_key"], body["replaces"]
    key_bytes = check_public_key(algorithm, public_key)
    fingerprint, now = hashlib.sha256(key_bytes).hexdigest(), _now(req)
    key = {
        "id": str(uuid.uuid4()),
        "user_id": req.user["id"],
        "device_id": device_id,
        "algorithm": algorithm,
        "public_key": base64.b64encode(key_bytes).decode("ascii"),
        "fingerprint": fingerprint,
        "created_at": now,
        "revoked_at": None,
        "replaces": replaces,
        "replaced_by": None,
    }

    def decide(keys):
        # On the user's keys as the store holds them when it writes: two publishes or
        # rotations at once cannot both leave a device with a live key of one algorithm.
        live = _live(keys)
        for other in live:
            if other["fingerprint"] == fingerprint:
                raise Conflict(f"This public key is already published as key {other['id']}")
        if replaces is None:
            current = next(
                (other for other in live if other["device_id"] == device_id and other["algorithm"] == algorithm), None
            )
            if current is not None:
                raise Conflict(
                    f"Device {device_id} already has a live {algorithm} key ({current['id']}); "
                    "rotate it by publishing with 'replaces'"
                )
            if len(live) >= MAX_LIVE_KEYS:
                raise Conflict(f"You have {MAX_LIVE_KEYS} live keys; revoke some before publishing more")
            return [key], {}
        old = next((other for other in keys if other["id"] == replaces), None)
        if old is None:
            raise BadRequest(f"Field 'replaces' names no key of yours: {replaces}")
        if old.get("revoked_at") is not None:
            raise BadRequest("Field 'replaces' names a key that is already revoked")
        if (old["device_id"], old["algorithm"]) != (device_id, algorithm):
            raise BadRequest("Field 'replaces' must name the live key of the same device and algorithm")
        return [key], {replaces: {"revoked_at": now, "replaced_by": key["id"]}}

    req.ctx.store.change_user_keys(req.user["id"], decide)
    return success(views.public_key(key), "Key rotated" if replaces else "Key published", status=201)


@endpoint(
    "keys",
    "My keys",
    "Every key I published, revoked ones included (with revoked_at), oldest first.",
    answers={200: returns(envelope(array(ref("PublicKey"))), "My keys.")},
    links={200: (Link("key_id", "/data/0/id"),)},
)
def get_my_keys(req):
    """Every key I published, revoked ones included, oldest first."""
    return success([views.public_key(key) for key in req.ctx.store.user_keys(req.user["id"])])


@endpoint(
    "keys",
    "A user's current keys",
    "The keys a user's devices hold now (not revoked): encrypt to their X25519 (or RSA-OAEP) keys, "
    "verify with their Ed25519 keys.",
    answers={200: returns(envelope(array(ref("PublicKey"))), "The current keys."), 404: refuses("No such user.")},
    parameters=(USER_PATH,),
)
def get_user_keys(req, user_id):
    """A user's current (not revoked) public keys, to encrypt for their devices."""
    store = req.ctx.store
    if store.get_user(user_id) is None:
        raise NotFound(f"User with ID {user_id} not found")
    return success([views.public_key(key) for key in _live(store.user_keys(user_id))])


@endpoint(
    "keys",
    "A key by id",
    "Any user's key, current or revoked: to verify the signature of an older message.",
    answers={200: returns(envelope(ref("PublicKey")), "The key."), 404: refuses("No such key.")},
    parameters=(KEY_PATH,),
)
def get_key(req, key_id):
    """One key by id, revoked or not: to verify a signature made before a rotation."""
    key = req.ctx.store.get_key(key_id)
    if key is None:
        raise NotFound(f"Key with ID {key_id} not found")
    return success(views.public_key(key))


@endpoint(
    "keys",
    "Revoke a key",
    "Revokes one of my keys: it is no longer listed as current, but stays readable by id.",
    answers={
        200: returns(envelope(ref("PublicKey"), message="Key revoked"), "Revoked."),
        400: refuses("The key is already revoked."),
        403: refuses("The key is someone else's."),
        404: refuses("No such key."),
    },
    parameters=(KEY_PATH,),
    writes=True,
)
def delete_key(req, key_id):
    """Revoke one of my keys; it stays listed (with ``revoked_at``) for verifying old messages."""
    store = req.ctx.store
    key = store.get_key(key_id)
    if key is None:
        raise NotFound(f"Key with ID {key_id} not found")
    if key["user_id"] != req.user["id"]:
        raise Forbidden("Only the key's owner may revoke it")
    now = _now(req)

    def decide(keys):
        current = next((other for other in keys if other["id"] == key_id), None)
        if current is None or current.get("revoked_at") is not None:  # a rotation or a revocation came first
            raise BadRequest("The key is already revoked")
        return [], {key_id: {"revoked_at": now}}

    _, (key,) = store.change_user_keys(req.user["id"], decide)
    return success(views.public_key(key), "Key revoked")


# =============================================================================
# Encrypted messages
# =============================================================================


def envelope_schema(settings):
    """The JSON Schema of an envelope (``encrypted``), as ``check_envelope`` checks it."""

    def b64(description, pattern, example=None, **constraints):
        return string(description, example, pattern=f"^{pattern}$", **constraints)

    def key_id(description, example=EXAMPLE_KEY_ID):
        return string(description, example, minLength=1, maxLength=MAX_ID, pattern=NOT_BLANK)

    ciphertext_bytes = max_ciphertext_bytes(settings)
    return obj(
        {
            "v": {"const": 1, "description": "The envelope format (1)."},
            "sender_key_id": key_id("The sender's live Ed25519 key that signed the envelope."),
            "ephemeral_key": b64(
                "The sender's one-time X25519 public key (32 bytes), for X25519 wraps.", BASE64_32, EXAMPLE_X25519
            ),
            "nonce": b64("The AES-256-GCM nonce of the ciphertext (12 bytes).", BASE64_12, "AAECAwQFBgcICQoL"),
            "ciphertext": b64(
                f"The AES-256-GCM ciphertext with its tag: 16 to {ciphertext_bytes} bytes "
                "(4 per MAX_MESSAGE_LENGTH character, plus 1024).",
                BASE64,
                "c2VhbGVkIHdpdGggQUVTLUdDTQ==",
                minLength=24,
                maxLength=base64_chars(ciphertext_bytes),
            ),
            "recipients": array(
                obj(
                    {
                        "key_id": key_id("The recipient device's X25519 or RSA-OAEP key."),
                        "wrapped_key": b64(
                            f"The content key wrapped for that key: {MIN_WRAPPED_KEY} to {MAX_WRAPPED_KEY} bytes.",
                            BASE64,
                            "d3JhcHBlZCBjb250ZW50IGtleQ==",
                            minLength=base64_chars(MIN_WRAPPED_KEY),
                            maxLength=base64_chars(MAX_WRAPPED_KEY),
                        ),
                        "nonce": b64(
                            "The AES-256-GCM nonce of an X25519 wrap (12 bytes).", BASE64_12, "AAECAwQFBgcICQoL"
                        ),
                    },
                    required=["key_id", "wrapped_key"],
                    additionalProperties=False,
                ),
                "One content-key wrap per recipient device key (each key once); as many as fit in "
                f"MAX_BODY_BYTES ({settings.max_body_bytes}).",
                minItems=1,
            ),
            "signature": b64(
                "Ed25519 signature (64 bytes) over the envelope and chat id (see oxc_e2e.py).",
                BASE64_64,
                "c2lnbmVk" + "A" * 78 + "==",
            ),
        },
        required=["v", "sender_key_id", "nonce", "ciphertext", "recipients", "signature"],
        additionalProperties=False,
        description="An end-to-end encrypted message as its sender's device built it; the server stores "
        "and forwards it without reading it.",
    )


ENVELOPE_FIELDS = {"v", "sender_key_id", "ephemeral_key", "nonce", "ciphertext", "recipients", "signature"}
RECIPIENT_FIELDS = {"key_id", "wrapped_key", "nonce"}


def _key_id(value, field):
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID or not value.strip():
        raise BadRequest(f"Field '{field}' must be a key id (1 to {MAX_ID} characters)")
    return value


def check_envelope(req, envelope):
    """``envelope`` after checking its shape and sizes (never its meaning); BadRequest otherwise."""
    if not isinstance(envelope, dict):
        raise BadRequest("Field 'encrypted' must be an object (the envelope)")
    unknown = set(envelope) - ENVELOPE_FIELDS
    if unknown:
        raise BadRequest(f"Field 'encrypted' has unknown fields: {', '.join(sorted(unknown))}")
    missing = {"v", "sender_key_id", "nonce", "ciphertext", "recipients", "signature"} - set(envelope)
    if missing:
        raise BadRequest(f"Missing required field: encrypted.{sorted(missing)[0]}")
    version = envelope["v"]
    if isinstance(version, bool) or not isinstance(version, (int, float)) or version != ENVELOPE_VERSION:
        raise BadRequest(f"Field 'encrypted.v' must be {ENVELOPE_VERSION}")
    sender_key_id = _key_id(envelope["sender_key_id"], "encrypted.sender_key_id")
    if "ephemeral_key" in envelope:
        _decode(envelope["ephemeral_key"], BASE64_32, "encrypted.ephemeral_key")
    _decode(envelope["nonce"], BASE64_12, "encrypted.nonce")
    _decode(envelope["signature"], BASE64_64, "encrypted.signature")
    ciphertext = envelope["ciphertext"]
    limit = max_ciphertext_bytes(req.ctx.settings)
    if isinstance(ciphertext, str) and not 24 <= len(ciphertext) <= base64_chars(limit):
        raise BadRequest(f"Field 'encrypted.ciphertext' must hold 16 to {limit} bytes")
    _decode(ciphertext, BASE64, "encrypted.ciphertext")
    recipients = envelope["recipients"]
    if not isinstance(recipients, list) or not recipients:
        raise BadRequest("Field 'encrypted.recipients' must be a non-empty list of key wraps")
    seen = set()
    for number, wrap in enumerate(recipients):
        where = f"encrypted.recipients[{number}]"
        if not isinstance(wrap, dict) or set(wrap) - RECIPIENT_FIELDS or not {"key_id", "wrapped_key"} <= set(wrap):
            raise BadRequest(f"Field '{where}' must be an object with key_id, wrapped_key and optionally nonce")
        key_id = _key_id(wrap["key_id"], f"{where}.key_id")
        if key_id in seen:
            raise BadRequest(f"Field '{where}.key_id' repeats a recipient key")
        seen.add(key_id)
        wrapped = wrap["wrapped_key"]
        if isinstance(wrapped, str) and not base64_chars(MIN_WRAPPED_KEY) <= len(wrapped) <= base64_chars(
            MAX_WRAPPED_KEY
        ):
            raise BadRequest(f"Field '{where}.wrapped_key' must hold {MIN_WRAPPED_KEY} to {MAX_WRAPPED_KEY} bytes")
        _decode(wrapped, BASE64, f"{where}.wrapped_key")
        if "nonce" in wrap:
            _decode(wrap["nonce"], BASE64_12, f"{where}.nonce")
    key = req.ctx.store.get_key(sender_key_id)
    if (
        key is None
        or key["user_id"] != req.user["id"]
        or key.get("revoked_at") is not None
        or key["algorithm"] != "ed25519"
    ):
        raise BadRequest("Field 'encrypted.sender_key_id' must be a live Ed25519 key of yours")
    return envelope
