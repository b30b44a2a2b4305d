"""A simple circuit breaker per provider: after N consecutive transient failures the provider is skipped for a
cool-down, then one trial call decides whether it is back. Lets failover move traffic to the next provider
instead of hammering one that is down. Per process; clock-injected."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.clock import Clock


@dataclass
class _State:
    failures: int = 0
    open_until: datetime | None = None
    trial_in_flight: bool = False


class CircuitBreakers:
    def __init__(self, clock: Clock, *, threshold: int = 5, cooldown: timedelta = timedelta(seconds=60)) -> None:
        self._clock = clock
        self._threshold = threshold
        self._cooldown = cooldown
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def allow(self, provider: str) -> bool:
        """Closed: yes. Open: no, until the cool-down ends; then a single trial call is let through."""
        with self._lock:
            state = self._states.setdefault(provider, _State())
            if state.open_until is None:
                return True
            if self._clock.now() < state.open_until or state.trial_in_flight:
                return False
            state.trial_in_flight = True
            return True

    def is_open(self, provider: str) -> bool:
        with self._lock:
            state = self._states.get(provider)
            return bool(state and state.open_until is not None and self._clock.now() < state.open_until)

    def reopens_in(self, provider: str) -> float:
        """Seconds until an open circuit lets a trial call through (0 if it is not open)."""
        with self._lock:
            state = self._states.get(provider)
            if state is None or state.open_until is None:
                return 0.0
            return max(0.0, (state.open_until - self._clock.now()).total_seconds())

    def success(self, provider: str) -> None:
        with self._lock:
            self._states[provider] = _State()

    def failure(self, provider: str) -> None:
        with self._lock:
            state = self._states.setdefault(provider, _State())
            state.failures += 1
            state.trial_in_flight = False
            if state.failures >= self._threshold:
                state.open_until = self._clock.now() + self._cooldown
