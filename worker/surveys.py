"""Survey assignments: a first notice and up to N reminders every K days, until the survey is completed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from worker.categories import Category
from worker.clock import Clock
from worker.db import session_scope
from worker.errors import InvalidInput, NotFound
from worker.models import Patient
from worker.models_scheduling import SurveyAssignment
from worker.outbox import add_notification, cancel_open
from worker.settings import Settings

CONTEXT_KEY = "survey_assignment_id"


def assign_survey(
    engine: Engine,
    clock: Clock,
    settings: Settings,
    *,
    patient_id: int,
    external_ref: str,
    survey_key: str,
    first_send_at: datetime | None = None,
    reminders: int | None = None,
    interval_days: int | None = None,
    on_care_pause: str | None = None,
) -> int:
    """Assign a survey and plan its notices; each notice expires when the next one is due (no pile-up).

    ``on_care_pause`` (default ``care_pause.survey_default``): while the patient's care is paused, its notices
    wait for the pause to end (``defer``) or are cancelled (``cancel``).
    """
    now = clock.now()
    during_pause = on_care_pause or settings.care_pause.survey_default
    if during_pause not in ("defer", "cancel"):
        raise InvalidInput("on_care_pause", "must be defer or cancel")
    first = first_send_at or now
    if first.tzinfo is None:
        raise InvalidInput("first_send_at", "must include a UTC offset")
    count = settings.scheduling.survey_reminders if reminders is None else reminders
    every = settings.scheduling.survey_interval_days if interval_days is None else interval_days
    if not 0 <= count <= 10:
        raise InvalidInput("reminders", "must be between 0 and 10")
    if not 1 <= every <= 60:
        raise InvalidInput("interval_days", "must be between 1 and 60")
    if not survey_key or len(survey_key) > 64:
        raise InvalidInput("survey_key", "must be 1 to 64 characters")
    with session_scope(engine) as session:
        patient = session.get(Patient, patient_id)
        if patient is None:
            raise NotFound(f"patient {patient_id} does not exist")
        existing = session.scalars(
            select(SurveyAssignment).where(col(SurveyAssignment.external_ref) == external_ref)
        ).first()
        if existing is not None:
            assert existing.id is not None
            return existing.id
        assignment = SurveyAssignment(
            patient_id=patient_id,
            external_ref=external_ref,
            survey_key=survey_key,
            first_send_at=first,
            reminders=count,
            interval_days=every,
            created_at=now,
            on_care_pause=during_pause,
        )
        session.add(assignment)
        session.flush()
        assert assignment.id is not None
        times = cadence(first, count, every, ZoneInfo(patient.time_zone))
        for index, send_at in enumerate(times):
            add_notification(
                session,
                now,
                patient_id=patient_id,
                category=Category.SURVEY_REMINDER,
                idempotency_key=f"survey:{assignment.id}:{index}",
                context={CONTEXT_KEY: assignment.id, "sequence": index},
                not_before=send_at,
                # Superseded by the next notice; the last one stays useful for one more interval.
                expires_at=times[index + 1] if index + 1 < len(times) else send_at + timedelta(days=every),
            )
        return assignment.id


def cadence(first: datetime, reminders: int, interval_days: int, zone: ZoneInfo) -> list[datetime]:
    """The first notice and ``reminders`` more every ``interval_days``, at the first one's local wall time.

    Days are calendar days in the patient's zone, so a 10:00 notice stays at 10:00 across a DST change
    (adding 24 h multiples in UTC would move it to 09:00 or 11:00). A wall time skipped by spring-forward
    lands just after the gap (PEP 495 ``fold=0``).
    """
    local = first.astimezone(zone).replace(tzinfo=None)
    return [first] + [
        (local + timedelta(days=interval_days * index)).replace(tzinfo=zone, fold=0).astimezone(UTC)
        for index in range(1, reminders + 1)
    ]


def complete_survey(engine: Engine, clock: Clock, *, external_ref: str) -> int:
    """Mark the survey done and cancel every notice not yet sent."""
    now = clock.now()
    with session_scope(engine) as session:
        assignment = session.scalars(
            select(SurveyAssignment).where(col(SurveyAssignment.external_ref) == external_ref).with_for_update()
        ).first()
        if assignment is None:
            raise NotFound("no survey assignment with that external_ref")
        assert assignment.id is not None
        if assignment.completed_at is None:
            assignment.completed_at = now
            session.add(assignment)
            cancel_open(
                session,
                now,
                patient_id=assignment.patient_id,
                context_key=CONTEXT_KEY,
                value=assignment.id,
                reason="survey completed",
            )
        return assignment.id


def stale_reason(session: Session, context: dict[str, object]) -> tuple[str, str] | None:
    assignment_id = context.get(CONTEXT_KEY)
    if not isinstance(assignment_id, int):
        return None
    assignment = session.get(SurveyAssignment, assignment_id)
    return stale_for(context, assignment is not None, assignment.completed_at if assignment else None)


def on_care_pause(session: Session, context: dict[str, object]) -> str | None:
    """A survey notice's ``on_care_pause`` (``defer`` or ``cancel``); ``None`` for any other notification."""
    assignment_id = context.get(CONTEXT_KEY)
    if not isinstance(assignment_id, int):
        return None
    assignment = session.get(SurveyAssignment, assignment_id)  # the identity map already holds it (stale_reason)
    return assignment.on_care_pause if assignment is not None else None


def stale_for(context: dict[str, object], found: bool, completed_at: datetime | None) -> tuple[str, str] | None:
    """:func:`stale_reason` on the assignment's facts as read."""
    if not isinstance(context.get(CONTEXT_KEY), int):
        return None
    if not found:
        return "cancelled", "survey assignment withdrawn"
    if completed_at is not None:
        return "cancelled", "survey completed"
    return None
