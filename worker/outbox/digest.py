"""The care-team digest, decided when a notice is submitted: the first notifies at once, later ones fold.

Why at submit time: the first notice is never delayed, so nothing waits to learn whether more will come; each
later notice only has to ask whether an unread head notice to the same patient was made within the window, and
the answer is final. A folded notice is stored terminal (``folded``, the reason naming its head) and never
queued, so the send path does no extra work. On PostgreSQL the question, the row, its events and its
``care_team_message`` record are one statement (:data:`SUBMIT_PG`); elsewhere one transaction.

A read and a fold of the same head serialise on the head's ``care_team_message`` row: the fold updates it only
``WHERE read_at IS NULL``, re-checked on the latest row once a concurrent read commits, so a notice arriving just
after the read notifies again. Two first notices submitted in the same instant may both notify: a spare notice,
never a lost one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlmodel import Session, col

from worker.categories import Category
from worker.db import pyformat
from worker.models import Notification
from worker.models_care_team import CareTeamMessage
from worker.states import State


@dataclass(frozen=True)
class DigestRule:
    """``care_team`` settings as the submit needs them."""

    window: timedelta
    escalate_after: timedelta
    urgent_escalate_after: timedelta

    def escalate_at(self, now: datetime, *, urgent: bool) -> datetime:
        return now + (self.urgent_escalate_after if urgent else self.escalate_after)


def applies(category: Category, context: dict[str, Any] | None) -> bool:
    """A notice for a platform message (the route puts its id in ``context['message_ref']``)."""
    return category is Category.CARE_TEAM_MESSAGE and bool(context and context.get("message_ref"))


def fold_reason(head_id: int, rule: DigestRule) -> str:
    return f"folded into notification {head_id}: {_window_text(rule)}"


def _window_text(rule: DigestRule) -> str:
    minutes = rule.window.total_seconds() / 60
    return f"its care-team notice of the last {minutes:g} min is still unread"


#: A head notice in one of these states never reached her (every channel failed, it expired unsent, or it was
#: cancelled): a later message must not fold into it, it notifies on its own.
UNNOTIFIED = (State.FAILED, State.EXPIRED, State.CANCELLED)
_UNNOTIFIED = "(" + ", ".join(f"'{state.value}'" for state in UNNOTIFIED) + ")"

#: The head (if any), the fold, the row, its events and its record: one statement, one round trip.
SUBMIT_PG = pyformat(
    f"""
WITH head AS (
    SELECT m.notification_id AS id
      FROM care_team_message m
     WHERE m.patient_id = :patient_id AND m.digest_of IS NULL AND m.created_at > :since
     ORDER BY m.created_at DESC
     LIMIT 1
), joined AS (
    -- Also run by a retry of a known message (its insert then does nothing): the update changes nothing then,
    -- as a later now + delay never brings the head's follow-up forward. The head's id is a scalar subquery, not a
    -- join: a plan cached while the table was empty would otherwise scan the whole table on every submit.
    UPDATE care_team_message m
       SET escalate_at = CASE WHEN m.escalate_at IS NULL THEN NULL ELSE LEAST(m.escalate_at, :escalate_at) END
     WHERE m.notification_id = (SELECT id FROM head) AND m.read_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM notification h WHERE h.id = (SELECT id FROM head) AND h.state IN {_UNNOTIFIED})
    RETURNING m.notification_id AS id
), created AS (
    INSERT INTO notification (patient_id, category, channels, context, idempotency_key, state, reason, not_before,
                              expires_at, attempt_count, enqueued_at, created_at, updated_at, finished_at)
    SELECT :patient_id, :category, :channels, :context, :idempotency_key,
           CASE WHEN j.id IS NULL THEN 'pending' ELSE 'folded' END,
           CASE WHEN j.id IS NULL THEN NULL ELSE 'folded into notification ' || j.id || :fold_text END,
           :not_before, :expires_at, 0, NULL, :now, :now, CASE WHEN j.id IS NULL THEN NULL ELSE :now END
      FROM (SELECT 1) AS one LEFT JOIN joined j ON true
     WHERE EXISTS (SELECT 1 FROM patient WHERE id = :patient_id)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, state
), created_event AS (
    INSERT INTO notification_event (notification_id, from_state, to_state, reason, at)
    SELECT id, NULL, 'pending', 'created', :now FROM created
    UNION ALL
    SELECT c.id, 'pending', 'folded', 'folded into notification ' || j.id || :fold_text, :now
      FROM created c CROSS JOIN joined j
), recorded AS (
    INSERT INTO care_team_message (notification_id, patient_id, created_at, urgent, digest_of, escalate_at, escalation)
    SELECT c.id, :patient_id, :now, :urgent, j.id,
           CASE WHEN j.id IS NULL THEN :escalate_at END, CASE WHEN j.id IS NULL THEN 'waiting' END
      FROM created c LEFT JOIN joined j ON true
)
SELECT id, true AS created, state FROM created
UNION ALL
SELECT id, false, state FROM notification WHERE idempotency_key = :idempotency_key
"""
)


def pg_params(rule: DigestRule, now: datetime, context: dict[str, Any] | None) -> dict[str, Any]:
    """The digest's parameters of :data:`SUBMIT_PG` (the notification's own are the outbox's)."""
    urgent = bool((context or {}).get("urgent"))
    # A zero window folds nothing: no head is ever younger than now.
    return {
        "since": now - rule.window if rule.window > timedelta(0) else now,
        "escalate_at": rule.escalate_at(now, urgent=urgent),
        "urgent": urgent,
        "fold_text": ": " + _window_text(rule),
    }


def open_head(session: Session, patient_id: int, now: datetime, rule: DigestRule) -> CareTeamMessage | None:
    """The portable path's question: the patient's latest head notice within the window, if she has not read it
    and it did not end without reaching her. Locked (PostgreSQL) so a concurrent read waits, as :data:`SUBMIT_PG`'s
    update does."""
    if rule.window <= timedelta(0):
        return None
    head = session.scalars(
        select(CareTeamMessage)
        .where(
            col(CareTeamMessage.patient_id) == patient_id,
            col(CareTeamMessage.digest_of).is_(None),
            col(CareTeamMessage.created_at) > now - rule.window,
        )
        .order_by(col(CareTeamMessage.created_at).desc())
        .limit(1)
        .with_for_update()
    ).first()
    if head is None or head.read_at is not None:
        return None
    state = session.scalar(select(col(Notification.state)).where(col(Notification.id) == head.notification_id))
    return None if state in UNNOTIFIED else head
