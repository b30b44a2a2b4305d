"""Reading her page and saving it: through :mod:`worker.preferences`, so the consent ledger (source
``preference_page``) and the preference rows change together and are checked at send time like any other change."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy.engine import Engine

from worker.clock import Clock
from worker.consent import current_consent
from worker.db import session_scope
from worker.errors import NotFound
from worker.models import Patient
from worker.models_consent import ConsentSource
from worker.preference_page.grid import Cell, build_cells, changes_from
from worker.preferences import get_preferences, set_preferences

log = structlog.get_logger(__name__)

#: Who the ledger says made the change: the patient herself, holding her signed link.
ACTOR = "patient"


@dataclass(frozen=True)
class PageState:
    patient_id: int
    locale: str
    cells: list[Cell]


def load_page(engine: Engine, patient_id: int) -> PageState:
    """Her page as it stands; :class:`NotFound` if she no longer exists (erased)."""
    with session_scope(engine) as session:
        patient = session.get(Patient, patient_id)
        if patient is None:
            raise NotFound("the patient no longer exists")
        locale = patient.locale
        consent = current_consent(session, patient_id)
    return PageState(patient_id, locale, build_cells(get_preferences(engine, patient_id), consent))


def patient_locale(engine: Engine, patient_id: int) -> str | None:
    with session_scope(engine) as session:
        patient = session.get(Patient, patient_id)
        return patient.locale if patient is not None else None


def save_page(engine: Engine, clock: Clock, *, patient_id: int, shown: str, ticked: set[str]) -> int:
    """Apply what she changed on the page, atomically; returns how many settings changed (0: nothing to do)."""
    changes = changes_from(load_page(engine, patient_id).cells, shown, ticked)
    if changes:
        set_preferences(
            engine, clock, patient_id=patient_id, changes=changes, source=ConsentSource.PREFERENCE_PAGE, actor=ACTOR
        )
    # Ids and counts only; which boxes she changed is in the consent ledger.
    log.info("preference_page.saved", patient_id=patient_id, changes=len(changes))
    return len(changes)
