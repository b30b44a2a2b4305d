"""Provider health for the operators' console: each provider's calls of the last hour and its circuit.

Counted from ``delivery_attempt`` through ``ix_delivery_attempt_provider_started`` (migration 0055): one short
index range per provider, whatever the table's size. The circuit is per process (:mod:`worker.delivery.circuit`),
so it is read two ways: this process's breaker (the embedded default runs the workers here), and the log, where a
provider whose last ``threshold`` calls all failed within the cool-down is open for every worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from integrations.base import Outcome
from worker.clock import Clock
from worker.db import session_scope
from worker.delivery.circuit import CircuitBreakers
from worker.delivery.send import RATE_LIMITED
from worker.models import DeliveryAttempt

#: Outcomes a breaker counts as failures (see ``worker.delivery.send._judge``).
_FAILING = (Outcome.RETRY.value, Outcome.CONFIG_ERROR.value)


@dataclass(frozen=True)
class ProviderHealth:
    provider: str
    #: Calls the provider took.
    accepted: int
    #: Transient answers (tried again later or on the next provider), rate-limit waits not included.
    retried: int
    #: Permanent answers: failed, bad configuration, a dead token, an opt-out.
    failed: int
    #: Sends held back by our own token bucket for this provider (no call was made).
    rate_limit_waits: int
    #: ``closed``, ``open`` or ``half-open`` (one trial call in flight).
    circuit: str
    #: Seconds until an open circuit lets a trial through (0 when closed).
    reopens_in: float


def provider_health(
    engine: Engine,
    clock: Clock,
    providers: Iterable[str],
    breakers: CircuitBreakers | None,
    *,
    window: timedelta,
    threshold: int,
    cooldown: timedelta,
) -> list[ProviderHealth]:
    """One entry per provider named, in the order given (duplicates dropped)."""
    now = clock.now()
    out = []
    with session_scope(engine) as session:
        for name in dict.fromkeys(providers):
            counts = session.execute(
                select(col(DeliveryAttempt.outcome), col(DeliveryAttempt.error_code), func.count())
                .where(col(DeliveryAttempt.provider) == name, col(DeliveryAttempt.started_at) >= now - window)
                .group_by(col(DeliveryAttempt.outcome), col(DeliveryAttempt.error_code))
            ).all()
            waits = sum(int(n) for _, code, n in counts if code == RATE_LIMITED)
            plain: dict[str, int] = {}
            for outcome, code, n in counts:
                if code != RATE_LIMITED:
                    plain[str(outcome)] = plain.get(str(outcome), 0) + int(n)
            recent = session.execute(
                select(col(DeliveryAttempt.outcome), col(DeliveryAttempt.started_at))
                .where(
                    col(DeliveryAttempt.provider) == name,
                    col(DeliveryAttempt.started_at) >= now - cooldown,
                    func.coalesce(col(DeliveryAttempt.error_code), "") != RATE_LIMITED,
                )
                .order_by(col(DeliveryAttempt.started_at).desc())
                .limit(threshold)
            ).all()
            logged_open = len(recent) >= threshold and all(outcome in _FAILING for outcome, _ in recent)
            log_reopens = (recent[0][1] + cooldown - now).total_seconds() if logged_open else 0.0
            here_open = breakers is not None and breakers.is_open(name)
            circuit = "closed"
            if here_open or logged_open:
                circuit = "open"
            elif breakers is not None and breakers.trial_in_flight(name):
                circuit = "half-open"
            out.append(
                ProviderHealth(
                    provider=name,
                    accepted=plain.get(Outcome.ACCEPTED.value, 0),
                    retried=plain.get(Outcome.RETRY.value, 0),
                    failed=sum(
                        plain.get(o.value, 0)
                        for o in (Outcome.FAILED, Outcome.CONFIG_ERROR, Outcome.TOKEN_DEAD, Outcome.OPTED_OUT)
                    ),
                    rate_limit_waits=waits,
                    circuit=circuit,
                    reopens_in=max(breakers.reopens_in(name) if breakers is not None else 0.0, log_reopens, 0.0),
                )
            )
    return out
