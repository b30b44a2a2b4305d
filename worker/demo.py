"""Demo data for the embedded default: one patient, one phone, and a care-team message notice."""

from __future__ import annotations

import structlog

from worker.bootstrap import App
from worker.categories import Category, Channel
from worker.models_consent import ConsentSource
from worker.patients import register_device, upsert_patient
from worker.preferences import PreferenceChange, set_preferences

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


#: (external_ref, phone, email, device token, category): each shows one path a notification can take.
_DEMO_PATIENTS: tuple[tuple[str, str | None, str | None, str | None, Category], ...] = (
    # A phone with the app: the care-team notice goes by push.
    ("demo-patient-1", "+1 312 555 0142", None, "demo-ios-token-0001", Category.CARE_TEAM_MESSAGE),
    # No app installed: the same notice falls back to SMS.
    ("demo-patient-2", "+1 312 555 0177", None, None, Category.CARE_TEAM_MESSAGE),
    # A required account notice (policy update) goes by email, whatever the patient muted.
    ("demo-patient-3", None, "patient3@example.org", None, Category.ACCOUNT_NOTICE),
    # Muted care-team notices on every channel she has: held back, with the reason written down.
    ("demo-patient-4", "+1 312 555 0199", None, "demo-ios-token-0004", Category.CARE_TEAM_MESSAGE),
)
_MUTED = "demo-patient-4"


def run_demo(app: App, *, timeout_ms: int = 30_000) -> list[str]:
    """Seed the demo patients, send each one notification through a real in-process worker, and say what happened.

    Idempotent on the patients; every run sends new notifications (keys carry the time of the run).
    """
    from worker.notification_report import notification_report
    from worker.runtime import start_worker, stop_worker

    stamp = f"{app.clock.now():%Y%m%dT%H%M%S%f}"
    submitted: list[tuple[str, int]] = []
    worker = start_worker(app, threads=2)
    try:
        for ref, phone, email, token, category in _DEMO_PATIENTS:
            patient_id = upsert_patient(
                app.engine, app.clock, external_ref=ref, time_zone="America/Chicago", phone=phone, email=email
            )
            if token:
                register_device(app.engine, app.clock, patient_id=patient_id, platform="ios", token=token)
            if ref == _MUTED:
                set_preferences(
                    app.engine,
                    app.clock,
                    patient_id=patient_id,
                    changes=[PreferenceChange(category, channel, False) for channel in (Channel.PUSH, Channel.SMS)],
                    source=ConsentSource.APP,
                    actor="demo",
                )
            result = app.submit(patient_id=patient_id, category=category, idempotency_key=f"demo:{ref}:{stamp}")
            submitted.append((ref, result.notification_id))
        app.broker.join(app.settings.queue_name, timeout=timeout_ms)
        worker.join()
    finally:
        stop_worker(app, worker)
    lines = []
    for ref, notification_id in submitted:
        report = notification_report(app.engine, notification_id)
        channels = ",".join(call["channel"] for call in report["provider_calls"]) or "-"
        lines.append(
            f"notification {notification_id} for {ref}: {report['category']} -> {report['state']} via {channels}"
            f" ({report['reason']})"
        )
    return lines


#: The API client whose key ``carenotify run --demo`` prints for signing in to the console.
CONSOLE_DEMO_CLIENT = "console-demo"


def demo_console_key(app: App) -> str:
    """A fresh key for the ``console-demo`` client (scope ``console`` only), created on first use. Each run's key
    replaces the last one: an earlier run's printed key stops working, and so do the sessions it opened."""
    from worker.web.auth import add_api_key, create_api_key

    key = add_api_key(app.engine, app.clock, CONSOLE_DEMO_CLIENT, revoke_others=True)
    return key or create_api_key(app.engine, app.clock, CONSOLE_DEMO_CLIENT, scopes="console")
