"""A circuit breaker per provider, so failover moves traffic to the next provider instead of hammering one that
is down. Per process; clock-injected.

- ``threshold`` consecutive failures open the circuit for ``cooldown``; then one trial call at a time decides
  whether it closes again. A trial that ends without a verdict (the rate limiter refused it, the send or the recording
  raised) is handed back with :meth:`CircuitBreakers.abandon`, and a trial that is never settled at all lapses
  after ``trial_timeout``: a circuit can never stay open without a trial in flight.
- A provider that says "wait" (429, or 503 with ``Retry-After``) is paused for exactly that long with
  :meth:`CircuitBreakers.pause`, then one trial: the provider's own cool-down, not a failure, so it never opens
  the circuit for the fixed ``cooldown`` and its end is not a stampede of every waiting send.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.clock import Clock


@dataclass
class _State:
    failures: int = 0
    #: Open (after failures) or paused (the provider said wait) until then; afterwards half-open.
    blocked_until: datetime | None = None
    #: When the trial call in flight started (half-open), if one is.
    trial_since: datetime | None = None


class CircuitBreakers:
    def __init__(
        self,
        clock: Clock,
        *,
        threshold: int = 5,
        cooldown: timedelta = timedelta(seconds=60),
        trial_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        self._clock = clock
        self._threshold = threshold
        self._cooldown = cooldown
        self._trial_timeout = trial_timeout
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def allow(self, provider: str) -> bool:
        """Closed: yes. Open or paused: no until that ends; then one trial call at a time (a trial not settled
        within ``trial_timeout`` lapses, and the next caller is the trial)."""
        with self._lock:
            state = self._states.setdefault(provider, _State())
            if state.blocked_until is None:
                return True
            now = self._clock.now()
            if now < state.blocked_until:
                return False
            if state.trial_since is not None and now < state.trial_since + self._trial_timeout:
                return False
            state.trial_since = now
            return True

    def success(self, provider: str) -> None:
        with self._lock:
            self._states[provider] = _State()

    def failure(self, provider: str) -> None:
        """A failed call (no wait given): the ``threshold``-th in a row opens the circuit for ``cooldown``."""
        with self._lock:
            state = self._states.setdefault(provider, _State())
            state.failures += 1
            state.trial_since = None
            state.blocked_until = self._clock.now() + self._cooldown if state.failures >= self._threshold else None

    def pause(self, provider: str, seconds: float) -> None:
        """The provider said when to come back: skip it until then, then one trial. Not a failure."""
        with self._lock:
            state = self._states.setdefault(provider, _State())
            state.blocked_until = self._clock.now() + timedelta(seconds=max(0.0, seconds))
            state.trial_since = None

    def abandon(self, provider: str) -> None:
        """A call let through by :meth:`allow` ended with no verdict: free the trial slot for the next caller."""
        with self._lock:
            state = self._states.get(provider)
            if state is not None:
                state.trial_since = None

    def is_open(self, provider: str) -> bool:
        with self._lock:
            state = self._states.get(provider)
            return bool(state and state.blocked_until is not None and self._clock.now() < state.blocked_until)

    def trial_in_flight(self, provider: str) -> bool:
        with self._lock:
            state = self._states.get(provider)
            return bool(state and state.trial_since is not None)

    def reopens_in(self, provider: str) -> float:
        """Seconds until the provider may be tried again (0 if it may be now)."""
        with self._lock:
            state = self._states.get(provider)
            if state is None or state.blocked_until is None:
                return 0.0
            return max(0.0, (state.blocked_until - self._clock.now()).total_seconds())
