"""Endpoints about the service itself: its name and version, and its health."""

from .http import json_response, success


def get_root(req):
    """The service name and version (0xC answers this at ``/``)."""
    return success({"name": "oxc", "version": req.ctx.version, "api_prefix": req.ctx.settings.api_prefix},
                   "oxc chat API is running")


def get_health(req):
    """200 while the store accepts writes, 503 otherwise (for load balancers)."""
    ctx = req.ctx
    healthy = ctx.store.writable
    data = {
        "store": "ok" if healthy else "refusing writes",
        "uptime_seconds": round(ctx.clock() - ctx.started_at, 3),
        "version": ctx.version,
        "notifications_pending": ctx.notifier.pending(),
    }
    if healthy:
        return success(data)
    return json_response({"status": "error", "message": "The store refuses writes", "data": data},
                         status=503, headers=[("Retry-After", "30")])
