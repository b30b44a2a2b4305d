"""A small world for the console tests (TestClient and browser): a patient with a history, a dead letter, a
campaign under way, and a console key. Built through the services; nothing is written around them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import dramatiq

from integrations.base import Outcome, Provider, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import create_notification, create_patient, fake_providers
from worker.bootstrap import App
from worker.campaigns import create_campaign, launch_campaign
from worker.categories import Category, Channel
from worker.dead_letters import list_dead_letters
from worker.delivery import deliver
from worker.models_consent import ConsentSource
from worker.outbox import submit
from worker.preferences import PreferenceChange, set_preferences
from worker.web.auth import create_api_key

PATIENT_REF = "pt-console-1"
PHONE = "+13125550142"
EMAIL = "jane.doe@example.org"


class Exploding(ScriptedProvider):
    """A provider with a bug: every send raises, so the broker ends up dead-lettering the message."""

    def send(self, *, message):  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")


@dataclass
class Seeded:
    console_key: str
    api_key: str
    patient_id: int
    sent_id: int
    failed_id: int
    dead_id: int
    campaign_id: int


def dead_letter(app: App, patient_id: int) -> int:
    """Crash a delivery until the broker gives up (a real worker, a provider that raises)."""
    # Committed without a broker message of its own, so the crashing message below is the only one claiming it.
    nid = submit(
        app.engine,
        app.clock,
        lambda _: None,
        patient_id=patient_id,
        category=Category.CARE_TEAM_MESSAGE,
        idempotency_key=f"dead-letter-{patient_id}",
        channels=[Channel.PUSH],
    ).notification_id
    working = app.deps.providers
    app.deps.providers = fake_providers(push=Exploding(name="push"))
    message = app.actors.deliver.message(nid).copy(options={"retries": 99})  # as if retried to the cap already
    app.broker.enqueue(message)
    worker = dramatiq.Worker(app.broker, worker_threads=1)
    worker.start()
    try:
        deadline = time.monotonic() + 15
        while not list_dead_letters(app.broker, app.settings.queue_name) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        app.deps.providers = working
    app.actors.give_up.fn({"args": [nid]}, {"retries": 99})  # what dramatiq's give-up hook records
    return nid


def providers() -> dict[Channel, list[Provider]]:
    """Push accepts the first notice and refuses the second for good, as SMS then does too."""
    push = ScriptedProvider(
        name="fake-push",
        channel=Channel.PUSH,
        script=[
            SendResult(outcome=Outcome.ACCEPTED),
            SendResult(outcome=Outcome.FAILED, error_code="InvalidRegistration"),
        ],
    )
    sms = ScriptedProvider(
        name="fake-sms", channel=Channel.SMS, script=[SendResult(outcome=Outcome.FAILED, error_code="21211")]
    )
    return fake_providers(push=push, sms=sms)


def seed(app: App) -> Seeded:
    """The world; ``app`` was built with :func:`providers`."""
    console_key = create_api_key(app.engine, app.clock, "support-desk", scopes="console")
    api_key = create_api_key(app.engine, app.clock, "care-platform")
    patient = create_patient(app, ref=PATIENT_REF, phone=PHONE, email=EMAIL)
    for n in range(3):
        create_patient(app, ref=f"pt-audience-{n}", devices=(("ios", f"tok-{n}"),))
    create_patient(app, ref="pt-no-app", devices=())  # no device: the push campaign cannot reach her
    opted_out = create_patient(app, ref="pt-opted-out", devices=(("ios", "tok-x"),))
    set_preferences(
        app.engine,
        app.clock,
        patient_id=opted_out,
        changes=[PreferenceChange(Category.MARKETING, Channel.PUSH, False)],
        source=ConsentSource.APP,
        actor="api:care-platform",
    )
    sent = create_notification(app, patient)
    deliver(app.deps, sent)
    app.clock.advance(minutes=2)
    set_preferences(
        app.engine,
        app.clock,
        patient_id=patient,
        changes=[PreferenceChange(Category.SURVEY_REMINDER, Channel.PUSH, False)],
        source=ConsentSource.APP,
        actor="api:care-platform",
    )
    app.clock.advance(minutes=2)
    failed = create_notification(app, patient)  # push and SMS both refuse it (see providers())
    deliver(app.deps, failed)
    app.clock.advance(minutes=2)
    dead = dead_letter(app, patient)
    campaign = create_campaign(
        app.engine, app.clock, name="Spring classes", template="class_invite", channels=["push"], created_by="test"
    )
    launch_campaign(app.engine, app.clock, app.settings.campaigns, campaign)
    app.launch_campaigns()
    return Seeded(console_key, api_key, patient, sent, failed, dead, campaign)
