"""Outbound webhooks end to end: real change logs -> dispatcher -> signed POSTs to a real local receiver that
verifies each with the ``standardwebhooks`` library. Retries travel in time on the injected clock; nothing sleeps
for a backoff."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import AppFactory, create_patient, fake_providers
from tests.webhook_receiver import Receiver, running_receiver
from worker.bootstrap import App
from worker.categories import Category, Channel
from worker.consent import record_consent
from worker.db import session_scope
from worker.delivery import deliver
from worker.models_consent import ConsentSource
from worker.models_outbound import WebhookDelivery, WebhookEndpoint, WebhookEvent
from worker.outbound.dispatch import current_marks, replay
from worker.outbound.endpoints import add_endpoint, list_endpoints, set_enabled
from worker.outbound.sender import backoff_seconds
from worker.preferences import PreferenceChange, set_preferences
from worker.web.metrics_collector import build_registry

PHONE = "+12125550177"
EMAIL = "someone.private@example.org"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def _app(make_app: AppFactory, **settings: Any) -> App:
    return make_app(providers=fake_providers(), **settings)


def _endpoint(app: App, receiver: Receiver, events: str = "*", **kw: Any) -> int:
    view, secret = add_endpoint(app.engine, app.clock, url=receiver.url, events=events, **kw)
    receiver.secret = secret
    return view.id


def _pump(app: App) -> int:
    """One dispatcher tick, then every endpoint's sender (what the scheduler and a worker do)."""
    assert app.outbound is not None
    created = app.dispatch_webhooks()
    for view in list_endpoints(app.engine):
        app.outbound.sender.run(view.id)
    return created


def _notify(app: App, patient_id: int, category: Category = Category.CARE_TEAM_MESSAGE, **kw: Any) -> int:
    nid = app.submit(patient_id=patient_id, category=category, idempotency_key=f"t:{patient_id}:{kw}", **kw)
    deliver(app.deps, nid.notification_id)
    return nid.notification_id


def _deliveries(app: App) -> list[Any]:
    with app.engine.connect() as conn:
        return list(conn.execute(select(WebhookDelivery.__table__).order_by(text("id"))))  # type: ignore[attr-defined]


def _endpoint_row(app: App, endpoint_id: int) -> Any:
    with session_scope(app.engine) as session:
        row = session.get(WebhookEndpoint, endpoint_id)
        assert row is not None
        session.expunge(row)
        return row


def _scrape(app: App) -> str:
    from prometheus_client import generate_latest

    return generate_latest(build_registry(app)).decode()


def test_a_sent_notice_reaches_the_receiver_signed_with_ids_and_codes_only(
    make_app: AppFactory, receiver: Receiver
) -> None:
    app = _app(make_app)
    _endpoint(app, receiver, "notification.sent,notification.delivered")
    pid = create_patient(app, ref="pt-hooks-1", phone=PHONE, email=EMAIL)
    nid = _notify(app, pid, context={"message_ref": "msg-77"})
    assert _pump(app) == 1
    [got] = receiver.accepted()
    assert receiver.refused == []
    assert got.type == "notification.sent"
    assert got.webhook_id.startswith("evt_ne_")
    assert got.data == {
        "notification_id": nid,
        "patient_ref": "pt-hooks-1",
        "category": "care_team_message",
        "state": "sent",
        "previous_state": "sending",
        "reason_code": "accepted",
        "message_id": "msg-77",
    }
    body = json.loads(got.body)
    assert set(body) == {"type", "timestamp", "data"}
    for private in (PHONE, PHONE[2:], EMAIL, "tok-ios-1", "new message"):
        assert private.lower() not in got.body.lower()
    [row] = _deliveries(app)
    assert row.state == "delivered" and row.attempts == 1 and row.last_status == 200
    # Nothing more to send: another pump sends nothing twice.
    _pump(app)
    assert len(receiver.accepted()) == 1


def test_no_endpoint_costs_nothing_and_a_new_endpoint_hears_only_what_follows(
    make_app: AppFactory, receiver: Receiver
) -> None:
    app = _app(make_app)
    pid = create_patient(app)
    for _ in range(3):
        _notify(app, pid, context={"n": _})
    assert app.dispatch_webhooks() == 0
    with app.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(WebhookEvent.__table__)) == 0  # type: ignore[attr-defined]
    assert current_marks(app.engine)["event"] > 0  # moved to the logs' ends without reading them
    _endpoint(app, receiver, "notification.sent")
    _notify(app, pid, context={"n": "after"})
    _pump(app)
    assert len(receiver.accepted()) == 1


