"""Attachments: upload into a chat, metadata, download (Range, ETag), thumbnails, delete.

An upload is the raw body with its Content-Type (``?name=`` gives the file's
name), or multipart/form-data with a ``file`` part; ``content`` (a caption)
or ``send=1``, as a form field or in the query, also sends the chat message
that carries it. Otherwise the attachment waits, unsent, until a message
names it in ``attachment_id``; it joins one message only.

The bytes are streamed into the store's content-addressed blobs (hashed and
counted on the way, written to a temp file, fsynced, renamed), never held in
memory and never named after anything a user sent. Before a byte is kept,
the first 4 kB are sniffed (``services.filetypes``): the type they show must
agree with the declared one (415 names both) and be in MEDIA_ALLOWED_TYPES
(415); more than MEDIA_MAX_BYTES is 413.

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

Thumbnails (320 px, JPEG or PNG) are made at upload by ``services.thumbnails``
with Pillow, the optional ``media`` extra; without it the service runs, says
so at start-up (``thumbnail_support``), and the metadata's ``thumbnail`` says
why there is none. An image's declared pixels, not its bytes, decide what
decoding it costs: ``Thumbnails`` decodes one only within a memory budget,
reduced where the format allows, a few at a time per process. Deleting the
attachment, or the message it was sent with, removes the bytes once no
attachment refers to them.
"""

import functools
import logging
import mimetypes
import uuid

from store import DamagedBlob, Missing, OutOfSpace, QuotaExceeded, TooLarge

from .http import (
    STORE_RETRY_AFTER,
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
    body_length,
    success,
    views,
)
from .http.declare import (
    ATTACHMENT_PATH,
    CHAT_PATH,
    IF_NONE_MATCH,
    Link,
    Reply,
    endpoint,
    envelope,
    header,
    obj,
    query,
    ref,
    refuses,
    returns,
)
from .http.download import DamagedData, disposition, send_file
from .http.fields import text
from .http.multipart import MultipartError, Parts, boundary
from .messages import message_text
from .services import messaging
from .services.filetypes import GENERIC, MEDIA_TYPE, allowed, image_size, kind_of, normalise, resolve_type
from .services.roles import in_chat, may_moderate
from .services.thumbnails import THUMBNAIL_SIZE

log = logging.getLogger("oxc.media")

SNIFF_BYTES = 4096
MAX_NAME = 255
EXAMPLE_ID = "3d6f0a8e-2b1c-4f5e-9a7d-0c8b6e4f2a1d"
SEND_CHOICES = {"enum": ["1", "0", "true", "false", ""]}
FILE_NAME = query(
    "FileName",
    "name",
    f"The file's name (at most {MAX_NAME} characters); for a multipart upload it wins over the part's filename.",
    {"type": "string", "maxLength": MAX_NAME},
)
CAPTION = query(
    "Caption",
    "content",
    "A caption; giving one also sends the message (a multipart field wins).",
    message_text("A caption"),
)
SEND = query("Send", "send", "1 or true: also send the message carrying the file.", SEND_CHOICES)
RANGE = header(
    "Range",
    "Range",
    "One byte range, e.g. bytes=0-1023 or bytes=-500 (206); several ranges or a "
    "malformed one get the whole file (200).",
)
IF_RANGE = header("IfRange", "If-Range", "Honour Range only while the ETag is still this one.")
MAX_FIELD_BYTES = 64 * 1024
UPLOAD_OVERHEAD = 64 * 1024  # what multipart adds around a file of MEDIA_MAX_BYTES (headers, fields)
SEND_VALUES = {"1": True, "true": True, "0": False, "false": False, "": False}


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
    return body_length(req.environ)


def upload_schema(settings):
    """The JSON Schema of a multipart upload's fields."""
    return obj(
        {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "The file; the part's Content-Type and filename are its declared type and name.",
            },
            "content": message_text("A caption; giving one also sends the message").resolved(settings).schema(),
            "send": {
                "enum": ["1", "0", "true", "false", ""],
                "description": "1 or true: send the message carrying the file now, even without a caption.",
            },
        },
        required=["file"],
        description="A multipart/form-data upload; other parts are ignored.",
    )


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
    if declared is not None and not MEDIA_TYPE.fullmatch(declared):
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
@endpoint(
    "media",
    "Upload an attachment",
    "Uploads a file into the chat. The body is the file itself, with its Content-Type (and ?name=), or "
    "multipart/form-data with a 'file' part (its Content-Type and filename count) and optional 'content' "
    "and 'send' fields. The file's first bytes must agree with the declared type, and the type must be "
    "allowed (MEDIA_ALLOWED_TYPES). A caption (content) or send=1 also sends the message carrying the "
    "file; otherwise send it later with attachment_id. Images get a thumbnail when the server has Pillow.",
    answers={
        201: returns(envelope(ref("UploadedAttachment"), message="Attachment uploaded"), "Stored."),
        400: refuses(
            "The file is empty or missing, the multipart body is malformed, content is blank or too "
            "long, send is not 1/0/true/false, or Content-Length is invalid."
        ),
        413: refuses(
            "The file is over MEDIA_MAX_BYTES, or it would take my attachments past my quota "
            "(ATTACHMENT_QUOTA_BYTES; the message says so, and /users/me shows the use and the "
            "limit): delete some attachments first."
        ),
        415: refuses(
            "The file's type is not allowed (MEDIA_ALLOWED_TYPES), or its bytes do not match the "
            "declared type (the message names both)."
        ),
        503: refuses(
            "The server's disk is full, or too full to keep the file without eating into the "
            "store's free-space reserve; retry after Retry-After."
        ),
    },
    parameters=(CHAT_PATH, FILE_NAME, CAPTION, SEND),
    writes=True,
    links={201: (Link("attachment_id"),)},
    schemas={"Upload": upload_schema},
    upload={
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": ref("Upload"),
            "encoding": {"file": {"contentType": "application/octet-stream"}},
        },
    },
)
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
        message = (
            messaging.send(req.ctx, chat, me, req.user["username"], content, attachment=attachment) if send else None
        )
    except BaseException:
        _discard(req, attachment)
        raise
    data = views.uploaded(req.ctx.store.get_attachment(attachment["id"]) or attachment, message)
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
@endpoint(
    "media",
    "An attachment's metadata",
    "Name, size, type, kind, image size and thumbnail state. Only for members of its chat.",
    answers={
        200: returns(envelope(ref("Attachment")), "The metadata."),
        403: refuses("The caller is not a member of the attachment's chat."),
        404: refuses("No such attachment."),
    },
    parameters=(ATTACHMENT_PATH,),
)
def get_attachment(req, attachment, chat, me):
    """An attachment's metadata."""
    return success(views.attachment(attachment))


