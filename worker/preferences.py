"""Patient preferences (mute per category x channel) and marketing consent per channel.

Every change is also written to the consent ledger, so "who turned this off, when, how" always has an answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.categories import RULES, Category, Channel
from worker.clock import Clock
from worker.consent import current_consent, record_consent
from worker.db import session_scope
from worker.errors import InvalidInput, NotFound
from worker.models import Patient, Preference
from worker.models_consent import ConsentSource


@dataclass(frozen=True)
class PreferenceChange:
    category: Category
    channel: Channel
    enabled: bool

    def __post_init__(self) -> None:
        # Accept plain strings from callers; compare as enums everywhere below.
        object.__setattr__(self, "category", Category(self.category))
        object.__setattr__(self, "channel", Channel(self.channel))


def get_preferences(engine: Engine, patient_id: int) -> dict[str, dict[str, bool]]:
    """category -> channel -> on/off, for every category and channel (defaults filled in)."""
    with session_scope(engine) as session:
        if session.get(Patient, patient_id) is None:
            raise NotFound(f"patient {patient_id} does not exist")
        stored = {
            (str(p.category), str(p.channel)): p.enabled
            for p in session.scalars(select(Preference).where(col(Preference.patient_id) == patient_id))
        }
        consent = current_consent(session, patient_id)
    out: dict[str, dict[str, bool]] = {}
    for category in Category:
        out[category.value] = {}
        for channel in Channel:
            if category is Category.MARKETING:
                granted = consent.get((channel.value, category.value))
                enabled = granted is True if channel is Channel.SMS else granted is not False
            else:
                enabled = stored.get((category.value, channel.value), True) or not RULES[category].mutable
            out[category.value][channel.value] = enabled
    return out


def set_preferences(
    engine: Engine,
    clock: Clock,
    *,
    patient_id: int,
    changes: Iterable[PreferenceChange],
    source: ConsentSource,
    actor: str,
    sms_consent_evidence: str | None = None,
) -> None:
    """Apply changes atomically. Required notices cannot be muted; SMS marketing needs written-consent evidence.

    Marketing on/off is consent (ledger); transactional on/off is a mute switch (preference row) plus a ledger
    entry. Checked again at send time, so work already queued follows the new choice.
    """
    now = clock.now()
    changes = list(changes)
    for change in changes:
        if not RULES[change.category].mutable and not change.enabled:
            raise InvalidInput(
                f"{change.category}.{change.channel}", "account notices are required and cannot be muted"
            )
        if change.category is Category.MARKETING and change.channel is Channel.SMS and change.enabled:
            if not sms_consent_evidence:
                raise InvalidInput(
                    "sms_consent_evidence", "marketing texts need prior express written consent (e.g. form id)"
                )
    with session_scope(engine) as session:
        if session.get(Patient, patient_id) is None:
            raise NotFound(f"patient {patient_id} does not exist")
        for change in changes:
            detail = None
            if change.category is Category.MARKETING and change.channel is Channel.SMS and change.enabled:
                detail = f"written consent: {sms_consent_evidence}"[:300]
            record_consent(
                session,
                patient_id=patient_id,
                channel=change.channel,
                category=change.category,
                granted=change.enabled,
                source=source,
                actor=actor,
                at=now,
                detail=detail,
            )
            if change.category is Category.MARKETING:
                continue
            row = session.scalars(
                select(Preference).where(
                    col(Preference.patient_id) == patient_id,
                    col(Preference.category) == change.category.value,
                    col(Preference.channel) == change.channel.value,
                )
            ).first()
            row = row or Preference(
                patient_id=patient_id, category=change.category, channel=change.channel, enabled=True, updated_at=now
            )
            row.enabled = change.enabled
            row.updated_at = now
            session.add(row)
