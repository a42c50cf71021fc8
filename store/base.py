"""The one interface every storage backend implements.

Handlers talk to a ``Store`` and nothing else, so a second backend (a database
server) plugs in without touching them; ``tests/test_store_contract.py`` runs
the same behaviour checks against every backend.

Records are plain dicts that callers must treat as read-only: a backend may
hand out the very dict it keeps. Every write method returns only after the
write is durable; a backend that can no longer guarantee that raises
``StoreUnavailable``.
"""

import re
from typing import NamedTuple

WORD = re.compile(r"\w+")
MAX_TERM = 64


def search_terms(text):
    """The distinct words of ``text`` that search indexes and matches, case-folded."""
    return {term for term in WORD.findall(text.casefold()) if len(term) <= MAX_TERM}


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

    members: dict = None
    chat: dict = None
    delete: bool = False


def member_updates(change, user_ids):
    """A ChatChange's ``{user id: record or None}``; ValueError for a user the decision did not see."""
    updates = change.members or {}
    unseen = set(updates) - set(user_ids)
    if unseen:
        raise ValueError(f"a chat change may only touch the members it read, not {sorted(unseen)}")
    return updates


def dropped_attachment(old, new):
    """The id of the attachment message ``old`` named and ``new`` (a tombstone, or without it) no longer has."""
    attachment_id = old.get("attachment_id")
    if attachment_id and (new.get("deleted") or new.get("attachment_id") != attachment_id):
        return attachment_id
    return None


def push_message_ids(job):
    """The ids of the messages a push job's notifications are about, in order, once each."""
    found = []
    for delivery in (job.get("payload") or {}).get("deliveries", ()):
        message_id = (delivery.get("notification") or {}).get("message_id")
        if message_id and message_id not in found:
            found.append(message_id)
    return found


def without_preview(job, message_id):
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


