"""Attachments: upload into a chat, metadata, download (Range, ETag), thumbnails, delete.

An upload is the raw body with its Content-Type (``?name=`` gives the file's
name), or multipart/form-data with a ``file`` part; ``content`` (a caption)
or ``send=1``, as a form field or in the query, also sends the chat message
that carries it. Otherwise the attachment waits, unsent, until a message
names it in ``attachment_id``; it joins one message only.

The bytes are streamed into the store's content-addressed blobs (hashed and
counted on the way, written to a temp file, fsynced, renamed), never held in
memory and never named after anything a user sent. Before a byte is kept,
the first 4 kB are sniffed: the type they show must agree with the declared
one (415 names both) and be in MEDIA_ALLOWED_TYPES (415); more than
MEDIA_MAX_BYTES is 413.

Room: each user's attachments may hold ATTACHMENT_QUOTA_BYTES (the sum of
their sizes; thumbnails, made by the server, are not counted; deleting an
attachment, its message or its chat frees its share). Going past it is 413
(not 507: the client, not the server, must change something, by deleting;
retrying cannot help), checked once before the body is read and again,
atomically with the insert, by ``add_attachment(quota=...)``. A disk that is
full, or would fall below the store's free-space reserve, is 503 with
Retry-After; nothing is left behind and the next upload simply tries again.

Everything about an attachment is for the members of its chat only, checked
by ``roles.in_chat`` on every request, so a removed member loses access at
once. Downloads carry ETag (the SHA-256), answer If-None-Match with 304 and a
single byte Range with 206, and go out through the server's
``wsgi.file_wrapper`` when it has one. A file whose bytes no longer match its
SHA-256 is never sent: the blob store checks it before the first byte (once
per file per process), the answer is 500 "Attachment data is damaged" and the
log names the attachment, the digest and the file.

Thumbnails (320 px, JPEG or PNG) are made at upload with Pillow, the
optional ``media`` extra; without it the service runs, says so at start-up
(``thumbnail_support``), and the metadata's ``thumbnail`` says why there is
none. An image's declared pixels, not its bytes, decide what decoding it
costs: ``Thumbnails`` decodes one only within a memory budget, reduced where
the format allows, a few at a time per process. Deleting the attachment, or
the message it was sent with, removes the bytes once no attachment refers to
them.
"""

import codecs
import ctypes
import functools
import io
import logging
import mimetypes
import os
import platform
import re
import threading
import urllib.parse
import uuid

from store import DamagedBlob, Missing, OutOfSpace, QuotaExceeded, TooLarge

from .chats import _send, detach_attachment
from .http import (
    STORE_RETRY_AFTER,
    BadRequest,
    Forbidden,
    HTTPError,
    NotFound,
    PayloadTooLarge,
    Response,
    ServiceUnavailable,
    UnsupportedMediaType,
    success,
    views,
)
from .http.fields import text
from .http.multipart import MultipartError, Parts, boundary
from .services.roles import in_chat, may_moderate

log = logging.getLogger("oxc.media")

SNIFF_BYTES = 4096
BLOCK = 256 * 1024  # bytes per read when sending a file
THUMBNAIL_SIZE = 320
MAX_THUMBNAIL_PIXELS = 50_000_000  # larger images are not decoded (decompression bombs)
MAX_NAME = 255
MAX_FIELD_BYTES = 64 * 1024
UPLOAD_OVERHEAD = 64 * 1024  # what multipart adds around a file of MEDIA_MAX_BYTES (headers, fields)
SEND_VALUES = {"1": True, "true": True, "0": False, "false": False, "": False}


class RangeNotSatisfiable(HTTPError):
    status = 416


# =============================================================================
# What the bytes are
# =============================================================================

