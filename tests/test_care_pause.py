"""A care pause at send time (portable path on SQLite, fast path on PostgreSQL), at campaign fan-out, in the
consent ledger, and its pure rules."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from sqlalchemy import select
from sqlmodel import col

from integrations.fake import ScriptedProvider
from tests.conftest import create_notification, create_patient, fake_providers, load, tick
from worker.bootstrap import App
from worker.campaigns import campaign_stats, create_campaign, fan_out, launch_campaign
from worker.care_pause import Pause, current_pause, describe, hold, lift_pause, parse_until, set_pause
from worker.care_pause.rules import TREATMENT
from worker.categories import Category, Channel
from worker.db import session_scope
from worker.delivery import deliver, pg
from worker.delivery.batch import deliver_many
from worker.delivery.send import _load_facts
from worker.errors import InvalidInput
from worker.logs import configure_logging
from worker.models import Notification
from worker.models_consent import CarePauseEvent, ConsentSource, PauseReason
from worker.states import State
from worker.surveys import assign_survey

NY = "America/New_York"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def app(request, make_app) -> App:  # type: ignore[no-untyped-def]
    """The portable path on SQLite, the one-statement fast path on PostgreSQL: the same verdicts."""
    fakes = {c.value: ScriptedProvider(name=f"fake-{c}", channel=c) for c in Channel}
    if request.param == "postgres":
        built: App = make_app(
            providers=fake_providers(**fakes), database_url=request.getfixturevalue("pg_url"), migrate=False
        )
    else:
        built = make_app(providers=fake_providers(**fakes))
    built.deps.unsubscribe_url = lambda pid: f"https://notify.example/u/{pid}"
    return built


def _pause(
    app: App,
    pid: int,
    *,
    until: str | None = "2026-03-20",
    reason: PauseReason = PauseReason.NICU_STAY,
    hold_appointments: bool = False,
) -> bool:
    _, changed = set_pause(
        app.engine,
        app.clock,
        patient_id=pid,
        reason=reason,
        until=None if until is None else parse_until(until, NY, app.clock.now()),
        hold_appointment_reminders=hold_appointments,
        source=ConsentSource.OPERATOR,
        actor="operator:nurse-1",
    )
    return changed


def _lift(app: App, pid: int) -> bool:
    return lift_pause(app.engine, app.clock, patient_id=pid, source=ConsentSource.API, actor="api:care-platform")


def _survey(app: App, pid: int, ref: str, **kw: Any) -> list[Notification]:
    assign_survey(
        app.engine, app.clock, app.settings, patient_id=pid, external_ref=ref, survey_key="postpartum-2w", **kw
    )
    with session_scope(app.engine) as session:
        rows = list(
            session.scalars(
                select(Notification)
                .where(col(Notification.patient_id) == pid, col(Notification.category) == Category.SURVEY_REMINDER)
                .order_by(col(Notification.id))
            )
        )
        session.expunge_all()
    return rows


def test_a_queued_marketing_notice_is_suppressed_at_send_time_and_care_messages_still_go(app: App) -> None:
    pid = create_patient(app)
    marketing = create_notification(app, pid, category=Category.MARKETING, channels=[Channel.PUSH])
    care = create_notification(app, pid)
    account = create_notification(app, pid, category=Category.ACCOUNT_NOTICE)
    reminder = create_notification(app, pid, category=Category.APPOINTMENT_REMINDER, channels=[Channel.PUSH])
    assert _pause(app, pid)  # queued before the pause: the send-time check catches them

    assert deliver(app.deps, marketing).state is State.SUPPRESSED
    reason = load(app, marketing).reason
    # Readable, who and until when in her own calendar; never the reason code (health information).
    assert reason == "care pause (care team) until 2026-03-20 America/New_York"
    assert "nicu" not in reason
    assert deliver(app.deps, care).state is State.SENT
    assert deliver(app.deps, account).state is State.SENT
    assert deliver(app.deps, reminder).state is State.SENT, "appointment reminders go unless the pause holds them"

    # The pause ends on 20 March at midnight in New York: no job runs, the rule simply stops applying.
    app.clock.advance(days=17, hours=9, minutes=59)  # 2026-03-20 03:59 UTC = 23:59 EDT on the 19th
    assert current_pause(app.engine, app.clock, pid) is not None
    app.clock.advance(minutes=1)
    assert current_pause(app.engine, app.clock, pid) is None
    app.clock.advance(hours=10)  # 10:00 in New York, inside the marketing window
    later = create_notification(app, pid, category=Category.MARKETING, channels=[Channel.INAPP])
    assert deliver(app.deps, later).state is State.SENT


def test_a_pause_may_hold_appointment_reminders_too(app: App) -> None:
    pid = create_patient(app)
    _pause(app, pid, until=None, reason=PauseReason.PATIENT_REQUEST, hold_appointments=True)
    reminder = create_notification(app, pid, category=Category.APPOINTMENT_REMINDER, channels=[Channel.PUSH])
    assert deliver(app.deps, reminder).state is State.SUPPRESSED
    assert load(app, reminder).reason == "care pause (patient request), no end date; appointment reminders held"


def test_a_survey_notice_waits_for_the_pause_and_a_lift_lets_it_go(app: App) -> None:
    pid = create_patient(app)
    _pause(app, pid, until="2026-03-04")
    first, second = _survey(app, pid, "sv-1", reminders=1, interval_days=5)
    assert deliver(app.deps, first.id or 0).state is State.DEFERRED
    row = load(app, first.id or 0)
    assert row.not_before == datetime(2026, 3, 4, 5, 0, tzinfo=UTC), "until the pause ends (midnight in New York)"
    assert row.reason == "care pause (care team) until 2026-03-04 America/New_York; the survey notice waits"
    assert row.attempt_count == 0, "a wait for a pause is not an attempt"
    assert tick(app) == [], "nothing is due while she is paused"

    assert _lift(app, pid)
    assert load(app, first.id or 0).not_before == app.clock.now(), "the lift brings it forward"
    assert first.id in tick(app)
    assert load(app, first.id or 0).state == State.SENT
    assert load(app, second.id or 0).state == State.PENDING, "the next reminder keeps its own time"
    assert not _lift(app, pid), "nothing to lift twice"


def test_a_deferred_survey_notice_goes_when_the_pause_ends_by_itself(app: App) -> None:
    pid = create_patient(app)
    _pause(app, pid, until="2026-03-04")
    [notice] = _survey(app, pid, "sv-2", reminders=0, interval_days=5)
    assert deliver(app.deps, notice.id or 0).state is State.DEFERRED
    app.clock.advance(days=1, hours=12)  # 2026-03-04 06:00 UTC: 01:00 in New York, the pause is over
    assert notice.id in tick(app)
    # Woken at the pause's end, checked again: now it is night in New York, so quiet hours hold it to 08:00.
    assert load(app, notice.id or 0).state == State.DEFERRED
    assert load(app, notice.id or 0).reason == "quiet hours: held until 08:00 America/New_York"
    app.clock.advance(hours=7)
    assert notice.id in tick(app)
    assert load(app, notice.id or 0).state == State.SENT


def test_a_survey_may_cancel_its_notices_while_she_is_paused(app: App) -> None:
    pid = create_patient(app)
    _pause(app, pid, until=None, reason=PauseReason.INFANT_LOSS)
    [notice] = _survey(app, pid, "sv-3", reminders=0, on_care_pause="cancel")
    assert deliver(app.deps, notice.id or 0).state is State.CANCELLED
    reason = load(app, notice.id or 0).reason
    assert reason == "care pause (care team), no end date; survey notices cancelled"
    assert "infant" not in reason and "loss" not in reason


def test_campaign_fan_out_leaves_a_paused_patient_out(app: App) -> None:
    paused = create_patient(app, ref="paused")
    lifted = create_patient(app, ref="lifted")
    ended = create_patient(app, ref="ended")
    other = create_patient(app, ref="other")
    _pause(app, paused, until=None)
    _pause(app, lifted, until=None)
    _lift(app, lifted)
    _pause(app, ended, until=(app.clock.now() + timedelta(hours=1)).isoformat())
    app.clock.advance(hours=2)
    campaign = create_campaign(
        app.engine, app.clock, name="Spring", template="class_invite", channels=["push"], created_by="marketing"
    )
    launch_campaign(app.engine, app.clock, app.settings.campaigns, campaign)
    queued: list[int] = []
    progress = fan_out(app.engine, app.clock, queued.extend, campaign, chunk_size=100)
    assert progress.finished and progress.excluded == {"care_pause": 1}
    with session_scope(app.engine) as session:
        recipients = set(
            session.scalars(select(col(Notification.patient_id)).where(col(Notification.campaign_id) == campaign))
        )
    assert recipients == {lifted, ended, other}


def test_campaign_rows_fanned_out_before_the_pause_are_suppressed_in_their_batch(app: App) -> None:
    paused, other = create_patient(app, ref="paused"), create_patient(app, ref="other")
    campaign = create_campaign(
        app.engine, app.clock, name="Spring", template="class_invite", channels=["push"], created_by="marketing"
    )
    launch_campaign(app.engine, app.clock, app.settings.campaigns, campaign)
    queued: list[int] = []
    fan_out(app.engine, app.clock, queued.extend, campaign, chunk_size=100)
    assert len(queued) == 2
    _pause(app, paused, reason=PauseReason.PREGNANCY_LOSS)
    reports = {r.notification_id: r.state for r in deliver_many(app.deps, queued)}
    with session_scope(app.engine) as session:
        by_patient = {
            pid: nid
            for nid, pid in session.execute(
                select(col(Notification.id), col(Notification.patient_id)).where(
                    col(Notification.campaign_id) == campaign
                )
            )
        }
    assert reports[by_patient[paused]] is State.SUPPRESSED and reports[by_patient[other]] is State.SENT
    top = campaign_stats(app.engine, campaign).top_reasons
    assert top == {"care pause (care team) until 2026-03-20 America/New_York": 1}, "what marketing sees"


def test_every_pause_and_lift_is_in_the_ledger_with_who_and_when(app: App) -> None:
    pid = create_patient(app)
    assert _pause(app, pid)
    assert not _pause(app, pid), "the same pause again writes nothing"
    app.clock.advance(minutes=5)
    assert _pause(app, pid, until="2026-03-27"), "a changed end date is a new entry"
    app.clock.advance(minutes=5)
    assert _lift(app, pid)
    with session_scope(app.engine) as session:
        entries = [
            (e.paused, e.reason_code, e.source, e.actor, e.at)
            for e in session.scalars(
                select(CarePauseEvent).where(col(CarePauseEvent.patient_id) == pid).order_by(col(CarePauseEvent.id))
            )
        ]
    start = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
    assert entries == [
        (True, "nicu_stay", "operator", "operator:nurse-1", start),
        (True, "nicu_stay", "operator", "operator:nurse-1", start + timedelta(minutes=5)),
        (False, None, "api", "api:care-platform", start + timedelta(minutes=10)),
    ]


def test_the_reason_code_stays_out_of_the_logs(make_app, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    app = make_app(providers=fake_providers(), log_format="json", log_level="DEBUG")
    configure_logging(app.settings)
    try:
        pid = create_patient(app)
        _pause(app, pid, reason=PauseReason.PREGNANCY_LOSS)
        deliver(app.deps, create_notification(app, pid, category=Category.MARKETING, channels=[Channel.PUSH]))
        _survey(app, pid, "sv-4", reminders=0)
        tick(app)
        _lift(app, pid)
    finally:
        structlog.reset_defaults()
    captured = capsys.readouterr()
    logs = captured.err + captured.out + caplog.text
    assert "care_pause.set" in logs and "care_pause.lifted" in logs, "the structured logs were captured"
    assert "pregnancy" not in logs and "loss" not in logs


@pytest.mark.postgres
def test_the_fast_path_reads_the_same_pause_as_the_portable_path(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url=pg_url, migrate=False, providers=fake_providers())
    pid = create_patient(app)
    _pause(app, pid, hold_appointments=True)
    [survey] = _survey(app, pid, "sv-5", reminders=0, on_care_pause="cancel")
    plain = create_notification(app, pid, category=Category.MARKETING)
    never = create_notification(app, create_patient(app), category=Category.MARKETING)
    for nid in (survey.id or 0, plain, never):
        claimed, _ = pg.claim_and_read(
            app.engine, [nid], now=app.clock.now(), lease=timedelta(seconds=6), holder=app.deps.leases.holder
        )
        portable = _load_facts(app.deps, [claimed[0].row])[nid]
        assert claimed[0].pause == portable.pause
        assert claimed[0].survey_on_pause == portable.survey_on_pause
    assert portable.pause is None
    assert claimed[0].pause is None


def test_every_category_has_a_treatment_and_no_text_names_a_reason_code() -> None:
    assert set(TREATMENT) == set(Category)
    now = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
    # Only "patient request" may be named (it says who asked, nothing about her health).
    for code in set(PauseReason) - {PauseReason.PATIENT_REQUEST}:
        for until in (None, now + timedelta(days=3)):
            pause = Pause(True, code, until, True, now)
            texts = [describe(pause, NY)]
            for category in Category:
                for survey in ("defer", "cancel"):
                    verdict = hold(category, pause, now, zone=NY, expires_at=None, survey_on_pause=survey)
                    texts += [verdict.reason] if verdict else []
            for text in texts:
                assert code.value not in text and code.value.replace("_", " ") not in text
    ended = Pause(True, PauseReason.NICU_STAY, now, False, now - timedelta(days=1))
    assert hold(Category.MARKETING, ended, now, zone=NY, expires_at=None, survey_on_pause=None) is None
    lift = Pause(False, None, None, False, now)
    assert hold(Category.MARKETING, lift, now, zone=NY, expires_at=None, survey_on_pause=None) is None


def test_until_is_a_date_in_her_zone_or_an_instant_in_the_future() -> None:
    now = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
    assert parse_until("2026-12-01", "America/Chicago", now) == datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    assert parse_until("2026-12-01T15:00:00-06:00", NY, now) == datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
    for bad in ("2026-03-01", "soon", "2026-12-01T15:00:00", "3026-01-01"):
        with pytest.raises(InvalidInput) as refused:
            parse_until(bad, NY, now)
        assert refused.value.field == "until"
