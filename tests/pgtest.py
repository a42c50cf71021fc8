"""A PostgreSQL server for tests: fresh schemas in the database at OXC_TEST_POSTGRES_URL.

The URL defaults to ``postgresql:///test`` (the local server's socket). Each
``fresh_schema()`` creates a schema of its own, hands out the URL with that
schema as ``search_path`` and drops it afterwards, so tests never see each
other's tables. Without psycopg or a reachable server, tests skip, saying why.
"""

import contextlib
import os
import secrets
import urllib.parse

import pytest

URL = os.environ.get("OXC_TEST_POSTGRES_URL", "postgresql:///test")
_reason = []


def skip_reason():
    """Why PostgreSQL tests cannot run here, or None when they can."""
    if not _reason:
        try:
            import psycopg
            import psycopg_pool  # noqa: F401
        except ImportError:
            _reason.append("psycopg is not installed (pip install -e '.[test,postgres]')")
        else:
            try:
                with psycopg.connect(URL, connect_timeout=3, autocommit=True):
                    _reason.append(None)
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                _reason.append(f"no PostgreSQL server at OXC_TEST_POSTGRES_URL={URL} ({first})")
    return _reason[0]


def with_search_path(url, schema):
    """``url`` with its connections using ``schema``."""
    options = urllib.parse.quote(f"-csearch_path={schema}")
    return f"{url}{'&' if '?' in url else '?'}options={options}"


def admin_connection():
    """An autocommit connection to the test database (for DDL and EXPLAIN)."""
    import psycopg

    return psycopg.connect(URL, connect_timeout=3, autocommit=True)


@contextlib.contextmanager
def fresh_schema():
    """Yield (url, schema) for a new empty schema; skip the test when there is no server."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    schema = f"oxc_test_{secrets.token_hex(6)}"
    with admin_connection() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(URL, schema), schema
    finally:
        with admin_connection() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
