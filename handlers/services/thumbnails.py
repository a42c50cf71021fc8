"""Thumbnails of image attachments, made with Pillow (the optional ``media`` extra).

``Thumbnails`` (one per app, ``ctx.thumbnails``) makes a THUMBNAIL_SIZE px
JPEG or PNG of an uploaded image, or says in the metadata why there is none.
An image's declared pixels, not its bytes, decide what decoding it costs: one
is decoded only within a memory budget, reduced where the format allows, a
few at a time per process. Without Pillow the service still runs and says so
at start-up (``thumbnail_support``).
"""

from __future__ import annotations

import ctypes
import functools
import io
import logging
import os
import platform
import threading
from types import ModuleType
from typing import Any, BinaryIO

from store import Store

from .filetypes import jpeg_coefficient_bytes, kind_of

# The attachments' logger: these lines are about uploads, whoever makes them.
log = logging.getLogger("oxc.media")

THUMBNAIL_SIZE = 320
MAX_THUMBNAIL_PIXELS = 50_000_000  # larger images are not decoded (decompression bombs)


def imaging() -> tuple[ModuleType, ModuleType] | None:
    """(PIL.Image, PIL.ImageOps), or None when Pillow is not installed."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        return None
    return Image, ImageOps


def thumbnail_support() -> str:
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


def _none(reason: str) -> dict[str, Any]:
    return {"status": "none", "reason": reason, "content_type": None, "width": None, "height": None}


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_BLOCK = MB


@functools.cache
def give_back_large_blocks() -> bool:
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

    def __init__(self, concurrency: int, memory: int = THUMBNAIL_MEMORY, wait: float = THUMBNAIL_WAIT) -> None:
        self._slots = threading.BoundedSemaphore(concurrency)
        self.memory = memory
        self.wait = wait
        give_back_large_blocks()

    def make(
        self, store: Store, digest: str, media_type: str, width: int | None, height: int | None
    ) -> tuple[dict[str, Any], str | None]:
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

    def _too_big(self, cost: int) -> dict[str, Any]:
        return _none(
            f"Making a thumbnail of this image would take about {cost // MB} MB of memory, "
            f"more than the {self.memory // MB} MB this server allows"
        )

    def _make(
        self, modules: tuple[ModuleType, ModuleType], store: Store, digest: str
    ) -> tuple[dict[str, Any], str | None]:
        image_module, image_ops = modules
        out = io.BytesIO()
        try:
            f = store.open_blob(digest)
            if f is None:
                raise FileNotFoundError("its bytes are gone")  # deleted while it waited for a slot
            with f, image_module.open(f, formats=["PNG", "JPEG", "GIF", "WEBP"]) as image:
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
    def _cost(image: Any, f: BinaryIO, whole: int) -> int:
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