#: (offset, magic bytes, MIME type), checked in order.
SIGNATURES = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"OggS", "audio/ogg"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),
    (0, b"PK\x03\x04", "application/zip"),
    (0, b"PK\x05\x06", "application/zip"),
    (4, b"ftyp", "video/mp4"),
)
SNIFFABLE = {mime for _, _, mime in SIGNATURES} | {"image/webp", "audio/wav", "audio/aac", "text/plain"}
#: Declared types that the same magic bytes stand for.
SAME_BYTES = {
    "video/webm": {"audio/webm", "video/x-matroska", "audio/x-matroska"},
    "video/mp4": {
        "audio/mp4",
        "audio/x-m4a",
        "audio/m4a",
        "video/quicktime",
        "video/3gpp",
        "image/avif",
        "image/heic",
        "image/heif",
    },
    "audio/ogg": {"video/ogg", "application/ogg", "audio/opus"},
    "audio/mpeg": {"audio/mp3"},
    "application/zip": {"application/epub+zip", "application/java-archive"},
    "text/plain": {"application/json", "application/xml", "image/svg+xml"},
}
ZIP_DOCUMENTS = ("application/vnd.openxmlformats-officedocument.", "application/vnd.oasis.opendocument.")
ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "audio/mp3": "audio/mpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "application/x-zip-compressed": "application/zip",
    "application/x-pdf": "application/pdf",
    "audio/x-aac": "audio/aac",
}
GENERIC = {"application/octet-stream", "binary/octet-stream", "application/unknown", "application/x-download"}
DOCUMENTS = {
    "application/pdf",
    "application/msword",
    "application/rtf",
    "application/epub+zip",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/json",
}
_TEXT_CONTROLS = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


def sniff(head):
    """The MIME type the first bytes of a file show, or None when they show nothing known."""
    for offset, magic, mime in SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return mime
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE"):
        return "image/webp" if head[8:12] == b"WEBP" else "audio/wav"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:
            return "audio/aac"  # ADTS
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
            return "audio/mpeg"  # an MPEG audio frame
    if _is_text(head):
        return "text/plain"
    return None


def _is_text(head):
    if _TEXT_CONTROLS.search(head):
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def normalise(media_type):
    """A media type without parameters, lower-cased, with common aliases resolved (or None)."""
    media_type = (media_type or "").split(";", 1)[0].strip().lower()
    return ALIASES.get(media_type, media_type) or None


def resolve_type(declared, head):
    """The type to keep for a file declared ``declared`` whose bytes start with ``head``.

    A generic declaration takes what the bytes show; a specific one must agree
    with them (415 otherwise, naming both).
    """
    sniffed = sniff(head)
    if declared is None or declared in GENERIC:
        return sniffed or "application/octet-stream"
    if sniffed is None:
        recognisable = (
            declared in SNIFFABLE
            or declared.startswith("text/")
            or any(declared in same for same in SAME_BYTES.values() if same is not SAME_BYTES["text/plain"])
        )
        if not recognisable:
            return declared
    elif (
        declared == sniffed
        or declared in SAME_BYTES.get(sniffed, ())
        or (sniffed == "text/plain" and declared.startswith("text/"))
        or (sniffed == "application/zip" and declared.startswith(ZIP_DOCUMENTS))
    ):
        return declared
    shown = sniffed or "unrecognised binary data"
    raise UnsupportedMediaType(f"The file was declared {declared} but its bytes look like {shown}")


def allowed(media_type, patterns):
    """True when ``media_type`` matches one of ``patterns`` (``image/*`` and ``*/*`` allowed)."""
    major = media_type.split("/", 1)[0]
    return any(p == media_type or p == "*/*" or (p.endswith("/*") and p[:-2] == major) for p in patterns)


def kind_of(media_type):
    """image, video, audio, document or other."""
    major = media_type.split("/", 1)[0]
    if major in ("image", "video", "audio"):
        return major
    if major == "text" or media_type in DOCUMENTS or media_type.startswith(ZIP_DOCUMENTS + ("application/vnd.ms-",)):
        return "document"
    return "other"


def image_size(f):
    """(width, height) read from an image file's header (PNG, GIF, WebP, JPEG), or (None, None)."""
    head = f.read(32)
    try:
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:3] == b"\xff\xd8\xff":
            return _jpeg_size(f)
    except (IndexError, ValueError, OSError):
        pass
    return None, None


