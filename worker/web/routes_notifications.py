"""Care-team triggers and the status of any notification."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from worker.categories import Category
from worker.db import session_scope
from worker.models import Notification
from worker.notification_report import notification_report
from worker.patients import patient_id_for
from worker.web.auth import FORBIDDEN, Notifier, Reader
from worker.web.deps import AppDep, IdempotencyKey
from worker.web.errors import ApiError, ErrorBody, not_found_as
from worker.web.schemas import CareTeamMessageIn, NotificationStatus, Submission

router = APIRouter(prefix="/v1", tags=["notifications"], responses={401: {"model": ErrorBody}, **FORBIDDEN})

#: Largest id either database can hold (64-bit signed); larger ids are refused as 422, not a 500.
MAX_ID = 2**63 - 1


@router.post(
    "/care-team-messages",
    status_code=202,
    dependencies=[IdempotencyKey],
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
def care_team_message(body: CareTeamMessageIn, app: AppDep, caller: Notifier) -> Submission:
    """The care team wrote to the patient in the secure app: tell the patient there is something to read.

    The notice never carries the message: only ``message_id`` (the secure app's opaque id) is accepted, and the
    same ``message_id`` never makes a second notification, whichever client or key sends it (a message exists
    once in the secure app). The same ``message_id`` for another patient is refused (409): it is not the same
    message, and answering with the first patient's notification would hide that. A notice within
    ``care_team.digest_window`` of an unread one folds into it (state ``folded``); ``urgent: true`` brings the
    follow-up of an unread message forward (``care_team.urgent_escalate_after``).
    """
    with not_found_as("patient_ref"):
        patient_id = patient_id_for(app.engine, body.patient_ref)
        result = app.submit(
            patient_id=patient_id,
            category=Category.CARE_TEAM_MESSAGE,
            idempotency_key=care_team_message_key(body.message_id),
            channels=body.channels,
            context={"message_ref": body.message_id, **({"urgent": True} if body.urgent else {})},
        )
    if not result.created and _patient_of(app, result.notification_id) != patient_id:
        raise ApiError(409, "conflict", "message_id", "message_id: already used for another patient's message")
    return Submission(notification_id=result.notification_id, created=result.created)


def care_team_message_key(message_id: str) -> str:
    """The notification's idempotency key: one per ``message_id``, global (migration 0040 moved older keys)."""
    return f"care_team_message:{message_id}"


def _patient_of(app: AppDep, notification_id: int) -> int | None:
    with session_scope(app.engine) as session:
        notification = session.get(Notification, notification_id)
        return notification.patient_id if notification is not None else None


@router.get("/notifications/{notification_id}", responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}})
def status(notification_id: Annotated[int, Path(ge=1, le=MAX_ID)], app: AppDep, caller: Reader) -> NotificationStatus:
    """State, reason, every transition with its time, and every provider call."""
    with not_found_as("notification_id"):
        report = notification_report(app.engine, notification_id)
    return NotificationStatus.model_validate(report)
