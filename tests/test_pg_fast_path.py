"""The PostgreSQL hot path (:mod:`worker.delivery.pg`): the same facts and the same decisions as the portable
path, in a fixed, small number of round trips counted on the wire."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from bench.roundtrips import counting_round_trips
from integrations.base import OutboundMessage, Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import attempts, create_notification, create_patient, fake_providers, load
from worker.appointments import create_appointment, reschedule_appointment
from worker.caps import CAPPED_HEALTH_TEXTS, capped
from worker.categories import Category, Channel
from worker.consent import record_consent
from worker.db import run_raw, session_scope
from worker.delivery import AnswerNotRecorded, deliver, pg
from worker.delivery.claims import claim
from worker.delivery.send import NO_LONGER_HELD, _load_facts
from worker.models import Notification
from worker.models_consent import ConsentSource
from worker.outbox.stamps import EnqueueStamps
from worker.preferences import PreferenceChange, set_preferences
from worker.states import State

pytestmark = pytest.mark.postgres


def _rich_patient(app) -> int:  # type: ignore[no-untyped-def]
    """Every kind of fact the decision reads: devices (one dead), a mute, ledger entries, capped sends."""
    pid = create_patient(app, devices=(("ios", "a"), ("android", "b")))
    with session_scope(app.engine) as session:
        for channel, category, granted in (("sms", None, False), ("sms", None, True), ("email", "marketing", False)):
            record_consent(
                session,
                patient_id=pid,
                channel=Channel(channel),
                category=Category(category) if category else None,
                granted=granted,
                source=ConsentSource.APP,
                actor="test",
                at=app.clock.now(),
            )
    mute = PreferenceChange(category=Category.SURVEY_REMINDER, channel=Channel.PUSH, enabled=False)
    set_preferences(app.engine, app.clock, patient_id=pid, changes=[mute], source=ConsentSource.APP, actor="test")
    from worker.models import Device

    with session_scope(app.engine) as session:
        session.execute(update(Device).where(Device.patient_id == pid, Device.platform == "android").values(live=False))  # type: ignore[arg-type]
    for i in range(2):  # two appointment texts accepted earlier this week
        nid = create_notification(app, pid, category=Category.APPOINTMENT_REMINDER, channels=[Channel.SMS])
        assert deliver(app.deps, nid).state is State.SENT, i
        app.clock.advance(hours=25)
    return pid


def test_the_fast_path_reads_exactly_what_the_portable_path_reads(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url=pg_url, migrate=False, providers=fake_providers())
    pid = _rich_patient(app)
    appointment = create_appointment(
        app.engine,
        app.clock,
        app.settings,
        patient_id=pid,
        external_ref="ap-1",
        starts_at=app.clock.now() + timedelta(days=3),
    )
    later = app.clock.now() + timedelta(days=4)
    reschedule_appointment(app.engine, app.clock, app.settings, external_ref="ap-1", starts_at=later)
    candidates = [
        create_notification(app, pid, category=Category.APPOINTMENT_REMINDER, channels=[Channel.SMS]),
        create_notification(
            app,
            pid,
            category=Category.APPOINTMENT_REMINDER,
            context={"appointment_id": appointment, "version": 1},  # planned for the old time
        ),
        create_notification(app, pid, category=Category.SURVEY_REMINDER, context={"survey_assignment_id": 999}),
        create_notification(app, pid, category=Category.MARKETING),
        create_notification(app, pid, category=Category.CARE_TEAM_MESSAGE),
    ]
    holder = app.deps.leases.holder
    stale = []
    for nid in candidates:
        claimed, _ = pg.claim_and_read(
            app.engine, [nid], now=app.clock.now(), lease=timedelta(seconds=6), holder=holder
        )
        got = claimed[0]
        portable = _load_facts(app.deps, [got.row])[nid]
        assert got.row.state == State.SENDING and got.row.claimed_by == holder
        assert got.patient is not None and portable.patient is not None
        assert got.patient.model_dump() == portable.patient.model_dump()
        assert [d.model_dump() for d in got.devices] == [
            d.model_dump() for d in sorted(portable.devices, key=lambda d: d.id or 0)
        ]
        assert sorted((p.category, p.channel, p.enabled) for p in got.preferences) == sorted(
            (p.category, p.channel, p.enabled) for p in portable.preferences
        )
        assert got.consent == portable.consent
        # Counted only where a cap applies (a care-team notice reads no history): the same verdict either way.
        category = Category(got.row.category)
        assert capped(category, pg.counts(got, app.clock.now())) == capped(category, portable.counts), nid
        if category in (Category.MARKETING, *CAPPED_HEALTH_TEXTS):
            assert pg.counts(got, app.clock.now()) == portable.counts
        assert got.accepted_before == portable.accepted_before
        assert got.stale == portable.stale
        stale.append(got.stale)
    assert stale == [
        None,
        ("cancelled", "appointment rescheduled; this reminder was for the old time"),
        ("cancelled", "survey assignment withdrawn"),
        None,
        None,
    ]


def test_stale_reminders_are_recognised_on_the_fast_path(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url=pg_url, migrate=False, providers=fake_providers())
    pid = create_patient(app)
    create_appointment(
        app.engine,
        app.clock,
        app.settings,
        patient_id=pid,
        external_ref="ap-2",
        starts_at=app.clock.now() + timedelta(hours=3),
    )
    with session_scope(app.engine) as session:
        planned = session.scalars(select(Notification).where(Notification.patient_id == pid)).all()  # type: ignore[arg-type]
        nid, context = planned[0].id, dict(planned[0].context)
    reschedule_appointment(
        app.engine, app.clock, app.settings, external_ref="ap-2", starts_at=app.clock.now() + timedelta(hours=5)
    )
    # Pretend the old reminder escaped the reschedule's cancel (a race): send time must still catch it.
    with session_scope(app.engine) as session:
        session.execute(
            update(Notification).where(Notification.id == nid).values(state="pending", not_before=None, context=context)  # type: ignore[arg-type]
        )
    assert deliver(app.deps, nid).state is State.CANCELLED
    assert load(app, nid).reason == "appointment rescheduled; this reminder was for the old time"


def test_a_care_team_notice_takes_one_round_trip_to_submit_and_two_to_deliver(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    inapp = ScriptedProvider(name="inapp", channel=Channel.INAPP)
    app = make_app(database_url=pg_url, migrate=False, providers=fake_providers(inapp=inapp))
    pid = create_patient(app)
    app.stamps = EnqueueStamps(app.engine, app.clock, flush_every=timedelta(hours=1))  # counted apart, below
    with counting_round_trips(app.engine) as trips:
        for nid in [create_notification(app, pid, channels=[Channel.INAPP]) for _ in range(6)]:
            deliver(app.deps, nid)  # warm: psycopg prepares a statement on its 5th run (one extra round trip)
        trips.since_mark()
        ids = [create_notification(app, pid, channels=[Channel.INAPP]) for _ in range(3)]
        assert trips.since_mark() == 3, "a trigger is one statement: the row and its creation event"
        app.stamps.flush()
        assert trips.since_mark() == 1, "their 'queued' stamps, written together in the background"
        per_notice = []
        for nid in ids:
            trips.since_mark()
            assert deliver(app.deps, nid).state is State.SENT
            per_notice.append(trips.since_mark())
    assert per_notice == [2, 2, 2], per_notice  # claim + facts; the provider's answer with the settle
    assert all(len(attempts(app, nid)) == 1 for nid in ids)
    assert all(load(app, nid).reason == "accepted: inapp (1 target)" for nid in ids)


def test_a_retry_and_a_provider_wait_on_the_fast_path(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    inapp = ScriptedProvider(
        name="inapp",
        channel=Channel.INAPP,
        script=[SendResult(outcome=Outcome.RETRY, error_code="503", retry_after=7.0)],
    )
    app = make_app(database_url=pg_url, migrate=False, providers=fake_providers(inapp=inapp))
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    report = deliver(app.deps, nid)
    row = load(app, nid)
    assert report.state is State.RETRYING and row.claimed_by is None and row.lease_until is None
    assert report.retry_in is not None and 7.0 <= report.retry_in <= 7.7, "the provider's Retry-After, honoured"
    assert row.enqueued_at == row.not_before
    early = deliver(app.deps, nid)
    assert early.state is None and early.retry_in is not None and early.retry_in > 6, "an early message comes back"
    app.clock.advance(seconds=8)
    assert deliver(app.deps, nid).state is State.SENT
    assert [a.outcome for a in attempts(app, nid)] == ["retry", "accepted"]


class _During(ScriptedProvider):
    """A provider that, while it sends, lets the world go on (``during``), then answers from its script."""

    def __init__(self, during: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.during = during

    def send(self, *, message: OutboundMessage) -> SendResult:
        self.during()
        return super().send(message=message)


def _no_connections(pg_url: str, allowed: bool) -> None:
    """Open or close the test database to every connection (its open ones are ended): a database that is away."""
    url = make_url(pg_url)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (url.database,),
            )


def test_an_answer_is_written_with_the_settle_even_when_the_row_was_taken_meanwhile(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """The provider took it, but this worker's lease lapsed during the call and another worker claimed the row: the
    answer is still written (it is what the provider knows), the other worker's claim is left alone."""
    holder: dict[str, Any] = {}

    def lapse() -> None:
        app.clock.advance(seconds=7)  # longer than the lease, no heartbeat
        holder["other"] = claim(app.engine, app.clock, nid, lease=timedelta(seconds=6), holder="other-worker")

    app = make_app(
        database_url=pg_url,
        migrate=False,
        providers=fake_providers(inapp=_During(lapse, name="inapp", channel=Channel.INAPP)),
    )
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    report = deliver(app.deps, nid)
    assert report.state is None and report.reason == NO_LONGER_HELD
    assert holder["other"] is not None
    row = load(app, nid)
    assert row.state == State.SENDING and row.claimed_by == "other-worker"
    assert [a.outcome for a in attempts(app, nid)] == ["accepted"]
    app.clock.advance(seconds=7)
    assert deliver(app.deps, nid).state is State.SENT, "the next claim finds the acceptance"
    assert [a.outcome for a in attempts(app, nid)] == ["accepted"], "and sends nothing again"


