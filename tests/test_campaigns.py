"""Marketing campaigns: the audience rules at fan-out (SQLite and PostgreSQL), chunked and resumable fan-out,
per-recipient quiet hours, the re-check at send time, cancel, scheduled launch and the figures."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
from sqlalchemy import func, select

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import create_patient, events, fake_providers, load
from worker.bootstrap import App
from worker.campaigns import (
    campaign_stats,
    cancel_campaign,
    create_campaign,
    fan_out,
    launch_campaign,
)
from worker.categories import Category, Channel
from worker.consent import record_consent
from worker.db import session_scope
from worker.delivery import deliver
from worker.erasure import erase_patient
from worker.errors import InvalidInput, NotFound
from worker.models import DeliveryAttempt, Notification
from worker.models_consent import ConsentSource
from worker.states import State

NOW = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)  # 13:00 in New York: inside the marketing window


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def app(request, make_app) -> App:  # type: ignore[no-untyped-def]
    """The same rules on the embedded default and on production's database."""
    fakes = {c.value: ScriptedProvider(name=f"fake-{c}", channel=c) for c in Channel}
    if request.param == "postgres":
        built: App = make_app(
            providers=fake_providers(**fakes), database_url=request.getfixturevalue("pg_url"), migrate=False
        )
    else:
        built = make_app(providers=fake_providers(**fakes))
    built.deps.unsubscribe_url = lambda pid: f"https://notify.example/u/{pid}"
    built.extras["fakes"] = fakes
    return built


def _consent(app: App, pid: int, channel: Channel, category: Category | None, granted: bool) -> None:
    with session_scope(app.engine) as session:
        record_consent(
            session,
            patient_id=pid,
            channel=channel,
            category=category,
            granted=granted,
            source=ConsentSource.API,
            actor="test",
            at=app.clock.now(),
            detail="written consent form v3" if granted else None,
        )


def _campaign(app: App, channels: Sequence[str] = ("push", "email"), **kw: Any) -> int:
    kw.setdefault("name", "Spring classes")
    kw.setdefault("template", "class_invite")
    return create_campaign(app.engine, app.clock, channels=channels, created_by="marketing", **kw)


def _launch(app: App, campaign_id: int, **kw: Any) -> None:
    launch_campaign(app.engine, app.clock, app.settings.campaigns, campaign_id, **kw)


class Queue:
    """Records what fan-out hands to the broker, batch by batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, ids: Sequence[int]) -> None:
        self.batches.append(list(ids))

    @property
    def ids(self) -> list[int]:
        return [i for batch in self.batches for i in batch]


def _messages(app: App, queue: str) -> list[dramatiq.Message[Any]]:
    """What waits on the in-memory broker's queue (``<name>.DQ``: the delayed ones)."""
    return [dramatiq.Message.decode(raw) for raw in app.broker.queues[queue].queue]  # type: ignore[attr-defined]


