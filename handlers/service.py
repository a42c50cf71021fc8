"""Endpoints about the service itself: its name and version, and its health."""

from . import web
from .http import STORE_RETRY_AFTER, json_response, success, views
from .http.declare import endpoint, envelope, ref, returns


@endpoint(
    "service",
    "Service name and version",
    "Answers while the service runs; 0xC answered the same at /. With WEB_UI_ENABLED=1 (the default), a "
    "request whose Accept header names text/html and ranks it above application/json (a browser's) gets "
    "the web chat page instead, as text/html with a strict Content-Security-Policy; the answer varies "
    "by Accept.",
    answers={200: returns(envelope(ref("Service"), message="oxc chat API is running"), "The service is running.")},
)
def get_root(req):
    """The service name and version (0xC answers this at ``/``); browsers get the chat page."""
    web_enabled = req.ctx.settings.web_enabled
    if web_enabled and web.prefers_html(req.header("Accept")):
        return web.page(req)
    answer = success(
        views.service.build(name="oxc", version=req.ctx.version, api_prefix=req.ctx.settings.api_prefix),
        "oxc chat API is running",
    )
    if web_enabled:
        answer.headers.append(("Vary", "Accept"))
    return answer


@endpoint(
    "service",
    "Health check",
    "200 while the store accepts writes, 503 once it refuses them (for load balancers). "
    "Needs no API key even when one is required elsewhere.",
    answers={
        200: returns(envelope(ref("Health")), "Healthy."),
        503: returns(ref("Unhealthy"), "The store refuses writes."),
    },
    api_key_exempt=True,
)
def get_health(req):
    """200 while the store accepts writes, 503 otherwise (for load balancers)."""
    ctx = req.ctx
    problem = ctx.store.problem()
    healthy = problem is None
    data = views.health.build(
        store="ok" if healthy else "refusing writes",
        store_problem=problem,
        uptime_seconds=round(ctx.clock() - ctx.started_at, 3),
        version=ctx.version,
        # Not asked of a store that is down: the answer must come at once.
        notifications_pending=ctx.notifier.pending() if healthy else None,
    )
    if healthy:
        return success(data)
    return json_response(
        views.unhealthy.build(status="error", message=f"The store refuses writes: {problem}", data=data),
        status=503,
        headers=[("Retry-After", str(STORE_RETRY_AFTER))],
    )
