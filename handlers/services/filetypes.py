"""What a file's bytes are: sniffing, declared-versus-shown type resolution, image sizes.

Uploads (``handlers/media.py``) sniff the first bytes of a file before
keeping any of it: ``resolve_type`` keeps the declared type when the bytes
agree with it (415 naming both otherwise), ``allowed`` checks it against
MEDIA_ALLOWED_TYPES, and ``kind_of`` files it under image, video, audio,
document or other. ``image_size`` reads an image's dimensions from its
header and ``jpeg_coefficient_bytes`` what libjpeg keeps while decoding one,
so that thumbnails (``thumbnails.py``) can decide what decoding would cost
before decoding anything.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from ..http import UnsupportedMediaType

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
#: A bare media type (no parameters), as RFC 9110 allows its name.
MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


def sniff(head: bytes) -> str | None:
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


def _is_text(head: bytes) -> bool:
    if _TEXT_CONTROLS.search(head):
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def normalise(media_type: str | None) -> str | None:
    """A media type without parameters, lower-cased, with common aliases resolved (or None)."""
    media_type = (media_type or "").split(";", 1)[0].strip().lower()
    return ALIASES.get(media_type, media_type) or None


def resolve_type(declared: str | None, head: bytes) -> str:
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


def allowed(media_type: str, patterns: Iterable[str]) -> bool:
    """True when ``media_type`` matches one of ``patterns`` (``image/*`` and ``*/*`` allowed)."""
    major = media_type.split("/", 1)[0]
    return any(p == media_type or p == "*/*" or (p.endswith("/*") and p[:-2] == major) for p in patterns)


def kind_of(media_type: str) -> str:
    """image, video, audio, document or other."""
    major = media_type.split("/", 1)[0]
    if major in ("image", "video", "audio"):
        return major
    if major == "text" or media_type in DOCUMENTS or media_type.startswith(ZIP_DOCUMENTS + ("application/vnd.ms-",)):
        return "document"
    return "other"


def image_size(f: BinaryIO) -> tuple[int | None, int | None]:
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


def _webp_size(head: bytes) -> tuple[int | None, int | None]:
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


def _jpeg_segments(f: BinaryIO) -> Iterator[tuple[int, int]]:
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


def _jpeg_size(f: BinaryIO) -> tuple[int | None, int | None]:
    for code, _ in _jpeg_segments(f):
        if code in FRAME_MARKERS:
            frame = f.read(5)
            return int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big")
    return None, None


def jpeg_coefficient_bytes(f: BinaryIO) -> int | None:
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
