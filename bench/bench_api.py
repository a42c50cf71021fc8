"""Throughput of the 0xC endpoints as ratios of a bare-WSGI ceiling, in one run.

    python bench/bench_api.py [--seconds 5] [--connections 16] [--threads 8]

Starts, on loopback and with the same waitress settings: the ceiling app
(bench/ceiling.py) and oxc over a store seeded with 1,000 and then 100,000
messages. Drives each with wrk and prints one table. Needs wrk
(``apt-get install wrk``); installs nothing; stops by itself.
"""

import argparse
import os
import shutil
import sys
import tempfile

from common import ROOT, Served, login, oxc_server, seed_store, table, wrk


def measure_oxc(data_dir, args, label):
    server = oxc_server(data_dir, args.threads)
    try:
        token = login(server)["access_token"]
        _, page = server.request("GET", "/api/messages?limit=1", token=token)
        one = page["messages"][0]["id"]
        results = {
            "GET one message": wrk(f"{server.url}/api/messages/{one}", args.seconds, args.connections, token),
            "GET page of 50": wrk(f"{server.url}/api/messages?limit=50", args.seconds, args.connections, token),
            "POST message": wrk(f"{server.url}/api/messages", args.seconds, args.connections, token, post=True),
        }
        return {f"{name} ({label})": value for name, value in results.items()}
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=8, help="waitress threads, for both servers")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="oxc-bench-")
    try:
        os.environ["PYTHONPATH"] = os.path.join(ROOT, "bench") + os.pathsep + os.environ.get("PYTHONPATH", "")
        ceiling = Served("ceiling:application", args.threads)
        try:
            get_ceiling = wrk(f"{ceiling.url}/", args.seconds, args.connections)
            post_ceiling = wrk(f"{ceiling.url}/", args.seconds, args.connections, post=True)
        finally:
            ceiling.stop()
        results = {}
        for count, label in ((1_000, "1k stored"), (100_000, "100k stored")):
            data_dir = os.path.join(work, label.split()[0])
            print(f"seeding {count:,} messages ...", file=sys.stderr, flush=True)
            seed_store(data_dir, count)
            results.update(measure_oxc(data_dir, args, label))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("ceiling GET", f"{get_ceiling[0]:.0f}", f"{get_ceiling[1]:.1f}", "1.00", "", ""),
        ("ceiling POST", f"{post_ceiling[0]:.0f}", f"{post_ceiling[1]:.1f}", "1.00", "", ""),
    ]
    targets = {"GET one message": 0.60, "GET page of 50": 0.40, "POST message": 0.40}
    for name, (rate, p99, bad) in results.items():
        base = post_ceiling if name.startswith("POST") else get_ceiling
        target = targets[name.split(" (")[0]]
        ratio = rate / base[0]
        rows.append(
            (
                name,
                f"{rate:.0f}",
                f"{p99:.1f}",
                f"{ratio:.2f}",
                f">= {target:.2f} {'ok' if ratio >= target else 'MISSED'}",
                bad,
            )
        )
    table(
        f"oxc vs a bare WSGI app on waitress ({args.threads} threads, wrk -c{args.connections}, {args.seconds} s each)",
        ("scenario", "req/s", "p99 ms", "ratio", "target", "non-2xx"),
        rows,
    )
    cost_rows = []
    for name in targets:
        small, large = results[f"{name} (1k stored)"][0], results[f"{name} (100k stored)"][0]
        growth = small / large
        cost_rows.append(
            (
                name,
                f"{1000 / small:.3f}",
                f"{1000 / large:.3f}",
                f"{growth:.2f}",
                "<= 1.25 ok" if growth <= 1.25 else "<= 1.25 MISSED",
            )
        )
    table(
        "cost per request as the store grows (ms of server time per request = 1000 / req/s)",
        ("operation", "at 1k", "at 100k", "100k/1k", "target"),
        cost_rows,
    )


if __name__ == "__main__":
    main()
