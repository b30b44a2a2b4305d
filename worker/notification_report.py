"""Why a notification went, was held back, or failed: one report for ``carenotify status`` and the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.db import session_scope
from worker.errors import NotFound
from worker.models import DeliveryAttempt, Notification, NotificationEvent
from worker.models_care_team import CareTeamMessage


def notification_report(engine: Engine, notification_id: int) -> dict[str, Any]:
    """State, reason, the history of transitions and every provider call, as plain JSON-ready data.

    Attempts name a device id or a channel as target, never a phone number or address.
    """
    with session_scope(engine) as session:
        row = session.get(Notification, notification_id)
        if row is None:
            raise NotFound(f"notification {notification_id} does not exist")
        events = session.scalars(
            select(NotificationEvent)
            .where(col(NotificationEvent.notification_id) == notification_id)
            .order_by(col(NotificationEvent.id))
        ).all()
        attempts = session.scalars(
            select(DeliveryAttempt)
            .where(col(DeliveryAttempt.notification_id) == notification_id)
            .order_by(col(DeliveryAttempt.id))
        ).all()
        care_team = session.get(CareTeamMessage, notification_id)
        return {
            "id": row.id,
            "patient_id": row.patient_id,
            "category": str(row.category),
            "state": str(row.state),
            "reason": row.reason,
            "attempts": row.attempt_count,
            "not_before": row.not_before.isoformat() if row.not_before else None,
            "created_at": row.created_at.isoformat(),
            "finished_at": row.finished_at.isoformat() if row.finished_at else None,
            "history": [
                {"at": e.at.isoformat(), "from": e.from_state, "to": e.to_state, "reason": e.reason} for e in events
            ],
            "provider_calls": [
                {
                    "at": a.started_at.isoformat(),
                    "channel": str(a.channel),
                    "provider": a.provider,
                    "target": a.target,
                    "outcome": a.outcome,
                    "error_code": a.error_code,
                    "provider_ref": a.provider_ref,
                    "detail": a.detail,
                    "duration_ms": a.duration_ms,
                }
                for a in attempts
            ],
            # A care-team message's notice: its digest, read receipt and follow-up (worker/care_team).
            **({"care_team": care_team.summary()} if care_team is not None else {}),
        }
