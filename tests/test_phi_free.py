"""No PHI in any provider payload or log line: distinctive PHI is seeded everywhere a caller could put it,
every category x channel x locale goes through the real delivery path, and nothing of it comes out."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import structlog

from integrations.fake import ScriptedProvider
from tests.conftest import create_patient, fake_providers
from worker.categories import Category, Channel
from worker.delivery import deliver
from worker.logs import configure_logging
from worker.models_consent import ConsentSource
from worker.outbox import submit
from worker.preferences import PreferenceChange, set_preferences
from worker.templates import LOCALES

PHI = {
    "name": "Marisol Quintanilla-Voss",
    "condition": "postpartum preeclampsia",
    "message": "your lactation consultant reviewed the mastitis photos",
    "clinician": "Dr. Okonkwo, perinatal psychiatry",
    "medication": "sertraline 50mg",
}
PHONE = "+12125550199"
EMAIL = "marisol.qv@example.org"


def test_no_phi_reaches_providers_or_logs(make_app, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    fakes = {c.value: ScriptedProvider(name=f"fake-{c}", channel=c) for c in Channel}
    app = make_app(providers=fake_providers(**fakes), log_format="json", log_level="DEBUG")
    configure_logging(app.settings)
    app.deps.unsubscribe_url = lambda pid: f"https://notify.example/v1/unsubscribe/tok{pid}"
    try:
        ids: list[int] = []
        reports = []
        for locale in LOCALES:
            pid = create_patient(
                app,
                ref=f"ref-{locale}",
                locale=locale,
                phone=PHONE if locale == "en" else "+12125550198",
                email=EMAIL,
                devices=(("ios", "t"),),
            )
            set_preferences(
                app.engine,
                app.clock,
                patient_id=pid,
                changes=[PreferenceChange(Category.MARKETING, Channel.SMS, True)],
                source=ConsentSource.API,
                actor="api",
                sms_consent_evidence="form 1",
            )
            for category in Category:
                for channel in Channel:
                    ids.append(
                        submit(
                            app.engine,
                            app.clock,
                            lambda _: None,
                            patient_id=pid,
                            category=category,
                            idempotency_key=f"{locale}-{category}-{channel}",
                            channels=[channel],
                            context={
                                "note": PHI["message"],
                                "clinician": PHI["clinician"],
                                "dx": PHI["condition"],
                                "rx": PHI["medication"],
                                "name": PHI["name"],
                            },
                        ).notification_id
                    )
                    reports.append(deliver(app.deps, ids[-1]))
                app.clock.advance(hours=24, minutes=1)  # stay clear of the frequency caps, same time of day
    finally:
        structlog.reset_defaults()
    assert all(r.state is not None for r in reports)
    sent = [m for fake in fakes.values() for m in fake.sent]
    assert len(sent) >= 30
    payloads = json.dumps(
        [{k: v for k, v in dataclasses.asdict(m).items() if k != "address"} for m in sent], default=str
    )
    logs = capsys.readouterr().err + capsys.readouterr().out + caplog.text
    assert "notification.settled" in logs, "the logs were captured"
    distinctive = [
        *PHI.values(),
        "Marisol",
        "Quintanilla",
        "preeclampsia",
        "lactation",
        "mastitis",
        "Okonkwo",
        "psychiatry",
        "sertraline",
        PHONE,
        PHONE[2:],
        EMAIL,
        "marisol",
    ]
    for fragment in distinctive:
        assert fragment not in payloads, f"{fragment!r} leaked into a provider payload"
        assert fragment not in logs, f"{fragment!r} leaked into the logs"


@pytest.mark.parametrize("locale", LOCALES)
def test_every_template_exists_and_sms_fits_one_segment(locale: str) -> None:
    from worker.templates import MARKETING_TEMPLATES, render

    variants = [(category, None) for category in Category if category is not Category.MARKETING]
    variants += [(Category.MARKETING, key) for key in MARKETING_TEMPLATES]
    for category, template in variants:
        for channel in Channel:
            text = render(category, channel, locale, unsubscribe_url="https://n.example/u/x", template=template)
            assert text.title and text.body
            if channel is Channel.SMS:
                assert len(text.body) <= 160 and text.body.startswith("Partum Health:")
                if category is Category.MARKETING:
                    assert text.body.endswith(("Reply STOP to opt out.", "Responda STOP para cancelar."))
