"""Patients and their push devices, as the care platform knows them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel

from worker.erasure import erase_patient
from worker.patients import patient_id_for, register_device, upsert_patient
from worker.web.auth import FORBIDDEN, Eraser, PatientWriter
from worker.web.deps import AppDep, IdempotencyKey
from worker.web.errors import ErrorBody, not_found_as
from worker.web.schemas import REF_PATTERN, DeviceIn, DeviceOut, PatientIn, PatientOut, Strict

router = APIRouter(prefix="/v1/patients", tags=["patients"], responses={401: {"model": ErrorBody}, **FORBIDDEN})


@router.post("", dependencies=[IdempotencyKey], responses={422: {"model": ErrorBody}})
def upsert(body: PatientIn, app: AppDep, caller: PatientWriter) -> PatientOut:
    """Create or update a patient (by ``external_ref``); every field is replaced by what is sent."""
    patient_id = upsert_patient(
        app.engine,
        app.clock,
        external_ref=body.external_ref,
        time_zone=body.time_zone,
        locale=body.locale,
        email=body.email,
        phone=body.phone,
        us_state=body.us_state,
        phone_regions=app.settings.patients.phone_regions,
    )
    return PatientOut(patient_id=patient_id, external_ref=body.external_ref)


@router.post(
    "/{external_ref}/devices",
    dependencies=[IdempotencyKey],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
def add_device(
    external_ref: Annotated[str, Path(pattern=REF_PATTERN)], body: DeviceIn, app: AppDep, caller: PatientWriter
) -> DeviceOut:
    """Register a push token for a patient."""
    with not_found_as("external_ref"):
        patient_id = patient_id_for(app.engine, external_ref)
        device_id = register_device(
            app.engine, app.clock, patient_id=patient_id, platform=body.platform, token=body.token
        )
    return DeviceOut(device_id=device_id, patient_id=patient_id)


class ErasureIn(Strict):
    """Why: a fixed list, so no free text about the patient is ever stored."""

    reason: Literal["under_13", "patient_request", "account_closed"]


class ErasureOut(BaseModel):
    erased: bool
    cancelled_notifications: int


@router.post("/{external_ref}/erase", dependencies=[IdempotencyKey], responses={404: {"model": ErrorBody}})
def erase(
    external_ref: Annotated[str, Path(pattern=REF_PATTERN)], body: ErasureIn, app: AppDep, caller: Eraser
) -> ErasureOut:
    """Delete the patient and everything about her (e.g. a child under 13), cancelling her queued work."""
    with not_found_as("external_ref"):
        patient_id = patient_id_for(app.engine, external_ref)
        cancelled = erase_patient(app.engine, app.clock, patient_id=patient_id, reason=body.reason)
    return ErasureOut(erased=True, cancelled_notifications=cancelled)
