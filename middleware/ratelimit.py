"""Throttle each client with a token bucket, with a stricter budget for chosen paths.

Usage::

    policy = RateLimitPolicy(per_minute=100, strict_paths=("/auth/login", "/auth/register"),
                             strict_per_minute=10)
    app = RateLimit(app, policy)

A bucket holds up to ``burst`` tokens (default ``per_minute``) and refills
continuously at ``per_minute / 60`` tokens a second; each request takes one.
Unlike a fixed window, which admits twice the limit across a window boundary,
a bucket never admits more than ``burst`` plus what it refilled meanwhile.
Requests whose PATH_INFO ends with one of ``strict_paths`` use a separate
bucket with the ``strict_per_minute`` budget. OPTIONS requests cost nothing.
With ``per_minute=None`` only the strict paths are counted; every other
request passes through untouched (oxc throttles its auth endpoints this way
even when the general limit is off).

The client is REMOTE_ADDR; behind a reverse proxy configure the server's
trusted-proxy settings so that REMOTE_ADDR is the real client.

Every counted answer carries the IETF draft headers ``RateLimit-Policy:
"default";q=100;w=60`` and ``RateLimit: "default";r=<remaining>;t=<seconds>``
(``"strict"`` for the strict budget), where t is the number of whole seconds
until a token is available (0 while some are left). An empty bucket gets 429
"Too many requests" with ``Retry-After`` of at least one second.

The bucket table is bounded by ``max_clients``: when it grows past that, full
(idle) buckets are dropped, then the least recently used ones until a tenth of
the table is free. Dropping a bucket only forgets a client; the client then
starts again from a full bucket.
"""

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from . import error_answer


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"RateLimitPolicy {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class RateLimitPolicy:
    """Frozen rate-limit settings; see the module docstring for each field."""

    per_minute: int | None = 100
    burst: int | None = None
    strict_paths: tuple[str, ...] = ()
    strict_per_minute: int = 10
    max_clients: int = 10_000

    def __post_init__(self):
        if self.per_minute is not None:
            _positive_int("per_minute", self.per_minute)
        if self.burst is not None:
            _positive_int("burst", self.burst)
        _positive_int("strict_per_minute", self.strict_per_minute)
        _positive_int("max_clients", self.max_clients)
        if isinstance(self.strict_paths, (str, bytes)):
            raise ValueError("RateLimitPolicy strict_paths must be an iterable of paths, not a single string")
        strict_paths = tuple(self.strict_paths)
        for path in strict_paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"RateLimitPolicy strict path {path!r} must be a string starting with '/'")
        if self.per_minute is None and not strict_paths:
            raise ValueError("RateLimitPolicy without per_minute needs strict_paths (it would limit nothing)")
        object.__setattr__(self, "strict_paths", strict_paths)


class TokenBucket:
    """Tokens refilled continuously at ``rate`` per second up to ``capacity``; callers serialise access."""

    __slots__ = ("capacity", "rate", "_tokens", "_updated")

    def __init__(self, capacity, rate, now):
        if capacity <= 0 or rate <= 0:
            raise ValueError("TokenBucket capacity and rate must be positive")
        self.capacity = capacity
        self.rate = rate
        self._tokens = float(capacity)
        self._updated = now

    def tokens(self, now):
        """Return the (fractional) number of tokens available at now."""
        # max() because a clock read before a lock was taken may be a little older.
        elapsed = max(0.0, now - self._updated)
        return min(self.capacity, self._tokens + elapsed * self.rate)

    def take(self, now):
        """Take one token if there is one; return whether it was taken."""
        self._tokens = self.tokens(now)
        self._updated = max(self._updated, now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def seconds_until_token(self, now):
        """Return the whole seconds until a token is available: 0 if one is, else at least 1."""
        missing = 1 - self.tokens(now)
        if missing <= 0:
            return 0
        return max(1, math.ceil(missing / self.rate))

    def is_full(self, now):
        """Return whether the bucket has refilled completely."""
        return self.tokens(now) >= self.capacity


@dataclass(frozen=True)
class _Budget:
    name: str
    per_minute: int
    capacity: int

    @property
    def policy_header(self):
        return f'"{self.name}";q={self.per_minute};w=60'


class RateLimit:
    """WSGI middleware refusing clients that have spent their token bucket."""

    def __init__(self, app, policy, clock=time.monotonic):
        if not isinstance(policy, RateLimitPolicy):
            raise ValueError("RateLimit policy must be a RateLimitPolicy")
        if not callable(clock):
            raise ValueError("RateLimit clock must be callable")
        self.app = app
        self.policy = policy
        self._clock = clock
        self._default = None
        if policy.per_minute is not None:
            self._default = _Budget("default", policy.per_minute, policy.burst or policy.per_minute)
        self._strict = _Budget("strict", policy.strict_per_minute, policy.strict_per_minute)
        self._buckets = OrderedDict()
        self._lock = threading.Lock()
        # Shrinking to 90% leaves room for a tenth of the table before the next
        # O(n) sweep, which keeps the cost per new client constant on average.
        self._shrink_target = policy.max_clients - policy.max_clients // 10

    def _budget_for(self, environ):
        if environ.get("PATH_INFO", "").endswith(self.policy.strict_paths):
            return self._strict
        return self._default

    def _shrink(self, now):
        for key in [key for key, bucket in self._buckets.items() if bucket.is_full(now)]:
            del self._buckets[key]
        while len(self._buckets) > self._shrink_target:
            self._buckets.popitem(last=False)

    def bucket_count(self):
        """Return how many client buckets are held."""
        with self._lock:
            return len(self._buckets)

    def __call__(self, environ, start_response):
        budget = self._budget_for(environ)
        if budget is None or environ.get("REQUEST_METHOD") == "OPTIONS":
            return self.app(environ, start_response)
        key = (environ.get("REMOTE_ADDR") or "unknown", budget.name)
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(budget.capacity, budget.per_minute / 60, now)
            else:
                self._buckets.move_to_end(key)
            allowed = bucket.take(now)
            remaining = math.floor(bucket.tokens(now))
            wait = bucket.seconds_until_token(now)
            # After take(), so that the new client's bucket is no longer full and survives.
            if len(self._buckets) > self.policy.max_clients:
                self._shrink(now)

        limit_headers = [
            ("RateLimit-Policy", budget.policy_header),
            ("RateLimit", f'"{budget.name}";r={remaining};t={wait}'),
        ]
        if not allowed:
            return error_answer(start_response, 429, "Too many requests", [("Retry-After", str(wait)), *limit_headers])

        def start_with_limits(status, response_headers, exc_info=None):
            headers = [*response_headers, *limit_headers]
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return self.app(environ, start_with_limits)
