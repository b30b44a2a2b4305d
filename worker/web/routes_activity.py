"""A patient's activity for support: ``GET /v1/patients/{ref}/activity`` (scope ``read``)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from worker.activity import LedgerItem, patient_activity
from worker.activity.feed import MAX_LIMIT, Item, PauseItem
from worker.patients import patient_id_for
from worker.web.auth import FORBIDDEN, Reader
from worker.web.deps import AppDep
from worker.web.errors import ErrorBody, not_found_as
from worker.web.schemas import REF_PATTERN

router = APIRouter(prefix="/v1/patients", tags=["patients"], responses={401: {"model": ErrorBody}, **FORBIDDEN})


class AnswerOut(BaseModel):
    at: datetime
    channel: str
    provider: str
    outcome: str
    error_code: str | None


class NotificationEntry(BaseModel):
    type: Literal["notification"] = "notification"
    id: int
    at: datetime
    category: str
    state: str
    reason: str | None
    channels_requested: list[str] | None
    channels_tried: list[str]
    answers: list[AnswerOut]
    not_before: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    campaign_id: int | None


class LedgerEntry(BaseModel):
    type: Literal["ledger"] = "ledger"
    id: int
    at: datetime
    #: ``consent``, ``preference``, or the ledger row's own category for anything else (e.g. a care pause).
    kind: str
    channel: str
    category: str | None
    granted: bool
    source: str
    actor: str
    detail: str | None


class PauseEntry(BaseModel):
    """A care pause set or changed (``paused``) or lifted; ``reason_code`` is for the care team, never shown to her."""

    type: Literal["care_pause"] = "care_pause"
    id: int
    at: datetime
    paused: bool
    reason_code: str | None
    until: datetime | None
    hold_appointment_reminders: bool
    source: str
    actor: str


Entry = NotificationEntry | LedgerEntry | PauseEntry


class ActivityOut(BaseModel):
    items: list[Annotated[Entry, Field(discriminator="type")]]
    next_cursor: str | None


@router.get("/{external_ref}/activity", responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}})
def activity(
    external_ref: Annotated[str, Path(pattern=REF_PATTERN)],
    app: AppDep,
    caller: Reader,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 25,
) -> ActivityOut:
    """Her notifications (state, reason, channels tried, provider answers, times) and consent-ledger rows
    (consent, mutes) and care pauses, newest first. Pass ``next_cursor`` back as ``cursor`` for the next page."""
    with not_found_as("external_ref"):
        patient_id = patient_id_for(app.engine, external_ref)
    page = patient_activity(app.engine, patient_id, cursor=cursor, limit=limit)
    return ActivityOut(items=[_entry(item) for item in page.items], next_cursor=page.next_cursor)


def _entry(item: Item) -> Entry:
    if isinstance(item, LedgerItem):
        return LedgerEntry.model_validate(asdict(item))
    if isinstance(item, PauseItem):
        return PauseEntry.model_validate(asdict(item))
    return NotificationEntry.model_validate(asdict(item))
