"""Searching the messages I can see, by words, newest first.

The store keeps an inverted index per scope (each chat, 0xC's public
messages, each user's private 0xC messages), so a search reads only the
postings of the scopes the caller may see, never every message.
"""

from store import search_terms
from store.base import MAX_TERM

from .http import BadRequest, Forbidden, NotFound, success, views
from .http.declare import SMALL_LIMIT, Link, endpoint, page, query, returns
from .messages import visible_to

MAX_QUERY = 200
#: A word of at most MAX_TERM letters or digits: what search can match.
SEARCHABLE = rf"(^|\W)\w{{1,{MAX_TERM}}}(\W|$)"
SEARCH_QUERY = query(
    "SearchQuery",
    "q",
    f"Words to find, at most {MAX_QUERY} characters; every word must "
    f"occur (case does not matter). Words over {MAX_TERM} characters are "
    "ignored, so at least one must be shorter.",
    {"type": "string", "minLength": 1, "maxLength": MAX_QUERY, "pattern": SEARCHABLE},
    required=True,
)
SEARCH_CHAT = query(
    "SearchChat", "chat_id", "Search only this chat (I must be a member).", {"type": "string", "minLength": 1}
)
SEARCH_BEFORE = query(
    "SearchBefore",
    "before",
    "Results older than this message (a paging.before value); it must be a message I can search.",
    {"type": "string", "minLength": 1},
)


def _terms(query):
    raw = SEARCH_QUERY.read(query).strip()
    if not raw:
        raise BadRequest("Missing required query parameter: q")
    words = search_terms(raw)
    if not words:
        raise BadRequest("Query parameter 'q' must contain a word")
    return words


def _view(message):
    if "chat_id" in message:
        return views.chat_message(message)
    return views.message_hit(message)


@endpoint(
    "search",
    "Search messages",
    "Messages the caller may see (chats, public and own private 0xC messages) that hold every word of q, newest first.",
    answers={200: returns(page("messages", "SearchHit", "OlderPaging"), "One page of results.")},
    refusals={
        400: "q is missing, too long or without a word, 'limit' is out of range, or "
        "'before' is not a message the caller can search.",
        403: "chat_id names a chat the caller is not a member of.",
        404: "chat_id names no chat.",
    },
    parameters=(SEARCH_QUERY, SMALL_LIMIT, SEARCH_CHAT, SEARCH_BEFORE),
    links={200: (Link("message_id", "/messages/0/id", to=("get_message",)),)},
)
def get_search(req):
    """Messages I may see that hold every word of ``q``; ``chat_id`` narrows to one chat."""
    store, user_id, query = req.ctx.store, req.user["id"], req.query
    words = _terms(query)
    size = SMALL_LIMIT.read(query)
    chat_id = query.get("chat_id")
    if chat_id is not None:
        if store.get_chat(chat_id) is None:
            raise NotFound(f"Chat with ID {chat_id} not found")
        if store.get_member(chat_id, user_id) is None:
            raise Forbidden("You are not a member of this chat")
        scopes = [chat_id]
    else:
        scopes = sorted(store.chat_ids(user_id)) + ["public", f"user:{user_id}"]
    before = None
    if "before" in query:
        found = _searchable(store, scopes, user_id, query["before"])
        if found is None:
            raise BadRequest("Query parameter 'before' is not a message you can search")
        before = found["seq"]
    results, more = store.search(scopes, words, before=before, limit=size)
    shown = [_view(message) for message in results]
    return success(messages=shown, paging={"limit": size, "before": shown[-1]["id"] if more else None})


def _searchable(store, scopes, user_id, message_id):
    """The message a cursor names, if it lies within the scopes searched."""
    message = store.get_chat_message(message_id)
    if message is not None:
        return message if message["chat_id"] in scopes else None
    message = store.get_message(message_id)
    # 0xC messages are searched only across everything ("public" among the scopes).
    return message if "public" in scopes and visible_to(message, user_id) else None
