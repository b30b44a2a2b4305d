"""Claims live as long as their worker: the heartbeat keeps a slow send's row, a dead worker's rows come back
after one lease, a late settle by a worker that lost its claim changes nothing, and a provider answer the
database would not take is written when it is back, never sent twice."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from integrations.base import OutboundMessage, Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import attempts, create_notification, create_patient, events, fake_providers, load
from worker.categories import Channel
from worker.delivery import AnswerNotRecorded, deliver
from worker.delivery.claims import Leases, NotDue, claim
from worker.models import Notification
from worker.outbox import relay
from worker.states import State

LEASE = timedelta(seconds=6)


def _relay(app) -> list[int]:  # type: ignore[no-untyped-def]
    queued: list[int] = []
    relay(
        app.engine,
        app.clock,
        queued.extend,
        grace=timedelta(seconds=10),
        requeue_after=timedelta(minutes=15),
        batch_size=100,
    )
    return queued


class _Slow:
    """A provider that takes 10 s to answer; meanwhile the world goes on (the heartbeat beats, a relay ticks,
    another worker tries to claim), all on the test's clock."""

    name = "inapp"
    channel = Channel.INAPP

    def __init__(self, app, during) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.during = during
        self.calls = 0

    def send(self, *, message: OutboundMessage) -> SendResult:
        self.calls += 1
        for _ in range(5):
            self.app.clock.advance(seconds=2)
            self.app.deps.leases.beat()
        self.during()
        return SendResult(outcome=Outcome.ACCEPTED, provider_ref="ok")


def test_a_slow_send_keeps_its_row_while_its_worker_beats(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers())
    seen: dict[str, object] = {}

    def meanwhile() -> None:
        seen["relayed"] = _relay(app)
        seen["other"] = claim(app.engine, app.clock, 1, lease=LEASE, holder="other-worker")

    slow = _Slow(app, meanwhile)
    app.deps.providers = {**app.deps.providers, Channel.INAPP: [slow]}
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    assert deliver(app.deps, nid).state is State.SENT
    assert seen == {"relayed": [], "other": None}, "10 s into a send with a 6 s lease, nobody took the row"
    assert slow.calls == 1 and load(app, nid).claimed_by is None


def test_a_dead_workers_row_is_queued_once_after_one_lease_and_its_late_settle_is_ignored(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers())
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    dead = Leases(app.engine, app.clock, lease=LEASE, beat=timedelta(seconds=2), holder="dead-worker")
    row = claim(app.engine, app.clock, nid, lease=LEASE, holder=dead.holder)
    assert isinstance(row, Notification) and row.claimed_by == "dead-worker"
    dead.hold([nid])
    app.clock.advance(seconds=4)
    assert dead.beat() == 1
    app.clock.advance(seconds=5)  # 9 s after the claim, 5 after the last beat: still held
    assert _relay(app) == []
    app.clock.advance(seconds=2)  # the worker was killed right after its last beat
    assert _relay(app) == [nid]
    assert _relay(app) == [], "queued once per death, not on every tick"
    assert deliver(app.deps, nid).state is State.SENT
    assert ("sending", "sending", "lease expired; claimed again") in events(app, nid)
    assert dead.beat() == 0, "the dead worker's beat no longer touches a row it lost"


def test_a_heartbeat_extends_only_the_rows_this_process_still_holds(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers())
    pid = create_patient(app)
    a, b = (create_notification(app, pid, channels=[Channel.INAPP]) for _ in range(2))
    leases = app.deps.leases
    for nid in (a, b):
        claim(app.engine, app.clock, nid, lease=LEASE, holder=leases.holder)
    leases.hold([a, b])
    leases.release([b])  # b's handler failed to hand it back (say the database was away): forget it
    app.clock.advance(seconds=4)
    assert leases.beat() == 1
    app.clock.advance(seconds=3)
    assert _relay(app) == [b], "b's lease ran out; a is still held"


