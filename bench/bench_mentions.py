"""What mentions cost a sender: a message naming 50 members vs one naming nobody.

    python bench/bench_mentions.py [--seconds 5] [--connections 8]

Seeds a group of 51 members, serves oxc with push on (PUSH_WEBHOOK_URL is the
bare ceiling app on loopback, so every notification also becomes a signed
delivery), and drives POST /chats/{id}/messages with wrk, with plain text and
with 50 @mentions (50 notifications stored, streamed and queued for push per
message). The sender's cost is the latency of their request on a server that
is not saturated: one connection sending --rate messages a second, median and
p99 (target: median <= 2x plain, since notifications are made and delivered
off the request path). The throughput of a saturated server is shown too:
there the background work (about 30 us per notification) competes with the
requests for the same interpreter. Needs wrk.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import uuid

from common import ROOT, Served, bench_user, oxc_server, table, wrk

MEMBERS = 50


def seed(data_dir):
    from store import open_store

    store = open_store(data_dir)
    try:
        people = [bench_user(store, name) for name in ["bench"] + [f"member{n:02d}" for n in range(MEMBERS)]]
        chat = store.create_chat(
            {
                "id": str(uuid.uuid4()),
                "type": "group",
                "name": "everyone",
                "description": None,
                "created_by": people[0]["id"],
                "created_at": "2026-01-01T00:00:00+00:00",
            },
            [
                {
                    "user_id": p["id"],
                    "role": "owner" if i == 0 else "member",
                    "joined_at": "2026-01-01T00:00:00+00:00",
                    "muted": False,
                    "read_seq": 0,
                    "delivered_seq": 0,
                }
                for i, p in enumerate(people)
            ],
        )
        return chat["id"]
    finally:
        store.close()


def paced(port, path, token, body, rate, count):
    """Latencies (ms) of ``count`` POSTs sent ``rate`` a second on one keep-alive connection."""
    import http.client
    import time

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    times, start = [], time.perf_counter()
    for number in range(count):
        pause = start + number / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        sent = time.perf_counter()
        connection.request("POST", path, body, headers)
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 201, answer.status
        times.append((time.perf_counter() - sent) * 1000)
    connection.close()
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rate", type=int, default=50, help="paced messages per second")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="oxc-bench-mentions-")
    os.environ["PYTHONPATH"] = os.path.join(ROOT, "bench") + os.pathsep + os.environ.get("PYTHONPATH", "")
    receiver = Served("ceiling:application", 4)
    try:
        chat_id = seed(os.path.join(work, "data"))
        os.environ.update(
            PUSH_WEBHOOK_URL=receiver.url + "/push",
            PUSH_WEBHOOK_SECRET="bench-secret-0123456789",
            PUSH_ALLOWED_ADDRESSES="127.0.0.1",
        )  # the receiver is on loopback
        server = oxc_server(os.path.join(work, "data"), 8)
        try:
            status, answer = server.request(
                "POST", "/api/auth/login", {"username": "bench", "password": "benchmark-password"}
            )
            token = answer["data"]["access_token"]
            url = f"{server.url}/api/chats/{chat_id}/messages"
            plain = json.dumps({"content": "a message for everyone, naming nobody"})
            named = json.dumps({"content": "hello " + " ".join(f"@member{n:02d}" for n in range(MEMBERS))})
            results = []
            path = f"/api/chats/{chat_id}/messages"
            for name, body in (("no mentions", plain), (f"{MEMBERS} mentions", named)):
                calm = paced(server.port, path, token, body, args.rate, args.rate * args.seconds)
                many = wrk(url, args.seconds, args.connections, token, post=True, body=body)
                results.append((name, calm, many))
        finally:
            server.stop()
    finally:
        receiver.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = results[0][1][0]
    plain_rate = results[0][2][0]
    rows = []
    for name, (median, p99), (busy_rate, busy_p99, bad) in results:
        cost = median / base
        rows.append(
            (
                name,
                f"{median:.2f}",
                f"{p99:.2f}",
                f"{cost:.2f}",
                "" if name == "no mentions" else ("<= 2.00 ok" if cost <= 2 else "<= 2.00 MISSED"),
                f"{busy_rate:.0f}",
                f"{plain_rate / busy_rate:.2f}",
                bad,
            )
        )
    table(
        f"POST a chat message with push on: {args.rate}/s on one connection for {args.seconds} s, "
        f"then saturated with wrk -c{args.connections}",
        ("message", "median ms", "p99 ms", "cost vs plain", "target", "saturated req/s", "saturated cost", "non-2xx"),
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