def _rows(app: App, campaign_id: int) -> list[Notification]:
    with session_scope(app.engine) as session:
        rows = list(
            session.scalars(
                select(Notification).where(Notification.campaign_id == campaign_id).order_by(Notification.id)  # type: ignore[arg-type]
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


def _marketing_sent(app: App, pid: int, count: int) -> None:
    """``count`` marketing messages accepted for the patient just now (as a real earlier campaign would)."""
    for _ in range(count):
        nid = app.submit(
            patient_id=pid, category=Category.MARKETING, idempotency_key=f"m-{pid}-{_}", channels=[Channel.PUSH]
        ).notification_id
        assert deliver(app.deps, nid).state is State.SENT


def test_fan_out_applies_consent_cap_reachability_erasure_and_the_audience_in_sql(app: App) -> None:
    p: dict[str, int] = {}
    p["open"] = create_patient(app, ref="open")  # push + email allowed by default (opt-out channels)
    p["push_revoked"] = create_patient(app, ref="push-revoked", email=None)
    _consent(app, p["push_revoked"], Channel.PUSH, Category.MARKETING, False)
    p["both_revoked"] = create_patient(app, ref="both-revoked")
    _consent(app, p["both_revoked"], Channel.PUSH, Category.MARKETING, False)
    _consent(app, p["both_revoked"], Channel.EMAIL, Category.MARKETING, False)
    p["regranted"] = create_patient(app, ref="regranted")  # latest entry wins
    _consent(app, p["regranted"], Channel.PUSH, Category.MARKETING, False)
    _consent(app, p["regranted"], Channel.EMAIL, Category.MARKETING, False)
    _consent(app, p["regranted"], Channel.EMAIL, Category.MARKETING, True)
    p["email_channel_off"] = create_patient(app, ref="email-off", devices=())  # channel-wide revocation
    _consent(app, p["email_channel_off"], Channel.EMAIL, None, False)
    p["unreachable"] = create_patient(app, ref="unreachable", email=None, devices=())
    p["capped"] = create_patient(app, ref="capped")
    _marketing_sent(app, p["capped"], 3)
    p["two_sent"] = create_patient(app, ref="two-sent")
    _marketing_sent(app, p["two_sent"], 2)
    p["spanish"] = create_patient(app, ref="spanish", locale="es")
    p["erased"] = create_patient(app, ref="erased")
    erase_patient(app.engine, app.clock, patient_id=p["erased"], reason="patient request")

    cid = _campaign(app, audience={"locales": ["en"]})
    _launch(app, cid)
    queue = Queue()
    progress = fan_out(app.engine, app.clock, queue, cid, chunk_size=1000)

    assert progress.finished
    got = {row.patient_id for row in _rows(app, cid)}
    assert got == {p["open"], p["regranted"], p["two_sent"]}
    assert sorted(queue.ids) == sorted(row.id for row in _rows(app, cid))
    stats = campaign_stats(app.engine, cid)
    assert stats.state == "launched" and stats.audience_size == 8 and stats.queued == 3
    assert stats.excluded == {"no_consent": 3, "unreachable": 1, "frequency_cap": 1}
    assert stats.by_state == {"pending": 3}
    row = _rows(app, cid)[0]
    assert row.category == Category.MARKETING and row.channels == ["push", "email"]
    assert row.context == {"campaign_id": cid, "template": "class_invite"}
    assert row.expires_at == NOW + timedelta(hours=48) and row.not_before is None
    assert row.idempotency_key == f"campaign:{cid}:{row.patient_id}"
    assert events(app, row.id) == [(None, "pending", f"created by campaign {cid}")]


def test_sms_campaigns_need_the_opt_in_and_a_stop_closes_the_channel(app: App) -> None:
    opted_in = create_patient(app, ref="opted-in")
    _consent(app, opted_in, Channel.SMS, Category.MARKETING, True)
    never_asked = create_patient(app, ref="never-asked")
    stopped = create_patient(app, ref="stopped")
    _consent(app, stopped, Channel.SMS, Category.MARKETING, True)
    _consent(app, stopped, Channel.SMS, None, False)  # replied STOP afterwards
    no_phone = create_patient(app, ref="no-phone", phone=None)
    _consent(app, no_phone, Channel.SMS, Category.MARKETING, True)

    cid = _campaign(app, channels=["sms"])
    _launch(app, cid)
    fan_out(app.engine, app.clock, Queue(), cid, chunk_size=1000)

    assert [row.patient_id for row in _rows(app, cid)] == [opted_in]
    assert campaign_stats(app.engine, cid).excluded == {"no_consent": 2, "unreachable": 1}
    assert never_asked and stopped


def test_delivery_sends_the_template_and_rechecks_consent_at_send_time(app: App) -> None:
    keeps = create_patient(app, ref="keeps")
    leaves = create_patient(app, ref="leaves", email=None)
    cid = _campaign(app, channels=["push", "email"], template="new_service")
    _launch(app, cid)
    queue = Queue()
    fan_out(app.engine, app.clock, queue, cid, chunk_size=1000)
    # After fan-out, before the send: she turns marketing push off in the app.
    _consent(app, leaves, Channel.PUSH, Category.MARKETING, False)
    for nid in queue.ids:
        deliver(app.deps, nid)

    rows = {row.patient_id: row for row in _rows(app, cid)}
    assert rows[keeps].state == State.SENT
    assert rows[leaves].state == State.SUPPRESSED
    assert rows[leaves].reason == "no consent: marketing on push; unreachable: no email address"
    fakes = app.extras["fakes"]
    push, email = fakes["push"].sent, fakes["email"].sent
    assert [m.title for m in push] == ["Something new at Partum Health"]
    assert email[0].promotional and "https://notify.example/u/" in email[0].body
    stats = campaign_stats(app.engine, cid)
    assert stats.by_state == {"sent": 1, "suppressed": 1}
    assert stats.accepted_by_channel == {"push": 1, "email": 1}
    assert stats.top_reasons == {"no consent: marketing on push; unreachable: no email address": 1}


def test_chunks_resume_after_a_crash_and_never_create_a_recipient_twice(app: App) -> None:
    ids = [create_patient(app, ref=f"p{i:02}", devices=()) for i in range(35)]
    cid = _campaign(app, channels=["email"])
    _launch(app, cid)
    queue = Queue()
    first = fan_out(app.engine, app.clock, queue, cid, chunk_size=10, max_chunks=2)
    assert (first.chunks, first.queued, first.finished) == (2, 20, False)
    assert campaign_stats(app.engine, cid).state == "fanning_out"
    # The process died here; the next scheduler tick (another process) resumes from the cursor.
    rest = fan_out(app.engine, app.clock, queue, cid, chunk_size=10)
    assert (rest.chunks, rest.queued, rest.finished) == (2, 15, True)
    assert sorted(row.patient_id for row in _rows(app, cid)) == ids
    assert [len(batch) for batch in queue.batches] == [10, 10, 10, 5], "one broker hand-off per chunk"
    assert fan_out(app.engine, app.clock, queue, cid, chunk_size=10).queued == 0
    assert campaign_stats(app.engine, cid).queued == 35


def test_each_recipient_waits_for_her_own_morning_and_is_left_out_if_the_window_closes_first(app: App) -> None:
    new_york = create_patient(app, ref="ny", time_zone="America/New_York")  # 13:00 there
    tokyo = create_patient(app, ref="tokyo", time_zone="Asia/Tokyo")  # 03:00 there
    cid = _campaign(app)
    _launch(app, cid)
    queue = Queue()
    fan_out(app.engine, app.clock, queue, cid, chunk_size=1000)
    rows = {row.patient_id: row for row in _rows(app, cid)}
    assert rows[new_york].not_before is None and queue.ids == [rows[new_york].id]
    assert rows[tokyo].not_before == datetime(2026, 3, 2, 23, 0, tzinfo=UTC)  # 08:00 JST; the relay queues it

    short = _campaign(app, name="Flash")
    _launch(app, short, ends_at=NOW + timedelta(hours=3))
    fan_out(app.engine, app.clock, Queue(), short, chunk_size=1000)
    assert [row.patient_id for row in _rows(app, short)] == [new_york]
    assert campaign_stats(app.engine, short).excluded == {"outside_window": 1}


def test_a_recipient_held_back_is_sent_at_her_morning_by_the_relay_in_batches(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers(), delivery={"batch_size": 2})
    for i in range(3):
        create_patient(app, ref=f"tokyo-{i}", time_zone="Asia/Tokyo")
    cid = _campaign(app)
    _launch(app, cid)
    assert app.launch_campaigns() == 3
    assert app.broker.queues[app.settings.queue_name].qsize() == 0, "nothing is due yet"
    app.clock.set(datetime(2026, 3, 2, 23, 0, tzinfo=UTC))
    assert app.relay() == 3
    messages = _messages(app, app.settings.queue_name)
    assert [(m.actor_name, m.args) for m in messages] == [("deliver_batch", ([1, 2],)), ("deliver", (3,))]


def test_cancel_settles_every_open_notification_and_stops_the_fan_out(app: App) -> None:
    for i in range(12):
        create_patient(app, ref=f"c{i:02}")
    cid = _campaign(app)
    _launch(app, cid)
    queue = Queue()
    fan_out(app.engine, app.clock, queue, cid, chunk_size=5, max_chunks=1)
    deliver(app.deps, queue.ids[0])  # one went out before the cancel
    assert cancel_campaign(app.engine, app.clock, cid) == 4
    assert cancel_campaign(app.engine, app.clock, cid) == 0, "cancel is idempotent"
    assert fan_out(app.engine, app.clock, queue, cid, chunk_size=5).queued == 0
    rows = _rows(app, cid)
    assert [row.state for row in rows] == [State.SENT] + [State.CANCELLED] * 4
    assert events(app, rows[1].id)[-1] == ("pending", "cancelled", "campaign cancelled")
    assert deliver(app.deps, queue.ids[1]).state is None, "a queued message for a cancelled row sends nothing"
    stats = campaign_stats(app.engine, cid)
    assert stats.state == "cancelled" and stats.by_state == {"sent": 1, "cancelled": 4}
    with pytest.raises(InvalidInput, match="^state: a campaign that is cancelled cannot be launched"):
        _launch(app, cid)


def test_a_notification_claimed_before_the_cancel_is_cancelled_at_send_time(app: App) -> None:
    create_patient(app, ref="late")
    cid = _campaign(app)
    _launch(app, cid)
    queue = Queue()
    fan_out(app.engine, app.clock, queue, cid, chunk_size=10)
    with session_scope(app.engine) as session:  # a worker retried it earlier: it waits in RETRYING
        row = session.get(Notification, queue.ids[0])
        assert row is not None
        row.state = State.RETRYING
    with session_scope(app.engine) as session:
        from worker.models_campaigns import Campaign

        campaign = session.get(Campaign, cid)
        assert campaign is not None
        campaign.state = "cancelled"  # the cancel committed while this row was being claimed
    report = deliver(app.deps, queue.ids[0])
    assert report.state is State.CANCELLED and report.reason == "campaign cancelled"


def test_a_scheduled_campaign_fans_out_when_its_time_comes(app: App) -> None:
    create_patient(app, ref="later")
    cid = _campaign(app)
    _launch(app, cid, launch_at=NOW + timedelta(hours=1))
    assert app.launch_campaigns() == 0 and _rows(app, cid) == []
    # Consent changes before the launch count: fan-out reads the ledger at launch time.
    app.clock.advance(timedelta(hours=1))
    assert app.launch_campaigns() == 1
    stats = campaign_stats(app.engine, cid)
    assert stats.state == "launched" and stats.fanout_started_at == NOW + timedelta(hours=1)
    assert stats.ends_at == NOW + timedelta(hours=49)


def test_a_window_that_closed_during_downtime_counts_everyone_left(app: App) -> None:
    for i in range(4):
        create_patient(app, ref=f"d{i}")
    cid = _campaign(app)
    _launch(app, cid, ends_at=NOW + timedelta(hours=2))
    fan_out(app.engine, app.clock, Queue(), cid, chunk_size=2, max_chunks=1)
    app.clock.advance(timedelta(hours=3))  # the scheduler was down until after the window closed
    fan_out(app.engine, app.clock, Queue(), cid, chunk_size=2)
    stats = campaign_stats(app.engine, cid)
    assert stats.state == "launched" and stats.queued == 2
    assert stats.audience_size == 4 and stats.excluded == {"window_closed": 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"template": "free text"}, "^template: unknown template"),
        ({"channels": []}, "^channels: name at least one channel"),
        ({"channels": ["fax"]}, "^channels: unknown channel"),
        ({"name": " "}, "^name: must be 1 to 120 characters"),
        ({"audience": {"diagnosis": "ppd"}}, "^audience.diagnosis: Extra inputs are not permitted"),
        ({"audience": {"us_states": ["New York"]}}, "^audience.us_states: Value error, US states are two-letter"),
        ({"audience": {"time_zones": ["UTC", "Mars/Olympus"]}}, "^audience.time_zones: Value error, entry 1 is not a"),
    ],
)
def test_bad_campaigns_are_refused_naming_the_field(make_app, kwargs: dict[str, Any], message: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers())
    args: dict[str, Any] = {"name": "x", "template": "news", "channels": ["push"]} | kwargs
    with pytest.raises(InvalidInput, match=message):
        create_campaign(app.engine, app.clock, created_by="m", **args)
    with session_scope(app.engine) as session:
        from worker.models_campaigns import Campaign

        assert session.scalar(select(func.count()).select_from(Campaign)) == 0, "nothing half-written"


