"""A small streaming parser for multipart/form-data request bodies (RFC 7578).

Usage::

    boundary = multipart.boundary(environ["CONTENT_TYPE"])
    for part in multipart.Parts(read, boundary):
        if part.filename is not None:
            store(part.read)            # streams the part, never held whole
        else:
            fields[part.name] = part.text(limit=1000)

``read(n)`` is any function returning up to ``n`` bytes and ``b""`` at the
end of the body (a bounded ``wsgi.input``). A part must be read (or skipped)
before the next one is asked for; iterating on skips the rest of it. Memory
stays at about two chunks whatever the size of a part: a part's bytes are
handed out as soon as they cannot be the start of the next delimiter.

Everything malformed (no boundary, no closing delimiter, headers too long,
too many parts, a body that ends early) raises :class:`MultipartError`, a
ValueError whose message can be shown to the client. The deprecated ``cgi``
module is not used.
"""

import re
import urllib.parse

CHUNK = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_PARTS = 32

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf';\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
# RFC 2046 allows fewer characters; clients (webtest's "$", for one) use more printable ones.
_BOUNDARY = re.compile(r"[!-~ ]{0,69}[!-~]")


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data; the message says why."""


def parameters(value):
    """The ``; name=value`` parameters of a header value, names lower-cased, quotes undone.

    ``name*=UTF-8''percent%20encoded`` (RFC 8187) wins over plain ``name=``.
    """
    found, extended = {}, {}
    for name, raw in _PARAM.findall(value):
        name = name.lower()
        raw = raw.strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        if name.endswith("*"):
            charset, _, rest = raw.partition("'")
            _, _, encoded = rest.partition("'")
            try:
                extended[name[:-1]] = urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="strict")
            except (LookupError, UnicodeDecodeError):
                continue
        else:
            found[name] = raw
    found.update(extended)
    return found


def boundary(content_type):
    """The boundary of a ``multipart/form-data`` Content-Type, as bytes."""
    value = parameters(content_type).get("boundary", "")
    if not _BOUNDARY.fullmatch(value):
        raise MultipartError("multipart/form-data needs a boundary of 1 to 70 printable ASCII characters")
    return value.encode("ascii")


class Part:
    """One part: its headers, ``name``, ``filename`` (None for a plain field) and content type."""

    def __init__(self, parser, headers):
        self._parser = parser
        self.headers = headers
        disposition = headers.get("content-disposition", "")
        kind, _, _ = disposition.partition(";")
        if kind.strip().lower() != "form-data":
            raise MultipartError("Every part needs 'Content-Disposition: form-data'")
        params = parameters(disposition)
        if "name" not in params:
            raise MultipartError("A part has no name in its Content-Disposition")
        self.name = params["name"]
        self.filename = params.get("filename")
        self.content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower() or None
        self.done = False

    def read(self, size=CHUNK):
        """Up to ``size`` bytes of the part; ``b""`` at its end."""
        if self.done:
            return b""
        data = self._parser._read_body(size)
        if not data:
            self.done = True
        return data

    def text(self, limit):
        """The whole part as UTF-8 text of at most ``limit`` bytes (a form field)."""
        chunks, total = [], 0
        while True:
            chunk = self.read(CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise MultipartError(f"Form field '{self.name}' is longer than {limit} bytes")
            chunks.append(chunk)
        try:
            text = b"".join(chunks).decode("utf-8")
        except UnicodeDecodeError:
            raise MultipartError(f"Form field '{self.name}' is not valid UTF-8") from None
        return text.replace("\x00", "\ufffd")  # as in JSON bodies: PostgreSQL's text cannot hold NUL

    def skip(self):
        """Discard the rest of the part."""
        while self.read(CHUNK):
            pass


class Parts:
    """Iterate over the parts of a multipart body read through ``read(n)``."""

    def __init__(self, read, boundary, max_parts=MAX_PARTS, max_header_bytes=MAX_HEADER_BYTES):
        self._read = read
        # A CRLF is put in front so that the first delimiter looks like every other one.
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray(b"\r\n")
        self._eof = False
        self._max_parts = max_parts
        self._max_header_bytes = max_header_bytes
        self._count = 0
        self._current = None
        self._finished = False
        self._in_body = False
        self._skip_preamble()

    # -- buffer -------------------------------------------------------------

    def _fill(self, wanted):
        """Read until the buffer holds ``wanted`` bytes or the body ends; False at the end."""
        while len(self._buffer) < wanted and not self._eof:
            chunk = self._read(max(CHUNK, wanted - len(self._buffer)))
            if not chunk:
                self._eof = True
                break
            self._buffer += chunk
        return len(self._buffer) >= wanted

    def _skip_preamble(self):
        while True:
            at = self._buffer.find(self._delimiter)
            if at >= 0:
                del self._buffer[: at + len(self._delimiter)]
                self._after_delimiter()
                return
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                del self._buffer[: len(self._buffer) - keep]
            if self._eof:
                raise MultipartError("The multipart body holds no boundary delimiter")
            self._fill(len(self._buffer) + CHUNK)

    def _after_delimiter(self):
        """After a delimiter: ``--`` ends the body, otherwise a line end starts a part."""
        self._fill(2)
        if self._buffer[:2] == b"--":
            self._finished = True
            self._buffer.clear()
            return
        # Transport padding (spaces, tabs) may precede the line end.
        while True:
            self._fill(1)
            if not self._buffer:
                raise MultipartError("The multipart body ends inside a delimiter")
            if self._buffer[:1] in (b" ", b"\t"):
                del self._buffer[:1]
                continue
            break
        self._fill(2)
        if self._buffer[:2] != b"\r\n":
            raise MultipartError("A multipart delimiter must end its line")
        del self._buffer[:2]

    # -- parts --------------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self):
        if self._current is not None and not self._current.done:
            self._current.skip()
        if self._finished:
            raise StopIteration
        self._count += 1
        if self._count > self._max_parts:
            raise MultipartError(f"More than {self._max_parts} parts in the multipart body")
        self._current = Part(self, self._headers())
        self._in_body = True
        # An empty part whose delimiter lacks its leading CRLF (werkzeug writes
        # them so, relying on the blank line after the headers) ends at once.
        self._fill(len(self._delimiter) - 2)
        if self._buffer.startswith(self._delimiter[2:]):
            self._buffer[0:0] = b"\r\n"
        return self._current

    def _headers(self):
        while True:
            if self._buffer.startswith(b"\r\n"):
                block, length = b"", 2  # a part without headers
                break
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                block, length = bytes(self._buffer[:end]), end + 4
                break
            if len(self._buffer) > self._max_header_bytes:
                raise MultipartError(f"A part's headers are longer than {self._max_header_bytes} bytes")
            if not self._fill(len(self._buffer) + 1):
                raise MultipartError("The multipart body ends inside a part's headers")
        if len(block) > self._max_header_bytes:
            raise MultipartError(f"A part's headers are longer than {self._max_header_bytes} bytes")
        del self._buffer[:length]
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            raise MultipartError("A part's headers are not valid UTF-8") from None
        headers = {}
        for line in text.split("\r\n") if text else ():
            name, sep, value = line.partition(":")
            if not sep or not re.fullmatch(_TOKEN, name):
                raise MultipartError("A part has a malformed header line")
            headers[name.lower()] = value.strip()
        return headers

    def _read_body(self, size):
        """Up to ``size`` bytes of the current part; b"" once its delimiter is reached."""
        if not self._in_body:
            return b""
        size = max(1, size)
        self._fill(size + len(self._delimiter))
        at = self._buffer.find(self._delimiter)
        if at >= 0:
            available = at
        else:
            if self._eof:
                raise MultipartError("The multipart body ends before its closing delimiter")
            # The last bytes could be the start of a delimiter split across reads.
            available = len(self._buffer) - (len(self._delimiter) - 1)
        take = min(size, available)
        if take > 0:
            data = bytes(self._buffer[:take])
            del self._buffer[:take]
            return data
        # At the delimiter: this part is over.
        del self._buffer[: len(self._delimiter)]
        self._in_body = False
        self._after_delimiter()
        return b""
