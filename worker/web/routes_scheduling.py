"""Appointments and survey assignments: the platform tells us, the scheduler plans and sends the reminders."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Path

from worker.appointments import cancel_appointment, create_appointment, reschedule_appointment
from worker.confirm_by_reply import list_type_settings, set_type_setting
from worker.errors import InvalidInput
from worker.patients import patient_id_for
from worker.surveys import assign_survey, complete_survey
from worker.web.auth import FORBIDDEN, Notifier
from worker.web.deps import AppDep, IdempotencyKey
from worker.web.errors import ApiError, ErrorBody, not_found_as
from worker.web.schemas import (
    REF_PATTERN,
    AppointmentIn,
    AppointmentOut,
    AppointmentTypeIn,
    AppointmentTypeOut,
    RescheduleIn,
    SurveyIn,
    SurveyOut,
)

router = APIRouter(
    prefix="/v1",
    tags=["appointments and surveys"],
    dependencies=[IdempotencyKey],
    responses={401: {"model": ErrorBody}, **FORBIDDEN, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)

PathRef = Annotated[str, Path(pattern=REF_PATTERN)]


@contextmanager
def _ref_named(field: str) -> Iterator[None]:
    """The services call the platform's reference ``external_ref``; the API names it after what it refers to."""
    try:
        yield
    except InvalidInput as exc:
        if exc.field != "external_ref":
            raise
        raise ApiError(409, "conflict", field, f"{field}: {exc.problem}") from None


@router.post("/appointments")
def create(body: AppointmentIn, app: AppDep, caller: Notifier) -> AppointmentOut:
    """Create an appointment and plan its reminders. Posting the same ``appointment_ref`` again changes nothing."""
    with not_found_as("patient_ref"):
        patient_id = patient_id_for(app.engine, body.patient_ref)
        appointment_id = create_appointment(
            app.engine,
            app.clock,
            app.settings,
            patient_id=patient_id,
            external_ref=body.appointment_ref,
            starts_at=body.starts_at,
            appointment_type=body.appointment_type,
        )
    return AppointmentOut(appointment_id=appointment_id, appointment_ref=body.appointment_ref)


TypePath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


@router.put("/appointment-types/{appointment_type}")
def set_type(appointment_type: TypePath, body: AppointmentTypeIn, app: AppDep, caller: Notifier) -> AppointmentTypeOut:
    """Turn confirm by reply on or off for a kind of visit; reminders planned from now on follow it."""
    row = set_type_setting(
        app.engine,
        app.clock,
        appointment_type=appointment_type,
        confirm_by_reply=body.confirm_by_reply,
        remind_after_confirmation=body.remind_after_confirmation,
    )
    return AppointmentTypeOut(**row.model_dump(exclude={"updated_at"}))


@router.get("/appointment-types")
def list_types(app: AppDep, caller: Notifier) -> list[AppointmentTypeOut]:
    return [AppointmentTypeOut(**row.model_dump(exclude={"updated_at"})) for row in list_type_settings(app.engine)]


@router.post("/appointments/{appointment_ref}/reschedule", responses={409: {"model": ErrorBody}})
def reschedule(appointment_ref: PathRef, body: RescheduleIn, app: AppDep, caller: Notifier) -> AppointmentOut:
    """Move it: the old reminders are cancelled and new ones planned, in one transaction."""
    with not_found_as("appointment_ref"), _ref_named("appointment_ref"):
        appointment_id = reschedule_appointment(
            app.engine, app.clock, app.settings, external_ref=appointment_ref, starts_at=body.starts_at
        )
    return AppointmentOut(appointment_id=appointment_id, appointment_ref=appointment_ref)


@router.post("/appointments/{appointment_ref}/cancel")
def cancel(appointment_ref: PathRef, app: AppDep, caller: Notifier) -> AppointmentOut:
    """Cancel it and every reminder not yet sent."""
    with not_found_as("appointment_ref"):
        appointment_id = cancel_appointment(app.engine, app.clock, external_ref=appointment_ref)
    return AppointmentOut(appointment_id=appointment_id, appointment_ref=appointment_ref)


@router.post("/surveys")
def assign(body: SurveyIn, app: AppDep, caller: Notifier) -> SurveyOut:
    """Assign a survey: a first notice, then reminders until it is completed. Idempotent on ``assignment_ref``."""
    with not_found_as("patient_ref"):
        patient_id = patient_id_for(app.engine, body.patient_ref)
        assignment_id = assign_survey(
            app.engine,
            app.clock,
            app.settings,
            patient_id=patient_id,
            external_ref=body.assignment_ref,
            survey_key=body.survey_key,
            first_send_at=body.first_send_at,
            reminders=body.reminders,
            interval_days=body.interval_days,
            on_care_pause=body.on_care_pause,
        )
    return SurveyOut(survey_assignment_id=assignment_id, assignment_ref=body.assignment_ref)


@router.post("/surveys/{assignment_ref}/complete")
def complete(assignment_ref: PathRef, app: AppDep, caller: Notifier) -> SurveyOut:
    """The patient completed it: no more reminders."""
    with not_found_as("assignment_ref"):
        assignment_id = complete_survey(app.engine, app.clock, external_ref=assignment_ref)
    return SurveyOut(survey_assignment_id=assignment_id, assignment_ref=assignment_ref)
