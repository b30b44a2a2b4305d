"""The scheduler's ``retention`` job, its web part: expired Idempotency-Keys and webhook receipts are deleted, in
batches (worker/retention/web_records.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from jobs.scheduler import add_jobs, purge_old_records
from tests.web.conftest import Api, add_patient
from worker.bootstrap import App
from worker.clock import FrozenClock
from worker.db import session_scope
from worker.models_api import IdempotencyRecord, WebhookReceipt
from worker.retention.web_records import purge_expired
from worker.web.app import create_web_app
from worker.web.auth import create_api_key
from worker.web.routes_webhooks import claim_receipts


def _count(app: App, model: type) -> int:
    with session_scope(app.engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _keys(api: Api, *names: str) -> None:
    for name in names:
        response = api.client.post(
            "/v1/patients",
            json={"external_ref": f"pt-{name}", "time_zone": "UTC"},
            headers={**api.auth, "Idempotency-Key": name},
        )
        assert response.status_code == 200, response.text


def test_expired_keys_and_receipts_are_deleted_and_live_ones_kept(api: Api, clock: FrozenClock) -> None:
    web = api.app.settings.web
    _keys(api, "old-1", "old-2")
    claim_receipts(api.app.engine, clock, "sendgrid", ["ev-old-1", "ev-old-2"])
    clock.advance(hours=web.idempotency_key_hours - 1)
    _keys(api, "young")
    assert purge_old_records(api.app) == 0  # nothing is old enough yet
    clock.advance(hours=1, seconds=1)  # the first two keys are a day old, the third is not
    assert purge_old_records(api.app) == 2
    assert _count(api.app, IdempotencyRecord) == 1 and _count(api.app, WebhookReceipt) == 2
    # The expired key is free again; the young one still replays.
    assert (
        "idempotent-replayed"
        not in api.client.post(
            "/v1/patients",
            json={"external_ref": "pt-new", "time_zone": "UTC"},
            headers={**api.auth, "Idempotency-Key": "old-1"},
        ).headers
    )
    replay = api.client.post(
        "/v1/patients",
        json={"external_ref": "pt-young", "time_zone": "UTC"},
        headers={**api.auth, "Idempotency-Key": "young"},
    )
    assert replay.headers["idempotent-replayed"] == "true"
    # Receipts live longer (providers retry for a day or more): gone only after their own lifetime.
    clock.advance(hours=web.webhook_receipt_hours - web.idempotency_key_hours)
    claim_receipts(api.app.engine, clock, "twilio_status", ["SM1:delivered"])
    assert purge_old_records(api.app) == 2 + 2  # both old receipts, and the two keys that expired meanwhile
    assert _count(api.app, WebhookReceipt) == 1 and _count(api.app, IdempotencyRecord) == 0
    # A receipt forgotten is a provider retry applied again: kept past the retry window, deleted after it only.
    assert claim_receipts(api.app.engine, clock, "sendgrid", ["ev-old-1"]) == ["ev-old-1"]


def test_a_backlog_is_deleted_in_small_batches_and_bounded_per_tick(make_app, clock: FrozenClock) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    claim_receipts(app.engine, clock, "sendgrid", [f"ev-{i}" for i in range(10)])
    clock.advance(hours=app.settings.web.webhook_receipt_hours)
    claim_receipts(app.engine, clock, "sendgrid", ["ev-live"])
    clock.advance(seconds=1)
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("DELETE"):
            statements.append(statement)

    event.listen(app.engine, "before_cursor_execute", count)
    try:
        first = purge_expired(app.engine, clock, app.settings.web, batch_size=3, limit=7)
    finally:
        event.remove(app.engine, "before_cursor_execute", count)
    assert first.webhook_receipts == 7 and len(statements) == 3  # 3 + 3 + 1: one short transaction each
    assert purge_expired(app.engine, clock, app.settings.web, batch_size=3, limit=7).webhook_receipts == 3
    assert purge_expired(app.engine, clock, app.settings.web, batch_size=3, limit=7).webhook_receipts == 0
    assert _count(app, WebhookReceipt) == 1  # the live one


def test_the_scheduler_runs_it(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(retention={"interval_seconds": 45})
    job = add_jobs(BackgroundScheduler(timezone="UTC"), app).get_job("retention")
    assert job is not None and job.func is purge_old_records and job.max_instances == 1
    assert job.trigger.interval == timedelta(seconds=45)


@pytest.mark.postgres
def test_retention_on_postgres(make_app, pg_url: str, clock: FrozenClock) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url=pg_url, retention={"batch_size": 2})
    with TestClient(create_web_app(app)) as client:
        api = Api(app, client, create_api_key(app.engine, clock, "care-platform"), None, None, None)  # type: ignore[arg-type]
        _keys(api, "a", "b", "c")
        add_patient(api, "pt-z")
        claim_receipts(app.engine, clock, "sendgrid", ["ev-1", "ev-2", "ev-3"])
        clock.advance(hours=app.settings.web.webhook_receipt_hours, seconds=1)
        _keys(api, "d")
        assert purge_old_records(app) == 3 + 3
        assert _count(app, IdempotencyRecord) == 1 and _count(app, WebhookReceipt) == 0
