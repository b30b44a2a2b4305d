"""The outbox relay: what was committed but never queued (or lost by the broker) is queued again, once."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conftest import create_patient, load
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