class Store:
    """Users, messages and refresh-token sessions, with the queries the API needs."""

    #: False once the backend refuses writes (health checks read this).
    writable = True

    def problem(self):
        """Why the store refuses writes, for people; None while it accepts them."""
        return None if self.writable else "the database refuses writes"

    def sync(self):
        """Return once every write readers can see is durable; StoreUnavailable if one was lost.

        The app calls it before every answer. A backend whose writes become
        visible only when durable (a database's commit) has nothing to do.
        """

    def close(self):
        """Flush and release everything; the store is unusable afterwards."""
        raise NotImplementedError

    def compact(self):
        """Rewrite what is kept on disk now, so that deleted and scrubbed data leaves it; returns when done."""
        raise NotImplementedError

    def import_legacy(self, legacy):
        """Take in a 0xC data directory's (users, messages, sessions) as ``read_legacy`` gives them."""
        raise NotImplementedError

    # -- users ------------------------------------------------------------

    def create_user(self, user):
        """Add ``user`` (with ``id``, ``username``, optional ``email``); Conflict if taken."""
        raise NotImplementedError

    def get_user(self, user_id):
        """The user with this id, or None."""
        raise NotImplementedError

    def find_user(self, username):
        """The user with this username (case-insensitive), or None."""
        raise NotImplementedError

    def find_user_by_email(self, address):
        """The user with this e-mail address (case-insensitive), or None."""
        raise NotImplementedError

    def update_user(self, user_id, changes, expected=None):
        """Apply ``changes`` to a user and return the new record; Conflict if taken.

        With ``expected`` ({field: value}) the change happens only while the user
        still holds those values, checked in the same atomic step; else None.
        """
        raise NotImplementedError

    # -- messages ---------------------------------------------------------

    def add_message(self, message):
        """Store a new message and return it with its ``seq`` (a rising integer)."""
        raise NotImplementedError

    def get_message(self, message_id):
        """The message with this id, or None."""
        raise NotImplementedError

    def delete_message(self, message_id):
        """Remove a message; returns the removed record, or None if there was none."""
        raise NotImplementedError

    def visible_messages(self, user_id, before=None, after=None, limit=50):
        """A Page of public messages and private ones to or from ``user_id``.

        ``before``/``after`` are ``seq`` values (exclusive). Without ``after`` the
        page is the newest ``limit`` messages below ``before``.
        """
        raise NotImplementedError

    def sent_messages(self, user_id, before=None, after=None, limit=50):
        """A Page of the messages ``user_id`` sent, with the same cursors."""
        raise NotImplementedError

    # -- refresh-token sessions ---------------------------------------------

    def add_session(self, session, password_hash=None):
        """Start a session (a refresh-token family) holding ``token_hash``.

        With ``password_hash``, only while the user's password hash still is
        that one (else None): a login racing a password change or reset never
        leaves a session behind it.
        """
        raise NotImplementedError

    def get_session(self, session_id):
        """The session with this id, or None."""
        raise NotImplementedError

    def find_session(self, token_hash):
        """The session whose current refresh token hashes to ``token_hash``, or None."""
        raise NotImplementedError

    def rotate_session(self, session_id, token_hash, new_hash, now, expires_at):
        """Swap the session's current token hash for ``new_hash``, atomically.

        Succeeds (returning the new record) only if ``token_hash`` is still the
        current one; otherwise returns None and changes nothing, so of two
        concurrent rotations of one token exactly one wins.
        """
        raise NotImplementedError

    def delete_session(self, session_id):
        """End a session; returns True if it existed."""
        raise NotImplementedError

    def delete_user_sessions(self, user_id, keep=None):
        """End every session of a user except ``keep``; returns how many ended."""
        raise NotImplementedError

    # -- the signing key and stream tickets -------------------------------------

    def signing_key(self, candidate):
        """(key, where it is kept): the key kept with the data, else ``candidate``, kept now by the first caller."""
        raise NotImplementedError

    def use_ticket(self, ticket_id, expires_at, now):
        """Record a stream ticket as used: True for the one call that did, False for any other (until it expires)."""
        raise NotImplementedError

    # -- people ---------------------------------------------------------------

    def touch_user(self, user_id, seconds):
        """Record activity (``last_seen``) and return the user; not worth a flush of its own."""
        raise NotImplementedError

    def users_by_prefix(self, prefix, limit=20, after=None):
        """Users whose username starts with ``prefix`` (case-insensitive), by username.

        ``after`` is a username; the page starts after it.
        """
        raise NotImplementedError

    # -- chats ----------------------------------------------------------------

    def create_chat(self, chat, members):
        """Add a chat and its first member records in one write."""
        raise NotImplementedError

    def direct_chat(self, chat, first, second):
        """The direct chat of two users, created from ``chat`` if there is none.

        Returns (chat, created). Concurrent calls for one pair yield one chat.
        """
        raise NotImplementedError

    def get_chat(self, chat_id):
        """The chat with this id, or None."""
        raise NotImplementedError

    def update_chat(self, chat_id, changes):
        """Apply ``changes`` to a chat; returns the new record."""
        raise NotImplementedError

    def delete_chat(self, chat_id):
        """Remove a chat with its members and messages."""
        raise NotImplementedError

    def change_chat(self, chat_id, user_ids, decide):
        """Atomically write what ``decide`` makes of the chat and members now (see ChatChange); (chat, members)."""
        raise NotImplementedError

    def chat_ids(self, user_id):
        """The ids of every chat the user belongs to."""
        raise NotImplementedError

    def user_chats(self, user_id, limit=50, before=None):
        """(chats, more): the user's chats, newest activity first.

        ``before`` is a chat id: the page starts after that chat.
        """
        raise NotImplementedError

    # -- members --------------------------------------------------------------

    def get_member(self, chat_id, user_id):
        """The membership record (role, muted, read and delivered pointers), or None."""
        raise NotImplementedError

    def members(self, chat_id):
        """Every membership record of a chat."""
        raise NotImplementedError

    def add_member(self, member):
        """Add a membership; Conflict if the user is already a member."""
        raise NotImplementedError

    def update_members(self, updates):
        """Apply ``{(chat_id, user_id): changes}`` in one write; returns the new records."""
        raise NotImplementedError

    def remove_member(self, chat_id, user_id):
        """End a membership; returns True if it existed."""
        raise NotImplementedError

    # -- messages in chats ----------------------------------------------------

    def add_chat_message(self, message):
        """Store a chat message (assigning ``seq``) and move the author's read pointer to it.

        Missing (nothing written) unless the author is a member of the chat now.
        A message with ``attachment_id`` claims that attachment in the same write
        (its ``message_id`` becomes the message's id); Conflict, and nothing
        written, unless it is an unclaimed attachment of the same chat, so an
        attachment joins one message only.
        """
        raise NotImplementedError

    def get_chat_message(self, message_id):
        """The chat message with this id, or None."""
        raise NotImplementedError

    def update_chat_message(self, message_id, changes):
        """Apply ``changes`` (an edit, a tombstone) to a chat message; returns it."""
        raise NotImplementedError

    def change_chat_message(self, message_id, user_id, decide):
        """Atomically apply ``decide(message, member)``'s changes (None: none) to the fresh message; returns it.

        ``member`` is ``user_id``'s membership of the message's chat now (or
        None); ``message`` is None once gone. ``decide`` may raise (nothing is
        written), must not call the store and may run more than once. A message
        that becomes a tombstone (``deleted``) or stops naming its attachment
        takes that attachment record with it in the same write.
        """
        raise NotImplementedError

    def chat_history(self, chat_id, before=None, after=None, limit=50):
        """A Page of a chat's messages, with the cursors of ``visible_messages``."""
        raise NotImplementedError

    def unread_count(self, chat_id, user_id):
        """How many messages of the chat lie after the user's read pointer."""
        raise NotImplementedError

    def search(self, scopes, terms, before=None, limit=20):
        """(messages, more): messages in ``scopes`` holding every term, newest first.

        A scope is a chat id, ``"public"`` (0xC's public messages) or
        ``"user:<id>"`` (0xC's private messages to or from that user).
        ``before`` is a seq.
        """
        raise NotImplementedError

    # -- attachments and their bytes --------------------------------------------

    def save_blob(self, read, limit):
        """Stream ``read(n)`` into a durable content-addressed blob of at most ``limit`` bytes.

        Returns (sha256 hex, size, first 4 kB). Raises ``TooLarge`` past the
        limit and ``OutOfSpace`` (a StoreUnavailable) when the disk is full or
        the blob would eat into the free-space reserve; nothing is left behind.
        """
        raise NotImplementedError

    def save_blob_bytes(self, data):
        """Store a small blob (a thumbnail); returns its sha256 hex."""
        raise NotImplementedError

    def discard_blob(self, digest):
        """Give up a blob saved for a record that will not be written: it goes unless something refers to it."""
        raise NotImplementedError

    def open_blob(self, digest):
        """A binary file object of the blob, or None; ``DamagedBlob`` if its bytes no longer match its digest."""
        raise NotImplementedError

    def add_attachment(self, attachment, quota=0):
        """Record an attachment (``id``, ``chat_id``, ``sha256``, optional ``thumbnail_sha256``...).

        With a ``quota`` (bytes; 0: none), atomically: ``QuotaExceeded`` and
        nothing written if the uploader's attachments (their ``size``, not
        thumbnails) would then hold more, so of concurrent uploads no two both
        pass on the same room.
        """
        raise NotImplementedError

    def attachment_usage(self, user_id):
        """Bytes the user's attachments hold (the sum of their ``size``; thumbnails are not counted)."""
        raise NotImplementedError

    def get_attachment(self, attachment_id):
        """The attachment record, or None."""
        raise NotImplementedError

    def update_attachment(self, attachment_id, changes):
        """Apply ``changes`` to an attachment (e.g. the message it belongs to)."""
        raise NotImplementedError

    def delete_attachment(self, attachment_id, unsent_only=False):
        """Remove an attachment (with ``unsent_only``, only if no message claimed it); True if removed."""
        raise NotImplementedError

    # -- public keys ------------------------------------------------------------------

    def add_key(self, key):
        """Publish a public key (``id``, ``user_id``, ``device_id``, ``algorithm``, ``public_key``)."""
        raise NotImplementedError

    def get_key(self, key_id):
        """The key record, or None."""
        raise NotImplementedError

    def user_keys(self, user_id):
        """Every key a user published (revoked ones too), oldest first."""
        raise NotImplementedError

    def change_user_keys(self, user_id, decide):
        """Atomically write ``decide(keys)``'s (new keys, {key id: changes}) for the user's fresh keys; returns them."""
        raise NotImplementedError

    def update_key(self, key_id, changes):
        """Apply ``changes`` to a key (e.g. ``revoked_at``)."""
        raise NotImplementedError

    # -- one-time codes (e-mail verification, password reset) ---------------------

    def put_code(self, code):
        """Store (or replace) a code record keyed by ``id`` ("purpose:user_id")."""
        raise NotImplementedError

    def get_code(self, code_id):
        """The code record, or None."""
        raise NotImplementedError

    def delete_code(self, code_id, code_hash=None):
        """Forget a code (with ``code_hash``: only if it is still that code); True for the one call that did."""
        raise NotImplementedError

    def spend_code(self, code_id, now, max_attempts):
        """Count one guess against a live code and return it; None (and the code is gone) once expired or spent."""
        raise NotImplementedError

    # -- attempts counted in a window (failed logins, code requests) ------------------

    def count_attempt(self, key, now, window):
        """Count one attempt at ``key``: (attempts in its window, when the window ends); the first starts one."""
        raise NotImplementedError

    def take_back_attempt(self, key):
        """Uncount one attempt at ``key`` (one that was refused before it checked anything)."""
        raise NotImplementedError

    def clear_attempts(self, key):
        """Forget every attempt counted at ``key``."""
        raise NotImplementedError

    # -- notifications ----------------------------------------------------------------

    def add_notifications(self, notifications, push_jobs=(), max_pending=0, mark=None, expected=UNCHECKED):
        """Store notifications (each gets a ``seq``) and their push jobs in one write.

        Jobs are queued while fewer than ``max_pending`` wait; the rest are kept as
        dead letters. ``mark``, when given, is stored as meta ``notified_seq`` in the
        same write. With ``expected`` (a seq, or None for no mark yet) the write
        happens only if ``notified_seq`` still holds it, else Conflict and nothing
        is written: of several processes notifying from one mark, one wins.
        Returns (notifications, accepted jobs, refused jobs).
        """
        raise NotImplementedError

    def get_meta(self, key):
        """A small stored value (``notified_seq``), or None."""
        raise NotImplementedError

    def latest_seq(self):
        """The highest seq handed out so far."""
        raise NotImplementedError

    def chat_messages_after(self, seq, limit=100):
        """Chat messages with a seq above ``seq``, in seq order (at most ``limit``)."""
        raise NotImplementedError

    def get_notification(self, notification_id):
        """The notification, or None."""
        raise NotImplementedError

    def user_notifications(self, user_id, before=None, limit=50, kind=None, unread_only=False):
        """(notifications, more): a user's notifications, newest first, below seq ``before``."""
        raise NotImplementedError

    def unread_notification_count(self, user_id):
        """How many of a user's notifications are unread."""
        raise NotImplementedError

    def mark_notifications_read(self, user_id, notification_ids=None):
        """Mark some (or all) of a user's unread notifications read; returns how many changed."""
        raise NotImplementedError

    def scrub_message(self, message_id, retract):
        """Take a deleted message's text out of its copies, in one write.

        Each event of a shared log about it (whose data's ``id`` or
        ``message_id`` is the message's) gets the data ``retract(type, data)``
        answers (None: left as it is); notifications about it, and their push
        jobs (queued or dead letters), lose its preview.
        """
        raise NotImplementedError

    # -- push devices and the delivery queue ---------------------------------------------

    def add_device(self, device, limit=None):
        """Register a device (``id``, ``user_id``, ``endpoint`` or ``token``); Conflict if the user has ``limit``."""
        raise NotImplementedError

    def get_device(self, device_id):
        """The device, or None."""
        raise NotImplementedError

    def user_devices(self, user_id):
        """A user's devices, oldest first."""
        raise NotImplementedError

    def delete_device(self, device_id):
        """Forget a device; returns True if it existed."""
        raise NotImplementedError

    def due_push_jobs(self, now, limit=50):
        """Pending jobs whose ``next_attempt_at`` has come, earliest first."""
        raise NotImplementedError

    def claim_push_jobs(self, now, lease, limit=50):
        """Due pending jobs, earliest first, each moved ``lease`` seconds ahead in the same write.

        A claimed job is not due again until its lease ends, so of several
        processes draining one queue only one delivers it; if that one dies,
        the job comes due again when the lease runs out.
        """
        raise NotImplementedError

    def next_push_time(self):
        """When the earliest pending job is due, or None."""
        raise NotImplementedError

    def update_push_job(self, job_id, changes):
        """Apply ``changes`` to a job (attempts, next time, status)."""
        raise NotImplementedError

    def delete_push_job(self, job_id):
        """Drop a job (delivered); returns True if it existed."""
        raise NotImplementedError

    def dead_push_jobs(self, limit=100):
        """Jobs that gave up, newest first."""
        raise NotImplementedError

    # -- real time --------------------------------------------------------------------

    def event_log(self):
        """A log of real-time events shared by every process on this store, or None.

        None (the JSON store, which one process owns) keeps events in the
        process (``handlers/hub.py``). A shared log has ``epoch``, ``append``,
        ``after``, ``recent``, ``prune`` and ``follow``, as ``PostgresEventLog``.
        """
        return None
