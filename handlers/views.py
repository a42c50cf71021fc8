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
