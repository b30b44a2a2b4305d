"""A patient's care pause: set (or change), lift, read. Written to the consent ledger with the API client as actor.

The reason is a code from a fixed list (never free text). Several codes are health information: the answer
carries the code to the client that may read preferences, but it is never logged and never reaches a
notification's reason or anything the patient receives (see :mod:`worker.care_pause.rules`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from worker.care_pause import PauseView, current_pause, lift_pause, parse_until, set_pause
from worker.db import session_scope
from worker.models import Patient
from worker.models_consent import ConsentSource, PauseReason
from worker.patients import patient_id_for
from worker.web.auth import FORBIDDEN, PreferenceReader, PreferenceWriter
from worker.web.deps import AppDep, IdempotencyKey
from worker.web.errors import ErrorBody, not_found_as
from worker.web.schemas import REF_PATTERN, Strict

router = APIRouter(
    prefix="/v1/patients/{external_ref}/pause",
    tags=["care pause"],
    responses={401: {"model": ErrorBody}, **FORBIDDEN, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)

PathRef = Annotated[str, Path(pattern=REF_PATTERN)]


class PauseIn(Strict):
    """Pause everything but care-team messages and account notices, until ``until`` or until lifted."""

    reason: PauseReason = Field(description="Why, from a fixed list (never free text)")
    until: Annotated[str, Field(max_length=40)] | None = Field(
        description="When notices resume: a date (2026-12-01, the start of that day in her time zone) or an "
        "instant with a UTC offset; null for a pause that lasts until it is lifted",
    )
    hold_appointment_reminders: bool = Field(
        default=False, description="Hold appointment reminders too (by default they still go)"
    )


class PauseOut(BaseModel):
    """Her pause in force now (``paused: false`` and nothing else when there is none)."""

    paused: bool
    reason: PauseReason | None = None
    until: datetime | None = None
    hold_appointment_reminders: bool | None = None
    since: datetime | None = None
    by: str | None = None
    #: POST: whether this request changed anything (the same pause again writes nothing); DELETE: lifted.
    changed: bool | None = None


def _out(view: PauseView | None, changed: bool | None = None) -> PauseOut:
    if view is None:
        return PauseOut(paused=False, changed=changed)
    return PauseOut(
        paused=True,
        reason=view.reason,
        until=view.until,
        hold_appointment_reminders=view.hold_appointment_reminders,
        since=view.since,
        by=view.by,
        changed=changed,
    )


def _zone(app: AppDep, patient_id: int) -> str:
    with session_scope(app.engine) as session:
        patient = session.get(Patient, patient_id)
        return patient.time_zone if patient is not None else "UTC"


@router.get("")
def read(external_ref: PathRef, app: AppDep, caller: PreferenceReader) -> PauseOut:
    """Her care pause in force now; an ended pause is not shown."""
    with not_found_as("external_ref"):
        view = current_pause(app.engine, app.clock, patient_id_for(app.engine, external_ref))
    return _out(view)


@router.post("", dependencies=[IdempotencyKey])
def pause(external_ref: PathRef, body: PauseIn, app: AppDep, caller: PreferenceWriter) -> PauseOut:
    """Pause her (or change her pause). Marketing and campaigns leave her out, survey notices wait or are
    cancelled per survey, appointment reminders go unless held; care-team messages and account notices go."""
    with not_found_as("external_ref"):
        patient_id = patient_id_for(app.engine, external_ref)
        until = None if body.until is None else parse_until(body.until, _zone(app, patient_id), app.clock.now())
        view, changed = set_pause(
            app.engine,
            app.clock,
            patient_id=patient_id,
            reason=body.reason,
            until=until,
            hold_appointment_reminders=body.hold_appointment_reminders,
            source=ConsentSource.API,
            actor=f"api:{caller.name}",
        )
    return _out(view, changed)


@router.delete("")
def lift(external_ref: PathRef, app: AppDep, caller: PreferenceWriter) -> PauseOut:
    """Lift her pause: everything goes again, and survey notices it held are checked again at once."""
    with not_found_as("external_ref"):
        lifted = lift_pause(
            app.engine,
            app.clock,
            patient_id=patient_id_for(app.engine, external_ref),
            source=ConsentSource.API,
            actor=f"api:{caller.name}",
        )
    return _out(None, lifted)
