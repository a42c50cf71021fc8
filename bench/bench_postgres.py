"""The PostgreSQL backend as ratios: to a bare-WSGI ceiling, to one process, and 1k vs 1M messages.

    python bench/bench_postgres.py [--seconds 5] [--url postgresql:///test] [--processes 1,2,4]
                                   [--connections 16] [--threads 8] [--pool-size 10]
                                   [--max-messages 1000000] [--quick]

Everything runs on loopback in one run, in a schema of its own made for the
run in the database at ``--url`` (``options=-csearch_path%3D<schema>``, as
tests/pgtest.py does) and dropped at the end. Needs wrk (``apt-get install
wrk``) and a PostgreSQL server; installs nothing; stops by itself.

1. **Throughput and processes.** For "GET one message", "GET page of 50" and
   "POST message" it drives, with wrk: the ceiling app (bench/ceiling.py on
   waitress, as bench_api.py does), oxc on the JSON store (one process) and
   oxc on PostgreSQL with 1, 2 and 4 processes, each a ``python -m oxc_wsgi
   serve`` on its own loopback port (PORT, THREADS, STORE_URL, DB_POOL_SIZE;
   note that it runs THREADS + REALTIME_MAX_CLIENTS waitress threads) sharing
   the one database. wrk takes one host per run, so each process gets
   its own wrk, all started at once with ``--connections`` split evenly
   between them (the same offered load whatever the number of processes); the
   table shows their summed requests/s, the worst p99 and the summed non-2xx.
   This was chosen over a round-robin proxy in front, which would itself need
   CPU on the same two cores and add a hop. The ceiling is run the same way
   with as many processes, to show what the machine and wrk allow at all.
   Ratios are to the 1-process ceiling and to 1 PostgreSQL process; the
   target is GET one message with 2 processes >= 1.3x 1 process. The
   "cores" column is the CPU (from /proc, see CpuMeter) that the served
   processes, PostgreSQL, wrk and the rest of the machine used meanwhile: on
   a 2-core machine PostgreSQL and wrk take their share of the cores the
   extra processes would need, and "rest" shows anything else running. One
   process on PostgreSQL hands the GIL between its threads at every query,
   across both cores: its figure moves with whatever else keeps a core busy,
   so read it beside the "rest" share.

2. **Cost as the table grows.** With 1 process, the cost of a request
   (1000 / req/s, in ms) over 1k messages against the same after the
   ``messages`` table has grown to ``--max-messages`` (1M; target: <= 1.25x).
   GET one reads a message from the middle of the table, not the newest.

The messages are put straight into the tables with SQL (INSERT ... SELECT
FROM generate_series, in batches, showing progress): rows exactly as
``PostgresStore.add_message`` writes them (the indexed columns, the whole
record in ``data``, one ``oxc_seq`` number each, their search postings), then
``oxc_seq`` is set past them and the tables are vacuumed and analyzed. The
script checks through the API that a seeded message reads back whole before
it times anything. Messages POSTed by one measurement are deleted before the
next, so every figure is taken over the stated number of messages.
"""

import argparse
import concurrent.futures
import os
import secrets
import shutil
import sys
import tempfile
import time
import urllib.parse

import psycopg
from common import ROOT, ChildServer, Served, bench_user, free_port, login, seed_store, table, wrk

OPERATIONS = ("GET one message", "GET page of 50", "POST message")
TIMESTAMP = "2026-01-01T00:00:00+00:00"

# One batch of seeded messages, each as add_message stores it (the keys of ``data`` in its order).
INSERT_MESSAGES = """
    INSERT INTO messages (id, seq, user_id, recipient_id, data)
    SELECT id, seq, %(user_id)s::text, NULL,
           json_build_object('id', id, 'user_id', %(user_id)s::text, 'username', %(username)s::text,
                             'content', 'seed ' || number, 'timestamp', %(timestamp)s::text,
                             'recipient_id', NULL, 'seq', seq)
    FROM (SELECT gen_random_uuid()::text AS id, %(first_seq)s::bigint + g AS seq, %(first_number)s::bigint + g AS number
          FROM generate_series(0, %(count)s - 1) AS g) AS new
"""
# Their search postings: the words of "seed <number>" in the public scope.
INSERT_POSTINGS = """
    INSERT INTO postings (scope, term, seq)
    SELECT 'public', term, %(first_seq)s::bigint + g
    FROM generate_series(0, %(count)s - 1) AS g,
         unnest(ARRAY['seed', (%(first_number)s::bigint + g)::text]) AS term
"""


