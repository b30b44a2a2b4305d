"""Per-provider send rates shared by every worker: a token bucket per provider, so a burst never trips a
provider's quota.

On Redis the bucket is one Lua script, so taking tokens is one round trip however many workers contend, and a
batch reserves all the tokens it needs at once. The embedded default keeps the bucket in process. Time comes
from the injected clock (passed to the script), so tests travel in time instead of waiting for the next second.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from worker.clock import Clock

#: KEYS[1] = the bucket; ARGV = rate per second, burst, now (ms), tokens wanted. Returns {granted, tokens left}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  ts = now
end
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {granted, tostring(tokens)}
"""


@dataclass(frozen=True)
class Grant:
    """``granted`` tokens of those asked; ``wait`` seconds until the next one refills (0 if all were granted)."""

    granted: int
    wait: float


class BucketStore(Protocol):
    def take(self, key: str, rate: float, burst: float, now_ms: int, want: int) -> tuple[int, float]: ...


class MemoryBuckets:
    """Buckets in this process (the embedded default runs one process)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rate: float, burst: float, now_ms: int, want: int) -> tuple[int, float]:
        with self._lock:
            tokens, ts = self._buckets.get(key, (burst, now_ms))
            if now_ms > ts:
                tokens, ts = min(burst, tokens + (now_ms - ts) * rate / 1000), now_ms
            granted = min(want, math.floor(tokens))
            self._buckets[key] = (tokens - granted, ts)
            return granted, tokens - granted


class RedisBuckets:
    """Buckets on Redis, shared by every worker: one script call a take."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_TAKE)

    def take(self, key: str, rate: float, burst: float, now_ms: int, want: int) -> tuple[int, float]:
        granted, left = self._script(keys=[key], args=[rate, burst, now_ms, want])
        return int(granted), float(left)


class ProviderRateLimits:
    """``acquire(provider)`` is True when a send may go now; :meth:`reserve` takes many tokens at once."""

    def __init__(self, store: BucketStore, clock: Clock, per_second: Mapping[str, int], *, namespace: str) -> None:
        self._store = store
        self._clock = clock
        self._rates = {name: float(limit) for name, limit in per_second.items() if limit > 0}
        self._namespace = namespace

    def reserve(self, provider: str, want: int) -> Grant:
        rate = self._rates.get(provider)
        if rate is None or want <= 0:
            return Grant(max(want, 0), 0.0)
        now_ms = int(self._clock.now().timestamp() * 1000)
        granted, left = self._store.take(f"{self._namespace}:bucket:{provider}", rate, rate, now_ms, want)
        wait = 0.0 if granted == want else max(0.0, (1.0 - left) / rate)
        return Grant(granted, wait)

    def acquire(self, provider: str) -> bool:
        return self.reserve(provider, 1).granted == 1


def build_rate_limits(
    broker: dramatiq.Broker, clock: Clock, per_second: Mapping[str, int], *, namespace: str
) -> ProviderRateLimits:
    store: BucketStore = RedisBuckets(broker.client) if isinstance(broker, RedisBroker) else MemoryBuckets()
    return ProviderRateLimits(store, clock, per_second, namespace=namespace)
