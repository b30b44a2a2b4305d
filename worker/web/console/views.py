"""What the console's pages show, read from the services: plain data, contact data already masked."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.campaigns import CampaignStats, campaign_stats
from worker.db import session_scope
from worker.dead_letters import DeadLetter
from worker.models import Device, Notification, Patient
from worker.models_campaigns import Campaign
from worker.states import TERMINAL
from worker.web.console.masking import mask_email, mask_phone

#: Campaigns listed, newest first.
CAMPAIGNS_SHOWN = 50


@dataclass(frozen=True)
class PatientCard:
    id: int
    ref: str
    time_zone: str
    locale: str
    us_state: str | None
    phone: str | None  # masked
    email: str | None  # masked
    live_devices: int


def patient_card(engine: Engine, ref: str) -> PatientCard | None:
    with session_scope(engine) as session:
        patient = session.scalars(select(Patient).where(col(Patient.external_ref) == ref)).first()
        if patient is None or patient.id is None:
            return None
        devices = session.scalar(
            select(func.count()).where(col(Device.patient_id) == patient.id, col(Device.live).is_(True))
        )
        return PatientCard(
            id=patient.id,
            ref=patient.external_ref,
            time_zone=patient.time_zone,
            locale=patient.locale,
            us_state=patient.us_state,
            phone=mask_phone(patient.phone_e164),
            email=mask_email(patient.email),
            live_devices=int(devices or 0),
        )


def patient_ref_of(engine: Engine, patient_id: int) -> str | None:
    with session_scope(engine) as session:
        patient = session.get(Patient, patient_id)
        return patient.external_ref if patient is not None else None


@dataclass(frozen=True)
class DeadLetterView:
    """A dead letter with its notification's state and reason: ids and reasons only."""

    letter: DeadLetter
    state: str | None
    reason: str | None


def with_reasons(engine: Engine, letters: list[DeadLetter]) -> list[DeadLetterView]:
    ids = [letter.notification_id for letter in letters if letter.notification_id is not None]
    found: dict[int, tuple[str, str | None]] = {}
    if ids:
        with session_scope(engine) as session:
            for nid, state, reason in session.execute(
                select(col(Notification.id), col(Notification.state), col(Notification.reason)).where(
                    col(Notification.id).in_(ids)
                )
            ):
                found[int(nid)] = (str(state), reason)
    views = []
    for letter in letters:
        state, reason = found.get(letter.notification_id or 0, (None, None))
        views.append(DeadLetterView(letter=letter, state=state, reason=reason))
    return views


@dataclass(frozen=True)
class CampaignProgress:
    stats: CampaignStats
    sent: int
    open: int
    cancelled: int
    #: Audience members held back, by reason: excluded at fan-out, and suppressed / expired / failed after it.
    held_back: dict[str, int]

    @property
    def cancellable(self) -> bool:
        return self.stats.state != "cancelled"


def campaign_progress(engine: Engine, campaign_id: int) -> CampaignProgress:
    stats = campaign_stats(engine, campaign_id)
    sent = stats.by_state.get("sent", 0) + stats.by_state.get("delivered", 0)
    still_open = sum(n for state, n in stats.by_state.items() if state not in {s.value for s in TERMINAL})
    held: dict[str, int] = {}
    for reason, n in [*stats.excluded.items(), *stats.top_reasons.items()]:
        held[reason] = held.get(reason, 0) + n
    cancelled = stats.by_state.get("cancelled", 0)
    return CampaignProgress(stats=stats, sent=sent, open=still_open, cancelled=cancelled, held_back=held)


def recent_campaigns(engine: Engine) -> list[CampaignProgress]:
    with session_scope(engine) as session:
        ids = list(session.scalars(select(col(Campaign.id)).order_by(col(Campaign.id).desc()).limit(CAMPAIGNS_SHOWN)))
    return [campaign_progress(engine, campaign_id) for campaign_id in ids if campaign_id is not None]


def when(value: datetime | str | None) -> str:
    """An instant as the console prints it: UTC to the second (``2026-03-02 18:00:05 UTC``)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def plain(value: Any) -> str:
    return "—" if value is None or value == "" else str(value)
