"""Provider health for the console: last hour's counts from the attempt log, and the circuit as this process's
breaker and the log each see it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import create_notification, create_patient, fake_providers
from worker.categories import Channel
from worker.delivery import deliver
from worker.delivery.circuit import CircuitBreakers
from worker.metrics.health import ProviderHealth, provider_health

WINDOW = timedelta(hours=1)


def _health(app: Any, breakers: CircuitBreakers | None) -> ProviderHealth:
    cfg = app.settings.provider
    [push] = provider_health(
        app.engine,
        app.clock,
        ["fake-push", "fake-push"],
        breakers,
        window=WINDOW,
        threshold=cfg.breaker_failure_threshold,
        cooldown=timedelta(seconds=cfg.breaker_cooldown_seconds),
    )
    return push


def test_failures_open_the_circuit_here_and_in_the_log(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="fake-push", channel=Channel.PUSH, default=SendResult(outcome=Outcome.RETRY))
    app = make_app(providers=fake_providers(push=push))
    patient = create_patient(app)
    threshold = app.settings.provider.breaker_failure_threshold
    for _ in range(threshold):
        deliver(app.deps, create_notification(app, patient, channels=[Channel.PUSH]))
    here = _health(app, app.deps.breakers)
    assert (here.circuit, here.retried, here.accepted, here.failed) == ("open", threshold, 0, 0)
    assert 0 < here.reopens_in <= app.settings.provider.breaker_cooldown_seconds
    # Another process (the web process in production) has a breaker of its own that saw nothing: the log tells.
    elsewhere = CircuitBreakers(app.clock)
    assert _health(app, elsewhere).circuit == "open"
    app.clock.advance(seconds=app.settings.provider.breaker_cooldown_seconds + 1)
    assert _health(app, elsewhere).circuit == "closed"
    assert _health(app, elsewhere).retried == threshold  # still within the hour
    app.clock.advance(WINDOW)
    assert _health(app, elsewhere).retried == 0


def test_a_success_keeps_it_closed_and_waits_are_counted(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(
        name="fake-push",
        channel=Channel.PUSH,
        script=[SendResult(outcome=Outcome.RETRY)] * 4 + [SendResult(outcome=Outcome.FAILED, error_code="BadToken")],
    )
    app = make_app(providers=fake_providers(push=push), provider={"rate_limits_per_second": {"fake-push": 1}})
    patient = create_patient(app)
    for _ in range(5):  # one a second: the bucket grants each
        deliver(app.deps, create_notification(app, patient, channels=[Channel.PUSH]))
        app.clock.advance(seconds=1)
    for _ in range(3):  # the same instant: one call, two waits on our own token bucket
        deliver(app.deps, create_notification(app, patient, channels=[Channel.PUSH]))
    health = _health(app, CircuitBreakers(app.clock))
    assert (health.retried, health.failed, health.accepted, health.rate_limit_waits) == (4, 1, 1, 2)
    assert health.circuit == "closed"  # the last calls were not all failures
