"""The one interface every storage backend implements.

Handlers talk to a ``Store`` and nothing else, so a second backend (a database
server) plugs in without touching them; ``tests/test_store_contract.py`` runs
the same behaviour checks against every backend.

Records are plain dicts that callers must treat as read-only: a backend may
hand out the very dict it keeps. Every write method returns only after the
write is durable; a backend that can no longer guarantee that raises
``StoreUnavailable``.
"""

from typing import NamedTuple


class Page(NamedTuple):
    """One page of a list: ``items`` oldest first, and whether more lie beyond."""

    items: list
    older: bool
    newer: bool


class Store:
    """Users, messages and refresh-token sessions, with the queries the API needs."""

    #: False once the backend refuses writes (health checks read this).
    writable = True

    def close(self):
        """Flush and release everything; the store is unusable afterwards."""
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

    def update_user(self, user_id, changes):
        """Apply ``changes`` to a user and return the new record; Conflict if taken."""
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

    def add_session(self, session):
        """Start a session (a refresh-token family) holding ``token_hash``."""
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