def test_bad_launches_are_refused_naming_the_field(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers())
    cid = _campaign(app)
    with pytest.raises(InvalidInput, match="^launch_at: is in the past"):
        _launch(app, cid, launch_at=NOW - timedelta(hours=1))
    with pytest.raises(InvalidInput, match="^ends_at: must be after launch_at"):
        _launch(app, cid, ends_at=NOW - timedelta(minutes=1))
    with pytest.raises(InvalidInput, match="^ends_at: the send window may be at most 336 hours"):
        _launch(app, cid, ends_at=NOW + timedelta(days=30))
    with pytest.raises(NotFound, match="campaign 999 does not exist"):
        _launch(app, 999)
    _launch(app, cid)
    _launch(app, cid)  # a retried launch changes nothing
    assert campaign_stats(app.engine, cid).launch_at == NOW


def test_the_batch_actor_pauses_at_the_provider_rate_limit_without_burning_attempts(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="fake-push", channel=Channel.PUSH)
    app = make_app(providers=fake_providers(push=push), provider={"rate_limits_per_second": {"fake-push": 2}})
    for i in range(20):
        create_patient(app, ref=f"r{i:02}")
    cid = _campaign(app, channels=["push"])
    _launch(app, cid)
    queue = Queue()
    fan_out(app.engine, app.clock, queue, cid, chunk_size=100)
    app.actors.deliver_batch.fn(queue.ids)

    sent = len(push.sent)
    assert 2 <= sent <= 4, "two per second (a second boundary may let two more through)"
    delayed = _messages(app, f"{app.settings.queue_name}.DQ")
    assert [m.actor_name for m in delayed] == ["deliver_batch"], "the rest waits as one batch, not 17 messages"
    held = delayed[0].args[0]
    assert held == queue.ids[sent:]
    assert {(load(app, i).state, load(app, i).attempt_count) for i in held} == {(State.RETRYING, 0)}
    assert load(app, held[-1]).reason == "waiting for the provider's rate limit"
    with session_scope(app.engine) as session:
        limited = session.scalar(
            select(func.count()).select_from(DeliveryAttempt).where(DeliveryAttempt.error_code == "rate_limited")  # type: ignore[arg-type]
        )
    assert limited == 1


