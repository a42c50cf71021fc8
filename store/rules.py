"""The domain rules both backends follow, written once.

``JsonStore`` and ``PostgresStore`` differ in how they keep records and make
writes atomic, never in what a record means: how names are compared, which
messages a search scope holds, what a refused write says. Those decisions
live here, so that a rule changed for one backend is changed for the other::

    key = pair_key(alice_id, bob_id)          # the one direct chat of two users
    if not holds(user, expected): ...         # a conditional write's precondition
    raise Conflict(USERNAME_TAKEN)

Nothing here touches storage; every function takes and returns plain records.
"""

import re
from collections.abc import Iterable
from typing import Any

Record = dict[str, Any]

# ---- search ---------------------------------------------------------------------

WORD = re.compile(r"\w+")
#: Longer words are neither indexed nor searched for.
MAX_TERM = 64


def search_terms(text: str) -> set[str]:
    """The distinct words of ``text`` that search indexes and matches, case-folded."""
    return {term for term in WORD.findall(text.casefold()) if len(term) <= MAX_TERM}


def message_scopes(message: Record) -> list[str]:
    """The search scopes of a 0xC message: ``public``, or ``user:<id>`` of its sender and recipient."""
    sender, recipient = message["user_id"], message.get("recipient_id")
    return ["public"] if recipient is None else sorted({f"user:{sender}", f"user:{recipient}"})


def searchable(message: Record) -> str | None:
    """The text of a chat message that search may find: none once deleted, or when encrypted."""
    return None if message.get("deleted") or message.get("encrypted") else message.get("content")


# ---- names and keys ------------------------------------------------------------------


def fold(text: str | None) -> str | None:
    """``text`` as usernames and e-mail addresses are compared: case-insensitively."""
    return text.casefold() if text else text


def pair_key(first: str, second: str) -> str:
    """The key of the direct chat of two users, whichever of them asks."""
    return "|".join(sorted((first, second)))


def holds(record: Record, expected: Record | None) -> bool:
    """Whether ``record`` still has the ``expected`` values (none given: it does)."""
    return not expected or all(record.get(name) == value for name, value in expected.items())


def by_creation(records: Iterable[Record]) -> list[Record]:
    """``records`` (keys) oldest first."""
    return sorted(records, key=lambda record: record["created_at"])


# ---- refusals ------------------------------------------------------------------------
# The texts of Conflict and Missing that reach users (through handlers) or operators.

USERNAME_TAKEN = "Username already exists"
EMAIL_TAKEN = "Email already registered"
ALREADY_MEMBER = "User is already a member of this chat"
MARK_MOVED = "The notification mark has moved"
QUEUE_FULL = "the push queue is full"


def chat_gone(chat_id: str) -> str:
    return f"chat {chat_id} is gone"


def not_a_member(user_id: str, chat_id: str) -> str:
    return f"{user_id} is not a member of chat {chat_id}"


def not_unsent(attachment_id: str, chat_id: str) -> str:
    return f"attachment {attachment_id} is not an unsent attachment of chat {chat_id}"


def message_gone(message_id: str) -> str:
    return f"chat message {message_id} is gone"


def too_many_devices(user_id: str, limit: int) -> str:
    return f"user {user_id} already has {limit} devices"


# ---- sessions, codes, tickets ----------------------------------------------------------

#: Seconds a used stream ticket is remembered past its expiry (the processes' clocks may disagree a little).
TICKET_MEMORY = 300


def rotated(session: Record, token_hash: str, new_hash: str, now: float, expires_at: float) -> Record:
    """``session`` once its refresh token ``token_hash`` is swapped for ``new_hash``."""
    return dict(session, token_hash=new_hash, previous_hash=token_hash, rotated_at=now, expires_at=expires_at)


def code_spent(code: Record, now: float, max_attempts: int) -> bool:
    """Whether a one-time code is past use: expired, or out of guesses."""
    return code["expires_at"] < now or code["attempts"] >= max_attempts


def guessed(code: Record) -> Record:
    """``code`` with one more guess counted against it."""
    return dict(code, attempts=code["attempts"] + 1)


# ---- chats ----------------------------------------------------------------------------


def unsent_attachment_of(attachment: Record | None, chat_id: str) -> bool:
    """Whether ``attachment`` may join a new message of ``chat_id``: it is the chat's, and no message has it."""
    return attachment is not None and attachment["chat_id"] == chat_id and attachment.get("message_id") is None


def after_posting(author: Record, seq: int) -> Record:
    """The author's membership once they posted message ``seq``: they have read and received it."""
    return dict(author, read_seq=seq, delivered_seq=max(author.get("delivered_seq", 0), seq))


def member_updates(change: Any, user_ids: Iterable[str]) -> dict[str, Record | None]:
    """A ChatChange's ``{user id: record or None}``; ValueError for a user the decision did not see."""
    updates = change.members or {}
    unseen = set(updates) - set(user_ids)
    if unseen:
        raise ValueError(f"a chat change may only touch the members it read, not {sorted(unseen)}")
    return updates


def dropped_attachment(old: Record, new: Record) -> str | None:
    """The id of the attachment message ``old`` named and ``new`` (a tombstone, or without it) no longer has."""
    attachment_id = old.get("attachment_id")
    if attachment_id and (new.get("deleted") or new.get("attachment_id") != attachment_id):
        return attachment_id
    return None


def blob_digests(attachment: Record) -> list[str]:
    """The blobs an attachment refers to: its bytes, and its thumbnail's if any."""
    return [digest for digest in (attachment.get("sha256"), attachment.get("thumbnail_sha256")) if digest]


# ---- notifications and push jobs --------------------------------------------------------


def queue_jobs(push_jobs: list[Record], pending: int, max_pending: int) -> tuple[list[Record], list[Record]]:
    """(accepted, refused): jobs queued while fewer than ``max_pending`` wait, the rest dead letters."""
    room = max(0, max_pending - pending)
    accepted = [dict(job, status="pending") for job in push_jobs[:room]]
    refused = [dict(job, status="dead", last_error=QUEUE_FULL) for job in push_jobs[room:]]
    return accepted, refused


def push_message_ids(job: Record) -> list[str]:
    """The ids of the messages a push job's notifications are about, in order, once each."""
    found = []
    for delivery in (job.get("payload") or {}).get("deliveries", ()):
        message_id = (delivery.get("notification") or {}).get("message_id")
        if message_id and message_id not in found:
            found.append(message_id)
    return found


def without_preview(job: Record, message_id: str) -> Record:
    """``job`` with the previews of its notifications about ``message_id`` taken out (itself if none)."""
    deliveries = (job.get("payload") or {}).get("deliveries", ())
    if not any(
        (d.get("notification") or {}).get("message_id") == message_id and d["notification"].get("preview") is not None
        for d in deliveries
    ):
        return job
    scrubbed = [
        dict(d, notification=dict(d["notification"], preview=None))
        if (d.get("notification") or {}).get("message_id") == message_id
        else d
        for d in deliveries
    ]
    return dict(job, payload=dict(job["payload"], deliveries=scrubbed))