def test_each_answer_is_written_before_the_next_provider_call(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """Failover: the first provider's answer is in the database before the second provider is called (the crash
    window stays the send in flight); only the last answer rides on the settle."""
    seen: list[list[str]] = []
    busy = ScriptedProvider(
        name="inapp-a", channel=Channel.INAPP, script=[SendResult(outcome=Outcome.RETRY, error_code="503")]
    )
    second = _During(
        lambda: seen.append([a.provider for a in attempts(app, nid)]), name="inapp-b", channel=Channel.INAPP
    )
    providers = fake_providers()
    providers[Channel.INAPP] = [busy, second]
    app = make_app(database_url=pg_url, migrate=False, providers=providers)
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    assert deliver(app.deps, nid).state is State.SENT
    assert seen == [["inapp-a"]], "the first answer was written before the second call"
    assert [(a.provider, a.outcome) for a in attempts(app, nid)] == [("inapp-a", "retry"), ("inapp-b", "accepted")]


def test_a_database_that_refuses_the_answer_and_settle_parks_the_answer(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """The database goes away while the provider is answering: the answer, meant to ride on the settle, is parked
    with the heartbeat, the row stays held (never sent again), and it is written once the database is back."""
    inapp = _During(lambda: _no_connections(pg_url, False), name="inapp", channel=Channel.INAPP)
    app = make_app(
        database_url=pg_url,
        migrate=False,
        providers=fake_providers(inapp=inapp),
        delivery={"record_retry_seconds": 0},
    )
    nid = create_notification(app, create_patient(app), channels=[Channel.INAPP])
    leases = app.deps.leases
    try:
        with pytest.raises(AnswerNotRecorded):
            deliver(app.deps, nid)
        assert leases.parked() == 1 and leases.held() == [nid], "parked with the heartbeat, the row still held"
        assert leases.flush_parked() == 1, "still away: still parked"
    finally:
        _no_connections(pg_url, True)
    assert leases.flush_parked() == 0 and leases.held() == []
    assert [a.outcome for a in attempts(app, nid)] == ["accepted"]
    assert load(app, nid).state == State.SENDING, "not settled: the lease runs out and the relay brings it back"
    app.clock.advance(seconds=7)
    assert deliver(app.deps, nid).state is State.SENT
    assert len(inapp.sent) == 1, "the recorded acceptance is not sent twice"


def test_one_rows_claim_is_planned_once_per_connection_and_a_batch_claims_with_the_same_facts(  # type: ignore[no-untyped-def]
    make_app, pg_url: str
) -> None:
    """Planning the claim-and-read statement costs more than running it: one row's claim has a fixed shape, so
    PostgreSQL keeps a generic plan for it once psycopg has prepared it (its 6th run on a connection) and it has
    planned it 5 times more, where the array form of a batch is planned at every run. Both read the same facts."""
    app = make_app(database_url=pg_url, migrate=False, providers=fake_providers())
    pid = _rich_patient(app)
    engine = create_engine(make_url(pg_url), poolclass=StaticPool)  # one connection: its prepared statements
    try:
        ids = [create_notification(app, pid, channels=[Channel.INAPP]) for _ in range(18)]
        singles = [
            pg.claim_and_read(engine, [nid], now=app.clock.now(), lease=timedelta(seconds=6), holder="one")[0][0]
            for nid in ids[:16]
        ]
        batch, _ = pg.claim_and_read(engine, ids[16:], now=app.clock.now(), lease=timedelta(seconds=6), holder="b")
        plans = run_raw(
            engine,
            "SELECT statement LIKE %(batch)s AS batch, generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE %(claim)s",
            {"batch": "%ANY(%", "claim": "%WITH observed AS%"},
        )
    finally:
        engine.dispose()
    one = [p for p in plans if not p["batch"]]
    assert len(one) == 1 and one[0]["generic_plans"] == 16 - 5 - 5 and one[0]["custom_plans"] == 5, plans
    for got in batch:
        assert got.devices and got.preferences and got.consent, "a batch's rows carry every fact too"
        alone = singles[0]
        assert [d.model_dump() for d in got.devices] == [d.model_dump() for d in alone.devices]
        assert got.consent == alone.consent
        assert got.patient is not None and alone.patient is not None
        assert got.patient.model_dump() == alone.patient.model_dump()


def test_finding_a_patient_by_her_reference_is_one_round_trip(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """Every API route by patient starts with this lookup: one statement in autocommit, not a transaction's three."""
    from worker.errors import NotFound
    from worker.patients import patient_id_for

    app = make_app(database_url=pg_url, migrate=False, providers=fake_providers())
    pid = create_patient(app, ref="pt-lookup")
    with counting_round_trips(app.engine) as trips:
        for _ in range(6):  # warm: psycopg prepares the statement on its 6th run
            assert patient_id_for(app.engine, "pt-lookup") == pid
        trips.since_mark()
        assert patient_id_for(app.engine, "pt-lookup") == pid
        assert trips.since_mark() == 1
        with pytest.raises(NotFound, match="no patient with that external_ref"):
            patient_id_for(app.engine, "pt-nobody")
