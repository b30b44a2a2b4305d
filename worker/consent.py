"""Recording and reading consent (the append-only ledger in :mod:`worker.models_consent`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlmodel import Session, col

from worker.categories import Category, Channel
from worker.models_consent import ConsentEvent, ConsentSource

#: (channel, category or None for the whole channel) -> granted
ConsentState = dict[tuple[str, str | None], bool]


def record_consent(
    session: Session,
    *,
    patient_id: int,
    channel: Channel,
    category: Category | None,
    granted: bool,
    source: ConsentSource,
    actor: str,
    at: datetime,
    detail: str | None = None,
) -> ConsentEvent:
    """Append one consent change in the caller's transaction (so it commits with whatever caused it)."""
    event = ConsentEvent(
        patient_id=patient_id,
        channel=Channel(channel).value,
        category=Category(category).value if category is not None else None,
        granted=granted,
        source=ConsentSource(source),
        actor=actor[:128],
        detail=detail[:300] if detail else None,
        at=at,
    )
    session.add(event)
    return event


def current_consent(session: Session, patient_id: int) -> ConsentState:
    """The latest event wins for each (channel, category) pair."""
    state: ConsentState = {}
    rows = session.scalars(
        select(ConsentEvent).where(col(ConsentEvent.patient_id) == patient_id).order_by(col(ConsentEvent.id))
    )
    for event in rows:
        state[(event.channel, event.category)] = event.granted
    return state