def _webp_size(head):
    chunk, data = head[12:16], head[20:32]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[4:7], "little"), 1 + int.from_bytes(data[7:10], "little")
    if chunk == b"VP8L" and data[0] == 0x2F:
        bits = int.from_bytes(data[1:5], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and data[3:6] == b"\x9d\x01\x2a":
        return int.from_bytes(data[6:8], "little") & 0x3FFF, int.from_bytes(data[8:10], "little") & 0x3FFF
    return None, None


#: Start-of-frame markers (0xC4, 0xC8 and 0xCC share the range but are not frames), and the progressive ones.
FRAME_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
PROGRESSIVE_MARKERS = (0xC2, 0xC6, 0xCA, 0xCE)


def _jpeg_segments(f):
    """(marker, payload length) of each segment of a JPEG up to its first scan, ``f`` at the payload."""
    f.seek(2)
    for _ in range(1000):  # segments before the first scan; a real file has a few dozen
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return
        while marker[1] == 0xFF:  # fill bytes
            marker = marker[1:] + f.read(1)
        code = marker[1]
        if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:
            continue
        length = int.from_bytes(f.read(2), "big")
        if code == 0xD9 or length < 2:
            return
        start = f.tell()
        yield code, length - 2
        if code == 0xDA:
            return
        f.seek(start + length - 2)


def _jpeg_size(f):
    for code, _ in _jpeg_segments(f):
        if code in FRAME_MARKERS:
            frame = f.read(5)
            return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
    return None, None


def jpeg_coefficient_bytes(f):
    """Bytes of DCT coefficients libjpeg keeps for the whole image while decoding this JPEG.

    A single scan holding every component is decoded a row of blocks at a
    time (0). An image in several scans (progressive, or a first scan without
    every component) makes libjpeg keep every coefficient of the whole image
    at full resolution, 2 bytes each, however reduced the decoding. None when
    the headers cannot be read this far.
    """
    frame = None
    try:
        for code, length in _jpeg_segments(f):
            if code in FRAME_MARKERS:
                data = f.read(length)
                height, width, count = int.from_bytes(data[1:3], "big"), int.from_bytes(data[3:5], "big"), data[5]
                factors = [(data[7 + 3 * i] >> 4, data[7 + 3 * i] & 15) for i in range(count)]
                widest, tallest = max(h for h, _ in factors), max(v for _, v in factors)
                samples = sum(h * v for h, v in factors) / (widest * tallest)  # per pixel, over all components
                frame = (code in PROGRESSIVE_MARKERS, count, 2 * samples * width * height)
            elif code == 0xDA and frame is not None:
                progressive, count, whole = frame
                return round(whole) if progressive or f.read(1)[0] < count else 0
    except (IndexError, ValueError, ZeroDivisionError, OSError):
        pass
    return None


# =============================================================================
# Thumbnails (Pillow, optional)
# =============================================================================


def imaging():
    """(PIL.Image, PIL.ImageOps), or None when Pillow is not installed."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return None
    return Image, ImageOps


def thumbnail_support():
    """One line for the start-up log: whether image attachments get thumbnails."""
    modules = imaging()
    if modules is None:
        return "Pillow is not installed: image attachments get no thumbnails (pip install 'oxc[media]')"
    return f"thumbnails of image attachments by Pillow {getattr(modules[0], '__version__', '')}".rstrip()


MB = 1024 * 1024
#: Peak memory one thumbnail may take. THUMBNAIL_CONCURRENCY of them at once
#: (2 by default: 256 MiB) is what image uploads can add to the process.
THUMBNAIL_MEMORY = 128 * MB
#: Seconds an upload waits for a free thumbnail slot; then it is kept without one.
THUMBNAIL_WAIT = 3.0
#: Peak bytes per decoded pixel, measured with Pillow 13 (tests/test_image_bombs.py):
#: Pillow keeps a pixel of these formats in at most 4 bytes (RGB as RGBX, CMYK,
#: RGBA); shrinking an image with alpha works on a premultiplied copy (8);
#: WebP is decoded by libwebp into its own canvas, copied out as bytes and
#: copied again into the image (15.6 measured).
BYTES_PER_PIXEL = 4
ALPHA_MODES = ("RGBA", "LA")
WEBP_BYTES_PER_PIXEL = 16


def _none(reason):
    return {"status": "none", "reason": reason, "content_type": None, "width": None, "height": None}


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK = MB


@functools.cache
def give_back_large_blocks():
    """Have glibc map blocks of LARGE_BLOCK and more on their own, so that freeing one returns it.

    Pillow keeps an image in blocks of up to 16 MB. glibc raises its mmap
    threshold to the size of each mapped block freed, after which such
    blocks come from per-thread arenas that keep them once freed: measured,
    every worker thread that had made a large thumbnail went on holding about
    64 MB (684 MB after three bursts of ten uploads, 70 MB with the threshold
    pinned). Nothing is changed where the operator set MALLOC_MMAP_THRESHOLD_
    or the C library is not glibc. Returns whether the threshold was set.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK))
    except (OSError, AttributeError):
        return False


