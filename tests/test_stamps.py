"""The background "queued" stamp (``worker.outbox.stamps``): written only for rows still waiting after the hold,
never for a row a worker has claimed (it would rewrite a sent row) nor for a deferred one (its deferral cleared
``enqueued_at`` so the relay queues it when due); on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import AppFactory, create_notification, create_patient, fake_providers, load, tick
from worker.categories import Category, Channel
from worker.delivery import deliver
from worker.outbox.stamps import EnqueueStamps
from worker.states import State


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request: pytest.FixtureRequest, make_app: AppFactory):  # type: ignore[no-untyped-def]
    if request.param == "postgresql":
        app = make_app(database_url=request.getfixturevalue("pg_url"), migrate=False, providers=fake_providers())
    else:
        app = make_app(providers=fake_providers())
    app.stamps.close()  # the app's own stamps thread: replaced by one these tests drive by hand
    app.stamps = EnqueueStamps(app.engine, app.clock, flush_every=timedelta(hours=1), hold=timedelta(hours=1))
    return app


def test_a_row_still_waiting_is_stamped_and_the_relay_leaves_it_to_its_message(app) -> None:  # type: ignore[no-untyped-def]
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    assert app.stamps.flush(held_only=True) == 0, "not before the hold"
    assert load(app, nid).enqueued_at is None
    assert app.stamps.flush() == 1
    assert load(app, nid).enqueued_at == app.clock.now()
    app.clock.advance(seconds=app.settings.outbox.grace_seconds + 1)
    assert nid not in tick(app), "queued once: the relay does not queue a stamped row again"


def test_a_claimed_row_is_not_rewritten_by_its_stamp(app) -> None:  # type: ignore[no-untyped-def]
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    assert deliver(app.deps, nid).state is State.SENT
    before = load(app, nid)
    assert app.stamps.flush() == 0, "a sent row needs no 'queued' stamp"
    after = load(app, nid)
    assert after.enqueued_at is None and after.updated_at == before.updated_at


def test_a_deferred_row_keeps_its_deferral_unstamped_and_the_relay_queues_it_when_due(app) -> None:  # type: ignore[no-untyped-def]
    pid = create_patient(app, time_zone="America/New_York")
    app.clock.set(datetime(2026, 3, 3, 1, 30, tzinfo=UTC))  # 20:30 in New York: marketing waits for the morning
    nid = create_notification(app, pid, category=Category.MARKETING, channels=[Channel.PUSH])
    assert deliver(app.deps, nid).state is State.DEFERRED
    assert app.stamps.flush() == 0
    row = load(app, nid)
    assert row.enqueued_at is None and row.not_before == datetime(2026, 3, 3, 13, 0, tzinfo=UTC)
    app.clock.set(datetime(2026, 3, 3, 13, 0, 1, tzinfo=UTC))
    assert nid in tick(app), "due: queued at the relay's next tick, not a stale-stamp wait later"


def test_no_stamp_vouches_for_a_message_the_broker_lost(
    make_app: AppFactory, pg_url: str, redis_namespace: str
) -> None:
    """Redis restarted between a row's enqueue and its stamp: the relay has already un-stamped the open rows
    (``forget_enqueued``), so a stamp written now would hide the lost message for ``requeue_after``. The stamp
    is skipped (the relay queues the row after its grace); rows queued after the loss are stamped as usual."""
    from dramatiq.brokers.redis import RedisBroker

    from tests.conftest import REDIS_URL
    from worker.broker import BrokerEpoch

    app = make_app(database_url=pg_url, migrate=False, providers=fake_providers())
    broker = RedisBroker(url=REDIS_URL, namespace=redis_namespace)  # type: ignore[no-untyped-call]
    epoch = BrokerEpoch(broker, namespace=redis_namespace)
    try:
        assert epoch.lost(), "a new marker"
        app.stamps.close()
        app.stamps = EnqueueStamps(
            app.engine, app.clock, flush_every=timedelta(hours=1), hold=timedelta(0), broker_epoch=epoch.current
        )
        pid = create_patient(app)
        before_loss = create_notification(app, pid, channels=[Channel.INAPP])
        broker.client.delete(f"{redis_namespace}:broker-epoch")  # what a restart without persistence does to it
        assert epoch.lost(), "the relay's next tick sees the loss and makes a new marker"
        assert app.stamps.flush() == 0
        assert load(app, before_loss).enqueued_at is None, "left for the relay to queue again"
        app.clock.advance(  # type: ignore[attr-defined]
            seconds=app.settings.outbox.grace_seconds + 1
        )
        assert before_loss in tick(app)
        after_loss = create_notification(app, create_patient(app), channels=[Channel.INAPP])
        assert app.stamps.flush() == 1
        assert load(app, after_loss).enqueued_at is not None
    finally:
        broker.close()


def test_a_missing_marker_read_twice_still_lets_the_stamp_through(
    make_app: AppFactory, pg_url: str, redis_namespace: str
) -> None:
    """No relay has made the marker yet (or Redis lost it and none has noticed): the relay that makes it will
    forget every stamp first, so stamping now hides nothing. An unreadable broker vouches for nothing."""
    from dramatiq.brokers.redis import RedisBroker

    from tests.conftest import REDIS_URL
    from worker.broker import BrokerEpoch

    app = make_app(database_url=pg_url, migrate=False, providers=fake_providers())
    broker = RedisBroker(url=REDIS_URL, namespace=redis_namespace)  # type: ignore[no-untyped-call]
    epoch = BrokerEpoch(broker, namespace=redis_namespace)
    try:
        app.stamps.close()
        app.stamps = EnqueueStamps(
            app.engine, app.clock, flush_every=timedelta(hours=1), hold=timedelta(0), broker_epoch=epoch.current
        )
        nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
        assert epoch.current() is None
        assert app.stamps.flush() == 1 and load(app, nid).enqueued_at is not None
    finally:
        broker.close()

    def away() -> str | None:
        raise ConnectionError("redis is away")

    app.stamps = EnqueueStamps(app.engine, app.clock, flush_every=timedelta(hours=1), broker_epoch=away)
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    assert app.stamps.flush() == 0 and load(app, nid).enqueued_at is None


def test_a_loss_between_the_enqueue_and_the_add_is_not_missed(
    make_app: AppFactory, pg_url: str, redis_namespace: str
) -> None:
    """The epoch a row carries is read before its enqueue: a restart recovered (and a flush run) in the instant
    between the enqueue and the add does not lend the row the new epoch."""
    from dramatiq.brokers.redis import RedisBroker

    from tests.conftest import REDIS_URL
    from worker.broker import BrokerEpoch

    app = make_app(database_url=pg_url, migrate=False, providers=fake_providers())
    broker = RedisBroker(url=REDIS_URL, namespace=redis_namespace)  # type: ignore[no-untyped-call]
    epoch = BrokerEpoch(broker, namespace=redis_namespace)
    try:
        assert epoch.lost()
        app.stamps.close()
        stamps = EnqueueStamps(
            app.engine, app.clock, flush_every=timedelta(hours=1), hold=timedelta(0), broker_epoch=epoch.current
        )
        nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])  # its row, as a trigger's
        before_enqueue = stamps.epoch_before_enqueue()
        broker.client.delete(f"{redis_namespace}:broker-epoch")  # lost right after the enqueue...
        assert epoch.lost()  # ...the relay recovered...
        assert stamps.flush() == 0  # ...and a flush read the new epoch, all before the add
        stamps.add(nid, before_enqueue)
        assert stamps.flush() == 0
        assert load(app, nid).enqueued_at is None
    finally:
        broker.close()
