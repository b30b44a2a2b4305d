"""A delivery batch sends what a bulk-capable provider can take in one call, writes every answer down (one
attempt per recipient), and concludes each row by the same rules as one at a time."""

from __future__ import annotations

import pytest

from integrations.base import NOT_SENT, Outcome, SendResult
from integrations.fake import ScriptedBulkProvider, ScriptedProvider
from tests.conftest import attempts, create_notification, create_patient, fake_providers, load
from tests.test_campaigns import Queue, _campaign, _launch
from worker.campaigns import fan_out
from worker.categories import Category, Channel
from worker.delivery import deliver_many
from worker.delivery.ratelimit import MemoryBuckets, ProviderRateLimits
from worker.states import State


def _email_campaign(make_app, recipients: int, email: ScriptedBulkProvider, **app_kw) -> tuple[object, list[int]]:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers(email=email), signing_key="k" * 32, **app_kw)
    for i in range(recipients):
        create_patient(app, ref=f"b{i:03}", devices=(), email=f"b{i}@example.org")
    cid = _campaign(app, channels=["email"])
    _launch(app, cid)
    queue = Queue()
    fan_out(app.engine, app.clock, queue, cid, chunk_size=1000)
    return app, queue.ids


def test_a_batch_of_marketing_emails_goes_in_one_call_with_one_attempt_each(make_app) -> None:  # type: ignore[no-untyped-def]
    email = ScriptedBulkProvider(name="sendgrid", channel=Channel.EMAIL)
    app, ids = _email_campaign(make_app, 20, email)
    reports = deliver_many(app.deps, ids)  # type: ignore[attr-defined]
    assert [r.state for r in reports] == [State.SENT] * 20
    assert len(email.batches) == 1 and len(email.batches[0]) == 20
    unsubscribe = {m.data["unsubscribe_url"] for m in email.batches[0]}
    assert len(unsubscribe) == 20, "each recipient her own signed unsubscribe link"
    assert all([a.outcome for a in attempts(app, nid)] == ["accepted"] for nid in ids)


def test_a_whole_call_refused_with_a_wait_pauses_the_provider_and_counts_nothing_unsent(make_app) -> None:  # type: ignore[no-untyped-def]
    wait = SendResult(outcome=Outcome.RETRY, error_code="429", retry_after=30.0)
    email = ScriptedBulkProvider(
        name="sendgrid",
        channel=Channel.EMAIL,
        refuse_batches=[wait],
    )
    app, ids = _email_campaign(make_app, 5, email)
    reports = deliver_many(app.deps, ids)  # type: ignore[attr-defined]
    assert {r.state for r in reports} == {State.RETRYING}
    assert all(30.0 <= (r.retry_in or 0) <= 31.0 for r in reports), "the provider's wait, honoured"
    assert app.deps.breakers.reopens_in("sendgrid") == pytest.approx(30.0)  # type: ignore[attr-defined]
    app.clock.advance(seconds=31)  # type: ignore[attr-defined]
    reports = deliver_many(app.deps, ids)  # type: ignore[attr-defined]
    assert [r.state for r in reports] == [State.SENT] * 5
    assert len(email.batches) == 2


def test_a_rate_limit_holds_back_what_it_cannot_grant_uncounted(make_app) -> None:  # type: ignore[no-untyped-def]
    email = ScriptedBulkProvider(name="sendgrid", channel=Channel.EMAIL)
    app, ids = _email_campaign(make_app, 10, email)
    app.deps.rate_limits = ProviderRateLimits(MemoryBuckets(), app.clock, {"sendgrid": 6}, namespace="t")  # type: ignore[attr-defined]
    reports = deliver_many(app.deps, ids)  # type: ignore[attr-defined]
    assert [r.state for r in reports] == [State.SENT] * 6 + [State.RETRYING] * 4
    assert len(email.batches[0]) == 6, "one call for what the bucket granted"
    held = [load(app, nid) for nid in ids[6:]]
    assert all(row.attempt_count == 0 for row in held), "held back by our own limit: not an attempt"
    assert all(attempts(app, row.id)[-1].error_code == "rate_limited" for row in held)


def test_answers_the_call_never_sent_are_not_attempts(make_app) -> None:  # type: ignore[no-untyped-def]
    down = SendResult(outcome=Outcome.RETRY, error_code="503", retry_after=5.0)
    unsent = SendResult(outcome=Outcome.RETRY, error_code=NOT_SENT, retry_after=5.0)
    email = ScriptedBulkProvider(name="sendgrid", channel=Channel.EMAIL, script=[down, down, unsent, unsent])
    app, ids = _email_campaign(make_app, 4, email)
    deliver_many(app.deps, ids)  # type: ignore[attr-defined]
    rows = [load(app, nid) for nid in ids]
    assert [r.state for r in rows] == [State.RETRYING] * 4
    assert [r.attempt_count for r in rows] == [1, 1, 0, 0]


def test_fallback_rows_and_non_bulk_channels_go_one_by_one(make_app) -> None:  # type: ignore[no-untyped-def]
    inapp = ScriptedBulkProvider(name="inapp", channel=Channel.INAPP)
    push = ScriptedProvider(name="fcm", channel=Channel.PUSH)
    app = make_app(providers=fake_providers(inapp=inapp, push=push))
    pid = create_patient(app)
    care = create_notification(app, pid)  # push, then SMS: a fallback chain
    notes = [create_notification(app, create_patient(app), channels=[Channel.INAPP]) for _ in range(3)]
    mixed = create_notification(app, create_patient(app), category=Category.ACCOUNT_NOTICE, channels=[Channel.PUSH])
    reports = deliver_many(app.deps, [care, *notes, mixed])
    assert all(r.state is State.SENT for r in reports)
    assert len(inapp.batches) == 1 and len(inapp.batches[0]) == 3
    assert len(push.sent) == 2


@pytest.mark.postgres
def test_on_postgresql_a_batch_is_one_claim_one_call_and_one_settle(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    from bench.roundtrips import counting_round_trips

    email = ScriptedBulkProvider(name="sendgrid", channel=Channel.EMAIL)
    app, ids = _email_campaign(make_app, 30, email, database_url=pg_url, migrate=False)
    with counting_round_trips(app.engine) as trips:  # type: ignore[attr-defined]
        trips.since_mark()
        reports = deliver_many(app.deps, ids)  # type: ignore[attr-defined]
        per_batch = trips.since_mark()
    assert [r.state for r in reports] == [State.SENT] * 30 and len(email.batches) == 1
    # claim + facts (1), the call's 30 answers in one insert (1), the settle (1); plus, on a new pooled
    # connection, SQLAlchemy's one-off look at the isolation level.
    assert per_batch <= 4, per_batch
    assert all([a.outcome for a in attempts(app, nid)] == ["accepted"] for nid in ids)
