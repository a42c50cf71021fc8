"""Two hosts: oxc on one, its PostgreSQL on another, a real network link between them.

The other PostgreSQL tests reach the database over loopback or a unix socket,
where a vanished server is a refused connection at once. Here the test makes
two Linux network namespaces joined by a veth pair: the "db host" runs a
private PostgreSQL listening on its veth address only, the "app host" runs
``oxc serve`` with ``STORE_URL`` pointing at that address, so every query
crosses the link. The test talks HTTP to oxc from inside the app host (a
thread of this process that has joined its namespace), checks that what the
API acknowledged is in the db host's tables, then takes the link down: requests
must get 503 with the error envelope and ``Retry-After`` in bounded time, and
once the link is back the service must recover by itself.

Only addresses of the benchmarking range 198.18.0.0/15 are used, and only
inside the namespaces, with no default route: nothing leaves the machine.
Skips, saying why, without root, ``ip``, namespaces, PostgreSQL server
binaries or psycopg.
"""

import concurrent.futures
import contextlib
import ctypes
import glob
import http.client
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from server import ROOT

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test,postgres]')")
pytest.importorskip("psycopg_pool", reason="psycopg_pool is not installed (pip install -e '.[test,postgres]')")

from psycopg.conninfo import conninfo_to_dict  # noqa: E402

from store import postgres  # noqa: E402  (needs psycopg)

DB_ADDRESS, APP_ADDRESS, PREFIX = "198.18.0.1", "198.18.0.2", 30
SUBNET = str(ipaddress.ip_interface(f"{DB_ADDRESS}/{PREFIX}").network)
DB_PORT = 55432
PASSWORD = "correct horse battery"
CLONE_NEWNET = 0x40000000
#: README: a request that cannot get a pooled connection within 5 seconds gets 503,
#: and one already talking to a host that vanished without a word (a link down)
#: gets it once TCP gives up, after oxc's tcp_user_timeout. The pool checks idle
#: connections without a round trip, so no request waits for both.
POOL_TIMEOUT = 5
TCP_USER_TIMEOUT = int(conninfo_to_dict(postgres.conninfo("postgresql://"))["tcp_user_timeout"]) / 1000
OUTAGE_ANSWER_WITHIN = max(TCP_USER_TIMEOUT, POOL_TIMEOUT) + 2
#: Seconds the service may take to recover once the link is back.
RECOVERY_WITHIN = 20


# ---- what the machine must offer ---------------------------------------------------------------


def postgres_bin():
    """The bin directory of the newest PostgreSQL server installed (Debian layout), or None."""
    found = [
        path
        for path in glob.glob("/usr/lib/postgresql/*/bin")
        if all(os.access(os.path.join(path, tool), os.X_OK) for tool in ("initdb", "postgres"))
    ]

    def version(path):
        return [int(part) if part.isdigit() else 0 for part in path.split("/")[-2].split(".")]

    return max(found, key=version, default=None)


