"""Frequency caps, counted from what was actually sent (the database), at send time.

Marketing: at most 3 per 24 h per patient (the Florida/Oklahoma rule, applied everywhere). Healthcare texts
under the TCPA exemption: at most 1 a day and 3 a week per patient. Care-team notices are not capped: they
tell a patient a clinician wrote.
"""

from __future__ import annotations

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

    def _count(categories: tuple[Category, ...], since: datetime, channel: Channel | None) -> int:
        query = (
            select(func.count(func.distinct(col(DeliveryAttempt.notification_id))))
            .join(Notification, col(Notification.id) == col(DeliveryAttempt.notification_id))
            .where(
                col(Notification.patient_id) == patient_id,
                col(Notification.id) != exclude,
                col(Notification.category).in_([c.value for c in categories]),
                col(DeliveryAttempt.outcome) == Outcome.ACCEPTED.value,
                col(DeliveryAttempt.started_at) > since,
            )
        )
        if channel is not None:
            query = query.where(col(DeliveryAttempt.channel) == channel.value)
        return int(session.scalar(query) or 0)

    return Counts(
        marketing_24h=_count((Category.MARKETING,), now - timedelta(hours=24), None),
        health_texts_24h=_count(CAPPED_HEALTH_TEXTS, now - timedelta(hours=24), Channel.SMS),
        health_texts_7d=_count(CAPPED_HEALTH_TEXTS, now - timedelta(days=7), Channel.SMS),
    )


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
