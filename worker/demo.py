"""Demo data for the embedded default: one patient, one phone, and a care-team message notice."""

from __future__ import annotations

import structlog

from worker.bootstrap import App
from worker.categories import Category
from worker.patients import register_device, upsert_patient

log = structlog.get_logger(__name__)


def seed_demo(app: App) -> int:
    """Create the demo patient (idempotent) and submit one notification; returns its id."""
    patient_id = upsert_patient(
        app.engine,
        app.clock,
        external_ref="demo-patient-1",
        time_zone="America/Chicago",
        locale="en",
        phone="+1 312 555 0142",
    )
    register_device(app.engine, app.clock, patient_id=patient_id, platform="ios", token="demo-ios-token-0001")
    result = app.submit(
        patient_id=patient_id,
        category=Category.CARE_TEAM_MESSAGE,
        idempotency_key=f"demo:care_team_message:{app.clock.now():%Y%m%dT%H%M%S}",
    )
    log.info("demo.submitted", notification_id=result.notification_id)
    return result.notification_id