def skip_reason():
    """Why this machine cannot run the two-host test, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command"
    if postgres_bin() is None:
        return "no PostgreSQL server binaries (initdb, postgres) under /usr/lib/postgresql/*/bin"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no 'postgres' system user to run the PostgreSQL server as"
    return None


def ip(*args, timeout=10):
    """Run ``ip ARGS``; raise CalledProcessError (with its stderr) on failure."""
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=timeout)


def first_line(error):
    text = (getattr(error, "stderr", None) or str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---- hosts -------------------------------------------------------------------------------------


class Host:
    """A network namespace; ``call`` runs Python in a thread of this process that lives in it."""

    def __init__(self, name):
        self.name = name
        self._thread = None
        self.entry_error = None

    def create(self):
        ip("netns", "add", self.name)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name, initializer=self._enter)

    def _enter(self):
        # A network namespace is per thread: setns here moves only this worker,
        # and every socket it opens afterwards belongs to the namespace.
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                error = ctypes.get_errno()
                self.entry_error = OSError(error, f"setns into {self.name}: {os.strerror(error)}")
                raise self.entry_error
        finally:
            os.close(fd)

    def call(self, function, *args, timeout=60, **kwargs):
        """``function(*args, **kwargs)`` from inside this host."""
        return self._thread.submit(function, *args, **kwargs).result(timeout)

    def ip(self, *args):
        return ip("-n", self.name, *args)

    def routes(self):
        """Its routes (main table), one a line."""
        return self.ip("route", "show").stdout.splitlines()

    def command(self, *argv):
        """``argv`` to run as a process in this host."""
        return ["ip", "netns", "exec", self.name, *argv]

    def delete(self):
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        with contextlib.suppress(subprocess.SubprocessError):
            ip("netns", "delete", self.name)  # its end of the veth pair goes with it


class Hosts:
    """The db host and the app host, joined by a veth pair (and nothing else)."""

    def __init__(self, stack):
        suffix = secrets.token_hex(4)
        self.db, self.app = Host(f"oxc-db-{suffix}"), Host(f"oxc-app-{suffix}")
        self.db_link, self.app_link = f"oxd{suffix}", f"oxa{suffix}"
        for host in (self.db, self.app):
            stack.callback(host.delete)
            try:
                host.create()
                host.call(lambda: None)
            except (subprocess.CalledProcessError, OSError, concurrent.futures.BrokenExecutor) as exc:
                pytest.skip(f"cannot create or enter a network namespace here: {first_line(host.entry_error or exc)}")
        try:
            self.db.ip(
                "link", "add", self.db_link, "type", "veth", "peer", "name", self.app_link, "netns", self.app.name
            )
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create a veth pair here: {first_line(exc)}")
        for host, link, address in ((self.db, self.db_link, DB_ADDRESS), (self.app, self.app_link, APP_ADDRESS)):
            host.ip("address", "add", f"{address}/{PREFIX}", "dev", link)
            host.ip("link", "set", link, "up")
            host.ip("link", "set", "lo", "up")

    def link(self, up):
        """Take the app host's end of the link down (the db host becomes unreachable) or up again."""
        self.app.ip("link", "set", self.app_link, "up" if up else "down")


# ---- the db host: a private PostgreSQL -------------------------------------------------------


def as_postgres(*argv):
    """``argv`` run as the postgres system user (initdb and postgres refuse root)."""
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]


