"""Per-provider send rate limits shared by every worker: dramatiq's window rate limiter on Redis (an in-memory
backend on the embedded default), so a burst never trips a provider's quota."""

from __future__ import annotations

from collections.abc import Mapping

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.rate_limits import RateLimiter, WindowRateLimiter
from dramatiq.rate_limits.backend import RateLimiterBackend
from dramatiq.rate_limits.backends import RedisBackend, StubBackend


class ProviderRateLimits:
    """``acquire(provider)`` is True when a send may go now; False means "come back in a second"."""

    def __init__(self, backend: RateLimiterBackend, per_second: Mapping[str, int], *, namespace: str) -> None:
        self._limiters: dict[str, RateLimiter] = {
            name: WindowRateLimiter(backend, f"{namespace}:rate:{name}", limit=limit, window=1)  # type: ignore[no-untyped-call]
            for name, limit in per_second.items()
            if limit > 0
        }

    def acquire(self, provider: str) -> bool:
        limiter = self._limiters.get(provider)
        if limiter is None:
            return True
        with limiter.acquire(raise_on_failure=False) as acquired:
            return bool(acquired)


def build_rate_limits(broker: dramatiq.Broker, per_second: Mapping[str, int], *, namespace: str) -> ProviderRateLimits:
    backend: RateLimiterBackend
    if isinstance(broker, RedisBroker):
        backend = RedisBackend(client=broker.client)
    else:
        backend = StubBackend()  # type: ignore[no-untyped-call]
    return ProviderRateLimits(backend, per_second, namespace=namespace)
