"""The one interface every storage backend implements.

Handlers talk to a ``Store`` and nothing else, so a second backend (a database
server) plugs in without touching them; ``tests/test_store_contract.py`` runs
the same behaviour checks against every backend. What the records mean (case
folding, search scopes, refusals ...) is decided in ``rules.py``, once for both.

Records are plain dicts that callers must treat as read-only: a backend may
hand out the very dict it keeps. Every write method returns only after the
write is durable; a backend that can no longer guarantee that raises
``StoreUnavailable``.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO, NamedTuple

from .blobs import Blobs
from .eventlog import EventLog, EventRow, Retract
from .rules import MAX_TERM, Record, search_terms

__all__ = [
    "MAX_TERM",
    "TABLES",
    "UNCHECKED",
    "ChatChange",
    "EventLog",
    "EventRow",
    "Page",
    "Record",
    "Retract",
    "Store",
    "search_terms",
]

#: Every table a store keeps, in the order ``export_records`` reads them.
TABLES = (
    "users",
    "messages",
    "sessions",
    "chats",
    "members",
    "chat_messages",
    "attachments",
    "keys",
    "codes",
    "notifications",
    "devices",
    "push_jobs",
    "meta",
)

#: ``add_notifications(expected=...)`` left out: the mark is written whatever it was.
UNCHECKED = object()


class Page(NamedTuple):
    """One page of a list: ``items`` oldest first, and whether more lie beyond."""

    items: list
    older: bool
    newer: bool


class ChatChange(NamedTuple):
    """What a ``change_chat`` decision writes, all of it or nothing.

    The store calls ``decide(chat, members, count)`` inside its atomic operation
    with the chat as it is now (None once deleted), ``{user id: membership record
    or None}`` for the user ids asked about, and the chat's member count; rule code
    answers a ChatChange, None to write nothing, or raises (then nothing is
    written). ``decide`` must not call the store and may run more than once.

    ``members`` maps some of those user ids to their new record, or to None to end
    the membership; ``chat`` holds changes to the chat record; ``delete`` removes
    the chat with its members, messages and attachments. A chat the change leaves
    without members is deleted too.
    """

    members: dict | None = None
    chat: dict | None = None
    delete: bool = False


class Store:
    """Users, messages and refresh-token sessions, with the queries the API needs."""

    #: False once the backend refuses writes (health checks read this).
    writable = True
    #: Where attachment bytes live (a backend sets it when it opens).
    blobs: Blobs

    def problem(self) -> str | None:
        """Why the store refuses writes, for people; None while it accepts them."""
        return None if self.writable else "the database refuses writes"

    def sync(self) -> None:
        """Return once every write readers can see is durable; StoreUnavailable if one was lost.

        The app calls it before every answer. A backend whose writes become
        visible only when durable (a database's commit) has nothing to do.
        """

    def close(self) -> None:
        """Flush and release everything; the store is unusable afterwards."""
        raise NotImplementedError

    def compact(self) -> None:
        """Rewrite what is kept on disk now, so that deleted and scrubbed data leaves it; returns when done."""
        raise NotImplementedError

    def import_legacy(self, legacy: tuple[list[Record], list[Record], list[Record]]) -> None:
        """Take in a 0xC data directory's (users, messages, sessions) as ``read_legacy`` gives them."""
        raise NotImplementedError

    # -- users ------------------------------------------------------------

    def create_user(self, user: Record) -> Record:
        """Add ``user`` (with ``id``, ``username``, optional ``email``); Conflict if taken."""
        raise NotImplementedError

    def get_user(self, user_id: str) -> Record | None:
        """The user with this id, or None."""
        raise NotImplementedError

    def find_user(self, username: str) -> Record | None:
        """The user with this username (case-insensitive), or None."""
        raise NotImplementedError

    def find_user_by_email(self, address: str) -> Record | None:
        """The user with this e-mail address (case-insensitive), or None."""
        raise NotImplementedError

    def update_user(self, user_id: str, changes: Record, expected: Record | None = None) -> Record | None:
        """Apply ``changes`` to a user and return the new record; Conflict if taken.

        With ``expected`` ({field: value}) the change happens only while the user
        still holds those values, checked in the same atomic step; else None.
        """
        raise NotImplementedError

    # -- messages ---------------------------------------------------------

    def add_message(self, message: Record) -> Record:
        """Store a new message and return it with its ``seq`` (a rising integer)."""
        raise NotImplementedError

    def get_message(self, message_id: str) -> Record | None:
        """The message with this id, or None."""
        raise NotImplementedError

    def delete_message(self, message_id: str) -> Record | None:
        """Remove a message; returns the removed record, or None if there was none."""
        raise NotImplementedError

    def visible_messages(
        self, user_id: str, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> Page:
        """A Page of public messages and private ones to or from ``user_id``.

        ``before``/``after`` are ``seq`` values (exclusive). Without ``after`` the
        page is the newest ``limit`` messages below ``before``.
        """
        raise NotImplementedError

    def sent_messages(self, user_id: str, before: int | None = None, after: int | None = None, limit: int = 50) -> Page:
        """A Page of the messages ``user_id`` sent, with the same cursors."""
        raise NotImplementedError

    # -- refresh-token sessions ---------------------------------------------

    def add_session(self, session: Record, password_hash: str | None = None) -> Record | None:
        """Start a session (a refresh-token family) holding ``token_hash``.

        With ``password_hash``, only while the user's password hash still is
        that one (else None): a login racing a password change or reset never
        leaves a session behind it.
        """
        raise NotImplementedError

    def get_session(self, session_id: str) -> Record | None:
        """The session with this id, or None."""
        raise NotImplementedError

    def find_session(self, token_hash: str) -> Record | None:
        """The session whose current refresh token hashes to ``token_hash``, or None."""
        raise NotImplementedError

    def rotate_session(
        self, session_id: str, token_hash: str, new_hash: str, now: float, expires_at: float
    ) -> Record | None:
        """Swap the session's current token hash for ``new_hash``, atomically.

        Succeeds (returning the new record) only if ``token_hash`` is still the
        current one; otherwise returns None and changes nothing, so of two
        concurrent rotations of one token exactly one wins.
        """
        raise NotImplementedError

    def delete_session(self, session_id: str) -> bool:
        """End a session; returns True if it existed."""
        raise NotImplementedError

    def delete_user_sessions(self, user_id: str, keep: str | None = None) -> int:
        """End every session of a user except ``keep``; returns how many ended."""
        raise NotImplementedError

    # -- the signing key and stream tickets -------------------------------------

    def signing_key(self, candidate: str) -> tuple[str, str | None]:
        """(key, where it is kept): the key kept with the data, else ``candidate``, kept now by the first caller."""
        raise NotImplementedError

    def use_ticket(self, ticket_id: str, expires_at: float, now: float) -> bool:
        """Record a stream ticket as used: True for the one call that did, False for any other (until it expires)."""
        raise NotImplementedError

    # -- people ---------------------------------------------------------------

    def touch_user(self, user_id: str, seconds: float) -> Record | None:
        """Record activity (``last_seen``) and return the user; not worth a flush of its own."""
        raise NotImplementedError

    def users_by_prefix(self, prefix: str, limit: int = 20, after: str | None = None) -> tuple[list[Record], bool]:
        """Users whose username starts with ``prefix`` (case-insensitive), by username.

        ``after`` is a username; the page starts after it.
        """
        raise NotImplementedError

    # -- chats ----------------------------------------------------------------

    def create_chat(self, chat: Record, members: list[Record]) -> Record:
        """Add a chat and its first member records in one write."""
        raise NotImplementedError

    def direct_chat(self, chat: Record, first: Record, second: Record) -> tuple[Record, bool]:
        """The direct chat of two users, created from ``chat`` if there is none.

        Returns (chat, created). Concurrent calls for one pair yield one chat.
        """
        raise NotImplementedError

    def get_chat(self, chat_id: str) -> Record | None:
        """The chat with this id, or None."""
        raise NotImplementedError

    def delete_chat(self, chat_id: str) -> bool:
        """Remove a chat with its members and messages."""
        raise NotImplementedError

    def change_chat(
        self, chat_id: str, user_ids: Iterable[str], decide: Callable[[Record | None, dict, int], ChatChange | None]
    ) -> tuple[Record | None, dict[str, Record | None]]:
        """Atomically write what ``decide`` makes of the chat and members now (see ChatChange); (chat, members)."""
        raise NotImplementedError

    def chat_ids(self, user_id: str) -> set[str]:
        """The ids of every chat the user belongs to."""
        raise NotImplementedError

    def user_chats(self, user_id: str, limit: int = 50, before: str | None = None) -> tuple[list[Record], bool]:
        """(chats, more): the user's chats, newest activity first.

        ``before`` is a chat id: the page starts after that chat.
        """
        raise NotImplementedError

    # -- members --------------------------------------------------------------

    def get_member(self, chat_id: str, user_id: str) -> Record | None:
        """The membership record (role, muted, read and delivered pointers), or None."""
        raise NotImplementedError

    def members(self, chat_id: str) -> list[Record]:
        """Every membership record of a chat."""
        raise NotImplementedError

    def add_member(self, member: Record) -> Record:
        """Add a membership; Conflict if the user is already a member."""
        raise NotImplementedError

    def update_members(self, updates: dict[tuple[str, str], Record]) -> list[Record]:
        """Apply ``{(chat_id, user_id): changes}`` in one write; returns the new records."""
        raise NotImplementedError

    def remove_member(self, chat_id: str, user_id: str) -> bool:
        """End a membership; returns True if it existed."""
        raise NotImplementedError

    # -- messages in chats ----------------------------------------------------

    def add_chat_message(self, message: Record) -> Record:
        """Store a chat message (assigning ``seq``) and move the author's read pointer to it.

        Missing (nothing written) unless the author is a member of the chat now.
        A message with ``attachment_id`` claims that attachment in the same write
        (its ``message_id`` becomes the message's id); Conflict, and nothing
        written, unless it is an unclaimed attachment of the same chat, so an
        attachment joins one message only.
        """
        raise NotImplementedError

    def get_chat_message(self, message_id: str) -> Record | None:
        """The chat message with this id, or None."""
        raise NotImplementedError

    def update_chat_message(self, message_id: str, changes: Record) -> Record:
        """Apply ``changes`` (an edit, a tombstone) to a chat message; returns it."""
        raise NotImplementedError

    def change_chat_message(
        self, message_id: str, user_id: str, decide: Callable[[Record | None, Record | None], Record | None]
    ) -> Record | None:
        """Atomically apply ``decide(message, member)``'s changes (None: none) to the fresh message; returns it.

        ``member`` is ``user_id``'s membership of the message's chat now (or
        None); ``message`` is None once gone. ``decide`` may raise (nothing is
        written), must not call the store and may run more than once. A message
        that becomes a tombstone (``deleted``) or stops naming its attachment
        takes that attachment record with it in the same write.
        """
        raise NotImplementedError

    def chat_history(self, chat_id: str, before: int | None = None, after: int | None = None, limit: int = 50) -> Page:
        """A Page of a chat's messages, with the cursors of ``visible_messages``."""
        raise NotImplementedError

    def unread_count(self, chat_id: str, user_id: str) -> int:
        """How many messages of the chat lie after the user's read pointer."""
        raise NotImplementedError

    def search(
        self, scopes: Iterable[str], terms: Iterable[str], before: int | None = None, limit: int = 20
    ) -> tuple[list[Record], bool]:
        """(messages, more): messages in ``scopes`` holding every term, newest first.

        A scope is a chat id, ``"public"`` (0xC's public messages) or
        ``"user:<id>"`` (0xC's private messages to or from that user).
        ``before`` is a seq.
        """
        raise NotImplementedError

    # -- attachments and their bytes --------------------------------------------

    def save_blob(self, read: Callable[[int], bytes], limit: int) -> tuple[str, int, bytes]:
        """Stream ``read(n)`` into a durable content-addressed blob of at most ``limit`` bytes.

        Returns (sha256 hex, size, first 4 kB). Raises ``TooLarge`` past the
        limit and ``OutOfSpace`` (a StoreUnavailable) when the disk is full or
        the blob would eat into the free-space reserve; nothing is left behind.
        """
        raise NotImplementedError

    def save_blob_bytes(self, data: bytes) -> str:
        """Store a small blob (a thumbnail); returns its sha256 hex."""
        raise NotImplementedError

    def discard_blob(self, digest: str) -> None:
        """Give up a blob saved for a record that will not be written: it goes unless something refers to it."""
        raise NotImplementedError

    def open_blob(self, digest: str) -> BinaryIO | None:
        """A binary file object of the blob, or None; ``DamagedBlob`` if its bytes no longer match its digest."""
        raise NotImplementedError

    def add_attachment(self, attachment: Record, quota: int = 0) -> Record:
        """Record an attachment (``id``, ``chat_id``, ``sha256``, optional ``thumbnail_sha256``...).

        With a ``quota`` (bytes; 0: none), atomically: ``QuotaExceeded`` and
        nothing written if the uploader's attachments (their ``size``, not
        thumbnails) would then hold more, so of concurrent uploads no two both
        pass on the same room.
        """
        raise NotImplementedError

    def attachment_usage(self, user_id: str) -> int:
        """Bytes the user's attachments hold (the sum of their ``size``; thumbnails are not counted)."""
        raise NotImplementedError

    def get_attachment(self, attachment_id: str) -> Record | None:
        """The attachment record, or None."""
        raise NotImplementedError

    def delete_attachment(self, attachment_id: str, unsent_only: bool = False) -> bool:
        """Remove an attachment (with ``unsent_only``, only if no message claimed it); True if removed."""
        raise NotImplementedError

    # -- public keys ------------------------------------------------------------------

    def add_key(self, key: Record) -> Record:
        """Publish a public key (``id``, ``user_id``, ``device_id``, ``algorithm``, ``public_key``)."""
        raise NotImplementedError

    def get_key(self, key_id: str) -> Record | None:
        """The key record, or None."""
        raise NotImplementedError

    def user_keys(self, user_id: str) -> list[Record]:
        """Every key a user published (revoked ones too), oldest first."""
        raise NotImplementedError

    def change_user_keys(
        self, user_id: str, decide: Callable[[list[Record]], tuple[list[Record], dict[str, Record]]]
    ) -> tuple[list[Record], list[Record]]:
        """Atomically write ``decide(keys)``'s (new keys, {key id: changes}) for the user's fresh keys; returns them."""
        raise NotImplementedError

    def update_key(self, key_id: str, changes: Record) -> Record:
        """Apply ``changes`` to a key (e.g. ``revoked_at``)."""
        raise NotImplementedError

    # -- one-time codes (e-mail verification, password reset) ---------------------

    def put_code(self, code: Record) -> Record:
        """Store (or replace) a code record keyed by ``id`` ("purpose:user_id")."""
        raise NotImplementedError

    def get_code(self, code_id: str) -> Record | None:
        """The code record, or None."""
        raise NotImplementedError

    def delete_code(self, code_id: str, code_hash: str | None = None) -> bool:
        """Forget a code (with ``code_hash``: only if it is still that code); True for the one call that did."""
        raise NotImplementedError

    def spend_code(self, code_id: str, now: float, max_attempts: int) -> Record | None:
        """Count one guess against a live code and return it; None (and the code is gone) once expired or spent."""
        raise NotImplementedError

    # -- attempts counted in a window (failed logins, code requests) ------------------

    def count_attempt(self, key: str, now: float, window: float) -> tuple[int, float]:
        """Count one attempt at ``key``: (attempts in its window, when the window ends); the first starts one."""
        raise NotImplementedError

    def take_back_attempt(self, key: str) -> None:
        """Uncount one attempt at ``key`` (one that was refused before it checked anything)."""
        raise NotImplementedError

    def clear_attempts(self, key: str) -> None:
        """Forget every attempt counted at ``key``."""
        raise NotImplementedError

    # -- notifications ----------------------------------------------------------------

    def add_notifications(
        self,
        notifications: list[Record],
        push_jobs: Sequence[Record] = (),
        max_pending: int = 0,
        mark: int | None = None,
        expected: Any = UNCHECKED,
    ) -> tuple[list[Record], list[Record], list[Record]]:
        """Store notifications (each gets a ``seq``) and their push jobs in one write.

        Jobs are queued while fewer than ``max_pending`` wait; the rest are kept as
        dead letters. ``mark``, when given, is stored as meta ``notified_seq`` in the
        same write. With ``expected`` (a seq, or None for no mark yet) the write
        happens only if ``notified_seq`` still holds it, else Conflict and nothing
        is written: of several processes notifying from one mark, one wins.
        Returns (notifications, accepted jobs, refused jobs).
        """
        raise NotImplementedError

    def get_meta(self, key: str) -> Any:
        """A small stored value (``notified_seq``), or None."""
        raise NotImplementedError

    def latest_seq(self) -> int:
        """The highest seq handed out so far."""
        raise NotImplementedError

    def chat_messages_after(self, seq: int, limit: int = 100) -> list[Record]:
        """Chat messages with a seq above ``seq``, in seq order (at most ``limit``)."""
        raise NotImplementedError

    def get_notification(self, notification_id: str) -> Record | None:
        """The notification, or None."""
        raise NotImplementedError

    def user_notifications(
        self,
        user_id: str,
        before: int | None = None,
        limit: int = 50,
        kind: str | None = None,
        unread_only: bool = False,
    ) -> tuple[list[Record], bool]:
        """(notifications, more): a user's notifications, newest first, below seq ``before``."""
        raise NotImplementedError

    def unread_notification_count(self, user_id: str) -> int:
        """How many of a user's notifications are unread."""
        raise NotImplementedError

    def mark_notifications_read(self, user_id: str, notification_ids: Iterable[str] | None = None) -> int:
        """Mark some (or all) of a user's unread notifications read; returns how many changed."""
        raise NotImplementedError

    def scrub_message(self, message_id: str, retract: Retract) -> None:
        """Take a deleted message's text out of its copies, in one write.

        Each event of the event log about it (whose data's ``id`` or
        ``message_id`` is the message's) gets the data ``retract(type, data)``
        answers (None: left as it is); notifications about it, and their push
        jobs (queued or dead letters), lose its preview.
        """
        raise NotImplementedError

    # -- push devices and the delivery queue ---------------------------------------------

    def add_device(self, device: Record, limit: int | None = None) -> Record:
        """Register a device (``id``, ``user_id``, ``endpoint`` or ``token``); Conflict if the user has ``limit``."""
        raise NotImplementedError

    def get_device(self, device_id: str) -> Record | None:
        """The device, or None."""
        raise NotImplementedError

    def user_devices(self, user_id: str) -> list[Record]:
        """A user's devices, oldest first."""
        raise NotImplementedError

    def delete_device(self, device_id: str) -> bool:
        """Forget a device; returns True if it existed."""
        raise NotImplementedError

    def due_push_jobs(self, now: float, limit: int = 50) -> list[Record]:
        """Pending jobs whose ``next_attempt_at`` has come, earliest first."""
        raise NotImplementedError

    def claim_push_jobs(self, now: float, lease: float, limit: int = 50) -> list[Record]:
        """Due pending jobs, earliest first, each moved ``lease`` seconds ahead in the same write.

        A claimed job is not due again until its lease ends, so of several
        processes draining one queue only one delivers it; if that one dies,
        the job comes due again when the lease runs out.
        """
        raise NotImplementedError

    def next_push_time(self) -> float | None:
        """When the earliest pending job is due, or None."""
        raise NotImplementedError

    def update_push_job(self, job_id: str, changes: Record) -> Record:
        """Apply ``changes`` to a job (attempts, next time, status)."""
        raise NotImplementedError

    def delete_push_job(self, job_id: str) -> bool:
        """Drop a job (delivered); returns True if it existed."""
        raise NotImplementedError

    def dead_push_jobs(self, limit: int = 100) -> list[Record]:
        """Jobs that gave up, newest first."""
        raise NotImplementedError

    # -- real time --------------------------------------------------------------------

    def event_log(self) -> EventLog:
        """The store's log of real-time events (see ``EventLog``); the same object on every call."""
        raise NotImplementedError

    # -- moving whole stores (``oxc migrate-store``) ---------------------------------------

    def is_empty(self) -> bool:
        """Whether no table holds a record."""
        raise NotImplementedError

    def count_records(self) -> dict[str, int]:
        """{table: records} over every table of ``TABLES``."""
        raise NotImplementedError

    def export_records(self, batch: int = 1000) -> Iterator[tuple[str, Record]]:
        """Yield (table, record) for every record, table by table in ``TABLES`` order.

        Each table comes in the order its records were first written (members, keys
        and devices keep that order in their lists). ``meta`` records come as
        ``{"key": ..., "value": ...}``. ``batch`` bounds what is read at once.
        """
        raise NotImplementedError

    def import_records(self, table: str, records: Iterable[Record]) -> None:
        """Load ``records`` of one table (as ``export_records`` gives them, seqs included) in one write."""
        raise NotImplementedError

    def finish_import(self, next_seq: int) -> None:
        """After ``import_records``: continue seqs from ``next_seq`` (or past the highest imported), durably."""
        raise NotImplementedError
