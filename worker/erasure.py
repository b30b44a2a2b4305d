"""Erasure: a patient's data is deleted everywhere, queued work included (e.g. a child under 13 discovered).

Notifications not yet sent are cancelled first (so a worker that already claimed one finds no patient and
stops), then the patient row is deleted; foreign keys cascade to devices, preferences, consent, appointments,
surveys, notifications and attempts. What remains is a count in the log, never an identifier of the person.
The /metrics rollup takes back what it had counted for her in the same transaction, so the metrics count only
what the database still holds.
"""

from __future__ import annotations

import structlog
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.clock import Clock
from worker.db import session_scope
from worker.errors import NotFound
from worker.metrics.rollup import forget_patient
from worker.models import Notification, Patient
from worker.outbox import OPEN_STATES, transition
from worker.states import State

log = structlog.get_logger(__name__)


def erase_patient(engine: Engine, clock: Clock, *, patient_id: int, reason: str) -> int:
    """Delete the patient and everything about them; returns how many queued notifications were cancelled."""
    now = clock.now()
    with session_scope(engine) as session:
        patient = session.get(Patient, patient_id, with_for_update=True)
        if patient is None:
            raise NotFound(f"patient {patient_id} does not exist")
        # /metrics' rollup counted her settled notifications and provider calls: take them back in this
        # transaction, so the counts keep matching what the database holds (see worker.metrics.rollup).
        forget_patient(session.connection(), patient_id)
        open_rows = session.scalars(
            select(Notification).where(
                col(Notification.patient_id) == patient_id,
                col(Notification.state).in_([*OPEN_STATES, State.SENDING]),
            )
        ).all()
        for row in open_rows:
            transition(session, row, State.CANCELLED, reason="patient erased", now=now)
        session.flush()
        session.execute(delete(Patient).where(col(Patient.id) == patient_id))
    log.info("patient.erased", cancelled=len(open_rows), reason=reason[:60])
    return len(open_rows)
