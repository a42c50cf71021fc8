"""How stored records are shown to clients (0xC's field names and shapes)."""

from datetime import datetime, timezone


def iso_time(seconds):
    """An ISO 8601 UTC timestamp with microseconds, as 0xC writes them."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds")


def public_user(user):
    """A user as anyone may see them (never the password hash)."""
    return {
        "id": user["id"],
        "username": user["username"],
        "email": user.get("email"),
        "email_verified": bool(user.get("email_verified")),
        "created_at": user.get("created_at"),
    }


def public_message(message):
    """A message in 0xC's shape; ``recipient_id`` is null for public messages."""
    return {
        "id": message["id"],
        "user_id": message["user_id"],
        "username": message["username"],
        "content": message["content"],
        "timestamp": message["timestamp"],
        "recipient_id": message.get("recipient_id"),
    }


def profile(user, private=False):
    """A user's profile; ``private`` adds what only they may see (e-mail)."""
    shown = {
        "id": user["id"],
        "username": user["username"],
        "full_name": user.get("full_name"),
        "bio": user.get("bio"),
        "avatar_url": user.get("avatar_url"),
        "created_at": user.get("created_at"),
        "last_seen": iso_time(user["last_seen"]) if user.get("last_seen") else None,
    }
    if private:
        shown["email"] = user.get("email")
        shown["email_verified"] = bool(user.get("email_verified"))
    return shown


def chat_message(message):
    """A message in a chat; a deleted one is a tombstone without content."""
    deleted = bool(message.get("deleted"))
    return {
        "id": message["id"],
        "chat_id": message["chat_id"],
        "user_id": message["user_id"],
        "username": message["username"],
        "content": None if deleted else message["content"],
        "reply_to_id": message.get("reply_to_id"),
        "mentions": [] if deleted else message.get("mentions", []),
        "created_at": message["created_at"],
        "edited_at": message.get("edited_at"),
        "deleted": deleted,
        "attachment": None if deleted else message.get("attachment"),
        "encrypted": bool(message.get("encrypted")),
        "envelope": None if deleted else message.get("envelope"),
    }


def attachment(record):
    """An attachment's metadata (never where its bytes lie on disk)."""
    return {
        "id": record["id"],
        "chat_id": record["chat_id"],
        "uploader_id": record["uploader_id"],
        "message_id": record.get("message_id"),
        "name": record["name"],
        "size": record["size"],
        "content_type": record["content_type"],
        "kind": record["kind"],
        "sha256": record["sha256"],
        "width": record.get("width"),
        "height": record.get("height"),
        "thumbnail": record["thumbnail"],
        "created_at": record["created_at"],
    }


def public_key(record):
    """A published public key; ``revoked_at`` is set once it must no longer be used."""
    return {
        "id": record["id"],
        "user_id": record["user_id"],
        "device_id": record["device_id"],
        "algorithm": record["algorithm"],
        "public_key": record["public_key"],
        "fingerprint": record["fingerprint"],
        "created_at": record["created_at"],
        "revoked_at": record.get("revoked_at"),
        "replaces": record.get("replaces"),
        "replaced_by": record.get("replaced_by"),
    }


def member(record, user):
    """A chat member: who, which role, since when."""
    return {
        "user_id": record["user_id"],
        "username": user["username"] if user else None,
        "role": record["role"],
        "joined_at": record["joined_at"],
    }


def chat(record, member_count):
    """A chat's own fields."""
    return {
        "id": record["id"],
        "type": record["type"],
        "name": record.get("name"),
        "description": record.get("description"),
        "created_by": record.get("created_by"),
        "created_at": record["created_at"],
        "member_count": member_count,
    }
