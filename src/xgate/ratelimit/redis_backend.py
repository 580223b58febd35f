"""The Redis backend: one atomic Lua script call per decision, in Redis server time, keys that expire when idle.

The scripts repeat algorithms.token_bucket and algorithms.gcra operation for operation (doubles in both), so
the two backends agree. Numbers are stored with "%.17g": Lua's default tostring keeps 14 digits, which would
round a microsecond timestamp (16 digits) to tens of microseconds.

Several service replicas may share one Redis: each decision reads and writes its key inside one script, which
Redis runs atomically, and the time comes from Redis (TIME inside the script), not from the replicas' clocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from xgate.ratelimit.algorithms import EPS_US, Decision, Rate

# ARGV[1] is the time in microseconds, or "" for Redis's own clock. Tests pass a fake clock's readings to
# compare with the in-memory backend; the service always passes "".
_NOW = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
"""

# KEYS[1]: a hash {u: tokens used, ts: time of that figure (us)}. ARGV: now, capacity, tokens per us, hits.
# Returns {allowed (0/1), remaining, reset (us, rounded up)}.
TOKEN_BUCKET_LUA = (
    _NOW
    + f"""
local capacity = tonumber(ARGV[2])
local per_us = tonumber(ARGV[3])
local hits = tonumber(ARGV[4])
local slack = {EPS_US!r} * per_us
local state = redis.call('HMGET', KEYS[1], 'u', 'ts')
local used = tonumber(state[1])
local ts = tonumber(state[2])
if used == nil or ts == nil then
  used = 0
  ts = now
end
if now > ts then
  used = math.max(0, used - (now - ts) * per_us)
  ts = now
end
local allowed = 0
local reset
if used + hits <= capacity + slack then
  allowed = 1
  used = used + hits
  reset = used / per_us
else
  reset = (used + math.min(hits, capacity) - capacity) / per_us
end
local remaining = math.max(0, math.floor(capacity - used + slack))
redis.call('HSET', KEYS[1], 'u', string.format('%.17g', used), 'ts', string.format('%.17g', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(used / per_us / 1000) + 1)
return {{allowed, remaining, math.ceil(reset)}}
"""
)

# KEYS[1]: a string, the theoretical arrival time (us). ARGV: now, interval T (us), window tau + T (us),
# unit (us), requests, hits. Returns as TOKEN_BUCKET_LUA. A denied request writes nothing.
GCRA_LUA = (
    _NOW
    + f"""
local interval = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local unit = tonumber(ARGV[4])
local requests = tonumber(ARGV[5])
local hits = tonumber(ARGV[6])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = tat + hits * interval
if new_tat - now <= window + {EPS_US!r} then
  local ahead = new_tat - now
  local fits = math.floor((unit + window - interval - ahead + {EPS_US!r}) / interval)
  local remaining = math.min(requests, math.max(0, fits))
  redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
  return {{1, remaining, math.ceil(ahead)}}
end
return {{0, 0, math.ceil(new_tat - window - now)}}
"""
)


class _Script:
    """A Lua script run by EVALSHA, falling back to EVAL (which also caches it) when Redis answers NOSCRIPT:
    after a restart, a SCRIPT FLUSH or on a new replica."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: aioredis.Redis, key: str, args: Sequence[str | int | float]) -> list[int]:
        try:
            answer = await client.evalsha(self.sha, 1, key, *args)
        except NoScriptError:
            answer = await client.eval(self.source, 1, key, *args)
        return [int(value) for value in answer]


_TOKEN_BUCKET = _Script(TOKEN_BUCKET_LUA)
_GCRA = _Script(GCRA_LUA)


class RedisBackend:
    """Counters in Redis, shared by every service replica that uses the same Redis and key prefix.

    `clock` (seconds) replaces Redis's TIME; only tests set it. The client should not retry on its own (see
    `connect`): the service bounds each decision with its own timeout and then applies its failure mode.
    Errors: redis.exceptions.RedisError (ConnectionError, TimeoutError, ResponseError) and OSError pass through.
    Resources: the client's connection pool, closed by `aclose`.
    """

    def __init__(
        self, client: aioredis.Redis, *, prefix: str = "xgate:rl:", clock: Callable[[], float] | None = None
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock

    @classmethod
    def connect(
        cls, url: str, *, timeout: float = 0.05, prefix: str = "xgate:rl:", clock: Callable[[], float] | None = None
    ) -> RedisBackend:
        """A backend on a new client for `url` ("redis://127.0.0.1:6379/0"); connects lazily, on first use.

        Socket timeouts are a few times `timeout`, so a connection the service gave up on is also dropped by
        the client rather than left blocking a pool slot; retries are off (redis-py retries 3 times by default).
        """
        socket_timeout = max(1.0, 4 * timeout)
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        return cls(client, prefix=prefix, clock=clock)

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    async def decide(self, key: str, rate: Rate, hits: int = 1) -> Decision:
        now = "" if self._clock is None else repr(self._clock() * 1e6)
        full_key = self._prefix + key
        if rate.algorithm == "token_bucket":
            args: list[str | int | float] = [now, rate.capacity, repr(rate.tokens_per_us), hits]
            allowed, remaining, reset = await _TOKEN_BUCKET(self._client, full_key, args)
        else:
            interval = rate.interval_us
            window = rate.capacity * interval
            args = [now, repr(interval), repr(window), repr(rate.unit_us), rate.requests, hits]
            allowed, remaining, reset = await _GCRA(self._client, full_key, args)
        return Decision(bool(allowed), rate.requests, remaining, reset / 1e6)

    async def aclose(self) -> None:
        await self._client.aclose()