@_members_only
@endpoint(
    "media",
    "Download an attachment",
    "The file's bytes with its Content-Type, Content-Length, Content-Disposition and ETag (its SHA-256). "
    "If-None-Match answers 304; one byte Range answers 206 (audio and video players seek with it).",
    answers={
        200: Reply("The whole file.", {"type": "string", "format": "binary"}, "*/*"),
        206: Reply("The range asked for (Content-Range says which).", {"type": "string", "format": "binary"}, "*/*"),
        304: Reply("The client's copy (If-None-Match) is current; no body."),
        403: refuses("The caller is not a member of the attachment's chat."),
        404: refuses("No such attachment."),
        416: refuses("The range starts past the end (Content-Range: bytes */size)."),
        500: refuses(
            "Attachment data is damaged: the server's copy no longer matches its SHA-256, so it "
            "is not sent (the server's log names it)."
        ),
    },
    parameters=(ATTACHMENT_PATH, RANGE, IF_RANGE, IF_NONE_MATCH),
)
def get_attachment_content(req, attachment, chat, me):
    """The attachment's bytes; Range, If-None-Match and If-Range are honoured."""
    inline = attachment["kind"] in ("image", "video", "audio") and "svg" not in attachment["content_type"]
    digest = attachment["sha256"]
    return send_file(
        req,
        digest,
        attachment["content_type"],
        attachment["size"],
        disposition("inline" if inline else "attachment", attachment["name"]),
        lambda: _open_whole(req, digest, attachment),
    )


@_members_only
@endpoint(
    "media",
    "An attachment's thumbnail",
    f"A JPEG (or PNG, with transparency) of at most {THUMBNAIL_SIZE} px a side, for images; ETag, "
    "If-None-Match and Range as for the content.",
    answers={
        200: Reply("The thumbnail.", {"type": "string", "format": "binary"}, "image/*"),
        206: Reply("The range asked for.", {"type": "string", "format": "binary"}, "image/*"),
        304: Reply("The client's copy (If-None-Match) is current; no body."),
        403: refuses("The caller is not a member of the attachment's chat."),
        404: refuses("No such attachment, or it has no thumbnail (the message says why)."),
        416: refuses("The range starts past the end."),
        500: refuses("The thumbnail's data is damaged (its bytes no longer match its SHA-256)."),
    },
    parameters=(ATTACHMENT_PATH, RANGE, IF_RANGE, IF_NONE_MATCH),
)
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
    return send_file(
        req, digest, thumbnail["content_type"], size, "inline", lambda: _open_whole(req, digest, attachment)
    )


@_members_only
@endpoint(
    "media",
    "Delete an attachment",
    "Deletes an attachment (its uploader, or an admin or the owner of its chat). The message it was sent "
    "with loses it (and becomes a tombstone if nothing else was in it); the bytes go once nothing refers "
    "to them.",
    answers={
        200: returns(envelope(message=f"Attachment with ID {EXAMPLE_ID} deleted successfully"), "Deleted."),
        403: refuses("The caller is not a member of the chat, or neither uploaded it nor moderates the chat."),
        404: refuses("No such attachment."),
        409: refuses("The caller stopped being a member of the chat while the request ran."),
    },
    parameters=(ATTACHMENT_PATH,),
    writes=True,
)
def delete_attachment(req, attachment, chat, me):
    """Delete an attachment (its uploader, or an admin or the owner); a message it was sent with loses it.

    Unsent, it is deleted only while still unsent (the store checks in the
    delete); sent meanwhile, or before, it leaves its message in the write that
    changes the message (``messaging.detach_attachment``).
    """
    if attachment["uploader_id"] != me["user_id"] and not may_moderate(me):
        raise Forbidden("Only the uploader or the chat's admins and owner may delete an attachment")
    store = req.ctx.store
    if attachment.get("message_id") is None and not store.delete_attachment(attachment["id"], unsent_only=True):
        attachment = store.get_attachment(attachment["id"])  # sent, or deleted, meanwhile
    if attachment is None or (
        attachment.get("message_id") is not None and not messaging.detach_attachment(req.ctx, chat, me, attachment)
    ):
        raise NotFound("The attachment is already deleted")
    return success(message=f"Attachment with ID {attachment['id']} deleted successfully")


# Sending stored files
# =============================================================================


def _open_whole(req, digest, attachment):
    """The blob ``digest`` of ``attachment`` opened, None if gone; 500 (and an error in the log) if damaged."""
    try:
        return req.ctx.store.open_blob(digest)
    except DamagedBlob as exc:
        log.error("attachment %s (chat %s) cannot be served: %s", attachment["id"], attachment["chat_id"], exc)
        raise DamagedData("Attachment data is damaged: the server's copy no longer matches its SHA-256") from None
