"""Failover across providers of a channel, the circuit breaker, rate limits and provider-reported opt-outs."""

from __future__ import annotations

from datetime import timedelta

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import attempts, create_notification, create_patient, fake_providers, load
from worker.categories import Category, Channel
from worker.consent import current_consent
from worker.db import session_scope
from worker.delivery import deliver
from worker.delivery.circuit import CircuitBreakers
from worker.delivery.ratelimit import MemoryBuckets, ProviderRateLimits
from worker.states import State

DOWN = SendResult(outcome=Outcome.RETRY, error_code="503")


def test_next_provider_takes_over_when_the_first_fails_transiently(make_app) -> None:  # type: ignore[no-untyped-def]
    primary = ScriptedProvider(name="twilio-a", channel=Channel.SMS, default=DOWN)
    backup = ScriptedProvider(name="twilio-b", channel=Channel.SMS)
    registry = fake_providers()
    registry[Channel.SMS] = [primary, backup]
    app = make_app(providers=registry)
    nid = create_notification(app, create_patient(app, devices=()))
    assert deliver(app.deps, nid).state is State.SENT
    assert [(a.provider, a.outcome) for a in attempts(app, nid)] == [("twilio-a", "retry"), ("twilio-b", "accepted")]
    assert len(backup.sent) == 1


def test_breaker_opens_after_repeated_failures_then_trial_after_cooldown(make_app) -> None:  # type: ignore[no-untyped-def]
    primary = ScriptedProvider(name="a", channel=Channel.SMS, default=DOWN)
    backup = ScriptedProvider(name="b", channel=Channel.SMS)
    registry = fake_providers()
    registry[Channel.SMS] = [primary, backup]
    app = make_app(providers=registry)
    app.deps.breakers = CircuitBreakers(app.clock, threshold=3, cooldown=timedelta(seconds=60))
    pid = create_patient(app, devices=())
    for _ in range(5):
        deliver(app.deps, create_notification(app, pid))
    assert len(primary.sent) == 3, "after 3 failures the primary is skipped, not hammered"
    assert len(backup.sent) == 5
    app.clock.advance(seconds=61)
    primary._default = SendResult(outcome=Outcome.ACCEPTED)  # noqa: SLF001 - the provider recovered
    deliver(app.deps, create_notification(app, pid))
    assert len(primary.sent) == 4 and len(backup.sent) == 5, "one trial call closes the circuit"


def test_all_providers_paused_means_retry_later_not_failure(make_app) -> None:  # type: ignore[no-untyped-def]
    only = ScriptedProvider(name="fcm", channel=Channel.PUSH, default=DOWN)
    app = make_app(providers=fake_providers(push=only))
    app.deps.breakers = CircuitBreakers(app.clock, threshold=1, cooldown=timedelta(minutes=5))
    pid = create_patient(app)
    deliver(app.deps, create_notification(app, pid, channels=[Channel.PUSH]))
    nid = create_notification(app, pid, channels=[Channel.PUSH])
    report = deliver(app.deps, nid)
    assert report.state is State.RETRYING and len(only.sent) == 1
    assert attempts(app, nid)[-1].error_code == "circuit_open"
    # It waits for the circuit's cool-down instead of burning attempts at backoff speed.
    assert report.retry_in is not None and report.retry_in >= 299


def test_push_provider_is_chosen_by_platform(make_app) -> None:  # type: ignore[no-untyped-def]
    apns = ScriptedProvider(name="apns", channel=Channel.PUSH)
    apns.platforms = frozenset({"ios"})  # type: ignore[attr-defined]
    fcm = ScriptedProvider(name="fcm", channel=Channel.PUSH)
    fcm.platforms = frozenset({"android", "web"})  # type: ignore[attr-defined]
    registry = fake_providers()
    registry[Channel.PUSH] = [apns, fcm]
    app = make_app(providers=registry)
    nid = create_notification(app, create_patient(app, devices=(("ios", "i"), ("android", "a"))))
    assert deliver(app.deps, nid).state is State.SENT
    assert [m.platform for m in apns.sent] == ["ios"] and [m.platform for m in fcm.sent] == ["android"]


def test_rate_limited_send_waits_instead_of_tripping_the_quota(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="fcm", channel=Channel.PUSH)
    app = make_app(providers=fake_providers(push=push))
    app.deps.rate_limits = ProviderRateLimits(MemoryBuckets(), app.clock, {"fcm": 2}, namespace="t")
    pid = create_patient(app)
    reports = [deliver(app.deps, create_notification(app, pid, channels=[Channel.PUSH])) for _ in range(3)]
    assert [r.state for r in reports] == [State.SENT, State.SENT, State.RETRYING]
    assert len(push.sent) == 2 and reports[2].retry_in is not None
    assert load(app, 3).attempt_count == 0, "our own rate limit called no provider: not an attempt"
    app.clock.advance(seconds=0.6)  # the bucket refills at 2 a second: one token
    assert deliver(app.deps, 3).state is State.SENT


def test_provider_opt_out_is_recorded_and_stops_later_texts(make_app) -> None:  # type: ignore[no-untyped-def]
    sms = ScriptedProvider(
        name="twilio", channel=Channel.SMS, script=[SendResult(outcome=Outcome.OPTED_OUT, error_code="21610")]
    )
    app = make_app(providers=fake_providers(sms=sms))
    pid = create_patient(app, devices=())
    first = create_notification(app, pid, category=Category.APPOINTMENT_REMINDER, channels=[Channel.SMS])
    assert deliver(app.deps, first).state is State.FAILED
    with session_scope(app.engine) as session:
        assert current_consent(session, pid) == {("sms", None): False}
    second = create_notification(app, pid, category=Category.APPOINTMENT_REMINDER, channels=[Channel.SMS])
    assert deliver(app.deps, second).state is State.SUPPRESSED
    assert load(app, second).reason == "no consent: appointment_reminder on sms"
    assert len(sms.sent) == 1
