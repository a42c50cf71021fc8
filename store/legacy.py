"""Reading an existing 0xC data directory (users.json, messages.json, tokens.json).

0xC kept each collection as one JSON file, either a list of records or an
object keyed by id (and some versions wrap the list: ``{"users": [...]}``).
Passwords are passlib ``pbkdf2-sha256`` hashes, kept as they are: the auth
handler verifies them with hashlib and rehashes to bcrypt at the next login.
Refresh tokens were stored raw; here only their SHA-256 survives.

The files are left where they are; oxc writes its own snapshot beside them.
"""

import hashlib
import json
import logging
import os
import secrets
from datetime import datetime, timezone

log = logging.getLogger("oxc.store")


def _records(directory, name):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    stem = name.rsplit(".", 1)[0]
    if isinstance(data, dict) and isinstance(data.get(stem), (list, dict)):
        data = data[stem]
    if isinstance(data, dict):
        records = []
        for key, value in data.items():
            if isinstance(value, dict):
                records.append(dict(value, _key=key))
        return records
    return [dict(value) for value in data if isinstance(value, dict)]


def _epoch(value):
    """Seconds since the epoch from a number or an ISO timestamp (naive = UTC)."""
    if isinstance(value, (int, float)):
        return float(value)
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def has_legacy_data(directory):
    """True when ``directory`` holds 0xC's users.json or messages.json."""
    return any(os.path.exists(os.path.join(directory, name)) for name in ("users.json", "messages.json"))


def read_legacy(directory):
    """The users, messages and sessions of a 0xC data directory, in oxc's shapes."""
    users = []
    for record in _records(directory, "users.json"):
        user_id = str(record.get("id") or record["_key"])
        users.append(
            {
                "id": user_id,
                "username": record["username"],
                "email": record.get("email") or None,
                "password_hash": record.get("password_hash") or record.get("password"),
                "created_at": record.get("created_at"),
            }
        )
    known = {user["id"] for user in users}
    messages = []
    for record in _records(directory, "messages.json"):
        if str(record.get("user_id")) not in known:
            continue
        recipient = record.get("recipient_id")
        messages.append(
            {
                "id": str(record.get("id") or record["_key"]),
                "user_id": str(record["user_id"]),
                "username": record.get("username"),
                "content": record.get("content", ""),
                "timestamp": record.get("timestamp"),
                "recipient_id": str(recipient) if recipient else None,
            }
        )
    messages.sort(key=lambda message: _epoch(message["timestamp"]) or 0)
    sessions = []
    for record in _records(directory, "tokens.json"):
        token = record.get("token") or record.get("refresh_token") or record.get("_key")
        user_id = str(record.get("user_id"))
        if not token or user_id not in known or record.get("revoked"):
            continue
        sessions.append(
            {
                "id": secrets.token_urlsafe(12),
                "user_id": user_id,
                "token_hash": hashlib.sha256(str(token).encode("utf-8")).hexdigest(),
                "previous_hash": None,
                "rotated_at": None,
                "created_at": _epoch(record.get("created_at")),
                "expires_at": _epoch(record.get("expires_at")),
            }
        )
    return users, messages, sessions


def announce_import(legacy):
    """Log what a backend is about to take in from ``read_legacy``'s (users, messages, sessions)."""
    users, messages, sessions = legacy
    log.info(
        "store: importing a 0xC data directory: %d users, %d messages, %d tokens",
        len(users),
        len(messages),
        len(sessions),
    )
