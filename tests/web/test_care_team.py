"""Care-team digest, read receipts and escalation through the API, on SQLite and PostgreSQL, with a real worker
draining the queue and the scheduler's job run on an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from jobs.scheduler import escalate_care_team
from tests.conftest import fake_providers
from tests.web.conftest import Api, add_patient, assert_refused, drain
from worker.categories import Category, Channel
from worker.patients import patient_id_for
from worker.web.app import create_web_app
from worker.web.auth import create_api_key

ESCALATION_SMS = "Partum Health: A message from your care team is still waiting for you in the app."


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, make_app: Any) -> Iterator[Api]:
    extra = {"database_url": request.getfixturevalue("pg_url")} if request.param == "postgres" else {}
    push = ScriptedProvider(name="fake-push", channel=Channel.PUSH)
    sms = ScriptedProvider(name="fake-sms", channel=Channel.SMS)
    email = ScriptedProvider(name="fake-email", channel=Channel.EMAIL)
    app = make_app(providers=fake_providers(push=push, sms=sms, email=email), **extra)
    key = create_api_key(app.engine, app.clock, "care-platform")
    with TestClient(create_web_app(app)) as client:
        yield Api(app=app, client=client, key=key, push=push, sms=sms, email=email)


def _patient(api: Api, ref: str, *, device: bool = True, **fields: object) -> None:
    add_patient(api, ref, email="pt@example.org", **fields)
    if device:
        response = api.client.post(
            f"/v1/patients/{ref}/devices", json={"platform": "ios", "token": f"tok-{ref}"}, headers=api.auth
        )
        assert response.status_code == 200, response.text


def _message(api: Api, ref: str, message_id: str, **extra: object) -> dict[str, Any]:
    response = api.client.post(
        "/v1/care-team-messages", json={"patient_ref": ref, "message_id": message_id, **extra}, headers=api.auth
    )
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def _status(api: Api, notification_id: int) -> dict[str, Any]:
    response = api.client.get(f"/v1/notifications/{notification_id}", headers=api.auth)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _read(api: Api, message_id: str) -> dict[str, Any]:
    response = api.client.post(f"/v1/care-team-messages/{message_id}/read", headers=api.auth)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def _escalate(api: Api) -> int:
    """The scheduler's job, then a real worker drains what it queued."""
    made = escalate_care_team(api.app)
    drain(api.app)
    return made


# --- digest -----------------------------------------------------------------------------------------------------


def test_a_burst_gets_one_notice_and_the_others_fold_into_it(api: Api) -> None:
    _patient(api, "pt-1")
    first = _message(api, "pt-1", "m-1")
    api.app.clock.advance(minutes=3)
    second = _message(api, "pt-1", "m-2")
    api.app.clock.advance(minutes=6)
    third = _message(api, "pt-1", "m-3")
    drain(api.app)

    assert [m.body for m in api.push.sent] == ["You have a new message from your care team."]
    head = _status(api, first["notification_id"])
    assert head["state"] == "sent" and head["care_team"]["folded_into"] is None
    for later in (second, third):
        assert later["created"] is True
        report = _status(api, later["notification_id"])
        assert report["state"] == "folded" and report["provider_calls"] == []
        assert report["reason"].startswith(f"folded into notification {first['notification_id']}: ")
        assert "10 min" in report["reason"] and report["finished_at"] is not None
        assert [(h["from"], h["to"]) for h in report["history"]] == [(None, "pending"), ("pending", "folded")]
        assert report["care_team"]["folded_into"] == first["notification_id"]
        assert report["care_team"]["escalation"] is None  # the head's follow-up covers it
    # A retry of a folded message finds the same notification, and still sends nothing.
    again = _message(api, "pt-1", "m-2")
    assert again == {"notification_id": second["notification_id"], "created": False}
    drain(api.app)
    assert len(api.push.sent) == 1


def test_a_message_after_the_window_notifies_again(api: Api) -> None:
    _patient(api, "pt-1")
    _message(api, "pt-1", "m-1")
    api.app.clock.advance(minutes=10, seconds=1)
    later = _message(api, "pt-1", "m-2")
    drain(api.app)
    assert len(api.push.sent) == 2 and _status(api, later["notification_id"])["state"] == "sent"


def test_a_notice_that_never_reached_her_is_not_folded_into(api: Api) -> None:
    _patient(api, "pt-1")
    refused = SendResult(outcome=Outcome.FAILED, error_code="refused", detail="refused for good")
    api.push.script([refused])
    api.sms.script([refused])
    first = _message(api, "pt-1", "m-1")
    drain(api.app)
    assert _status(api, first["notification_id"])["state"] == "failed"
    api.app.clock.advance(minutes=2)
    second = _message(api, "pt-1", "m-2")  # within the window, unread, but the first notice never reached her
    drain(api.app)
    report = _status(api, second["notification_id"])
    assert report["state"] == "sent" and report["care_team"]["folded_into"] is None
    api.app.clock.advance(minutes=2)
    third = _message(api, "pt-1", "m-3")  # the second did reach her: this one folds into it
    assert _status(api, third["notification_id"])["care_team"]["folded_into"] == second["notification_id"]


