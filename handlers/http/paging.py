"""One way to answer a page of messages, for every list that has cursors.

``limit`` (1-200, default 50) and one of ``before``/``after`` (a message id
that must belong to the list). The answer is oldest first, and
``paging.before``/``paging.after`` are the cursors of the next older/newer page
(null when there is nothing there).
"""

from . import BadRequest, success
from .fields import limit as read_limit


def page_answer(req, listing, anchor, view):
    """Answer ``listing(before=, after=, limit=)`` as a page.

    ``anchor(message_id)`` returns the record a cursor names if it is in this
    list (else None); ``view`` shows one record.
    """
    query = req.query
    size = read_limit(query)
    if "before" in query and "after" in query:
        raise BadRequest("Use either 'before' or 'after', not both")
    cursors = {}
    for name in ("before", "after"):
        if name in query:
            record = anchor(query[name])
            if record is None:
                raise BadRequest(f"Query parameter '{name}' is not a message in this list")
            cursors[name] = record["seq"]
    page = listing(limit=size, **cursors)
    if page.items:
        older = page.items[0]["id"] if page.older else None
        newer = page.items[-1]["id"] if page.newer else None
    else:
        older = query.get("after") if page.older else None
        newer = query.get("before") if page.newer else None
    return success(
        messages=[view(record) for record in page.items], paging={"limit": size, "before": older, "after": newer}
    )
