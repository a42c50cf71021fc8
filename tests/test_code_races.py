"""Rules that hold across concurrent requests and processes: one-time codes and the login lockout.

Many threads hammer the service: on PostgreSQL two real ``oxc serve``
processes on one fresh schema (requests alternate between them, as behind a
load balancer); on the JSON store, which one process owns, that process's app
itself, with the interpreter switching threads every 10 microseconds so that a
read-check-write in a handler is caught inside its window as it would be under
load. Codes arrive by SMTP on loopback. Each rule gets 100 trials and must hold
in every one, with no 5xx:

- parallel wrong guesses spend a code: after them the right code fails;
- a right code sent twice at once is redeemed once;
- parallel wrong passwords: at most 10 are checked (401), the rest are
  refused (429), and then the right password is refused too.
"""

import concurrent.futures
import io
import itertools
import json
import sys
from wsgiref.util import setup_testing_defaults

import pytest
from server import Server
from test_accounts import inbox  # noqa: F401 (a fixture)

TRIALS = 100
PASSWORD = "password123"
LOCKOUT = 10


def in_process(app):
    """A sender calling the WSGI ``app`` directly: (path, body) -> status."""

    def send(path, body):
        data = json.dumps(body).encode()
        environ = {}
        setup_testing_defaults(environ)
        environ.update(
            {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": path,
                "CONTENT_TYPE": "application/json",
                "CONTENT_LENGTH": str(len(data)),
                "wsgi.input": io.BytesIO(data),
            }
        )
        status = []
        b"".join(app(environ, lambda line, headers, exc_info=None: status.append(line)))
        return int(status[0][:3])

    return send


def over_http(server):
    """A sender posting to the real ``server``: (path, body) -> status."""
    return lambda path, body: server.request("POST", path, body)[0]


@pytest.fixture
def senders(backend, tmp_path, inbox, make_client):  # noqa: F811
    """Two server processes on one PostgreSQL schema, or one JSON-store app in this process."""
    if backend:
        env = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": inbox.port,
            "SMTP_SECURITY": "none",
            "THREADS": 8,
            "STORE_URL": backend["store_url"],
        }
        running = [Server(tmp_path / "data", **env) for _ in range(2)]
        yield [over_http(server) for server in running]
        for server in running:
            server.stop()
        return
    client = make_client(smtp_host="127.0.0.1", smtp_port=inbox.port, smtp_security="none")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield [in_process(client.wsgi)]
    finally:
        sys.setswitchinterval(interval)


class Hammer:
    """Send requests from many threads, alternating between the senders."""

    def __init__(self, senders, workers=32):
        self._senders = itertools.cycle(senders)
        self._pool = concurrent.futures.ThreadPoolExecutor(workers)

    def all(self, requests):
        """Send every (path, body) at once; their statuses, in order (never a 5xx)."""
        futures = [self._pool.submit(send, f"/api{path}", body) for send, (path, body) in zip(self._senders, requests)]
        statuses = [future.result() for future in futures]
        failed = [status for status in statuses if status >= 500]
        assert not failed, f"{len(failed)} answers were 5xx: {sorted(set(failed))}"
        return statuses

    def settled(self, requests, rounds=20):
        """Like ``all``, but 429s are sent again (it may mean every hashing slot was taken) until they stay 429."""
        statuses = self.all(requests)
        for _ in range(rounds):
            again = [index for index, status in enumerate(statuses) if status == 429]
            answers = self.all([requests[index] for index in again])
            if answers == [429] * len(again):
                break
            for index, status in zip(again, answers):
                statuses[index] = status
        return statuses

    def close(self):
        self._pool.shutdown()


@pytest.fixture
def hammer(senders):
    made = Hammer(senders)
    yield made
    made.close()


def register(hammer, names, with_email=True):
    bodies = [
        {"username": name, "password": PASSWORD, **({"email": f"{name}@example.com"} if with_email else {})}
        for name in names
    ]
    while bodies:  # 429: every hashing slot was taken; retry, as a client told Retry-After would
        statuses = hammer.all([("/auth/register", body) for body in bodies])
        assert set(statuses) <= {201, 429}, statuses
        bodies = [body for body, status in zip(bodies, statuses) if status == 429]


def wrong(code):
    return f"{(int(code) + 1) % 10**6:06d}"


def test_parallel_wrong_guesses_spend_a_code_and_then_the_right_one_fails(hammer, inbox):
    names = [f"guess{number}" for number in range(TRIALS)]
    register(hammer, names)
    codes = {name: inbox.code_for(f"{name}@example.com") for name in names}
    guesses = [
        ("/auth/verify-email", {"email": f"{name}@example.com", "code": wrong(codes[name])})
        for name in names
        for _ in range(8)
    ]
    assert set(hammer.all(guesses)) == {400}
    right = hammer.all(
        [("/auth/verify-email", {"email": f"{name}@example.com", "code": codes[name]}) for name in names]
    )
    worked = [name for name, status in zip(names, right) if status != 400]
    assert not worked, f"{len(worked)} of {TRIALS} codes still worked after 8 wrong guesses"


def test_a_reset_code_sent_twice_at_once_is_redeemed_once(hammer, inbox):
    names = [f"reset{number}" for number in range(TRIALS)]
    register(hammer, names)
    for name in names:
        inbox.code_for(f"{name}@example.com")  # the verification mail came first
    asked = hammer.all([("/auth/password-reset/request", {"email": f"{name}@example.com"}) for name in names])
    assert set(asked) == {200}
    codes = {name: inbox.code_for(f"{name}@example.com", count=2) for name in names}
    redemptions = [
        (
            "/auth/password-reset",
            {"email": f"{name}@example.com", "code": codes[name], "new_password": f"new password {copy}"},
        )
        for name in names
        for copy in range(2)
    ]
    statuses = hammer.settled(redemptions)
    twice = [name for name, pair in zip(names, zip(statuses[::2], statuses[1::2])) if sorted(pair) != [200, 400]]
    assert not twice, f"{len(twice)} of {TRIALS} codes were not redeemed exactly once: {twice[:5]}"


def test_parallel_wrong_passwords_across_processes_get_at_most_ten_checks(hammer):
    names = [f"login{number}" for number in range(TRIALS)]
    register(hammer, names, with_email=False)
    guesses = [("/auth/login", {"username": name, "password": "wrong password"}) for name in names for _ in range(20)]
    statuses = hammer.settled(guesses)
    assert set(statuses) <= {401, 429}
    checked = {name: statuses[index * 20 : (index + 1) * 20].count(401) for index, name in enumerate(names)}
    over = {name: count for name, count in checked.items() if count > LOCKOUT}
    assert not over, (
        f"{len(over)} of {TRIALS} accounts had more than {LOCKOUT} passwords checked, e.g. "
        f"{dict(list(over.items())[:5])}"
    )
    right = hammer.all([("/auth/login", {"username": name, "password": PASSWORD}) for name in names])
    let_in = [name for name, status in zip(names, right) if status != 429]
    assert not let_in, f"{len(let_in)} of {TRIALS} locked accounts let the right password in"