def test_another_category_or_another_patient_never_folds(api: Api) -> None:
    _patient(api, "pt-1")
    _patient(api, "pt-2")
    _message(api, "pt-1", "m-1")
    other_patient = _message(api, "pt-2", "m-2")
    reminder = api.app.submit(
        patient_id=patient_id_for(api.app.engine, "pt-1"),
        category=Category.APPOINTMENT_REMINDER,
        idempotency_key="appt-1",
        context={"message_ref": "m-3"},  # even with a message id, another category is no care-team message
    )
    drain(api.app)
    assert _status(api, other_patient["notification_id"])["state"] == "sent"
    assert _status(api, reminder.notification_id)["state"] == "sent"
    assert len(api.push.sent) == 3


def test_a_read_stops_the_folding(api: Api) -> None:
    _patient(api, "pt-1")
    first = _message(api, "pt-1", "m-1")
    drain(api.app)
    api.app.clock.advance(minutes=1)
    receipt = _read(api, "m-1")
    assert receipt["notification_id"] == first["notification_id"] and receipt["first"] is True
    api.app.clock.advance(minutes=1)
    second = _message(api, "pt-1", "m-2")  # she read the first: this one notifies
    api.app.clock.advance(minutes=1)
    third = _message(api, "pt-1", "m-3")  # ... and this one folds into the second, which she has not read
    drain(api.app)
    api.app.clock.advance(minutes=1)
    _read(api, "m-3")  # reading a folded message reads its digest: she opened the thread
    fourth = _message(api, "pt-1", "m-4")
    drain(api.app)
    assert _status(api, second["notification_id"])["state"] == "sent"
    assert _status(api, third["notification_id"])["care_team"]["folded_into"] == second["notification_id"]
    assert _status(api, fourth["notification_id"])["state"] == "sent"
    assert len(api.push.sent) == 3


def test_an_urgent_message_folded_into_a_notice_brings_its_follow_up_forward(api: Api) -> None:
    _patient(api, "pt-1")
    first = _message(api, "pt-1", "m-1")
    api.app.clock.advance(minutes=2)
    _message(api, "pt-1", "m-2", urgent=True)
    due = datetime.fromisoformat(_status(api, first["notification_id"])["care_team"]["escalate_at"])
    assert due == api.app.clock.now() + timedelta(minutes=30)


# --- read receipts ----------------------------------------------------------------------------------------------


def test_a_read_receipt_is_idempotent_and_an_unknown_message_is_a_clear_404(api: Api) -> None:
    _patient(api, "pt-1")
    notice = _message(api, "pt-1", "m-1")
    first = _read(api, "m-1")  # before the worker got to the notice: it is no longer needed
    drain(api.app)
    assert api.push.sent == []
    cancelled = _status(api, notice["notification_id"])
    assert cancelled["state"] == "cancelled"
    assert cancelled["reason"] == "read in the secure app before the notice went out"
    api.app.clock.advance(minutes=5)
    again = _read(api, "m-1")
    assert again["read_at"] == first["read_at"] and again["first"] is False
    assert first["escalation"] == "cancelled"
    refused = assert_refused(
        api.client.post("/v1/care-team-messages/no-such-message/read", headers=api.auth), 404, "message_id"
    )
    assert "message_id" in str(refused["message"])
    assert_refused(api.client.post("/v1/care-team-messages/has%20space/read", headers=api.auth), 422, "message_id")
    assert api.client.post("/v1/care-team-messages/m-1/read").status_code == 401


# --- escalation -------------------------------------------------------------------------------------------------


def test_an_unread_message_is_followed_up_once_by_sms_and_the_history_says_why(api: Api) -> None:
    _patient(api, "pt-1")
    first = _message(api, "pt-1", "m-1")
    drain(api.app)
    assert [m.channel for m in api.push.sent] == [Channel.PUSH]
    api.app.clock.advance(hours=3, minutes=59)
    assert _escalate(api) == 0
    api.app.clock.advance(minutes=1)
    assert _escalate(api) == 1
    assert [m.body for m in api.sms.sent] == [ESCALATION_SMS]
    head = _status(api, first["notification_id"])["care_team"]
    assert head["escalation"] == "escalated" and head["escalate_at"] is None
    follow_up = _status(api, head["escalation_id"])
    assert follow_up["state"] == "sent" and follow_up["category"] == "care_team_message"
    why = follow_up["history"][0]["reason"]
    assert why == (
        f"escalation of notification {first['notification_id']}: message unread 4 h after its notice; follow-up on sms"
    )
    assert head["escalation_reason"] == why
    # Never twice: later scans find nothing, and a read now cancels nothing already sent.
    api.app.clock.advance(hours=5)
    assert _escalate(api) == 0
    assert _read(api, "m-1")["escalation"] == "escalated"
    assert len(api.sms.sent) == 1


