"""xgate's global rate-limit service (envoy.service.ratelimit.v3): token bucket and GCRA, in memory or Redis.

Layout: algorithms (the arithmetic, the Backend interface, the in-memory backend), redis_backend (the same
arithmetic as Lua scripts), limits (descriptor patterns -> Limit, counter keys), service (the gRPC servicer,
failure mode, metrics, `serve`).
"""

from __future__ import annotations

from xgate.ratelimit.algorithms import Algorithm, Backend, Decision, MemoryBackend, Rate
from xgate.ratelimit.limits import Limit, LimitTable, Match
from xgate.ratelimit.redis_backend import RedisBackend
from xgate.ratelimit.service import FailureMode, RateLimitServer, RateLimitService, serve

__all__ = [
    "Algorithm",
    "Backend",
    "Decision",
    "FailureMode",
    "Limit",
    "LimitTable",
    "Match",
    "MemoryBackend",
    "Rate",
    "RateLimitServer",
    "RateLimitService",
    "RedisBackend",
    "serve",
]
