"""Endpoints about the service itself: its name and version, and its health."""

from . import web
from .http import STORE_RETRY_AFTER, json_response, success


def get_root(req):
    """The service name and version (0xC answers this at ``/``); browsers get the chat page."""
    web_enabled = req.ctx.settings.web_enabled
    if web_enabled and web.prefers_html(req.header("Accept")):
        return web.page(req)
    answer = success(
        {"name": "oxc", "version": req.ctx.version, "api_prefix": req.ctx.settings.api_prefix},
        "oxc chat API is running",
    )
    if web_enabled:
        answer.headers.append(("Vary", "Accept"))
    return answer


def get_health(req):
    """200 while the store accepts writes, 503 otherwise (for load balancers)."""
    ctx = req.ctx
    problem = ctx.store.problem()
    healthy = problem is None
    data = {
        "store": "ok" if healthy else "refusing writes",
        "store_problem": problem,
        "uptime_seconds": round(ctx.clock() - ctx.started_at, 3),
        "version": ctx.version,
        # Not asked of a store that is down: the answer must come at once.
        "notifications_pending": ctx.notifier.pending() if healthy else None,
    }
    if healthy:
        return success(data)
    return json_response(
        {"status": "error", "message": f"The store refuses writes: {problem}", "data": data},
        status=503,
        headers=[("Retry-After", str(STORE_RETRY_AFTER))],
    )
