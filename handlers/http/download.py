"""Sending a stored file over HTTP: validators, one byte range, HEAD, and the server's file wrapper.

Attachments and thumbnails are sent this way. A file is opened only once the answer is
certain, so a damaged copy is a 500 before any byte goes out, never a 200 with wrong bytes.
"""

import re
import urllib.parse

from . import HTTPError, NotFound, Response

BLOCK = 256 * 1024  # bytes per read when sending a file


class RangeNotSatisfiable(HTTPError):
    status = 416


class DamagedData(HTTPError):
    """The server's own copy of a file is broken: 500, never a 200 with the wrong bytes."""

    status = 500


def disposition(kind, name):
    """A Content-Disposition with an ASCII fallback and the UTF-8 name (RFC 6266, RFC 8187)."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\%' else "_" for ch in name)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


def etags(header):
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def byte_range(req, size, etag):
    """(first, last) of a satisfiable single Range; None to send everything; 416 if unsatisfiable."""
    header = req.environ.get("HTTP_RANGE")
    if header is None:
        return None
    if_range = req.environ.get("HTTP_IF_RANGE")
    if if_range is not None and if_range.strip() != etag:
        return None  # the client's copy is another version: send it whole
    match = re.fullmatch(r"\s*bytes\s*=\s*([0-9]{0,19})\s*-\s*([0-9]{0,19})\s*", header)
    if match is None or match.groups() == ("", ""):
        return None  # several ranges or a malformed header: RFC 9110 lets us send the whole
    first, last = match.groups()
    if first == "":
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable("The range asks for no bytes", [("Content-Range", f"bytes */{size}")])
        return max(0, size - suffix), size - 1
    first = int(first)
    if last != "" and int(last) < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable(
            f"The range starts past the end ({size} bytes)", [("Content-Range", f"bytes */{size}")]
        )
    return first, size - 1 if last == "" else min(int(last), size - 1)


class FileSlice:
    """``length`` bytes of an open file from its current position; seek and tell stay inside them.

    waitress's file wrapper sizes what it sends with seek/tell, so a slice
    given to it sends exactly the range.
    """

    def __init__(self, file, length):
        self._file = file
        self._start = file.tell()
        self._end = self._start + length

    def read(self, size=-1):
        left = self._end - self._file.tell()
        if size is None or size < 0 or size > left:
            size = left
        return self._file.read(size) if size > 0 else b""

    def seek(self, offset, whence=0):
        base = (self._start, self._file.tell(), self._end)[whence]
        return self._file.seek(base + offset) - self._start

    def tell(self):
        return self._file.tell() - self._start

    def close(self):
        self._file.close()


class FileChunks:
    """A file as a WSGI body in blocks, for servers without ``wsgi.file_wrapper``."""

    def __init__(self, file, block=BLOCK):
        self._file = file
        self._block = block

    def __iter__(self):
        while True:
            chunk = self._file.read(self._block)
            if not chunk:
                return
            yield chunk

    def close(self):
        self._file.close()


def send_file(req, digest, media_type, size, disposition, open_file):
    """Answer with a stored file: ETag and If-None-Match, one byte range, HEAD, a file wrapper when the server has one.

    ``open_file()`` opens the bytes (None if they are gone); it is called only once the answer is certain.
    """
    etag = f'"{digest}"'
    headers = [
        ("ETag", etag),
        ("Accept-Ranges", "bytes"),
        ("Cache-Control", "private, no-cache"),
        ("Content-Disposition", disposition),
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", "default-src 'none'; sandbox"),
    ]
    if_none_match = req.environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None and (if_none_match.strip() == "*" or etag in etags(if_none_match)):
        return Response([], 304, headers)
    span = byte_range(req, size, etag)
    first, last = span or (0, size - 1)
    if span is not None:
        headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
    headers += [("Content-Type", media_type), ("Content-Length", str(last - first + 1))]
    status = 206 if span is not None else 200
    # Checked before the first byte (HEAD too): once the status is out, a damaged file cannot be taken back.
    f = open_file()
    if f is None:
        raise NotFound("The file's bytes are gone")
    if req.method == "HEAD":
        f.close()
        return Response([], status, headers)
    f.seek(first)
    part = FileSlice(f, last - first + 1)
    wrapper = req.environ.get("wsgi.file_wrapper")
    return Response(wrapper(part, BLOCK) if wrapper is not None else FileChunks(part), status, headers)