class Database:
    """PostgreSQL in the db host, listening on its veth address only, trusting the link's subnet."""

    def __init__(self, host, directory, stack):
        self.host, self.directory = host, directory
        bin_dir = postgres_bin()
        data = os.path.join(directory, "pgdata")
        initdb = subprocess.run(
            as_postgres(
                os.path.join(bin_dir, "initdb"),
                "-D",
                data,
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--auth=trust",
            ),
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}): {initdb.stderr[-2000:]}")
        with open(os.path.join(data, "pg_hba.conf"), "w") as f:
            f.write(f"local all all trust\nhost all all {SUBNET} trust\n")
        self.log = open(os.path.join(directory, "postgres.log"), "w")
        stack.callback(self.log.close)
        self.process = subprocess.Popen(
            host.command(
                *as_postgres(
                    os.path.join(bin_dir, "postgres"),
                    "-D",
                    data,
                    "-p",
                    str(DB_PORT),
                    "-c",
                    f"listen_addresses={DB_ADDRESS}",
                    "-c",
                    f"unix_socket_directories={directory}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                )
            ),
            cwd=directory,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(self.stop)
        self.url = f"postgresql://postgres@{DB_ADDRESS}:{DB_PORT}/oxc"

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def wait_ready(self, through, timeout=20):
        """Create the oxc database once the server answers over the link from ``through``."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.process.returncode}): {self.log_text()}")
            try:
                through.call(self.execute, "SELECT 1", dbname="postgres")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres did not answer on {DB_ADDRESS}:{DB_PORT}: {self.log_text()}"
                    ) from None
                time.sleep(0.1)
        through.call(self.execute, "CREATE DATABASE oxc", dbname="postgres")

    def execute(self, query, params=(), dbname="oxc"):
        """Rows of ``query``, over TCP to the db host's veth address (call it from a host)."""
        with psycopg.connect(
            host=DB_ADDRESS, port=DB_PORT, user="postgres", dbname=dbname, connect_timeout=2, autocommit=True
        ) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def log_text(self):
        with open(os.path.join(self.directory, "postgres.log")) as f:
            return f.read()[-2000:]


# ---- the app host: oxc -------------------------------------------------------------------------


class App:
    """``oxc serve`` in the app host on its loopback, with its store in the db host."""

    def __init__(self, host, directory, store_url, stack, timeout=30):
        self.host = host
        self.stdout_path = os.path.join(directory, "oxc.out")
        self.stderr_path = os.path.join(directory, "oxc.err")
        environment = {k: v for k, v in os.environ.items() if k not in ("OXC_ENV", "FLASK_ENV")}
        environment.update(
            HOST="127.0.0.1",
            PORT="0",
            DATA_DIR=os.path.join(directory, "data"),
            STORE_URL=store_url,
            BCRYPT_ROUNDS="4",
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(
                host.command(sys.executable, "-m", "oxc_wsgi", "serve"),
                cwd=ROOT,
                env=environment,
                stdout=out,
                stderr=err,
            )
        stack.callback(self.stop)
        deadline = time.monotonic() + timeout
        while not self.output().startswith("oxc listening on http://"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"oxc did not start: {self.output()!r} {self.errors()}")
            time.sleep(0.05)
        self.port = int(self.output().split("http://", 1)[1].split()[0].rsplit(":", 1)[1])

    def output(self):
        with open(self.stdout_path) as f:
            return f.read()

    def errors(self):
        with open(self.stderr_path) as f:
            return f.read()[-3000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def _request(self, method, path, body, token, timeout):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")
        finally:
            connection.close()

    def request(self, method, path, body=None, token=None, timeout=30):
        """(status, headers, parsed JSON) of one request, sent from inside the app host."""
        return self.host.call(self._request, method, path, body, token, timeout, timeout=timeout + 5)

    def user(self, username):
        """Register and log in ``username``; returns the login data (tokens and user)."""
        status, _, answer = self.request("POST", "/api/auth/register", {"username": username, "password": PASSWORD})
        assert status == 201, answer
        status, _, answer = self.request("POST", "/api/auth/login", {"username": username, "password": PASSWORD})
        assert status == 200, answer
        return answer["data"]


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hosts():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        yield Hosts(stack)


@pytest.fixture(scope="module")
def workdir():
    """A temp directory the postgres user owns (pytest's tmp_path is private to root)."""
    directory = tempfile.mkdtemp(prefix="oxc-two-hosts-")
    try:
        postgres = pwd.getpwnam("postgres")
        try:
            os.chown(directory, postgres.pw_uid, postgres.pw_gid)
        except OSError as exc:
            pytest.skip(f"cannot hand a directory to the postgres user here (to run PostgreSQL as it): {exc}")
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def database(hosts, workdir):
    with contextlib.ExitStack() as stack:
        running = Database(hosts.db, workdir, stack)
        running.wait_ready(through=hosts.app)
        yield running


@pytest.fixture(scope="module")
def app(hosts, database, workdir):
    with contextlib.ExitStack() as stack:
        yield App(hosts.app, workdir, database.url, stack)


@pytest.fixture
def link_back_up(hosts):
    """Bring the link back up after the test, whatever happens in it."""
    yield
    hosts.link(up=True)


def sql(hosts, database, query, params=()):
    """Rows of ``query`` in the db host's database, asked over the link from the app host."""
    return hosts.app.call(database.execute, query, params)


def contents(answer):
    return [message["content"] for message in answer["messages"]]


def wait_for_status(app, status, method, path, timeout, **request):
    """Repeat a request until it answers ``status``; (seconds taken, last answer)."""
    started = time.monotonic()
    while True:
        answer = app.request(method, path, **request)
        if answer[0] == status or time.monotonic() - started > timeout:
            return time.monotonic() - started, answer
        time.sleep(0.2)


# ---- tests -------------------------------------------------------------------------------------


def test_the_hosts_reach_each_other_only_over_the_link(hosts):
    for host, link in ((hosts.db, hosts.db_link), (hosts.app, hosts.app_link)):
        assert [route.split()[:3] for route in host.routes()] == [[SUBNET, "dev", link]]


def test_the_api_works_across_the_link_and_its_data_is_in_the_db_host(hosts, database, app):
    alice, bob = app.user("alice"), app.user("bob")
    status, _, public = app.request(
        "POST", "/api/messages", {"content": "hello, both hosts"}, token=alice["access_token"]
    )
    assert status == 201, public
    status, _, private = app.request(
        "POST",
        "/api/messages",
        {"content": "just for bob", "recipient_id": bob["user"]["id"]},
        token=alice["access_token"],
    )
    assert status == 201, private
    for reader in (alice, bob):
        status, _, answer = app.request("GET", "/api/messages", token=reader["access_token"])
        assert status == 200 and contents(answer) == ["hello, both hosts", "just for bob"]
    status, _, answer = app.request("GET", f"/api/messages/{private['data']['id']}", token=bob["access_token"])
    assert status == 200 and answer["data"] == private["data"]

    users = sql(hosts, database, "SELECT username_key, id FROM users ORDER BY username_key")
    assert users == [("alice", alice["user"]["id"]), ("bob", bob["user"]["id"])]
    messages = sql(hosts, database, "SELECT id, user_id, recipient_id, data->>'content' FROM messages ORDER BY seq")
    assert messages == [
        (public["data"]["id"], alice["user"]["id"], None, "hello, both hosts"),
        (private["data"]["id"], alice["user"]["id"], bob["user"]["id"], "just for bob"),
    ]
    # oxc's connections come from the app host's end of the link, not from loopback.
    clients = sql(
        hosts, database, "SELECT DISTINCT host(client_addr) FROM pg_stat_activity WHERE application_name = 'oxc'"
    )
    assert clients == [(APP_ADDRESS,)]


def test_with_the_link_down_requests_get_503_in_bounded_time_and_it_recovers_by_itself(
    hosts, database, app, link_back_up
):
    carol = app.user("carol")
    token = carol["access_token"]
    assert app.request("GET", "/api/messages", token=token)[0] == 200

    hosts.link(up=False)
    for method, path, body in (
        ("GET", "/api/messages", None),
        ("POST", "/api/messages", {"content": "lost?"}),
        ("GET", "/api/health", None),
    ):
        started = time.monotonic()
        status, headers, answer = app.request(method, path, body, token=token, timeout=OUTAGE_ANSWER_WITHIN + 5)
        took = time.monotonic() - started
        assert status == 503, (method, path, status, answer, f"{took:.1f}s")
        assert took < OUTAGE_ANSWER_WITHIN, f"{method} {path} took {took:.1f}s to fail"
        assert headers["Content-Type"].startswith("application/json")
        assert answer["status"] == "error" and isinstance(answer["message"], str) and answer["message"]
        assert int(headers["Retry-After"]) > 0

    hosts.link(up=True)
    took, (status, _, answer) = wait_for_status(app, 200, "GET", "/api/messages", RECOVERY_WITHIN, token=token)
    assert status == 200, f"not recovered after {took:.1f}s: {status} {answer}"
    status, _, sent = app.request("POST", "/api/messages", {"content": "back again"}, token=token)
    assert status == 201, sent
    assert sql(hosts, database, "SELECT data->>'content' FROM messages WHERE id = %s", (sent["data"]["id"],)) == [
        ("back again",)
    ]
    assert "lost?" not in contents(app.request("GET", "/api/messages", token=token)[2])
    assert app.request("GET", "/api/health")[0] == 200