def test_a_receiver_that_is_down_gets_everything_once_it_is_back(make_app: AppFactory, receiver: Receiver) -> None:
    app = _app(make_app)
    endpoint_id = _endpoint(app, receiver, "notification.sent")
    pid = create_patient(app)
    receiver.stop()
    for n in range(3):
        _notify(app, pid, context={"n": n})
    _pump(app)
    rows = _deliveries(app)
    assert [r.state for r in rows] == ["pending"] * 3
    assert all(r.attempts == 1 and r.last_error.startswith("connect error") for r in rows)
    assert _endpoint_row(app, endpoint_id).failing_since == app.clock.now()
    # Not retried before its backoff, however often the sender runs.
    _pump(app)
    assert all(r.attempts == 1 for r in _deliveries(app))
    app.clock.advance(timedelta(seconds=backoff_seconds(1, app.settings.webhooks)))  # type: ignore[attr-defined]
    _pump(app)
    assert all(r.attempts == 2 for r in _deliveries(app))
    receiver.start()  # back, on the same port
    app.clock.advance(timedelta(seconds=backoff_seconds(2, app.settings.webhooks)))  # type: ignore[attr-defined]
    _pump(app)
    assert len(receiver.accepted()) == 3
    assert all(r.state == "delivered" and r.attempts == 3 for r in _deliveries(app))
    endpoint = _endpoint_row(app, endpoint_id)
    assert endpoint.failing_since is None and endpoint.enabled


def test_500s_are_retried_with_exponential_backoff_then_delivered(make_app: AppFactory, receiver: Receiver) -> None:
    app = _app(make_app)
    _endpoint(app, receiver, "notification.sent")
    receiver.answer = lambda n: 500 if n <= 3 else 204
    _notify(app, create_patient(app))
    waits = []
    _pump(app)
    for _ in range(3):
        [row] = _deliveries(app)
        waits.append((row.next_attempt_at - app.clock.now()).total_seconds())  # type: ignore[attr-defined]
        app.clock.advance(row.next_attempt_at - app.clock.now())  # type: ignore[attr-defined]
        _pump(app)
    assert waits == [5.0, 10.0, 20.0]
    [row] = _deliveries(app)
    assert row.state == "delivered" and row.attempts == 4 and row.last_status == 204
    assert [r.status for r in receiver.received] == [500, 500, 500, 204]
    assert len(set(r.webhook_id for r in receiver.received)) == 1  # the same webhook-id every time


def test_a_slow_receiver_times_out_is_retried_and_sees_the_same_id_again(
    make_app: AppFactory, receiver: Receiver
) -> None:
    app = _app(make_app, webhooks={"timeout_seconds": 0.2})
    _endpoint(app, receiver, "notification.sent")
    receiver.delay = 0.6  # answers 200, but after the sender gave up waiting
    _notify(app, create_patient(app))
    _pump(app)
    [row] = _deliveries(app)
    assert row.state == "pending" and row.last_error == "timeout"
    receiver.delay = 0.0
    app.clock.advance(timedelta(seconds=5))  # type: ignore[attr-defined]
    _pump(app)
    [row] = _deliveries(app)
    assert row.state == "delivered"
    # At least once: the late first answer may have been processed too; the stable id lets the receiver dedupe.
    ids = [r.webhook_id for r in receiver.received]
    assert len(set(ids)) == 1 and 1 <= len(ids) <= 2


