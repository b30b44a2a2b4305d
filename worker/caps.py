"""Frequency caps, counted from what was actually sent (the database), at send time.

Marketing: at most 3 per 24 h per patient (the Florida/Oklahoma rule, applied everywhere). Healthcare texts
under the TCPA exemption: at most 1 a day and 3 a week per patient. Care-team notices are not capped: they
tell a patient a clinician wrote.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlmodel import Session, col

from integrations.base import Outcome
from worker.categories import Category, Channel
from worker.models import DeliveryAttempt, Notification

MARKETING_PER_DAY = 3
HEALTH_TEXTS_PER_DAY = 1
HEALTH_TEXTS_PER_WEEK = 3
CAPPED_HEALTH_TEXTS = (Category.APPOINTMENT_REMINDER, Category.SURVEY_REMINDER)


@dataclass(frozen=True)
class Counts:
    marketing_24h: int
    health_texts_24h: int
    health_texts_7d: int


def recent_counts(session: Session, patient_id: int, now: datetime, *, exclude: int) -> Counts:
    """How much was accepted for this patient recently (excluding the notification being decided)."""
    return recent_counts_of(session, [patient_id], now, exclude=[exclude])[patient_id]


def recent_counts_of(
    session: Session, patient_ids: Sequence[int], now: datetime, *, exclude: Sequence[int]
) -> dict[int, Counts]:
    """:func:`recent_counts` for many patients in two index lookups (a delivery batch).

    First the patients' notifications in the capped categories (index on ``patient_id``), then their accepted
    attempts of the last week (index on ``notification_id``): the cost follows these patients' history, never the
    size of ``delivery_attempt``. ``exclude`` are the notifications being decided; a batch holds at most one per
    patient, so excluding them all is excluding each one's own.
    """
    counted = (Category.MARKETING, *CAPPED_HEALTH_TEXTS)
    owners = {
        notification_id: (patient_id, category)
        for notification_id, patient_id, category in session.execute(
            select(col(Notification.id), col(Notification.patient_id), col(Notification.category)).where(
                col(Notification.patient_id).in_(list(patient_ids)),
                col(Notification.category).in_([c.value for c in counted]),
                col(Notification.id).not_in(list(exclude)),
            )
        )
    }
    week = now - timedelta(days=7)
    accepted: list[tuple[int, int, str, str, datetime]] = []
    if owners:
        for notification_id, channel, started_at in session.execute(
            select(
                col(DeliveryAttempt.notification_id), col(DeliveryAttempt.channel), col(DeliveryAttempt.started_at)
            ).where(
                col(DeliveryAttempt.notification_id).in_(list(owners)),
                col(DeliveryAttempt.outcome) == Outcome.ACCEPTED.value,
                col(DeliveryAttempt.started_at) > week,
            )
        ):
            patient_id, category = owners[notification_id]
            accepted.append((patient_id, notification_id, category, channel, started_at))
    return counts_from(accepted, patient_ids, now)


def counts_from(
    accepted: Iterable[tuple[int, int, str, str, datetime]], patient_ids: Iterable[int], now: datetime
) -> dict[int, Counts]:
    """The caps' counts from accepted attempts ``(patient, notification, category, channel, started_at)`` of the
    last week in the capped categories (each notification counted once)."""
    day = now - timedelta(hours=24)
    marketing: dict[int, set[int]] = defaultdict(set)
    texts_day: dict[int, set[int]] = defaultdict(set)
    texts_week: dict[int, set[int]] = defaultdict(set)
    for patient_id, notification_id, category, channel, started_at in accepted:
        if category == Category.MARKETING:
            if started_at > day:
                marketing[patient_id].add(notification_id)
        elif channel == Channel.SMS:
            texts_week[patient_id].add(notification_id)
            if started_at > day:
                texts_day[patient_id].add(notification_id)
    return {
        pid: Counts(
            marketing_24h=len(marketing[pid]),
            health_texts_24h=len(texts_day[pid]),
            health_texts_7d=len(texts_week[pid]),
        )
        for pid in patient_ids
    }


def capped(category: Category, counts: Counts) -> tuple[bool, set[Channel], str | None]:
    """(whole notification capped?, channels capped, reason)."""
    if category is Category.MARKETING and counts.marketing_24h >= MARKETING_PER_DAY:
        return True, set(), f"frequency cap: {MARKETING_PER_DAY} marketing messages in 24 h"
    if category in CAPPED_HEALTH_TEXTS:
        if counts.health_texts_24h >= HEALTH_TEXTS_PER_DAY:
            return False, {Channel.SMS}, f"frequency cap: {HEALTH_TEXTS_PER_DAY} healthcare text a day"
        if counts.health_texts_7d >= HEALTH_TEXTS_PER_WEEK:
            return False, {Channel.SMS}, f"frequency cap: {HEALTH_TEXTS_PER_WEEK} healthcare texts a week"
    return False, set(), None
