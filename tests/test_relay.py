"""The outbox relay: what was committed but never queued (or lost by the broker) is queued again, once."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
from sqlalchemy import event

from tests.conftest import create_notification, create_patient, load
from worker.delivery import deliver
from worker.delivery.claims import claim
from worker.outbox import relay, submit
from worker.states import State

GRACE = timedelta(seconds=10)
REQUEUE = timedelta(minutes=15)


class Crash(Exception):
    pass


def _crash(_: int) -> None:
    raise Crash("process died between commit and enqueue")


def _relay(app, calls: list[int]) -> int:  # type: ignore[no-untyped-def]
    return relay(app.engine, app.clock, calls.extend, grace=GRACE, requeue_after=REQUEUE, batch_size=100)


def test_row_committed_but_never_enqueued_is_relayed_once_after_grace(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    pid = create_patient(app)
    with pytest.raises(Crash):
        submit(app.engine, app.clock, _crash, patient_id=pid, category="care_team_message", idempotency_key="k")
    row = load(app, 1)
    assert row.state == State.PENDING and row.enqueued_at is None

    calls: list[int] = []
    assert _relay(app, calls) == 0, "inside the grace period the creator may still be enqueuing"
    app.clock.advance(GRACE)
    assert _relay(app, calls) == 1 and calls == [1]
    assert _relay(app, calls) == 0, "queued once, not on every tick"
    assert deliver(app.deps, 1).state is State.SENT
    app.clock.advance(REQUEUE * 2)
    assert _relay(app, calls) == 0, "settled rows are never relayed"


def test_message_lost_by_the_broker_is_queued_again(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    pid = create_patient(app)
    lost: list[int] = []
    submit(app.engine, app.clock, lost.append, patient_id=pid, category="care_team_message", idempotency_key="k")
    calls: list[int] = []
    app.clock.advance(REQUEUE - timedelta(seconds=1))
    assert _relay(app, calls) == 0
    app.clock.advance(seconds=2)
    assert _relay(app, calls) == 1


def test_scheduled_row_is_relayed_when_due(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    pid = create_patient(app)
    calls: list[int] = []
    submit(
        app.engine,
        app.clock,
        calls.append,
        patient_id=pid,
        category="survey_reminder",
        idempotency_key="k",
        not_before=app.clock.now() + timedelta(hours=1),
    )
    assert calls == [] and _relay(app, calls) == 0
    app.clock.advance(hours=1)
    assert _relay(app, calls) == 1


def test_claim_orphaned_by_a_killed_worker_is_recovered(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    pid = create_patient(app)
    calls: list[int] = []
    submit(app.engine, app.clock, calls.append, patient_id=pid, category="care_team_message", idempotency_key="k")
    assert (
        claim(app.engine, app.clock, 1, lease=timedelta(minutes=5), holder="test-worker") is not None
    )  # then the worker is killed
    calls.clear()
    assert _relay(app, calls) == 0
    app.clock.advance(minutes=6)
    assert _relay(app, calls) == 1
    assert deliver(app.deps, 1).state is State.SENT


def test_after_a_database_outage_orphans_wait_one_lease_for_their_holders_to_beat(make_app) -> None:  # type: ignore[no-untyped-def]
    """While the database was away every heartbeat failed too: leases look expired although their workers
    live. The relay gives them one lease to beat again before it treats their rows as orphans."""
    from sqlalchemy.exc import OperationalError

    from worker.outbox import Relay

    app = make_app()
    nid = create_notification(app, create_patient(app))
    assert claim(app.engine, app.clock, nid, lease=timedelta(seconds=6), holder="live-worker") is not None
    queued: list[int] = []
    job = Relay(app.engine, app.clock, queued.extend, app.settings.outbox, lease=timedelta(seconds=6))

    def outage(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        raise sqlite3.OperationalError("the database system is shutting down")

    event.listen(app.engine, "before_cursor_execute", outage)
    try:
        app.clock.advance(seconds=30)
        with pytest.raises(OperationalError):
            job.tick()
    finally:
        event.remove(app.engine, "before_cursor_execute", outage)
    assert job.tick() == 0 and queued == [], "back, but the holder gets a lease to beat first"
    app.clock.advance(seconds=7)  # it never did: it is dead
    assert job.tick() == 1 and queued == [nid]


def test_a_broker_that_lost_its_queue_is_refilled_in_one_tick(make_app) -> None:  # type: ignore[no-untyped-def]
    """Redis restarted without persistence: every queued message is gone. The rows are queued again at the
    next tick (immediate rows at once, a retry when its time comes), not after requeue_after."""
    from worker.outbox import Relay

    app = make_app()
    pid = create_patient(app)
    lost: list[int] = []
    for i in range(3):
        submit(
            app.engine, app.clock, lost.append, patient_id=pid, category="care_team_message", idempotency_key=f"k{i}"
        )
    app.clock.advance(GRACE)
    queued: list[int] = []
    forgot = iter([False, True, False])
    job = Relay(
        app.engine,
        app.clock,
        queued.extend,
        app.settings.outbox,
        lease=timedelta(seconds=6),
        broker_lost=lambda: next(forgot),
    )
    assert job.tick() == 0, "the broker still holds them"
    assert job.tick() == 3 and sorted(queued) == [1, 2, 3]
    assert job.tick() == 0, "queued once"


def test_the_in_process_broker_reports_its_queue_lost_once_per_process(make_app) -> None:  # type: ignore[no-untyped-def]
    from worker.broker import BrokerEpoch

    app = make_app()
    epoch = BrokerEpoch(app.broker, namespace="t")
    assert epoch.lost() is True and epoch.lost() is False
