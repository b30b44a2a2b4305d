"""Delivery receipts: Twilio status callbacks and SendGrid events settle notifications; opt-outs are recorded."""

from __future__ import annotations

from integrations.fake import ScriptedProvider
from tests.conftest import attempts, create_notification, create_patient, events, fake_providers, load
from worker.categories import Category, Channel
from worker.consent import current_consent
from worker.db import session_scope
from worker.delivery import deliver
from worker.receipts import apply_sendgrid_events, apply_twilio_status
from worker.states import State


def _sent_sms(app):  # type: ignore[no-untyped-def]
    nid = create_notification(app, create_patient(app, devices=()), channels=[Channel.SMS])
    assert deliver(app.deps, nid).state is State.SENT
    return nid, attempts(app, nid)[0].provider_ref


def test_twilio_delivered_callback_marks_delivered_once(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers(sms=ScriptedProvider(name="twilio", channel=Channel.SMS)))
    nid, sid = _sent_sms(app)
    assert apply_twilio_status(app.engine, app.clock, {"MessageSid": sid, "MessageStatus": "delivered"}) == "delivered"
    assert apply_twilio_status(app.engine, app.clock, {"MessageSid": sid, "MessageStatus": "delivered"}) == "ignored"
    assert load(app, nid).state == State.DELIVERED
    assert [e[1] for e in events(app, nid)].count("delivered") == 1


def test_twilio_undelivered_fails_with_the_carrier_code(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers(sms=ScriptedProvider(name="twilio", channel=Channel.SMS)))
    nid, sid = _sent_sms(app)
    form = {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30005"}
    assert apply_twilio_status(app.engine, app.clock, form) == "failed"
    assert load(app, nid).reason == "twilio receipt: undelivered (error 30005)"


def test_twilio_21610_in_a_callback_records_the_opt_out(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers(sms=ScriptedProvider(name="twilio", channel=Channel.SMS)))
    nid, sid = _sent_sms(app)
    apply_twilio_status(app.engine, app.clock, {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "21610"})
    with session_scope(app.engine) as session:
        assert current_consent(session, load(app, nid).patient_id) == {("sms", None): False}


def test_unknown_or_intermediate_callbacks_change_nothing(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers(sms=ScriptedProvider(name="twilio", channel=Channel.SMS)))
    nid, sid = _sent_sms(app)
    assert (
        apply_twilio_status(app.engine, app.clock, {"MessageSid": "SMnope", "MessageStatus": "delivered"}) == "unknown"
    )
    assert apply_twilio_status(app.engine, app.clock, {"MessageSid": sid, "MessageStatus": "sent"}) == "ignored"
    assert load(app, nid).state == State.SENT


def test_undelivered_sms_does_not_fail_a_notification_that_reached_push(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers(sms=ScriptedProvider(name="twilio", channel=Channel.SMS)))
    nid = create_notification(app, create_patient(app), category=Category.APPOINTMENT_REMINDER)
    deliver(app.deps, nid)
    sid = next(a.provider_ref for a in attempts(app, nid) if a.channel == "sms")
    assert apply_twilio_status(app.engine, app.clock, {"MessageSid": sid, "MessageStatus": "undelivered"}) == "noted"
    assert load(app, nid).state == State.SENT


def test_sendgrid_events(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers(email=ScriptedProvider(name="sendgrid", channel=Channel.EMAIL)))
    pid = create_patient(app)
    delivered = create_notification(app, pid, category=Category.ACCOUNT_NOTICE)
    bounced = create_notification(app, pid, category=Category.ACCOUNT_NOTICE)
    for nid in (delivered, bounced):
        deliver(app.deps, nid)
    counts = apply_sendgrid_events(
        app.engine,
        app.clock,
        [
            {"event": "processed", "notification_id": str(delivered), "email": "patient@example.org"},
            {"event": "delivered", "notification_id": str(delivered), "email": "patient@example.org"},
            {"event": "bounce", "notification_id": str(bounced), "reason": "550 mailbox unavailable"},
            {"event": "group_unsubscribe", "notification_id": str(delivered), "asm_group_id": 42},
            {"event": "delivered"},
        ],
    )
    assert counts == {"ignored": 2, "delivered": 1, "failed": 1, "opted_out": 1}
    assert load(app, delivered).state == State.DELIVERED
    assert load(app, bounced).state == State.FAILED and load(app, bounced).reason == "sendgrid receipt: bounce"
    with session_scope(app.engine) as session:
        assert current_consent(session, pid) == {("email", "marketing"): False}
