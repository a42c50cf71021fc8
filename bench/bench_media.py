"""Attachment throughput and memory: oxc against the same bytes served as static files.

    python bench/bench_media.py [--repeat 5] [--threads 4]

Starts, with the same waitress settings (``python -m waitress`` with the
same threads, connection limit and channel timeout), oxc with
MEDIA_MAX_BYTES raised to 128 MB and ``bench/static.py``, which only copies
bytes: uploads into an fsynced file, downloads through ``wsgi.file_wrapper``.
On loopback it measures:

* uploading a 10 MB file: to oxc as a raw body and as multipart/form-data
  (both hashed, sniffed, fsynced and recorded), to the static app as a raw
  body (copied and fsynced);
* downloading that file: oxc's ``/attachments/{id}/content`` (membership
  checked, ETag, through the access log and CORS layers) and the static file;
* each server's resident memory before and at its peak while a 100 MB file is
  uploaded and then downloaded, sampled every 10 ms.

Prints one table: the median of ``--repeat`` runs in MB/s (10^6 bytes) for
each side and the ratio oxc/static (1.0 = as fast as copying a static file),
then the memory figures in MB.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time

from common import Served, login, table

TEN_MB = 10 * 1024 * 1024
HUNDRED_MB = 100 * 1024 * 1024
READ = 1024 * 1024
SEND = 256 * 1024


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory:
    """The highest resident memory of process ``pid`` while the ``with`` block runs."""

    def __init__(self, pid):
        self.pid = pid
        self.before = rss_mb(pid)
        self.peak = self.before
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._done.wait(0.01):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


def post(port, path, pieces, headers):
    """POST ``pieces`` (bytes, or paths of files streamed from disk); returns (status, body)."""
    total = sum(len(piece) if isinstance(piece, bytes) else os.path.getsize(piece) for piece in pieces)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.putrequest("POST", path)
    for name, value in dict(headers, **{"Content-Length": str(total)}).items():
        connection.putheader(name, value)
    connection.endheaders()
    for piece in pieces:
        if isinstance(piece, bytes):
            connection.send(piece)
            continue
        with open(piece, "rb") as f:
            for block in iter(lambda: f.read(SEND), b""):
                connection.send(block)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    if response.status >= 300:
        raise RuntimeError(f"POST {path}: {response.status} {body[:200]!r}")
    return body


def get(port, path, headers):
    """GET ``path`` reading 1 MB at a time; returns the number of bytes received."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {response.read()[:200]!r}")
    received = 0
    for block in iter(lambda: response.read(READ), b""):
        received += len(block)
    connection.close()
    return received


def rate(size, repeat, action):
    """The median MB/s of ``repeat`` runs of ``action`` moving ``size`` bytes."""
    speeds = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        speeds.append(size / 1e6 / (time.perf_counter() - started))
    return statistics.median(speeds)


def multipart(path, boundary="oxc-bench-boundary"):
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="ten.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return [head, path, f"\r\n--{boundary}--\r\n".encode()], f"multipart/form-data; boundary={boundary}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="oxc-bench-media-")
    files = os.path.join(work, "files")
    os.makedirs(files)
    ten, hundred = os.path.join(files, "ten.bin"), os.path.join(files, "hundred.bin")
    for path, size in ((ten, TEN_MB), (hundred, HUNDRED_MB)):
        with open(path, "wb") as f:
            for _ in range(size // READ):
                f.write(os.urandom(READ))
    static = Served("bench.static:application", args.threads, env={"STATIC_DIR": files})
    oxc = Served(
        "oxc_wsgi:application",
        args.threads,
        env={
            "DATA_DIR": os.path.join(work, "data"),
            "BCRYPT_ROUNDS": "4",
            "LOG_LEVEL": "WARNING",
            "OXC_ENV": "testing",
            "MEDIA_MAX_BYTES": str(128 * 1024 * 1024),
        },
    )
    try:
        token = login(oxc)["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        status, answer = oxc.request("POST", "/api/chats/group", {"name": "bench"}, token)
        assert status == 201, answer
        upload_path = f"/api/chats/{answer['data']['id']}/attachments"
        raw = dict(auth, **{"Content-Type": "application/octet-stream"})
        pieces, form_type = multipart(ten)
        kept = []

        def upload_raw():
            kept.append(json.loads(post(oxc.port, upload_path + "?name=ten.bin", [ten], raw))["data"]["id"])

        rows = []
        static_up = rate(TEN_MB, args.repeat, lambda: post(static.port, "/", [ten], raw))
        oxc_up = rate(TEN_MB, args.repeat, upload_raw)
        oxc_form = rate(
            TEN_MB, args.repeat, lambda: post(oxc.port, upload_path, pieces, dict(auth, **{"Content-Type": form_type}))
        )
        content = f"/api/attachments/{kept[0]}/content"
        static_down = rate(TEN_MB, args.repeat, lambda: get(static.port, "/ten.bin", {}))
        oxc_down = rate(TEN_MB, args.repeat, lambda: get(oxc.port, content, auth))
        rows += [
            ("upload 10 MB, raw body (MB/s)", f"{oxc_up:.0f}", f"{static_up:.0f}", f"{oxc_up / static_up:.2f}"),
            ("upload 10 MB, multipart (MB/s)", f"{oxc_form:.0f}", f"{static_up:.0f}", f"{oxc_form / static_up:.2f}"),
            ("download 10 MB (MB/s)", f"{oxc_down:.0f}", f"{static_down:.0f}", f"{oxc_down / static_down:.2f}"),
        ]

        with PeakMemory(oxc.process.pid) as oxc_up_memory:
            big = json.loads(post(oxc.port, upload_path + "?name=hundred.bin", [hundred], raw))["data"]["id"]
        with PeakMemory(static.process.pid) as static_up_memory:
            post(static.port, "/", [hundred], raw)
        with PeakMemory(oxc.process.pid) as oxc_memory:
            assert get(oxc.port, f"/api/attachments/{big}/content", auth) == HUNDRED_MB
        with PeakMemory(static.process.pid) as static_memory:
            assert get(static.port, "/hundred.bin", {}) == HUNDRED_MB
        for label, mine, theirs in (
            ("RSS before the 100 MB download (MB)", oxc_memory.before, static_memory.before),
            ("RSS peak during the 100 MB download (MB)", oxc_memory.peak, static_memory.peak),
            (
                "RSS growth during the 100 MB download (MB)",
                oxc_memory.peak - oxc_memory.before,
                static_memory.peak - static_memory.before,
            ),
            (
                "RSS growth during a 100 MB upload (MB)",
                oxc_up_memory.peak - oxc_up_memory.before,
                static_up_memory.peak - static_up_memory.before,
            ),
        ):
            rows.append((label, f"{mine:.1f}", f"{theirs:.1f}", ""))
        table(
            f"Attachments on loopback, waitress with {args.threads} threads, median of {args.repeat}",
            ("measurement", "oxc", "static file", "oxc/static"),
            rows,
        )
    finally:
        oxc.stop()
        static.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
