"""The baseline for bench_media.py: the same bytes as static files, and nothing else.

    STATIC_DIR=/tmp/files waitress-serve bench.static:application

``GET /<name>`` sends the file STATIC_DIR/<name> through ``wsgi.file_wrapper``
(waitress then sends it from its own thread, in blocks). ``POST`` copies the
body in 64 kB blocks into a new file under STATIC_DIR, fsyncs it (as oxc does
before it acknowledges an upload), deletes it and answers its length.
"""

import os
import tempfile

BLOCK = 256 * 1024


def application(environ, start_response):
    directory = os.environ["STATIC_DIR"]
    if environ["REQUEST_METHOD"] == "POST":
        left = int(environ.get("CONTENT_LENGTH") or 0)
        stream = environ["wsgi.input"]
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".upload-") as out:
            while left > 0:
                chunk = stream.read(min(64 * 1024, left))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
            body = str(out.tell()).encode()
        start_response("201 Created", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    path = os.path.join(directory, os.path.basename(environ.get("PATH_INFO", "")))
    if not os.path.isfile(path):
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return []
    start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(os.path.getsize(path)))]
    )
    return environ["wsgi.file_wrapper"](open(path, "rb"), BLOCK)
