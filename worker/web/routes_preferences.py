"""A patient's mute switches, changed by the platform on the patient's behalf.

The patient has no login here: the platform's app authenticates her and calls this with its API key, naming her
by ``external_ref``; the change is written to the consent ledger with that client as actor. (The email
unsubscribe link is the one way a patient reaches us directly, and it carries its own signed token.)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from worker.models_consent import ConsentSource
from worker.patients import patient_id_for
from worker.preferences import PreferenceChange, get_preferences, set_preferences
from worker.web.auth import FORBIDDEN, PreferenceReader, PreferenceWriter
from worker.web.deps import AppDep, IdempotencyKey
from worker.web.errors import ErrorBody, not_found_as
from worker.web.schemas import REF_PATTERN, PreferencesIn, PreferencesOut

router = APIRouter(
    prefix="/v1/patients/{external_ref}/preferences",
    tags=["patient preferences"],
    responses={401: {"model": ErrorBody}, **FORBIDDEN, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)

PathRef = Annotated[str, Path(pattern=REF_PATTERN)]


@router.get("")
def read(external_ref: PathRef, app: AppDep, caller: PreferenceReader) -> PreferencesOut:
    """Every category and channel, on or off (marketing: consent; SMS marketing is off until opted in)."""
    with not_found_as("external_ref"):
        preferences = get_preferences(app.engine, patient_id_for(app.engine, external_ref))
    return PreferencesOut(preferences=preferences)


@router.post("", dependencies=[IdempotencyKey])
def update(external_ref: PathRef, body: PreferencesIn, app: AppDep, caller: PreferenceWriter) -> PreferencesOut:
    """Mute or unmute. Account notices cannot be muted; SMS marketing needs written-consent evidence.

    Honoured at send time, so notifications already queued follow the new choice.
    """
    with not_found_as("external_ref"):
        patient_id = patient_id_for(app.engine, external_ref)
        set_preferences(
            app.engine,
            app.clock,
            patient_id=patient_id,
            changes=[PreferenceChange(c.category, c.channel, c.enabled) for c in body.changes],
            source=ConsentSource.APP if body.via == "app" else ConsentSource.API,
            actor=f"api:{caller.name}",
            sms_consent_evidence=body.sms_consent_evidence,
        )
        preferences = get_preferences(app.engine, patient_id)
    return PreferencesOut(preferences=preferences)
