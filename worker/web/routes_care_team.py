"""Read receipts of care-team messages: the platform says she read one (digest and follow-up stop)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from worker.care_team import mark_read
from worker.web.auth import FORBIDDEN, Notifier
from worker.web.deps import AppDep
from worker.web.errors import ErrorBody, not_found_as
from worker.web.routes_notifications import care_team_message_key
from worker.web.schemas import REF_PATTERN, ReadReceiptOut

router = APIRouter(prefix="/v1", tags=["notifications"], responses={401: {"model": ErrorBody}, **FORBIDDEN})


@router.post(
    "/care-team-messages/{message_id}/read",
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
def message_read(
    message_id: Annotated[str, Path(pattern=REF_PATTERN)], app: AppDep, caller: Notifier
) -> ReadReceiptOut:
    """She read the message in the secure app. Idempotent: a repeat answers with the first read's time.

    Her next care-team message notifies again (no more folding into this notice), and the follow-up of an unread
    message is called off: never made, or cancelled if it has not gone out yet.
    """
    with not_found_as("message_id"):
        receipt = mark_read(app.engine, app.clock, idempotency_key=care_team_message_key(message_id))
    return ReadReceiptOut(
        message_id=message_id,
        notification_id=receipt.notification_id,
        read_at=receipt.read_at,
        first=receipt.first,
        escalation=receipt.escalation,
        escalation_id=receipt.escalation_id,
    )