def test_a_failing_row_in_a_batch_is_retried_on_its_own(make_app) -> None:  # type: ignore[no-untyped-def]
    # A plain 500 (no wait named): that row backs off, the provider stays open for the rest.
    push = ScriptedProvider(
        name="fake-push",
        channel=Channel.PUSH,
        script=[SendResult(outcome=Outcome.ACCEPTED), SendResult(outcome=Outcome.RETRY, error_code="500")],
    )
    app = make_app(providers=fake_providers(push=push))
    for i in range(3):
        create_patient(app, ref=f"f{i}", email=None)
    cid = _campaign(app, channels=["push"])
    _launch(app, cid)
    queue = Queue()
    fan_out(app.engine, app.clock, queue, cid, chunk_size=100)
    app.actors.deliver_batch.fn(queue.ids)
    assert [load(app, i).state for i in queue.ids] == [State.SENT, State.RETRYING, State.SENT]
    delayed = _messages(app, f"{app.settings.queue_name}.DQ")
    assert [(m.actor_name, m.args) for m in delayed] == [("deliver", (queue.ids[1],))]


def test_a_provider_that_names_a_wait_pauses_the_rest_of_the_batch(make_app) -> None:  # type: ignore[no-untyped-def]
    """A 429/503 with Retry-After is the provider's own cool-down: the rows behind wait that long, uncounted."""
    push = ScriptedProvider(
        name="fake-push",
        channel=Channel.PUSH,
        script=[SendResult(outcome=Outcome.ACCEPTED), SendResult(outcome=Outcome.RETRY, retry_after=30.0)],
    )
    app = make_app(providers=fake_providers(push=push))
    for i in range(3):
        create_patient(app, ref=f"f{i}", email=None)
    cid = _campaign(app, channels=["push"])
    _launch(app, cid)
    queue = Queue()
    fan_out(app.engine, app.clock, queue, cid, chunk_size=100)
    app.actors.deliver_batch.fn(queue.ids)
    rows = [load(app, i) for i in queue.ids]
    assert [r.state for r in rows] == [State.SENT, State.RETRYING, State.RETRYING]
    assert len(push.sent) == 2, "the third row never called the paused provider"
    waits = [(r.not_before - app.clock.now()).total_seconds() for r in rows[1:]]
    assert all(30.0 <= w <= 33.0 for w in waits), waits
    assert rows[2].attempt_count == 0, "a wait that called no provider is not an attempt"