def test_410_disables_the_endpoint_and_enable_resumes_what_was_pending(
    make_app: AppFactory, receiver: Receiver
) -> None:
    app = _app(make_app)
    endpoint_id = _endpoint(app, receiver, "notification.sent")
    receiver.status = 410
    pid = create_patient(app)
    _notify(app, pid, context={"n": 1})
    _pump(app)
    endpoint = _endpoint_row(app, endpoint_id)
    assert not endpoint.enabled and endpoint.disabled_reason == "gone"
    assert [r.state for r in _deliveries(app)] == ["pending"]
    metrics = _scrape(app)
    assert f'carenotify_webhook_endpoint_up{{endpoint="{endpoint_id}",host="127.0.0.1",reason="gone"}} 0.0' in metrics
    assert f'carenotify_webhook_deliveries_open{{endpoint="{endpoint_id}",host="127.0.0.1"}} 1.0' in metrics
    # While disabled: nothing sent, nothing new queued for it.
    _notify(app, pid, context={"n": 2})
    _pump(app)
    assert len(_deliveries(app)) == 1
    receiver.status = 200
    set_enabled(app.engine, app.clock, endpoint_id, enabled=True)
    _pump(app)
    assert len(receiver.accepted()) == 1
    # The one missed while disabled comes with a replay, with its original id.
    assert replay(app.engine, app.clock, since=app.clock.now() - timedelta(hours=1)) == 2
    _pump(app)
    assert len(receiver.accepted()) == 3
    assert len(set(receiver.ids())) == 2


def test_an_endpoint_that_keeps_failing_is_disabled_after_three_days_and_operators_are_told(
    make_app: AppFactory, receiver: Receiver
) -> None:
    app = _app(make_app)
    endpoint_id = _endpoint(app, receiver, "notification.sent")
    receiver.status = 503
    _notify(app, create_patient(app))
    _pump(app)
    tries = 1
    while _endpoint_row(app, endpoint_id).enabled:
        [row] = _deliveries(app)
        app.clock.advance(max(row.next_attempt_at - app.clock.now(), timedelta(seconds=1)))  # type: ignore[attr-defined]
        _pump(app)
        tries += 1
        assert tries < 40
    endpoint = _endpoint_row(app, endpoint_id)
    assert endpoint.disabled_reason == "failing"
    assert "HTTP 503" in endpoint.disabled_detail
    # The last retry falls inside the three days; the one after it would not, so the delivery gives up there.
    assert timedelta(hours=60) <= endpoint.disabled_at - endpoint.failing_since <= timedelta(hours=72)
    assert 20 <= tries <= 32  # 5 s doubling, capped at 4 h: not a retry a minute for three days
    [row] = _deliveries(app)
    assert row.state in ("failed", "pending")
    metrics = _scrape(app)
    assert (
        f'carenotify_webhook_endpoint_up{{endpoint="{endpoint_id}",host="127.0.0.1",reason="failing"}} 0.0' in metrics
    )
    assert "carenotify_webhook_endpoint_failing_seconds" in metrics


def test_ordered_endpoint_holds_a_patients_later_events_behind_a_failing_one_but_not_other_patients(
    make_app: AppFactory, receiver: Receiver
) -> None:
    app = _app(make_app)
    _endpoint(app, receiver, "notification.sent", ordered=True)
    first, other = create_patient(app, ref="pt-a"), create_patient(app, ref="pt-b")
    a1 = _notify(app, first, context={"n": 1})
    b1 = _notify(app, other, context={"n": 1})
    a2 = _notify(app, first, context={"n": 2})
    a3 = _notify(app, first, context={"n": 3})
    failing_once = {"done": False}

    def answer(data: dict[str, Any]) -> int:
        # pt-a's first event fails once, whichever patient's event the sender happens to post first.
        if data["notification_id"] == a1 and not failing_once["done"]:
            failing_once["done"] = True
            return 500
        return 200

    receiver.answer_data = answer
    _pump(app)
    # a1 failed: pt-a's a2 and a3 wait; pt-b's went.
    got = sorted((r.data["patient_ref"], r.data["notification_id"], r.status) for r in receiver.received)
    assert got == [("pt-a", a1, 500), ("pt-b", b1, 200)]
    app.clock.advance(timedelta(seconds=5))  # type: ignore[attr-defined]
    _pump(app)
    sent_a = [r.data["notification_id"] for r in receiver.accepted() if r.data["patient_ref"] == "pt-a"]
    assert sent_a == [a1, a2, a3]


def test_unordered_endpoint_does_not_wait(make_app: AppFactory, receiver: Receiver) -> None:
    app = _app(make_app)
    _endpoint(app, receiver, "notification.sent")
    pid = create_patient(app)
    for n in range(3):
        _notify(app, pid, context={"n": n})
    receiver.answer = lambda n: 500 if n == 1 else 200
    _pump(app)
    assert len(receiver.accepted()) == 2