def with_search_path(url, schema):
    """``url`` with its connections using ``schema``."""
    return f"{url}{'&' if '?' in url else '?'}options={urllib.parse.quote(f'-csearch_path={schema}')}"


class Database:
    """A fresh schema for the run: seeding with SQL, trimming back, dropping at the end."""

    def __init__(self, url):
        self.admin = psycopg.connect(url, autocommit=True)
        self.schema = f"oxc_bench_{secrets.token_hex(6)}"
        self.admin.execute(f'CREATE SCHEMA "{self.schema}"')
        self.url = with_search_path(url, self.schema)
        self.conn = psycopg.connect(self.url, autocommit=True)

    def create_user(self, username="bench"):
        """Create the tables (oxc's own migrations) and ``username``; returns the user."""
        from store import open_store

        store = open_store(None, url=self.url, pool_size=1)
        try:
            return bench_user(store, username)
        finally:
            store.close()

    def count(self):
        return self.conn.execute("SELECT count(*) FROM messages").fetchone()[0]

    def last_seq(self):
        return self.conn.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM oxc_seq").fetchone()[0]

    def seed(self, user, total, batch=100_000):
        """Add public messages by ``user`` until there are ``total``, printing progress."""
        have, started = self.count(), time.monotonic()
        while have < total:
            count = min(batch, total - have)
            params = {
                "user_id": user["id"],
                "username": user["username"],
                "timestamp": TIMESTAMP,
                "first_number": have,
                "first_seq": self.last_seq() + 1,
                "count": count,
            }
            with self.conn.transaction():
                self.conn.execute(INSERT_MESSAGES, params)
                self.conn.execute(INSERT_POSTINGS, params)
                self.conn.execute("SELECT setval('oxc_seq', %s)", (params["first_seq"] + count - 1,))
            have += count
            print(
                f"seeding PostgreSQL: {have:,}/{total:,} messages ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        print("seeding PostgreSQL: vacuum and analyze ...", file=sys.stderr, flush=True)
        self.settle()

    def trim(self, last_seq):
        """Delete the messages (and their postings) written after ``last_seq``: the ones POSTed."""
        self.conn.execute("DELETE FROM messages WHERE seq > %s", (last_seq,))
        self.conn.execute("DELETE FROM postings WHERE seq > %s", (last_seq,))
        self.settle()

    def settle(self):
        """Vacuum (hint bits, no dead index entries) and refresh the planner's statistics."""
        self.conn.execute("VACUUM ANALYZE messages, postings")

    def postmaster(self):
        """The pid of the server's postmaster if it runs on this machine, else None."""
        backend = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        try:
            with open(f"/proc/{backend}/stat") as f:
                stat = f.read()
        except OSError:
            return None
        return int(stat[stat.rindex(")") + 2 :].split()[1]) if "(postgres)" in stat else None

    def middle_message(self):
        """The id of the message halfway through the table by seq."""
        return self.conn.execute(
            "SELECT id FROM messages ORDER BY seq OFFSET %s LIMIT 1", (self.count() // 2,)
        ).fetchone()[0]

    def drop(self):
        self.conn.close()
        self.admin.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self.admin.close()


class Oxc(ChildServer):
    """``python -m oxc_wsgi serve`` on a free loopback port (PostgreSQL with ``store_url``)."""

    def __init__(self, data_dir, args, store_url=None):
        self.port = free_port()
        env = {
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "THREADS": str(args.threads),
            "DATA_DIR": data_dir,
            "BCRYPT_ROUNDS": "4",
            "LOG_LEVEL": "WARNING",
            "OXC_ENV": "testing",
        }
        if store_url:
            env.update(STORE_URL=store_url, DB_POOL_SIZE=str(args.pool_size))
        self.start([sys.executable, "-m", "oxc_wsgi", "serve"], env)


def start_all(make, count):
    """``count`` servers made by ``make()``, started together; all stopped if one fails."""
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(make) for _ in range(count)]
    failed = [f.exception() for f in futures if f.exception()]
    if failed:
        stop_all(f.result() for f in futures if not f.exception())
        raise failed[0]
    return [f.result() for f in futures]


def stop_all(servers):
    for server in servers:
        server.stop()


class CpuMeter:
    """The cores used during a measurement by the served processes, PostgreSQL, wrk and the rest.

    Read from /proc, so Linux only: PostgreSQL's share is its postmaster's and
    its children's (known only for a server on this machine), wrk's is this
    script's reaped children, the rest is everything else on the machine.
    """

    def __init__(self, postmaster, servers):
        self.postmaster, self.pids = postmaster, {server.process.pid for server in servers}

    def __enter__(self):
        self.started, self.ticks = time.monotonic(), self._sample()
        return self

    def __exit__(self, *exc_info):
        elapsed = time.monotonic() - self.started
        busy, served, postgres, wrk = (after - before for before, after in zip(self.ticks, self._sample()))
        self.cores = [
            ticks / os.sysconf("SC_CLK_TCK") / elapsed
            for ticks in (served, postgres, wrk, busy - served - postgres - wrk)
        ]

    def _sample(self):
        with open("/proc/stat") as f:
            fields = [int(n) for n in f.readline().split()[1:9]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        served = postgres = 0
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # gone meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])  # utime + stime
            if int(name) in self.pids:
                served += ticks
            elif self.postmaster in (int(name), int(fields[1])):
                postgres += ticks
        children = os.times()
        wrk = round((children.children_user + children.children_system) * os.sysconf("SC_CLK_TCK"))
        return busy, served, postgres, wrk

    def __str__(self):
        return "/".join(f"{cores:.1f}" for cores in self.cores)


def load(servers, path, args, token=None, post=False):
    """One wrk per server, all at once, ``--connections`` split between them.

    Returns (summed req/s, worst p99 ms, summed non-2xx, the CpuMeter).
    """
    connections = max(1, args.connections // len(servers))
    with CpuMeter(args.postmaster, servers) as meter, concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
        results = list(pool.map(lambda s: wrk(s.url + path, args.seconds, connections, token, post=post), servers))
    return sum(r[0] for r in results), max(r[1] for r in results), sum(r[2] for r in results), meter


def measure(servers, message_id, args, operations=OPERATIONS):
    """The operations on ``servers`` (logged in through the first), as {operation: load(...)}."""
    token = login(servers[0])["access_token"]
    paths = {
        "GET one message": f"/api/messages/{message_id}",
        "GET page of 50": "/api/messages?limit=50",
        "POST message": "/api/messages",
    }
    return {name: load(servers, paths[name], args, token, post=name.startswith("POST")) for name in operations}


def check_seeded(server, message_id):
    """A seeded message reads back whole through the API, and pages are full."""
    token = login(server)["access_token"]
    status, answer = server.request("GET", f"/api/messages/{message_id}", token=token)
    assert status == 200, (status, answer)
    assert answer["data"]["id"] == message_id and answer["data"]["content"].startswith("seed "), answer
    assert answer["data"]["username"] == "bench" and answer["data"]["recipient_id"] is None, answer
    status, answer = server.request("GET", "/api/messages?limit=50", token=token)
    assert status == 200 and len(answer["messages"]) == 50, (status, answer)


def count_label(count):
    return f"{count // 1_000_000}M" if count % 1_000_000 == 0 else f"{count // 1_000}k"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per measurement")
    parser.add_argument(
        "--url",
        default=os.environ.get("OXC_TEST_POSTGRES_URL", "postgresql:///test"),
        help="the PostgreSQL database to make a throwaway schema in",
    )
    parser.add_argument("--processes", default="1,2,4", help="numbers of oxc processes on PostgreSQL")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections in all, split between processes")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads per process (THREADS)")
    parser.add_argument("--pool-size", type=int, default=10, help="DB_POOL_SIZE per process")
    parser.add_argument("--max-messages", type=int, default=1_000_000, help="the size the table grows to")
    parser.add_argument("--quick", action="store_true", help="a fast check: 2 s each, 20k messages at most")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.max_messages = 2, min(args.max_messages, 20_000)
    processes = sorted({int(n) for n in args.processes.split(",")} | {1})
    small, large = 1_000, max(args.max_messages, 1_000)

    os.environ["PYTHONPATH"] = os.path.join(ROOT, "bench") + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        database = Database(args.url)
    except psycopg.OperationalError as exc:
        sys.exit(f"bench: no PostgreSQL at {args.url}: {str(exc).strip().splitlines()[0]}")
    work = tempfile.mkdtemp(prefix="oxc-bench-")
    args.postmaster = database.postmaster()  # for the CPU shares
    results = {}  # (scenario, processes) -> {operation: load(...)}
    try:
        for count in processes:
            servers = start_all(lambda: Served("ceiling:application", args.threads), count)
            try:
                get, post = (load(servers, "/", args, post=post) for post in (False, True))
                results["ceiling", count] = {"GET one message": get, "GET page of 50": get, "POST message": post}
            finally:
                stop_all(servers)

        print(f"seeding the JSON store with {small:,} messages ...", file=sys.stderr, flush=True)
        json_dir = os.path.join(work, "json")
        seed_store(json_dir, small)
        [server] = start_all(lambda: Oxc(json_dir, args), 1)
        try:
            _, page = server.request("GET", "/api/messages?limit=1", token=login(server)["access_token"])
            results["JSON store", 1] = measure([server], page["messages"][0]["id"], args)
        finally:
            server.stop()

        user = database.create_user()
        database.seed(user, small)
        seeded = database.last_seq()
        pg_dir = os.path.join(work, "postgres")  # attachment bytes only; none are written
        for count in processes:
            servers = start_all(lambda: Oxc(pg_dir, args, database.url), count)
            try:
                middle = database.middle_message()
                check_seeded(servers[-1], middle)
                results["PostgreSQL", count] = measure(servers, middle, args)
            finally:
                stop_all(servers)
            database.trim(seeded)

        database.seed(user, large)
        servers = start_all(lambda: Oxc(pg_dir, args, database.url), 1)
        try:
            middle = database.middle_message()
            check_seeded(servers[0], middle)
            grown = measure(servers, middle, args)
        finally:
            stop_all(servers)
    finally:
        database.drop()
        shutil.rmtree(work, ignore_errors=True)

    report(results, grown, processes, args, small, large)


def report(results, grown, processes, args, small, large):
    rows = []
    scenarios = [("ceiling", n) for n in processes] + [("JSON store", 1)] + [("PostgreSQL", n) for n in processes]
    for name in OPERATIONS:
        ceiling = results["ceiling", 1][name][0]
        for scenario, count in scenarios:
            if scenario == "ceiling" and name == "GET page of 50":
                continue  # the ceiling answers every GET alike
            rate, p99, bad, cores = results[scenario, count][name]
            scaling = rate / results[scenario, 1][name][0]
            target = ""
            if (scenario, count, name) == ("PostgreSQL", 2, "GET one message"):
                target = f">= 1.30 {'ok' if scaling >= 1.3 else 'MISSED'}"
            label = f"ceiling {name.split()[0]}" if scenario == "ceiling" else f"{name}, {scenario}"
            rows.append(
                (
                    label,
                    count,
                    f"{rate:.0f}",
                    f"{p99:.1f}",
                    f"{rate / ceiling:.2f}",
                    "" if scenario == "JSON store" else f"{scaling:.2f}",
                    target,
                    cores,
                    bad,
                )
            )
    table(
        f"oxc on PostgreSQL by processes, vs a bare WSGI app and the JSON store "
        f"({small:,} messages; waitress THREADS={args.threads}, DB_POOL_SIZE={args.pool_size}, "
        f"wrk -c{args.connections} in all, {args.seconds} s each; {os.cpu_count()} cores)",
        (
            "scenario",
            "procs",
            "req/s",
            "p99 ms",
            "/ceiling",
            "/1 proc",
            "target",
            "cores served/pg/wrk/rest",
            "non-2xx",
        ),
        rows,
    )

    cost_rows = []
    for name in OPERATIONS:
        at_small, at_large = results["PostgreSQL", 1][name][0], grown[name][0]
        growth = at_small / at_large
        cost_rows.append(
            (
                name,
                f"{1000 / at_small:.3f}",
                f"{1000 / at_large:.3f}",
                f"{growth:.2f}",
                f"<= 1.25 {'ok' if growth <= 1.25 else 'MISSED'}",
                grown[name][3],
                grown[name][2],
            )
        )
    big = count_label(large)
    table(
        "PostgreSQL, 1 process: ms of server time per request (1000 / req/s) as the table grows",
        (
            "operation",
            f"at {count_label(small)}",
            f"at {big}",
            f"{big}/{count_label(small)}",
            "target",
            f"cores at {big}",
            "non-2xx",
        ),
        cost_rows,
    )


if __name__ == "__main__":
    main()
