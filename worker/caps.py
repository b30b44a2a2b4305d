"""Frequency caps, counted from what was actually sent (the database), at send time.

Marketing: at most 3 per 24 h per patient (the Florida/Oklahoma rule, applied everywhere). Healthcare texts
under the TCPA exemption: at most 1 a day and 3 a week per patient. Care-team notices are not capped: they
tell a patient a clinician wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
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
    """:func:`recent_counts` for many patients in three grouped queries (a delivery batch).

    ``exclude`` are the notifications being decided; a batch holds at most one per patient, so excluding
    them all is excluding each one's own.
    """

    def _count(categories: tuple[Category, ...], since: datetime, channel: Channel | None) -> dict[int, int]:
        query = (
            select(col(Notification.patient_id), func.count(func.distinct(col(DeliveryAttempt.notification_id))))
            .join(Notification, col(Notification.id) == col(DeliveryAttempt.notification_id))
            .where(
                col(Notification.patient_id).in_(list(patient_ids)),
                col(Notification.id).not_in(list(exclude)),
                col(Notification.category).in_([c.value for c in categories]),
                col(DeliveryAttempt.outcome) == Outcome.ACCEPTED.value,
                col(DeliveryAttempt.started_at) > since,
            )
            .group_by(col(Notification.patient_id))
        )
        if channel is not None:
            query = query.where(col(DeliveryAttempt.channel) == channel.value)
        return {int(pid): int(count) for pid, count in session.execute(query)}

    marketing = _count((Category.MARKETING,), now - timedelta(hours=24), None)
    texts_day = _count(CAPPED_HEALTH_TEXTS, now - timedelta(hours=24), Channel.SMS)
    texts_week = _count(CAPPED_HEALTH_TEXTS, now - timedelta(days=7), Channel.SMS)
    return {
        pid: Counts(
            marketing_24h=marketing.get(pid, 0),
            health_texts_24h=texts_day.get(pid, 0),
            health_texts_7d=texts_week.get(pid, 0),
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