@pytest.mark.postgres
def test_two_schedulers_fanning_out_one_campaign_create_each_recipient_once(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    import threading

    app = make_app(providers=fake_providers(), database_url=pg_url, migrate=False)
    patients = [create_patient(app, ref=f"pg{i:03}", devices=()) for i in range(200)]
    cid = _campaign(app, channels=["email"])
    _launch(app, cid)
    queues = [Queue(), Queue()]
    results: list[Any] = [None, None]
    start = threading.Barrier(2)

    def scheduler(index: int) -> None:
        start.wait()
        results[index] = fan_out(app.engine, app.clock, queues[index], cid, chunk_size=10)

    threads = [threading.Thread(target=scheduler, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    rows = _rows(app, cid)
    assert sorted(row.patient_id for row in rows) == patients
    assert sorted(queues[0].ids + queues[1].ids) == sorted(row.id for row in rows), "each row queued once"
    assert results[0].created + results[1].created == 200
    stats = campaign_stats(app.engine, cid)
    assert stats.state == "launched" and stats.queued == 200 and stats.audience_size == 200


def test_two_rows_for_one_patient_in_a_batch_still_respect_the_cap(make_app) -> None:  # type: ignore[no-untyped-def]
    from worker.delivery import deliver_many

    app = make_app(providers=fake_providers())
    pid = create_patient(app, ref="busy", email=None)
    _marketing_sent(app, pid, 2)
    ids = [
        app.submit(
            patient_id=pid, category=Category.MARKETING, idempotency_key=f"batch-{i}", channels=[Channel.PUSH]
        ).notification_id
        for i in range(2)
    ]
    reports = deliver_many(app.deps, [*ids, 999])
    assert [r.state for r in reports] == [State.SENT, State.SUPPRESSED, None]
    assert reports[1].reason == "frequency cap: 3 marketing messages in 24 h"
