"""Outbound webhooks on PostgreSQL: ids committed out of order are never skipped, concurrent senders never send a
delivery twice, and an ordered endpoint keeps each patient's order while several senders run at once."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text

from tests.conftest import AppFactory, create_patient, fake_providers
from tests.webhook_receiver import Receiver, running_receiver
from worker.bootstrap import App
from worker.categories import Channel
from worker.consent import record_consent
from worker.db import make_engine, session_scope
from worker.models_consent import ConsentSource
from worker.outbound.dispatch import current_marks
from worker.outbound.endpoints import add_endpoint

pytestmark = pytest.mark.postgres


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def _app(make_app: AppFactory, pg_url: str, **webhooks: object) -> App:
    return make_app(providers=fake_providers(), database_url=pg_url, webhooks={"barrier_wait_seconds": 0, **webhooks})


def _consent(app: App, patient_id: int, n: int) -> None:
    with session_scope(app.engine) as session:
        for i in range(n):
            record_consent(
                session,
                patient_id=patient_id,
                channel=Channel.EMAIL,
                category=None,
                granted=i % 2 == 1,
                source=ConsentSource.API,
                actor="api:test",
                at=app.clock.now(),
            )


def _senders(app: App, endpoint_id: int, threads: int) -> None:
    assert app.outbound is not None
    sender = app.outbound.sender
    workers = [threading.Thread(target=sender.run, args=(endpoint_id,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)


def test_an_id_committed_after_a_higher_one_is_not_skipped(
    make_app: AppFactory, pg_url: str, receiver: Receiver
) -> None:
    app = _app(make_app, pg_url)
    view, receiver.secret = add_endpoint(app.engine, app.clock, url=receiver.url, events="consent.changed")
    pid = create_patient(app)
    slow = make_engine(pg_url)
    try:
        with slow.connect() as conn:
            # A writer draws its id first and commits last.
            conn.execute(
                text(
                    "INSERT INTO consent_event (patient_id, channel, category, granted, source, actor, at) "
                    "VALUES (:p, 'sms', NULL, false, 'sms_keyword', 'patient', now())"
                ),
                {"p": pid},
            )
            _consent(app, pid, 1)  # a higher id, committed now
            assert app.dispatch_webhooks() == 0  # the first writer is still in flight: the mark waits for it
            assert current_marks(app.engine)["consent"] == 0
            conn.commit()
        assert app.dispatch_webhooks() == 2
        app.outbound.sender.run(view.id)  # type: ignore[union-attr]
        assert sorted(r.data["source"] for r in receiver.accepted()) == ["api", "sms_keyword"]
    finally:
        slow.dispose()


def test_concurrent_senders_send_each_delivery_once(make_app: AppFactory, pg_url: str, receiver: Receiver) -> None:
    app = _app(make_app, pg_url, claim_batch_size=10)
    view, receiver.secret = add_endpoint(app.engine, app.clock, url=receiver.url, events="consent.changed")
    for _ in range(10):
        _consent(app, create_patient(app), 20)
    assert app.dispatch_webhooks() == 200
    _senders(app, view.id, 4)
    ids = receiver.ids()
    assert len(ids) == 200 and len(set(ids)) == 200


def test_an_ordered_endpoint_keeps_each_patients_order_under_concurrent_senders(
    make_app: AppFactory, pg_url: str, receiver: Receiver
) -> None:
    app = _app(make_app, pg_url, claim_batch_size=10)
    view, receiver.secret = add_endpoint(
        app.engine, app.clock, url=receiver.url, events="consent.changed", ordered=True
    )
    patients = [create_patient(app) for _ in range(5)]
    for _ in range(10):
        for pid in patients:
            _consent(app, pid, 1)
        app.clock.advance(timedelta(seconds=1))  # type: ignore[attr-defined]
    receiver.answer = lambda n: 500 if n % 7 == 0 else 200  # some fail and are retried later
    app.dispatch_webhooks()
    for _ in range(10):
        _senders(app, view.id, 4)
        app.clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
    by_patient: dict[str, list[int]] = defaultdict(list)
    for r in receiver.accepted():
        by_patient[r.data["patient_ref"]].append(int(r.webhook_id.rsplit("_", 1)[1]))
    assert sum(len(v) for v in by_patient.values()) == 50
    for ids in by_patient.values():
        assert ids == sorted(ids)
