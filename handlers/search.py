"""Searching the messages I can see, by words, newest first.

The store keeps an inverted index per scope (each chat, 0xC's public
messages, each user's private 0xC messages), so a search reads only the
postings of the scopes the caller may see, never every message.
"""

from store import search_terms

from .http import BadRequest, Forbidden, NotFound, success, views
from .http.fields import limit as read_limit
from .messages import visible_to

MAX_QUERY = 200


def _terms(query):
    raw = query.get("q", "").strip()
    if not raw:
        raise BadRequest("Missing required query parameter: q")
    if len(raw) > MAX_QUERY:
        raise BadRequest(f"Query parameter 'q' must be at most {MAX_QUERY} characters")
    words = search_terms(raw)
    if not words:
        raise BadRequest("Query parameter 'q' must contain a word")
    return words


def _view(message):
    if "chat_id" in message:
        return views.chat_message(message)
    return dict(views.public_message(message), chat_id=None)


def get_search(req):
    """Messages I may see that hold every word of ``q``; ``chat_id`` narrows to one chat."""
    store, user_id, query = req.ctx.store, req.user["id"], req.query
    words = _terms(query)
    size = read_limit(query, default=20, maximum=100)
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