def test_consent_device_and_settled_states_are_events(make_app: AppFactory, receiver: Receiver) -> None:
    dead = SendResult(outcome=Outcome.TOKEN_DEAD, error_code="Unregistered")
    push = ScriptedProvider(name="fake-push", channel=Channel.PUSH, script=[dead])
    app = make_app(providers=fake_providers(push=push))
    _endpoint(app, receiver, "*", ordered=True)
    pid = create_patient(app, ref="pt-ev", phone=PHONE, email=EMAIL)
    set_preferences(
        app.engine,
        app.clock,
        patient_id=pid,
        changes=[PreferenceChange(Category.SURVEY_REMINDER, Channel.PUSH, False)],
        source=ConsentSource.APP,
        actor="api:test",
    )
    with session_scope(app.engine) as session:
        record_consent(
            session,
            patient_id=pid,
            channel=Channel.SMS,
            category=None,
            granted=False,
            source=ConsentSource.SMS_KEYWORD,
            actor="patient",
            at=app.clock.now(),
            detail="keyword STOP",
        )
    _notify(app, pid)  # push: token dead -> device pruned; then SMS is closed by STOP, email goes
    expired = app.submit(
        patient_id=pid,
        category=Category.CARE_TEAM_MESSAGE,
        idempotency_key="t:expired",
        expires_at=app.clock.now() + timedelta(minutes=1),
    ).notification_id
    app.clock.advance(timedelta(minutes=2))  # type: ignore[attr-defined]
    deliver(app.deps, expired)
    _pump(app)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in receiver.accepted():
        by_type.setdefault(r.type, []).append(r.data)
    assert by_type["device.pruned"] == [
        {
            "device_id": 1,
            "patient_ref": "pt-ev",
            "platform": "ios",
            "provider": "fake-push",
            "reason_code": "Unregistered",
        }
    ]
    consent = by_type["consent.changed"]
    assert {"channel": "sms", "category": None, "granted": False, "source": "sms_keyword",
            "reason_code": "sms_stop", "patient_ref": "pt-ev"} in consent  # fmt: skip
    assert any(c["reason_code"] == "preference_change" and c["category"] == "survey_reminder" for c in consent)
    assert by_type["notification.expired"][0]["reason_code"] == "expired_before_send"
    [failed] = by_type["notification.failed"]
    assert failed["reason_code"] == "provider_token_dead"  # the push token was dead; SMS is closed by STOP
    everything = json.dumps([r.body for r in receiver.received])
    for private in (PHONE, PHONE[2:], EMAIL, "tok-ios-1"):
        assert private not in everything
    # Events went in the order they happened.
    times = [json.loads(r.body)["timestamp"] for r in receiver.accepted()]
    assert times == sorted(times)


def test_erasure_takes_the_patients_events_and_deliveries(make_app: AppFactory, receiver: Receiver) -> None:
    from worker.erasure import erase_patient

    app = _app(make_app)
    _endpoint(app, receiver, "notification.sent")
    receiver.status = 500
    pid = create_patient(app)
    _notify(app, pid)
    _pump(app)
    assert len(_deliveries(app)) == 1
    erase_patient(app.engine, app.clock, patient_id=pid, reason="under_13")
    assert _deliveries(app) == []