def test_an_urgent_message_is_followed_up_after_30_minutes(api: Api) -> None:
    _patient(api, "pt-1")
    first = _message(api, "pt-1", "m-1", urgent=True)
    drain(api.app)
    api.app.clock.advance(minutes=29)
    assert _escalate(api) == 0
    api.app.clock.advance(minutes=1)
    assert _escalate(api) == 1
    follow_up = _status(api, _status(api, first["notification_id"])["care_team"]["escalation_id"])
    assert "message unread 30 min after its notice (urgent)" in follow_up["history"][0]["reason"]
    assert [m.body for m in api.sms.sent] == [ESCALATION_SMS]


def test_a_read_before_the_follow_up_is_due_calls_it_off(api: Api) -> None:
    _patient(api, "pt-1")
    first = _message(api, "pt-1", "m-1")
    drain(api.app)
    api.app.clock.advance(hours=2)
    assert _read(api, "m-1")["escalation"] == "cancelled"
    api.app.clock.advance(hours=3)
    assert _escalate(api) == 0 and api.sms.sent == []
    head = _status(api, first["notification_id"])["care_team"]
    assert head["escalation"] == "cancelled" and head["escalation_reason"].startswith("read at ")


def test_quiet_hours_defer_the_follow_up_and_a_read_cancels_it_before_it_goes(api: Api) -> None:
    _patient(api, "pt-1")
    api.app.clock.set(datetime(2026, 3, 2, 23, 0, tzinfo=UTC))  # 18:00 in New York
    first = _message(api, "pt-1", "m-1")
    drain(api.app)
    api.app.clock.advance(hours=4)  # 22:00 in New York: quiet hours
    assert _escalate(api) == 1
    follow_up_id = _status(api, first["notification_id"])["care_team"]["escalation_id"]
    held = _status(api, follow_up_id)
    assert held["state"] == "deferred" and api.sms.sent == []
    assert held["reason"] == "quiet hours: held until 08:00 America/New_York"
    assert datetime.fromisoformat(held["not_before"]) == datetime(2026, 3, 3, 13, 0, tzinfo=UTC)
    api.app.clock.advance(hours=8)  # 06:00 in New York
    receipt = _read(api, "m-1")
    assert receipt["escalation"] == "cancelled" and receipt["escalation_id"] == follow_up_id
    cancelled = _status(api, follow_up_id)
    assert cancelled["state"] == "cancelled"
    assert cancelled["reason"] == "read in the secure app before the follow-up went out"
    api.app.clock.advance(hours=3)
    api.app.relay()
    drain(api.app)
    assert api.sms.sent == []


def test_quiet_hours_deferral_ends_in_the_morning(api: Api) -> None:
    _patient(api, "pt-1")
    api.app.clock.set(datetime(2026, 3, 2, 23, 0, tzinfo=UTC))
    _message(api, "pt-1", "m-1")
    drain(api.app)
    api.app.clock.advance(hours=4)
    assert _escalate(api) == 1 and api.sms.sent == []
    api.app.clock.set(datetime(2026, 3, 3, 13, 0, 1, tzinfo=UTC))  # 08:00:01 in New York
    api.app.relay()
    drain(api.app)
    assert [m.body for m in api.sms.sent] == [ESCALATION_SMS]


def test_the_next_allowed_channel_is_used_or_the_reason_there_is_none(api: Api) -> None:
    _patient(api, "pt-muted")
    mute = {"changes": [{"category": "care_team_message", "channel": "sms", "enabled": False}]}
    assert api.client.post("/v1/patients/pt-muted/preferences", json=mute, headers=api.auth).status_code == 200
    add_patient(api, "pt-push-only", phone=None)
    api.client.post("/v1/patients/pt-push-only/devices", json={"platform": "ios", "token": "t-po"}, headers=api.auth)
    muted = _message(api, "pt-muted", "m-1")
    lonely = _message(api, "pt-push-only", "m-2")
    drain(api.app)
    api.app.clock.advance(hours=4)
    assert _escalate(api) == 1
    assert [m.channel for m in api.email.sent] == [Channel.EMAIL] and api.sms.sent == []
    chosen = _status(api, muted["notification_id"])["care_team"]
    assert chosen["escalation_reason"].endswith("follow-up on email (sms: muted by patient)")
    none = _status(api, lonely["notification_id"])["care_team"]
    assert none["escalation"] == "not_escalated" and none["escalation_id"] is None
    assert none["escalation_reason"] == (
        "not escalated: message unread 4 h after its notice, but no channel is left "
        "(sms: no phone number; email: no email address; push: the notice already reached her there)"
    )