class Thumbnails:
    """Makes thumbnails, a few at a time, each within a memory budget.

    An image is decoded only if its decoding fits THUMBNAIL_MEMORY. A JPEG
    is decoded reduced (libjpeg scales by 1/2, 1/4 or 1/8 while decoding;
    a progressive one still keeps 3 to 6 bytes a pixel of coefficients, so up
    to 22 to 44 megapixels); other formats are decoded whole, so they get a
    thumbnail up to about 33 megapixels (16 with transparency, 8 for WebP).
    Larger images are kept, without a thumbnail, and the metadata says why.
    At most ``concurrency`` decodes run at once in the process; an upload
    that finds every slot busy for THUMBNAIL_WAIT seconds is kept without a
    thumbnail rather than holding its worker thread longer.
    """

    def __init__(self, concurrency, memory=THUMBNAIL_MEMORY, wait=THUMBNAIL_WAIT):
        self._slots = threading.BoundedSemaphore(concurrency)
        self.memory = memory
        self.wait = wait
        give_back_large_blocks()

    def make(self, store, digest, media_type, width, height):
        """(thumbnail metadata, its blob digest or None) for an attachment's bytes."""
        if kind_of(media_type) != "image":
            return _none("Only images have thumbnails"), None
        modules = imaging()
        if modules is None:
            return _none("Pillow is not installed on this server, so it makes no thumbnails"), None
        if width and height and width * height > MAX_THUMBNAIL_PIXELS:
            return _none(f"The image has more than {MAX_THUMBNAIL_PIXELS:,} pixels"), None
        least = (WEBP_BYTES_PER_PIXEL if media_type == "image/webp" else BYTES_PER_PIXEL) * (width or 0) * (height or 0)
        if media_type != "image/jpeg" and least > self.memory:
            return self._too_big(least), None  # decided from the header, without opening the file
        if not self._slots.acquire(timeout=self.wait):
            log.info("no thumbnail for %s: every thumbnail slot stayed busy for %s s", digest, self.wait)
            return _none("The server was busy making other thumbnails when this image arrived"), None
        try:
            return self._make(modules, store, digest)
        finally:
            self._slots.release()

    def _too_big(self, cost):
        return _none(
            f"Making a thumbnail of this image would take about {cost // MB} MB of memory, "
            f"more than the {self.memory // MB} MB this server allows"
        )

    def _make(self, modules, store, digest):
        image_module, image_ops = modules
        out = io.BytesIO()
        try:
            with store.open_blob(digest) as f, image_module.open(f, formats=["PNG", "JPEG", "GIF", "WEBP"]) as image:
                if image.width * image.height > MAX_THUMBNAIL_PIXELS:
                    return _none(f"The image has more than {MAX_THUMBNAIL_PIXELS:,} pixels"), None
                whole = image.width * image.height
                image.draft("RGB", (THUMBNAIL_SIZE * 2, THUMBNAIL_SIZE * 2))  # JPEG decodes at a smaller scale
                cost = self._cost(image, f, whole)
                if cost > self.memory:
                    return self._too_big(cost), None
                image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                picture = image_ops.exif_transpose(image)  # the small picture turns, not the decoded image
                clear = picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info
                if clear:
                    picture.convert("RGBA").save(out, "PNG", optimize=True)
                else:
                    picture.convert("RGB").save(out, "JPEG", quality=80)
                size = picture.size
        except Exception as exc:  # Pillow raises many kinds for undecodable images
            log.info("no thumbnail for %s: %s", digest, exc)
            return _none("The image could not be decoded"), None
        thumbnail_digest = store.save_blob_bytes(out.getvalue())
        return {
            "status": "ready",
            "reason": None,
            "content_type": "image/png" if clear else "image/jpeg",
            "width": size[0],
            "height": size[1],
        }, thumbnail_digest

    @staticmethod
    def _cost(image, f, whole):
        """Peak bytes that decoding ``image`` (opened, reduced by draft) and shrinking it take."""
        pixels = image.width * image.height  # what will really be decoded
        if image.format == "WEBP":
            return WEBP_BYTES_PER_PIXEL * pixels
        cost = BYTES_PER_PIXEL * pixels * (2 if image.mode in ALPHA_MODES else 1)
        if image.format == "JPEG":
            position = f.tell()
            coefficients = jpeg_coefficient_bytes(f)
            f.seek(position)
            # Unreadable this far: assume the worst libjpeg could keep (four full components).
            cost += 2 * 4 * whole if coefficients is None else coefficients
        return cost