def test_a_message_that_arrives_early_comes_back_instead_of_being_dropped(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers())
    nid = create_notification(app, create_patient(app), not_before=app.clock.now() + timedelta(seconds=30))
    assert isinstance(claim(app.engine, app.clock, nid, lease=LEASE, holder="w"), NotDue)
    report = deliver(app.deps, nid)
    assert report.state is None and report.retry_in == pytest.approx(30)
    batch = app.actors.deliver_batch
    batch.fn([nid, nid + 1000])  # a batch hands the early row back as its own delayed message
    delayed = [m for m in app.broker.queues[f"{app.settings.queue_name}.DQ"].queue]  # type: ignore[attr-defined]
    assert any(m.actor_name == "deliver" and m.args == (nid,) for m in map(_decode, delayed))


def _decode(raw):  # type: ignore[no-untyped-def]
    from dramatiq import Message

    return Message.decode(raw) if isinstance(raw, bytes) else raw


@contextmanager
def _database_away(engine: Engine, statement_prefix: str) -> Iterator[threading.Event]:
    """Statements starting with ``statement_prefix`` fail as a lost connection does until the event is set."""
    back = threading.Event()

    def refuse(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith(statement_prefix) and not back.is_set():
            raise sqlite3.OperationalError("server closed the connection unexpectedly")

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield back
    finally:
        event.remove(engine, "before_cursor_execute", refuse)


def test_an_answer_the_database_would_not_take_is_written_later_and_never_resent(make_app) -> None:  # type: ignore[no-untyped-def]
    """The provider accepted; the commit recording it failed. The old error path sent it again."""
    inapp = ScriptedProvider(name="inapp", channel=Channel.INAPP)
    app = make_app(providers=fake_providers(inapp=inapp), delivery={"record_retry_seconds": 0})
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    leases = app.deps.leases
    with _database_away(app.engine, "INSERT INTO delivery_attempt") as back:
        with pytest.raises(AnswerNotRecorded):
            deliver(app.deps, nid)
        assert leases.parked() == 1 and leases.held() == [nid], "parked with the heartbeat, the row still held"
        assert leases.flush_parked() == 1, "still away: still parked"
        app.clock.advance(seconds=4)
        assert leases.beat() == 1
        assert _relay(app) == [] and deliver(app.deps, nid).reason is not None
        assert len(inapp.sent) == 1, "a held row is never sent again"
        back.set()
        assert leases.flush_parked() == 0 and leases.held() == []
    assert [a.outcome for a in attempts(app, nid)] == ["accepted"]
    app.clock.advance(LEASE + timedelta(seconds=1))
    assert _relay(app) == [nid]
    assert deliver(app.deps, nid).state is State.SENT
    assert len(inapp.sent) == 1, "the recorded acceptance is not sent twice"


def test_a_lost_connection_while_recording_is_retried_in_place(make_app) -> None:  # type: ignore[no-untyped-def]
    inapp = ScriptedProvider(name="inapp", channel=Channel.INAPP)
    app = make_app(providers=fake_providers(inapp=inapp))
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    with _database_away(app.engine, "INSERT INTO delivery_attempt") as back:
        threading.Timer(0.3, back.set).start()  # a backend terminated and reconnected: a blip
        assert deliver(app.deps, nid).state is State.SENT
    assert len(inapp.sent) == 1 and [a.outcome for a in attempts(app, nid)] == ["accepted"]


@pytest.mark.postgres
def test_a_claim_waits_for_a_row_lock_instead_of_skipping_the_row(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url=pg_url, migrate=False, providers=fake_providers())
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    result: list[object] = []
    with app.engine.connect() as holder:
        tx = holder.begin()
        holder.execute(text("SELECT id FROM notification WHERE id = :id FOR UPDATE"), {"id": nid})
        worker = threading.Thread(
            target=lambda: result.append(claim(app.engine, app.clock, nid, lease=LEASE, holder="w"))
        )
        worker.start()
        time.sleep(0.3)
        assert result == [], "the claim waits for the lock"
        tx.commit()
    worker.join(timeout=10)
    assert isinstance(result[0], Notification), "and then takes the row: never lost to a lock"