def test_the_actor_sends_through_the_broker(make_app: AppFactory, receiver: Receiver) -> None:
    import dramatiq

    app = _app(make_app)
    _endpoint(app, receiver, "notification.sent")
    _notify(app, create_patient(app))
    app.dispatch_webhooks()
    worker = dramatiq.Worker(app.broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        app.broker.join(app.settings.webhooks.queue_name, timeout=10_000)  # type: ignore[attr-defined]
    finally:
        worker.stop()
    assert len(receiver.accepted()) == 1


def test_a_signature_made_with_another_secret_is_refused_by_the_receiver(
    make_app: AppFactory, receiver: Receiver
) -> None:
    app = _app(make_app)
    _endpoint(app, receiver, "notification.sent")
    secret = receiver.secret
    receiver.secret = "whsec_" + "A" * 43 + "="  # the platform holding another endpoint's secret
    _notify(app, create_patient(app))
    _pump(app)
    assert receiver.accepted() == [] and receiver.refused == ["No matching signature found"]
    assert secret is not None and secret.startswith("whsec_")


def test_endpoint_input_is_checked(make_app: AppFactory) -> None:
    from worker.errors import InvalidInput

    app = _app(make_app)
    for url, events, field in (
        ("ftp://x", "*", "url"),
        ("https://user:pw@example.org/h", "*", "url"),
        ("https://example.org/h", "notification.opened", "events"),
        ("https://example.org/h", "", "events"),
    ):
        with pytest.raises(InvalidInput) as err:
            add_endpoint(app.engine, app.clock, url=url, events=events)
        assert err.value.field == field


def test_http_client_does_not_follow_redirects(make_app: AppFactory) -> None:
    app = _app(make_app)
    assert app.outbound is not None
    assert isinstance(app.outbound.sender.client, httpx.Client)
    assert app.outbound.sender.client.follow_redirects is False


def test_a_replay_to_an_ordered_endpoint_comes_in_the_order_things_happened(
    make_app: AppFactory, receiver: Receiver
) -> None:
    app = _app(make_app)
    pid = create_patient(app, ref="pt-order")
    _notify(app, pid, context={"n": 1})  # before the endpoint existed
    app.clock.advance(timedelta(seconds=1))  # type: ignore[attr-defined]
    with session_scope(app.engine) as session:
        record_consent(
            session,
            patient_id=pid,
            channel=Channel.EMAIL,
            category=Category.MARKETING,
            granted=False,
            source=ConsentSource.UNSUBSCRIBE_LINK,
            actor="patient",
            at=app.clock.now(),
        )
    app.dispatch_webhooks()  # no endpoint: skipped
    _endpoint(app, receiver, "notification.sent,consent.changed", ordered=True)
    app.clock.advance(timedelta(seconds=1))  # type: ignore[attr-defined]
    _notify(app, pid, context={"n": 2})
    _pump(app)
    assert [r.type for r in receiver.accepted()] == ["notification.sent"]
    assert replay(app.engine, app.clock, since=app.clock.now() - timedelta(hours=1)) == 3
    _pump(app)
    replayed = receiver.accepted()[1:]
    assert [r.type for r in replayed] == ["notification.sent", "consent.changed", "notification.sent"]
    stamps = [json.loads(r.body)["timestamp"] for r in replayed]
    assert stamps == sorted(stamps)
    assert replayed[2].webhook_id == receiver.accepted()[0].webhook_id


def test_settled_deliveries_are_purged_after_the_retention_and_can_still_be_replayed(
    make_app: AppFactory, receiver: Receiver
) -> None:
    app = _app(make_app, webhooks={"retention_days": 7})
    _endpoint(app, receiver, "notification.sent")
    pid = create_patient(app)
    _notify(app, pid, context={"n": 1})
    receiver.status = 500
    _notify(app, pid, context={"n": 2})
    receiver.answer = lambda n: 200 if n == 1 else 500
    _pump(app)
    assert sorted(r.state for r in _deliveries(app)) == ["delivered", "pending"]
    app.clock.advance(timedelta(days=6))  # type: ignore[attr-defined]
    assert app.retention_job.due()["webhook_delivery"] == 0
    assert not {"webhook_delivery", "webhook_event"} & set(app.retention_job.tick())
    app.clock.advance(timedelta(days=2))  # type: ignore[attr-defined]
    assert {t: n for t, n in app.retention_job.due().items() if t.startswith("webhook_")} == {
        "webhook_delivery": 1,
        "webhook_event": 1,
        "webhook_receipt": 0,
    }, "the dry run counts what the purge deletes"
    deleted = app.retention_job.tick()  # the retention job: the delivered one and its event; the open one stays
    assert (deleted["webhook_delivery"], deleted["webhook_event"]) == (1, 1)
    assert [r.state for r in _deliveries(app)] == ["pending"]
    with app.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(WebhookEvent.__table__)) == 1  # type: ignore[attr-defined]
    receiver.answer = None
    receiver.status = 200
    assert replay(app.engine, app.clock, since=app.clock.now() - timedelta(days=30)) == 2
    _pump(app)
    assert len(set(receiver.ids())) == 2