# =============================================================================
# Uploading
# =============================================================================


class _Body:
    """Exactly CONTENT_LENGTH bytes of wsgi.input (or all of it when no length was declared)."""

    def __init__(self, stream, length):
        self._stream = stream
        self._left = length

    def read(self, size):
        if self._left is not None:
            size = min(size, self._left)
            if size <= 0:
                return b""
        data = self._stream.read(size)
        if self._left is not None:
            if not data:
                raise BadRequest("Request body is shorter than its Content-Length")
            self._left -= len(data)
        return data


def _declared_length(req):
    raw = (req.environ.get("CONTENT_LENGTH") or "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest("Invalid Content-Length")
    return int(raw)


def clean_name(raw, media_type):
    """A file name to show: the last path segment, printable, at most MAX_NAME characters."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:MAX_NAME].strip()
    if name in ("", ".", ".."):
        name = "attachment" + (mimetypes.guess_extension(media_type, strict=False) or "")
    return name


def _head(read):
    chunks, size = [], 0
    while size < SNIFF_BYTES:
        chunk = read(SNIFF_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _store_file(req, chat, me, read, declared, name, expected=None):
    """Stream one file into the store and record it as an attachment of ``chat``.

    ``expected`` is the size the body declared, if any, to refuse an upload
    over the quota before reading it.
    """
    settings, store = req.ctx.settings, req.ctx.store
    declared = normalise(declared)
    if declared is not None and not _MEDIA_TYPE.fullmatch(declared):
        raise UnsupportedMediaType(f"The file's declared type {declared!r} is not a MIME type")
    if declared is not None and declared not in GENERIC and not allowed(declared, settings.media_types):
        raise UnsupportedMediaType(
            f"Files of type {declared} are not accepted here; allowed: {', '.join(settings.media_types)}"
        )
    head = _head(read)
    if not head:
        raise BadRequest("The file is empty")
    media_type = resolve_type(declared, head)
    if not allowed(media_type, settings.media_types):
        raise UnsupportedMediaType(
            f"Files of type {media_type} are not accepted here; allowed: {', '.join(settings.media_types)}"
        )
    pending = [head]

    def rest(size):
        return pending.pop() if pending else read(size)

    quota = settings.attachment_quota_bytes
    limit = settings.media_max_bytes
    if quota:
        used = store.attachment_usage(me["user_id"])
        if used + max(len(head), expected or 0) > quota:
            raise over_quota(used, quota)
        limit = min(limit, quota - used)  # the stream stops as soon as it would not fit
    try:
        digest, size, _ = store.save_blob(rest, limit)
    except TooLarge:
        if limit < settings.media_max_bytes:
            raise over_quota(used, quota) from None
        raise PayloadTooLarge(f"The file is larger than {settings.media_max_bytes} bytes (MEDIA_MAX_BYTES)") from None
    except OutOfSpace as exc:
        raise disk_full(exc) from None
    saved = [digest]
    try:
        width = height = None
        if kind_of(media_type) == "image":
            with store.open_blob(digest) as f:
                width, height = image_size(f)
        thumbnail, thumbnail_digest = req.ctx.thumbnails.make(store, digest, media_type, width, height)
        record = {
            "id": str(uuid.uuid4()),
            "chat_id": chat["id"],
            "uploader_id": me["user_id"],
            "message_id": None,
            "name": clean_name(name, media_type),
            "size": size,
            "content_type": media_type,
            "kind": kind_of(media_type),
            "sha256": digest,
            "width": width,
            "height": height,
            "thumbnail": thumbnail,
            "created_at": views.iso_time(req.ctx.clock()),
        }
        if thumbnail_digest is not None:
            record["thumbnail_sha256"] = thumbnail_digest
            saved.append(thumbnail_digest)
        return store.add_attachment(record, quota=quota)
    except QuotaExceeded as exc:
        _give_up(store, saved)
        raise over_quota(exc.used, exc.quota) from None
    except Missing:  # the group was deleted while the file came in
        _give_up(store, saved)
        raise NotFound(f"Chat with ID {chat['id']} not found") from None
    except OutOfSpace as exc:
        _give_up(store, saved)
        raise disk_full(exc) from None
    except BaseException:
        _give_up(store, saved)
        raise


def over_quota(used, quota):
    """The 413 for an upload that would take its uploader past ATTACHMENT_QUOTA_BYTES."""
    return PayloadTooLarge(
        f"Your attachments would hold more than your quota of {quota} bytes "
        f"(ATTACHMENT_QUOTA_BYTES; {used} used): delete some to make room"
    )


def disk_full(exc):
    """The 503 for an upload the disk has no room for (it is full, or the reserve would be used)."""
    log.warning("upload refused: %s", exc)
    return ServiceUnavailable(
        "The server's disk is too full to keep this file now; try again later", retry_after=STORE_RETRY_AFTER
    )


def _give_up(store, digests):
    """Let go of blobs saved for an attachment that was not recorded (each goes unless used)."""
    for digest in digests:
        try:
            store.discard_blob(digest)
        except Exception as exc:  # the answer under way matters more; an orphan only wastes space
            log.warning("could not discard blob %s: %s", digest, exc)


def _send_flag(value):
    if value is None:
        return False
    flag = SEND_VALUES.get(value)
    if flag is None:
        raise BadRequest("Field 'send' must be 1, 0, true or false")
    return flag


def _multipart(req, chat, me, body, content_type, name):
    """(attachment, fields) from a multipart body with one ``file`` part."""
    try:
        parts = Parts(body.read, boundary(content_type))
    except MultipartError as exc:
        raise BadRequest(str(exc)) from None
    attachment, fields = None, {}
    try:
        for part in parts:
            if part.name == "file":
                if attachment is not None:
                    raise BadRequest("Send one file per upload")
                attachment = _store_file(req, chat, me, part.read, part.content_type, name or part.filename)
            elif part.name in ("content", "send"):
                fields[part.name] = part.text(MAX_FIELD_BYTES)
    except MultipartError as exc:
        _discard(req, attachment)
        raise BadRequest(str(exc)) from None
    except BaseException:
        _discard(req, attachment)
        raise
    if attachment is None:
        raise BadRequest("Missing required field: file")
    return attachment, fields


def _discard(req, attachment):
    if attachment is not None:
        req.ctx.store.delete_attachment(attachment["id"], unsent_only=True)


@in_chat()
def post_attachment(req, chat, me):
    """Upload a file into a chat (raw body or multipart); with ``content`` or ``send=1`` also send it."""
    settings, query = req.ctx.settings, req.query
    name = text(query, "name", required=False, max_length=MAX_NAME, min_length=0, strip=False)
    length = _declared_length(req)
    body = _Body(req.environ["wsgi.input"], length)
    content_type = req.environ.get("CONTENT_TYPE", "")
    fields = {key: query[key] for key in ("content", "send") if key in query}
    # The query's own values are checked before any byte is stored (a form field may override them).
    _send_flag(fields.get("send"))
    text(fields, "content", required=False, max_length=settings.max_message_length)
    if normalise(content_type) == "multipart/form-data":
        attachment, form = _multipart(req, chat, me, body, content_type, name)
        fields.update(form)
    else:
        if length is not None and length > settings.media_max_bytes:
            raise PayloadTooLarge(f"The file is larger than {settings.media_max_bytes} bytes (MEDIA_MAX_BYTES)")
        attachment = _store_file(req, chat, me, body.read, content_type or None, name, expected=length)
    try:
        content = text(fields, "content", required=False, max_length=settings.max_message_length)
        send = _send_flag(fields.get("send")) or content is not None
        message = _send(req, chat, me, content, None, attachment=attachment) if send else None
    except BaseException:
        _discard(req, attachment)
        raise
    data = views.attachment(req.ctx.store.get_attachment(attachment["id"]) or attachment)
    if message is not None:
        data["message"] = views.chat_message(message)
    return success(data, "Attachment uploaded", status=201)


# =============================================================================
# Reading and deleting
# =============================================================================


@in_chat()
def _membership(req, chat, me):
    return chat, me


def _visible(req, attachment_id):
    """(attachment, chat, membership) for a member of the attachment's chat; 404 or 403 otherwise."""
    attachment = req.ctx.store.get_attachment(attachment_id)
    if attachment is None:
        raise NotFound(f"Attachment with ID {attachment_id} not found")
    chat, me = _membership(req, attachment["chat_id"])
    return attachment, chat, me


def _members_only(handler):
    """Decorate ``f(req, attachment, chat, me)`` to be reached by members of the attachment's chat only."""

    @functools.wraps(handler)
    def guarded(req, attachment_id):
        return handler(req, *_visible(req, attachment_id))

    return guarded


@_members_only
def get_attachment(req, attachment, chat, me):
    """An attachment's metadata."""
    return success(views.attachment(attachment))


@_members_only
def get_attachment_content(req, attachment, chat, me):
    """The attachment's bytes; Range, If-None-Match and If-Range are honoured."""
    inline = attachment["kind"] in ("image", "video", "audio") and "svg" not in attachment["content_type"]
    return _send_file(
        req,
        attachment["sha256"],
        attachment["content_type"],
        attachment["size"],
        _disposition("inline" if inline else "attachment", attachment["name"]),
        attachment,
    )


@_members_only
def get_attachment_thumbnail(req, attachment, chat, me):
    """The attachment's thumbnail image (404 with the reason when it has none)."""
    thumbnail = attachment["thumbnail"]
    digest = attachment.get("thumbnail_sha256")
    if thumbnail["status"] != "ready" or digest is None:
        raise NotFound(f"This attachment has no thumbnail: {thumbnail['reason']}")
    f = _open_whole(req, digest, attachment)
    if f is None:
        raise NotFound("This attachment's thumbnail is gone")
    with f:
        size = f.seek(0, 2)
    return _send_file(req, digest, thumbnail["content_type"], size, "inline", attachment)


@_members_only
def delete_attachment(req, attachment, chat, me):
    """Delete an attachment (its uploader, or an admin or the owner); a message it was sent with loses it.

    Unsent, it is deleted only while still unsent (the store checks in the
    delete); sent meanwhile, or before, it leaves its message in the write that
    changes the message (``chats.detach_attachment``).
    """
    if attachment["uploader_id"] != me["user_id"] and not may_moderate(me):
        raise Forbidden("Only the uploader or the chat's admins and owner may delete an attachment")
    store = req.ctx.store
    if attachment.get("message_id") is None and not store.delete_attachment(attachment["id"], unsent_only=True):
        attachment = store.get_attachment(attachment["id"])  # sent, or deleted, meanwhile
    if attachment is None or (
        attachment.get("message_id") is not None and not detach_attachment(req, chat, me, attachment)
    ):
        raise NotFound("The attachment is already deleted")
    return success(message=f"Attachment with ID {attachment['id']} deleted successfully")


# =============================================================================
# Sending bytes
# =============================================================================


def _disposition(kind, name):
    """A Content-Disposition with an ASCII fallback and the UTF-8 name (RFC 6266, RFC 8187)."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\%' else "_" for ch in name)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


def _etags(header):
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def _byte_range(req, size, etag):
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


class DamagedData(HTTPError):
    """The server's own copy of a file is broken: 500, never a 200 with the wrong bytes."""

    status = 500


def _open_whole(req, digest, attachment):
    """The blob ``digest`` of ``attachment`` opened, None if gone; 500 (and an error in the log) if damaged."""
    try:
        return req.ctx.store.open_blob(digest)
    except DamagedBlob as exc:
        log.error("attachment %s (chat %s) cannot be served: %s", attachment["id"], attachment["chat_id"], exc)
        raise DamagedData("Attachment data is damaged: the server's copy no longer matches its SHA-256") from None


def _send_file(req, digest, media_type, size, disposition, attachment):
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
    if if_none_match is not None and (if_none_match.strip() == "*" or etag in _etags(if_none_match)):
        return Response([], 304, headers)
    span = _byte_range(req, size, etag)
    first, last = span or (0, size - 1)
    if span is not None:
        headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
    headers += [("Content-Type", media_type), ("Content-Length", str(last - first + 1))]
    status = 206 if span is not None else 200
    # Checked before the first byte (HEAD too): once the status is out, a damaged file cannot be taken back.
    f = _open_whole(req, digest, attachment)
    if f is None:
        raise NotFound("The attachment's bytes are gone")
    if req.method == "HEAD":
        f.close()
        return Response([], status, headers)
    f.seek(first)
    part = FileSlice(f, last - first + 1)
    wrapper = req.environ.get("wsgi.file_wrapper")
    return Response(wrapper(part, BLOCK) if wrapper is not None else FileChunks(part), status, headers)
