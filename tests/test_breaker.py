"""The circuit breaker: every way a trial call can end settles it, a provider's own wait is a pause (not a
failure), and a trial that is never settled lapses. A circuit can never stay open with no trial in flight."""

from __future__ import annotations

from datetime import timedelta

import pytest

from integrations.base import OutboundMessage, Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import attempts, create_notification, create_patient, fake_providers, load
from worker.categories import Channel
from worker.clock import FrozenClock
from worker.delivery import deliver
from worker.delivery.circuit import CircuitBreakers
from worker.delivery.ratelimit import MemoryBuckets, ProviderRateLimits
from worker.states import State

DOWN = SendResult(outcome=Outcome.RETRY, error_code="503")


def _opened(clock: FrozenClock) -> CircuitBreakers:
    breakers = CircuitBreakers(clock, threshold=2, cooldown=timedelta(seconds=60), trial_timeout=timedelta(seconds=20))
    breakers.failure("p")
    breakers.failure("p")
    assert not breakers.allow("p")
    clock.advance(seconds=61)
    return breakers


def test_a_trial_that_succeeds_closes_the_circuit(clock: FrozenClock) -> None:
    breakers = _opened(clock)
    assert breakers.allow("p") and not breakers.allow("p"), "one trial at a time"
    breakers.success("p")
    assert breakers.allow("p") and breakers.allow("p") and not breakers.is_open("p")


def test_a_trial_that_fails_opens_it_for_another_cooldown(clock: FrozenClock) -> None:
    breakers = _opened(clock)
    assert breakers.allow("p")
    breakers.failure("p")
    assert not breakers.allow("p") and not breakers.trial_in_flight("p")
    assert breakers.reopens_in("p") == pytest.approx(60)


def test_a_trial_without_a_verdict_frees_the_slot(clock: FrozenClock) -> None:
    breakers = _opened(clock)
    assert breakers.allow("p")
    breakers.abandon("p")
    assert breakers.allow("p"), "the next caller is the trial"


def test_a_trial_never_settled_lapses(clock: FrozenClock) -> None:
    breakers = _opened(clock)
    assert breakers.allow("p")  # ... and the thread that had it died
    clock.advance(seconds=19)
    assert not breakers.allow("p")
    clock.advance(seconds=2)
    assert breakers.allow("p"), "after trial_timeout the next caller is the trial"


def test_a_named_wait_pauses_for_exactly_that_long_and_is_not_a_failure(clock: FrozenClock) -> None:
    breakers = CircuitBreakers(clock, threshold=2, cooldown=timedelta(seconds=60))
    for _ in range(5):
        breakers.pause("p", 2.0)
    assert breakers.reopens_in("p") == pytest.approx(2.0), "the provider's Retry-After, not the 60 s cool-down"
    clock.advance(seconds=2)
    assert breakers.allow("p") and not breakers.allow("p"), "then one trial, not every waiting send at once"
    breakers.success("p")
    assert breakers.allow("p") and breakers.allow("p")


class _Raising:
    """A provider whose client raises (a bug, or an exception the adapter did not map)."""

    name = "fcm"
    channel = Channel.PUSH

    def __init__(self) -> None:
        self.calls = 0

    def send(self, *, message: OutboundMessage) -> SendResult:
        self.calls += 1
        raise RuntimeError("adapter bug")


def _half_open(app) -> CircuitBreakers:  # type: ignore[no-untyped-def]
    breakers = CircuitBreakers(app.clock, threshold=1, cooldown=timedelta(seconds=60))
    breakers.failure("fcm")
    app.clock.advance(seconds=61)
    app.deps.breakers = breakers
    return breakers


def test_trial_refused_by_the_rate_limiter_is_handed_back(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="fcm", channel=Channel.PUSH)
    app = make_app(providers=fake_providers(push=push))
    breakers = _half_open(app)
    limits = ProviderRateLimits(MemoryBuckets(), app.clock, {"fcm": 1}, namespace="t")
    assert limits.acquire("fcm")  # the bucket is empty now
    app.deps.rate_limits = limits
    pid = create_patient(app)
    first = create_notification(app, pid, channels=[Channel.PUSH])
    assert deliver(app.deps, first).state is State.RETRYING
    assert attempts(app, first)[-1].error_code == "rate_limited" and push.sent == []
    assert not breakers.trial_in_flight("fcm"), "the trial slot is free again"
    app.clock.advance(seconds=1)
    second = create_notification(app, pid, channels=[Channel.PUSH])
    assert deliver(app.deps, second).state is State.SENT, "the next send is the trial, and it closes the circuit"
    assert not breakers.is_open("fcm")


def test_trial_whose_send_raises_is_handed_back(make_app) -> None:  # type: ignore[no-untyped-def]
    raising = _Raising()
    app = make_app(providers=fake_providers(push=raising))  # type: ignore[arg-type]
    breakers = _half_open(app)
    nid = create_notification(app, create_patient(app), channels=[Channel.PUSH])
    with pytest.raises(RuntimeError):
        deliver(app.deps, nid)
    assert raising.calls == 1 and not breakers.trial_in_flight("fcm")
    assert breakers.allow("fcm"), "the next caller gets the trial"
    row = load(app, nid)
    assert row.state == State.RETRYING and "RuntimeError" in (row.reason or "")


def test_trial_whose_answer_cannot_be_recorded_still_gets_its_verdict(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="fcm", channel=Channel.PUSH)
    app = make_app(providers=fake_providers(push=push))
    breakers = _half_open(app)
    nid = create_notification(app, create_patient(app), channels=[Channel.PUSH])
    from sqlalchemy import event

    def refuse_attempt_rows(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO delivery_attempt"):
            raise RuntimeError("disk full")

    event.listen(app.engine, "before_cursor_execute", refuse_attempt_rows)
    try:
        with pytest.raises(Exception, match="disk full"):
            deliver(app.deps, nid)
    finally:
        event.remove(app.engine, "before_cursor_execute", refuse_attempt_rows)
    assert len(push.sent) == 1
    assert not breakers.trial_in_flight("fcm") and not breakers.is_open("fcm"), "the provider answered: closed"
