"""Confirm by reply, end to end: the platform turns it on for a kind of visit, the SMS reminder asks, the
patient answers through Twilio's signed inbound webhook, the appointment records it, she gets one PHI-free
acknowledgement, and the platform hears it through a signed outbound webhook at a real local receiver."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import create_patient, tick
from tests.web.conftest import Api
from tests.web.test_webhooks import _inbound
from tests.webhook_receiver import Receiver, running_receiver
from worker.confirm_by_reply import read_reply
from worker.db import session_scope
from worker.delivery import deliver
from worker.models import Notification
from worker.models_replies import AppointmentReply, ReplyKind
from worker.models_scheduling import Appointment
from worker.outbound.endpoints import add_endpoint, list_endpoints
from worker.states import State
from worker.templates import render

PHONE = "+12125550123"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def _setup(api: Api, *, locale: str = "en", remind_after: bool = True, type_: str = "postpartum-visit") -> int:
    answer = api.client.put(
        f"/v1/appointment-types/{type_}",
        json={"confirm_by_reply": True, "remind_after_confirmation": remind_after},
        headers=api.auth,
    )
    assert answer.status_code == 200, answer.text
    create_patient(api.app, ref="pt-c", phone=PHONE, locale=locale, devices=())
    starts = api.app.clock.now() + timedelta(days=3)
    answer = api.client.post(
        "/v1/appointments",
        json={
            "appointment_ref": "ap-1",
            "patient_ref": "pt-c",
            "starts_at": starts.isoformat(),
            "appointment_type": type_,
        },
        headers=api.auth,
    )
    assert answer.status_code == 200, answer.text
    api.app.clock.set(starts - timedelta(hours=24))  # type: ignore[attr-defined]
    tick(api.app)
    return int(answer.json()["appointment_id"])


def _sms_text(api: Api, at: int = -1) -> str:
    return api.sms.sent[at].body


def _answer(api: Api, body: str, sid: str) -> Any:
    response = _inbound(api, {"MessageSid": sid, "From": PHONE, "To": "+15005550006", "Body": body})
    assert response.status_code == 200
    return response


def _appointment(api: Api, appointment_id: int) -> Appointment:
    with session_scope(api.app.engine) as session:
        row = session.get(Appointment, appointment_id)
        assert row is not None
        session.expunge(row)
        return row


def _acks(api: Api) -> list[Notification]:
    with session_scope(api.app.engine) as session:
        rows = [n for n in session.scalars(select(Notification)) if n.context.get("sms_reply")]
        for r in rows:
            session.expunge(r)
        return rows


def _deliver_acks(api: Api) -> None:
    for n in _acks(api):
        if n.state == State.PENDING:
            assert n.id is not None
            deliver(api.app.deps, n.id)


def _pump(api: Api) -> None:
    assert api.app.outbound is not None
    api.app.dispatch_webhooks()
    for view in list_endpoints(api.app.engine):
        api.app.outbound.sender.run(view.id)


@pytest.mark.parametrize("body", ["C", "yes", "Confirm", "Sí", "si", " c. "])
def test_confirm_words(body: str) -> None:
    assert read_reply(body) is ReplyKind.CONFIRMED


@pytest.mark.parametrize("body", ["R", "r", "Reschedule", "reprogramar"])
def test_reschedule_words(body: str) -> None:
    assert read_reply(body) is ReplyKind.RESCHEDULE_REQUESTED


@pytest.mark.parametrize("body", ["STOP", "HELP", "can I come at 3?", "cancel", "yes please stop", "no"])
def test_anything_else_is_not_an_answer(body: str) -> None:
    assert read_reply(body) is None


def test_the_reminder_asks_in_english_and_spanish_and_stays_phi_free() -> None:
    from worker.categories import Category, Channel

    en = render(Category.APPOINTMENT_REMINDER, Channel.SMS, "en", template="confirm_by_reply").body
    es = render(Category.APPOINTMENT_REMINDER, Channel.SMS, "es", template="confirm_by_reply").body
    assert en.endswith("Reply C to confirm, R to reschedule.")
    assert es.endswith("Responda C para confirmar, R para reprogramar.")
    # Push cannot be answered: it does not ask; a type without it does not ask either.
    assert "Reply C" not in render(Category.APPOINTMENT_REMINDER, Channel.PUSH, "en", template="confirm_by_reply").body
    assert "Reply C" not in render(Category.APPOINTMENT_REMINDER, Channel.SMS, "en").body


def test_c_confirms_the_next_appointment_acknowledges_once_and_tells_the_platform(api: Api, receiver: Receiver) -> None:
    view, secret = add_endpoint(
        api.app.engine, api.app.clock, url=receiver.url, events="appointment.confirmed,appointment.reschedule_requested"
    )
    receiver.secret = secret
    appointment_id = _setup(api)
    assert _sms_text(api).endswith("Reply C to confirm, R to reschedule.")
    _answer(api, "Sí", "SM-c1")
    appointment = _appointment(api, appointment_id)
    assert appointment.confirmation == "confirmed" and appointment.confirmation_at == api.app.clock.now()
    _answer(api, "C", "SM-c2")  # again: nothing new, no second acknowledgement
    [ack] = _acks(api)
    assert ack.context == {"sms_reply": "appointment_confirmed"}
    _deliver_acks(api)
    text = _sms_text(api)
    assert text == "Partum Health: Thank you, your appointment is confirmed. Open the app for details."
    _pump(api)
    [got] = receiver.accepted()
    assert got.type == "appointment.confirmed"
    assert got.data == {
        "appointment_ref": "ap-1",
        "patient_ref": "pt-c",
        "appointment_type": "postpartum-visit",
        "channel": "sms",
    }
    assert PHONE not in got.body
    # The 2 h reminder still goes (the type did not turn it off), and still asks.
    api.app.clock.advance(timedelta(hours=22))  # type: ignore[attr-defined]
    assert len(tick(api.app)) == 1


def test_r_asks_to_reschedule_in_spanish(api: Api, receiver: Receiver) -> None:
    _, secret = add_endpoint(api.app.engine, api.app.clock, url=receiver.url, events="*")
    receiver.secret = secret
    appointment_id = _setup(api, locale="es")
    assert _sms_text(api).endswith("Responda C para confirmar, R para reprogramar.")
    _answer(api, "R", "SM-r1")
    assert _appointment(api, appointment_id).confirmation == "reschedule_requested"
    _deliver_acks(api)
    assert _sms_text(api).startswith("Partum Health: Gracias, recibimos su solicitud para reprogramar.")
    _pump(api)
    assert "appointment.reschedule_requested" in [r.type for r in receiver.accepted()]


def test_a_type_can_stop_reminders_after_confirmation(api: Api) -> None:
    appointment_id = _setup(api, remind_after=False)
    _answer(api, "yes", "SM-y1")
    with session_scope(api.app.engine) as session:
        later = [
            n
            for n in session.scalars(select(Notification))
            if n.context.get("appointment_id") == appointment_id and n.context.get("offset_hours") == 2.0
        ]
    assert [n.state for n in later] == [State.CANCELLED]
    assert "confirmed by reply" in (later[0].reason or "")


def test_without_a_valid_reminder_c_is_an_ordinary_text_and_stop_still_stops(api: Api) -> None:
    create_patient(api.app, ref="pt-x", phone=PHONE, devices=())
    _answer(api, "C", "SM-x1")
    assert _acks(api) == []
    with session_scope(api.app.engine) as session:
        assert session.scalars(select(AppointmentReply)).all() == []
    _answer(api, "STOP", "SM-x2")
    assert [n.context["sms_reply"] for n in _acks(api)] == ["opt_out"]


def test_a_reply_after_the_start_or_after_a_reschedule_is_not_an_answer(api: Api) -> None:
    appointment_id = _setup(api)
    answer = api.client.post(
        "/v1/appointments/ap-1/reschedule",
        json={"starts_at": (api.app.clock.now() + timedelta(days=5)).isoformat()},
        headers=api.auth,
    )
    assert answer.status_code == 200
    _answer(api, "C", "SM-late1")  # the reminder she got was for the old time
    assert _appointment(api, appointment_id).confirmation is None
    assert _acks(api) == []


def test_the_type_setting_is_validated_and_listed(api: Api) -> None:
    bad = api.client.put("/v1/appointment-types/x", json={"confirm_by_reply": "maybe"}, headers=api.auth)
    assert bad.status_code == 422 and bad.json()["field"] == "confirm_by_reply"
    ok = api.client.put("/v1/appointment-types/lactation", json={"confirm_by_reply": True}, headers=api.auth)
    assert ok.json() == {"appointment_type": "lactation", "confirm_by_reply": True, "remind_after_confirmation": True}
    listed = api.client.get("/v1/appointment-types", headers=api.auth).json()
    assert listed == [ok.json()]
    typed = api.client.post(
        "/v1/appointments",
        json={
            "appointment_ref": "a",
            "patient_ref": "nobody",
            "starts_at": "2030-01-01T00:00:00Z",
            "appointment_type": "a b",
        },
        headers=api.auth,
    )
    assert typed.status_code == 422 and typed.json()["field"] == "appointment_type"


def test_after_stop_an_answer_still_counts_but_gets_no_text(api: Api) -> None:
    appointment_id = _setup(api)
    _answer(api, "STOP", "SM-s1")
    _answer(api, "C", "SM-s2")
    assert _appointment(api, appointment_id).confirmation == "confirmed"
    assert [n.context["sms_reply"] for n in _acks(api)] == ["opt_out"]
