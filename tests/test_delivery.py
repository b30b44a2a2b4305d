"""The send-time path on the embedded stack with scripted providers (fakes, not patches)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import attempts, create_notification, create_patient, events, fake_providers, load
from worker.categories import Category, Channel
from worker.db import session_scope
from worker.delivery import deliver
from worker.delivery.claims import claim
from worker.models import Device, Preference
from worker.states import State

RETRY = SendResult(outcome=Outcome.RETRY, error_code="UNAVAILABLE", detail="503")


def test_care_team_message_is_pushed_with_phi_free_text(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    app = make_app(providers=fake_providers(push=push))
    nid = create_notification(app, create_patient(app), context={"thread": "t-1"})
    report = deliver(app.deps, nid)
    assert report.state is State.SENT
    [message] = push.sent
    assert message.body == "You have a new message from your care team."
    row = load(app, nid)
    assert row.state == State.SENT and row.finished_at == app.clock.now() and row.reason.startswith("accepted: push")
    assert [(a.provider, a.outcome) for a in attempts(app, nid)] == [("push", "accepted")]
    assert [e[1] for e in events(app, nid)] == ["pending", "sending", "sent"]


def test_muted_channel_is_suppressed_at_send_time(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    sms = ScriptedProvider(name="sms", channel=Channel.SMS)
    app = make_app(providers=fake_providers(push=push, sms=sms))
    pid = create_patient(app)
    nid = create_notification(app, pid, category=Category.APPOINTMENT_REMINDER)
    # The patient mutes after the notification was queued: the send-time check still catches it.
    with session_scope(app.engine) as session:
        for channel in (Channel.PUSH, Channel.SMS):
            session.add(
                Preference(
                    patient_id=pid,
                    category=Category.APPOINTMENT_REMINDER,
                    channel=channel,
                    enabled=False,
                    updated_at=app.clock.now(),
                )
            )
    report = deliver(app.deps, nid)
    assert report.state is State.SUPPRESSED
    assert load(app, nid).reason == "muted by patient: appointment_reminder on push, sms"
    assert push.sent == [] and sms.sent == [] and attempts(app, nid) == []


def test_muting_one_channel_keeps_the_other(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    sms = ScriptedProvider(name="sms", channel=Channel.SMS)
    app = make_app(providers=fake_providers(push=push, sms=sms))
    pid = create_patient(app)
    nid = create_notification(app, pid, category=Category.APPOINTMENT_REMINDER)
    with session_scope(app.engine) as session:
        session.add(
            Preference(
                patient_id=pid,
                category=Category.APPOINTMENT_REMINDER,
                channel=Channel.PUSH,
                enabled=False,
                updated_at=app.clock.now(),
            )
        )
    assert deliver(app.deps, nid).state is State.SENT
    assert push.sent == [] and len(sms.sent) == 1


def test_required_account_notice_cannot_be_muted(make_app) -> None:  # type: ignore[no-untyped-def]
    email = ScriptedProvider(name="email", channel=Channel.EMAIL)
    app = make_app(providers=fake_providers(email=email))
    pid = create_patient(app)
    with session_scope(app.engine) as session:
        session.add(
            Preference(
                patient_id=pid,
                category=Category.ACCOUNT_NOTICE,
                channel=Channel.EMAIL,
                enabled=False,
                updated_at=app.clock.now(),
            )
        )
    nid = create_notification(app, pid, category=Category.ACCOUNT_NOTICE)
    assert deliver(app.deps, nid).state is State.SENT
    assert len(email.sent) == 1


def test_care_team_message_falls_back_to_sms_without_a_live_device(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    sms = ScriptedProvider(name="sms", channel=Channel.SMS)
    app = make_app(providers=fake_providers(push=push, sms=sms))
    nid = create_notification(app, create_patient(app, devices=()))
    assert deliver(app.deps, nid).state is State.SENT
    assert push.sent == [] and [m.body for m in sms.sent] == [
        "Partum Health: You have a new message from your care team."
    ]


def test_push_accepted_means_no_sms(make_app) -> None:  # type: ignore[no-untyped-def]
    sms = ScriptedProvider(name="sms", channel=Channel.SMS)
    app = make_app(providers=fake_providers(sms=sms))
    nid = create_notification(app, create_patient(app))
    assert deliver(app.deps, nid).state is State.SENT
    assert sms.sent == []


def test_no_contact_point_fails_with_a_readable_reason(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers())
    nid = create_notification(app, create_patient(app, devices=(), phone=None))
    assert deliver(app.deps, nid).state is State.FAILED
    assert load(app, nid).reason == "no reachable contact point: unreachable: no live push device, no phone number"


def test_expired_notification_is_not_sent(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    app = make_app(providers=fake_providers(push=push))
    nid = create_notification(app, create_patient(app), ttl=timedelta(minutes=5))
    app.clock.advance(minutes=6)
    assert deliver(app.deps, nid).state is State.EXPIRED
    assert push.sent == [] and load(app, nid).reason.startswith("expired at")


def test_partial_failure_retries_only_the_targets_not_yet_accepted(make_app) -> None:  # type: ignore[no-untyped-def]
    # Two devices: the first is accepted, the second gets a 503. The retry must only go to the second.
    push = ScriptedProvider(name="push", channel=Channel.PUSH, script=[SendResult(outcome=Outcome.ACCEPTED), RETRY])
    app = make_app(providers=fake_providers(push=push))
    pid = create_patient(app, devices=(("ios", "a"), ("android", "b")))
    nid = create_notification(app, pid, category=Category.APPOINTMENT_REMINDER, channels=[Channel.PUSH])
    first = deliver(app.deps, nid)
    assert first.state is State.RETRYING and first.retry_in is not None
    app.clock.advance(seconds=first.retry_in)
    assert deliver(app.deps, nid).state is State.SENT
    assert [m.address.split("-")[0] for m in push.sent] == ["a", "b", "b"]
    assert [(a.target, a.outcome) for a in attempts(app, nid)] == [
        ("device:1", "accepted"),
        ("device:2", "retry"),
        ("device:2", "accepted"),
    ]
    assert load(app, nid).reason == "accepted: push (2 targets)"


def test_retry_waits_with_backoff_honours_retry_after_then_succeeds(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(
        name="push",
        channel=Channel.PUSH,
        script=[SendResult(outcome=Outcome.RETRY, error_code="QUOTA_EXCEEDED", retry_after=60.0), RETRY],
    )
    app = make_app(providers=fake_providers(push=push), delivery={"min_backoff_seconds": 10, "max_attempts": 5})
    nid = create_notification(app, create_patient(app), channels=[Channel.PUSH])

    first = deliver(app.deps, nid)
    assert first.state is State.RETRYING and first.retry_in is not None and first.retry_in >= 60.0
    row = load(app, nid)
    assert row.not_before == app.clock.now() + timedelta(seconds=first.retry_in)
    assert "QUOTA_EXCEEDED" in row.reason
    # Not due yet: a second message for it (e.g. a duplicate) is refused by the claim.
    assert deliver(app.deps, nid).state is None

    app.clock.advance(seconds=first.retry_in)
    second = deliver(app.deps, nid)
    assert second.state is State.RETRYING and second.retry_in is not None and 10.0 <= second.retry_in <= 20.0
    app.clock.advance(seconds=second.retry_in)
    assert deliver(app.deps, nid).state is State.SENT
    assert [a.outcome for a in attempts(app, nid)] == ["retry", "retry", "accepted"]
    assert load(app, nid).attempt_count == 3


def test_retries_are_capped_then_failed_with_the_last_reason(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH, default=RETRY)
    app = make_app(providers=fake_providers(push=push), delivery={"max_attempts": 3})
    nid = create_notification(app, create_patient(app), channels=[Channel.PUSH])
    for _ in range(2):
        report = deliver(app.deps, nid)
        assert report.state is State.RETRYING and report.retry_in is not None
        app.clock.advance(seconds=report.retry_in)
    final = deliver(app.deps, nid)
    assert final.state is State.FAILED
    assert load(app, nid).reason == "gave up after 3 attempts; last: push/push: retry UNAVAILABLE (503)"
    assert len(push.sent) == 3


def test_permanent_failure_is_never_retried(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(
        name="push",
        channel=Channel.PUSH,
        default=SendResult(outcome=Outcome.FAILED, error_code="INVALID_ARGUMENT"),
    )
    app = make_app(providers=fake_providers(push=push))
    nid = create_notification(app, create_patient(app), channels=[Channel.PUSH])
    report = deliver(app.deps, nid)
    assert report.state is State.FAILED and report.retry_in is None
    assert "INVALID_ARGUMENT" in load(app, nid).reason


def test_dead_token_is_pruned_and_other_devices_still_get_it(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(
        name="push",
        channel=Channel.PUSH,
        script=[SendResult(outcome=Outcome.TOKEN_DEAD, error_code="UNREGISTERED")],
    )
    app = make_app(providers=fake_providers(push=push))
    pid = create_patient(app, devices=(("ios", "dead"), ("android", "alive")))
    nid = create_notification(app, pid)
    assert deliver(app.deps, nid).state is State.SENT
    with session_scope(app.engine) as session:
        devices = {d.token.split("-")[0]: d for d in session.scalars(select(Device))}
    assert devices["dead"].live is False and devices["dead"].dead_reason == "UNREGISTERED"
    assert devices["alive"].live is True


def test_all_tokens_dead_falls_back_to_sms(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH, default=SendResult(outcome=Outcome.TOKEN_DEAD))
    sms = ScriptedProvider(name="sms", channel=Channel.SMS)
    app = make_app(providers=fake_providers(push=push, sms=sms))
    nid = create_notification(app, create_patient(app))
    assert deliver(app.deps, nid).state is State.SENT
    assert len(sms.sent) == 1


def test_unexpected_error_hands_the_row_back_for_retry(make_app) -> None:  # type: ignore[no-untyped-def]
    class Exploding(ScriptedProvider):
        def send(self, *, message):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    app = make_app(providers=fake_providers(push=Exploding(name="push")))
    nid = create_notification(app, create_patient(app), channels=[Channel.PUSH])
    with pytest.raises(RuntimeError):
        deliver(app.deps, nid)
    row = load(app, nid)
    assert row.state == State.RETRYING and row.reason == "internal error (RuntimeError); will retry"
    assert row.lease_until is None


def test_only_one_of_two_concurrent_claims_wins(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    nid = create_notification(app, create_patient(app))
    barrier = threading.Barrier(8)
    won: list[bool] = []

    def contender() -> None:
        barrier.wait()
        won.append(claim(app.engine, app.clock, nid, lease=timedelta(minutes=5), holder="test-worker") is not None)

    threads = [threading.Thread(target=contender) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]


def test_a_dead_workers_claim_can_be_taken_over_after_its_lease(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    nid = create_notification(app, create_patient(app))
    assert claim(app.engine, app.clock, nid, lease=timedelta(minutes=5), holder="test-worker") is not None
    assert claim(app.engine, app.clock, nid, lease=timedelta(minutes=5), holder="test-worker") is None
    app.clock.advance(minutes=6)
    assert claim(app.engine, app.clock, nid, lease=timedelta(minutes=5), holder="test-worker") is not None
    assert events(app, nid)[-1] == ("sending", "sending", "lease expired; claimed again")
