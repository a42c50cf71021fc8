"""Conversation queries stay flat as the store grows: 1k vs 100k messages, one run.

    python bench/bench_chats.py [--seconds 5] [--connections 16] [--threads 8]

For each size, seeds a stopped store with one user in 1,000 group chats and
puts all the messages into one of them, then serves it with waitress and
drives, with wrk: the list of my chats, a page of that chat's history, and a
search over everything the user can see. Prints one table of requests/s at
both sizes and their cost ratio (target: <= 1.5x). Needs wrk.
"""

import argparse
import os
import shutil
import sys
import tempfile
import uuid

from common import bench_user, in_parallel, login, oxc_server, table, wrk

CHATS = 1_000


def seed(data_dir, messages):
    from store import open_store

    store = open_store(data_dir)
    try:
        user = bench_user(store, "bench")
        member = {
            "user_id": user["id"],
            "role": "owner",
            "joined_at": "2026-01-01T00:00:00+00:00",
            "muted": False,
            "read_seq": 0,
            "delivered_seq": 0,
        }
        chats = [
            store.create_chat(
                {
                    "id": str(uuid.uuid4()),
                    "type": "group",
                    "name": f"chat {n}",
                    "description": None,
                    "created_by": user["id"],
                    "created_at": "2026-01-01T00:00:00+00:00",
                },
                [member],
            )
            for n in range(CHATS)
        ]
        big = chats[0]["id"]
        words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]

        def write(number):
            store.add_chat_message(
                {
                    "id": str(uuid.uuid4()),
                    "chat_id": big,
                    "user_id": user["id"],
                    "username": "bench",
                    "content": f"{words[number % 8]} {words[(number // 8) % 8]} message {number}",
                    "reply_to_id": None,
                    "mentions": [],
                    "created_at": "2026-01-01T00:00:00+00:00",
                    "edited_at": None,
                    "deleted": False,
                }
            )

        in_parallel(write, messages)
        store.compact()
        return big
    finally:
        store.close()


def measure(data_dir, big, args):
    server = oxc_server(data_dir, args.threads)
    try:
        token = login(server)["access_token"]
        url = server.url + "/api"
        return {
            "list my chats (1,000 chats, page of 50)": wrk(
                f"{url}/chats?limit=50", args.seconds, args.connections, token
            ),
            "history page of 50": wrk(f"{url}/chats/{big}/messages?limit=50", args.seconds, args.connections, token),
            "search 2 words, 20 hits": wrk(
                f"{url}/search?q=alpha+bravo&limit=20", args.seconds, args.connections, token
            ),
        }
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="oxc-bench-")
    results = {}
    try:
        for count in (1_000, 100_000):
            data_dir = os.path.join(work, str(count))
            print(f"seeding {CHATS:,} chats and {count:,} messages ...", file=sys.stderr, flush=True)
            big = seed(data_dir, count)
            results[count] = measure(data_dir, big, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name in results[1_000]:
        small, large = results[1_000][name], results[100_000][name]
        growth = small[0] / large[0]
        rows.append(
            (
                name,
                f"{small[0]:.0f}",
                f"{large[0]:.0f}",
                f"{small[1]:.1f}",
                f"{large[1]:.1f}",
                f"{growth:.2f}",
                "<= 1.5 ok" if growth <= 1.5 else "<= 1.5 MISSED",
                small[2] + large[2],
            )
        )
    table(
        f"conversation queries at 1k and 100k stored messages ({args.threads} threads, wrk -c{args.connections}, "
        f"{args.seconds} s each)",
        ("query", "req/s 1k", "req/s 100k", "p99 ms 1k", "p99 ms 100k", "cost 100k/1k", "target", "non-2xx"),
        rows,
    )


if __name__ == "__main__":
    main()
