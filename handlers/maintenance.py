"""Upkeep of a running server that only its admins (the users named in ADMINS) may ask for."""

import logging
import time

from .http import Forbidden, ServiceUnavailable, success
from .http.declare import endpoint, envelope, obj, returns

log = logging.getLogger("oxc.maintenance")


def require_admin(req, what):
    """403 unless the current user is one of the server's admins; ``what`` says what was refused."""
    admins = {name.casefold() for name in req.ctx.settings.admins}
    if req.user["username"].casefold() not in admins:
        raise Forbidden(f"Only the server's admins may {what}")


@endpoint(
    "service",
    "Compact the store now (admins)",
    "Rewrites what the store keeps on disk while the server runs, so that the text of deleted messages "
    "leaves it now rather than at the next automatic compaction: the JSON store writes a fresh snapshot "
    "and drops its journal; PostgreSQL rewrites the tables that hold message text (VACUUM FULL, which "
    "locks each one while it runs). Answers once done. Only for the users named in ADMINS.",
    answers={
        200: returns(
            envelope(
                obj(
                    {
                        "seconds": {
                            "type": "number",
                            "minimum": 0,
                            "examples": [0.42],
                            "description": "How long the compaction took.",
                        }
                    }
                ),
                message="Store compacted",
            ),
            "Compacted.",
        )
    },
    refusals={403: "I am not one of the server's admins."},
    writes=True,
)
def post_compact(req):
    """Compact the store now, so that deleted text leaves the disk (server admins only)."""
    require_admin(req, "compact the store")
    store = req.ctx.store
    if not store.writable:
        raise ServiceUnavailable(f"The store refuses writes: {store.problem()}")
    started = time.monotonic()
    store.compact()
    seconds = round(time.monotonic() - started, 3)
    log.info("admin: %s compacted the store in %.3f s", req.user["username"], seconds)
    return success({"seconds": seconds}, "Store compacted")
