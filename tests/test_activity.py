"""A patient's activity: notifications and ledger rows interleaved newest first, paged by cursor, on SQLite and
PostgreSQL, through the service, the API and the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import create_notification, create_patient, fake_providers
from tests.test_cli import _run
from worker.activity import decode_cursor, encode_cursor, page_as_json, patient_activity
from worker.activity.cursor import Position
from worker.activity.feed import LedgerItem, NotificationItem, PauseItem, ledger_kind
from worker.care_pause import lift_pause, set_pause
from worker.categories import Category, Channel
from worker.delivery import deliver
from worker.errors import InvalidInput
from worker.models_consent import ConsentSource, PauseReason
from worker.preferences import PreferenceChange, set_preferences
from worker.web.app import create_web_app
from worker.web.auth import create_api_key


def _seed(app: Any) -> tuple[int, list[tuple[str, int]]]:
    """A patient with notifications and ledger rows at distinct and at equal instants; returns the expected feed
    (newest first) as (type, id)."""
    patient = create_patient(app, ref="pt-activity", phone="+13125550142")
    other = create_patient(app, ref="pt-other")
    create_notification(app, other)  # never in her feed
    expected: list[tuple[str, int]] = []
    first = create_notification(app, patient)
    deliver(app.deps, first)  # push refuses it for good, so the notice falls back to SMS, which accepts
    expected.append(("notification", first))
    app.clock.advance(minutes=5)
    # Same instant: two notifications and a preference change (two ledger rows).
    a = create_notification(app, patient, category=Category.APPOINTMENT_REMINDER, channels=[Channel.SMS])
    b = create_notification(app, patient, category=Category.ACCOUNT_NOTICE)
    set_preferences(
        app.engine,
        app.clock,
        patient_id=patient,
        changes=[PreferenceChange(Category.SURVEY_REMINDER, Channel.PUSH, False)],
        source=ConsentSource.APP,
        actor="api:care-platform",
    )
    # A care pause at that same instant (its own table and ids: it ranks first at equal times).
    set_pause(
        app.engine,
        app.clock,
        patient_id=patient,
        reason=PauseReason.NICU_STAY,
        until=None,
        hold_appointment_reminders=False,
        source=ConsentSource.API,
        actor="api:care-platform",
    )
    app.clock.advance(minutes=5)
    set_preferences(
        app.engine,
        app.clock,
        patient_id=patient,
        changes=[PreferenceChange(Category.MARKETING, Channel.EMAIL, False)],
        source=ConsentSource.UNSUBSCRIBE_LINK,
        actor="patient",
    )
    app.clock.advance(minutes=5)
    lift_pause(app.engine, app.clock, patient_id=patient, source=ConsentSource.API, actor="api:care-platform")
    page = patient_activity(app.engine, patient, limit=100)
    ledger = [item.id for item in page.items if isinstance(item, LedgerItem)]
    assert len(ledger) == 2
    marketing, survey = ledger
    lifted, paused = [item.id for item in page.items if isinstance(item, PauseItem)]
    expected = [
        ("care_pause", lifted),
        ("ledger", marketing),
        ("care_pause", paused),
        ("notification", b),
        ("notification", a),
        ("ledger", survey),
        *expected,
    ]
    return patient, expected


def _walk(app: Any, patient: int, limit: int) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    cursor = None
    for _ in range(50):
        page = patient_activity(app.engine, patient, cursor=cursor, limit=limit)
        seen += [(_type(i), i.id) for i in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("the cursor never ended")


def _type(item: Any) -> str:
    return "ledger" if isinstance(item, LedgerItem) else "care_pause" if isinstance(item, PauseItem) else "notification"


def _providers() -> Any:
    push = ScriptedProvider(name="fake-push", channel=Channel.PUSH, default=SendResult(outcome=Outcome.FAILED))
    return fake_providers(push=push)


def _check_feed(app: Any) -> None:
    patient, expected = _seed(app)
    assert _walk(app, patient, 100) == expected
    for limit in (1, 2, 3):  # every page boundary, including ones inside a run of equal instants
        assert _walk(app, patient, limit) == expected
    page = patient_activity(app.engine, patient, limit=100)
    first = page.items[-1]
    assert isinstance(first, NotificationItem)
    assert first.channels_tried == ["push", "sms"]
    assert [(a.provider, a.outcome) for a in first.answers] == [("fake-push", "failed"), ("fake-sms", "accepted")]
    assert first.state == "sent" and first.reason
    kinds = [item.kind for item in page.items if isinstance(item, LedgerItem)]
    assert kinds == ["consent", "preference"]
    pauses = [(p.paused, p.reason_code) for p in page.items if isinstance(p, PauseItem)]
    assert pauses == [(False, None), (True, "nicu_stay")]
    body = page_as_json(page)
    assert [i["type"] for i in body["items"]].count("care_pause") == 2


def test_feed_on_sqlite(make_app) -> None:  # type: ignore[no-untyped-def]
    _check_feed(make_app(providers=_providers()))


@pytest.mark.postgres
def test_feed_on_postgres(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    _check_feed(make_app(providers=_providers(), database_url=pg_url))


def test_cursor_is_checked() -> None:
    position = Position(at=datetime(2026, 3, 2, 18, 0, tzinfo=UTC), rank=1, id=7)
    assert decode_cursor(encode_cursor(position)) == position
    for bad in ("", "x", "bm90IGEgY3Vyc29y", encode_cursor(position)[:-3] + "!!!"):
        with pytest.raises(InvalidInput) as caught:
            decode_cursor(bad)
        assert caught.value.field == "cursor"


def test_ledger_kinds_are_generic() -> None:
    assert ledger_kind("sms", None) == "consent"
    assert ledger_kind("email", "marketing") == "consent"
    assert ledger_kind("push", "care_team_message") == "preference"
    # A row another feature writes (a care pause) is shown by its own category.
    assert ledger_kind("all", "care_pause") == "care_pause"


def test_api_pages_and_refusals(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=_providers())
    patient, expected = _seed(app)
    reader = create_api_key(app.engine, app.clock, "support", scopes="read")
    writer = create_api_key(app.engine, app.clock, "platform", scopes="notify")
    with TestClient(create_web_app(app)) as client:
        auth = {"Authorization": f"Bearer {reader}"}
        seen: list[tuple[str, int]] = []
        url = "/v1/patients/pt-activity/activity?limit=2"
        while True:
            response = client.get(url, headers=auth)
            assert response.status_code == 200, response.text
            body = response.json()
            seen += [(item["type"], item["id"]) for item in body["items"]]
            if body["next_cursor"] is None:
                break
            url = f"/v1/patients/pt-activity/activity?limit=2&cursor={body['next_cursor']}"
        assert seen == expected
        text = client.get("/v1/patients/pt-activity/activity", headers=auth).text
        assert "5550142" not in text and "@" not in text  # never contact data
        missing = client.get("/v1/patients/nobody/activity", headers=auth)
        assert missing.status_code == 404 and missing.json()["field"] == "external_ref"
        bad = client.get("/v1/patients/pt-activity/activity?cursor=garbage", headers=auth)
        assert bad.status_code == 422 and bad.json()["field"] == "cursor"
        big = client.get("/v1/patients/pt-activity/activity?limit=1000", headers=auth)
        assert big.status_code == 422 and big.json()["field"] == "limit"
        refused = client.get("/v1/patients/pt-activity/activity", headers={"Authorization": f"Bearer {writer}"})
        assert refused.status_code == 403
        assert client.get("/v1/patients/pt-activity/activity").status_code == 401


def test_cli_prints_pages(tmp_path, make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=_providers(), database_url=f"sqlite:///{tmp_path / 'cli.db'}")
    patient, expected = _seed(app)
    seen: list[tuple[str, int]] = []
    args = ["activity", "pt-activity", "--limit", "3"]
    while True:
        result = _run(args, tmp_path)
        assert result.returncode == 0, result.stderr
        body = json.loads(result.stdout)
        assert body == page_as_json(
            patient_activity(app.engine, patient, cursor=args[-1] if "--cursor" in args else None, limit=3)
        )
        seen += [(item["type"], item["id"]) for item in body["items"]]
        if body["next_cursor"] is None:
            break
        args = ["activity", "pt-activity", "--limit", "3", "--cursor", body["next_cursor"]]
    assert seen == expected
    missing = _run(["activity", "nobody"], tmp_path)
    assert missing.returncode == 1 and "no patient" in missing.stderr
    bad = _run(["activity", "pt-activity", "--cursor", "garbage"], tmp_path)
    assert bad.returncode == 2 and "cursor" in bad.stderr
