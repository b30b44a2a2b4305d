"""No PHI in any provider payload or log line: distinctive PHI is seeded everywhere a caller could put it,
every category x channel x locale goes through the real delivery path, and nothing of it comes out."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import structlog

from integrations.console import ConsoleProvider
from integrations.fake import ScriptedProvider
from tests.conftest import create_patient, fake_providers
from worker.bootstrap import App
from worker.categories import Category, Channel
from worker.delivery import Report, deliver
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


#: Every fragment that must never come out: in a provider payload, a log line, or anything printed.
DISTINCTIVE = [
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


def _send_everything_with_phi_in_context(app: App) -> list[Report]:
    """Every category x channel x locale through the real delivery path, PHI seeded wherever a caller could."""
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
                notification_id = submit(
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
                reports.append(deliver(app.deps, notification_id))
            app.clock.advance(hours=24, minutes=1)  # stay clear of the frequency caps, same time of day
    return reports


def test_no_phi_reaches_providers_or_logs(make_app, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    fakes = {c.value: ScriptedProvider(name=f"fake-{c}", channel=c) for c in Channel}
    app = make_app(providers=fake_providers(**fakes), log_format="json", log_level="DEBUG")
    configure_logging(app.settings)
    app.deps.unsubscribe_url = lambda pid: f"https://notify.example/v1/unsubscribe/tok{pid}"
    try:
        reports = _send_everything_with_phi_in_context(app)
    finally:
        structlog.reset_defaults()
    assert all(r.state is not None for r in reports)
    sent = [m for fake in fakes.values() for m in fake.sent]
    assert len(sent) >= 30
    payloads = json.dumps(
        [{k: v for k, v in dataclasses.asdict(m).items() if k != "address"} for m in sent], default=str
    )
    captured = capsys.readouterr()  # once: a second call returns only what was written since the first
    logs = captured.err + captured.out + caplog.text
    assert "notification.settled" in captured.err, "the structured logs were captured"
    for fragment in DISTINCTIVE:
        assert fragment not in payloads, f"{fragment!r} leaked into a provider payload"
        assert fragment not in logs, f"{fragment!r} leaked into the logs"


def test_no_phi_on_standard_output_from_the_console_sink(make_app, capsys) -> None:  # type: ignore[no-untyped-def]
    """The embedded default prints every message to standard output: that stream is scanned too."""
    console = {c: [ConsoleProvider(channel=c, sink="-")] for c in Channel}
    app = make_app(providers=console, log_format="json", log_level="DEBUG")
    configure_logging(app.settings)
    app.deps.unsubscribe_url = lambda pid: f"https://notify.example/v1/unsubscribe/tok{pid}"
    try:
        _send_everything_with_phi_in_context(app)
    finally:
        structlog.reset_defaults()
    captured = capsys.readouterr()
    assert captured.out.count('"provider": "console"') >= 30, "the console sink's lines were captured"
    for fragment in DISTINCTIVE:
        assert fragment not in captured.out, f"{fragment!r} leaked onto standard output"
        assert fragment not in captured.err, f"{fragment!r} leaked into the logs"


@pytest.mark.parametrize("locale", LOCALES)
def test_every_template_exists_and_sms_fits_one_segment(locale: str) -> None:
    from worker.templates import MARKETING_TEMPLATES, VARIANTS, render

    variants = [(category, None) for category in Category if category is not Category.MARKETING]
    variants += [(Category.MARKETING, key) for key in MARKETING_TEMPLATES]
    variants += list(VARIANTS)  # other texts of a category (the care-team follow-up)
    for category, template in variants:
        for channel in Channel:
            text = render(category, channel, locale, unsubscribe_url="https://n.example/u/x", template=template)
            assert text.title and text.body
            if channel is Channel.SMS:
                assert len(text.body) <= 160 and text.body.startswith("Partum Health:")
                if category is Category.MARKETING:
                    assert text.body.endswith(("Reply STOP to opt out.", "Responda STOP para cancelar."))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_web_access_log_names_route_templates_never_paths(tmp_path: Path) -> None:
    """`carenotify web` as a real process: a request's path and query (patient refs, unsubscribe tokens) never
    reach its output; the access line names the route template."""
    port = _free_port()
    env = {
        **os.environ,
        "CARENOTIFY_DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}",
        "CARENOTIFY_SIGNING_KEY": "access-log-test-key",
        "CARENOTIFY_LOG_LEVEL": "INFO",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "web", "--host", "127.0.0.1", "--port", str(port)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ref = "pt-Quintanilla-4242"
    token = "eyJwIjo0MjQyfQ.c2lnbmF0dXJlLXRoYXQtZG9lcy1ub3QtbWF0Y2g"
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "carenotify web did not start"
            time.sleep(0.1)
        bad_key = {"Authorization": "Bearer not-a-key"}
        assert httpx.get(f"{base}/v1/patients/{ref}/preferences?email={EMAIL}", headers=bad_key).status_code == 401
        assert httpx.get(f"{base}/v1/unsubscribe/{token}?utm_source=mastitis").status_code == 422
        assert httpx.get(f"{base}/v1/{ref}").status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
    output = out + err
    for fragment in (ref, "Quintanilla", token, token[:12], EMAIL, "mastitis", "utm_source"):
        assert fragment not in output, f"{fragment!r} reached the web process's output"
    assert "/v1/patients/{external_ref}/preferences" in output and "/v1/unsubscribe/{token}" in output
    assert "<unmatched>" in output


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("kind", ["opt_out", "opt_in", "help", "clarify"])
def test_every_sms_reply_names_the_sender_and_fits_one_segment(locale: str, kind: str) -> None:
    from worker.sms_inbound import REPLY_KIND
    from worker.templates import render

    assert kind in REPLY_KIND.values()
    text = render(Category.ACCOUNT_NOTICE, Channel.SMS, locale, sms_reply=kind)
    assert text.body.startswith("Partum Health:") and len(text.body) <= 160


def test_a_refused_campaign_audience_names_the_field_without_echoing_it(make_app) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from worker.web.app import create_web_app
    from worker.web.auth import create_api_key

    app = make_app()
    key = create_api_key(app.engine, app.clock, "marketing", scopes="campaigns")
    body = {
        "name": "Spring",
        "template": "news",
        "channels": ["push"],
        "audience": {"time_zones": ["America/Chicago", "Quintanilla/Preeclampsia"]},
    }
    with TestClient(create_web_app(app)) as client:
        refused = client.post("/v1/campaigns", json=body, headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 422 and refused.json()["field"].startswith("audience.time_zones"), refused.text
    assert "Quintanilla" not in refused.text and "Preeclampsia" not in refused.text
    # The service itself (a stored audience, the CLI) refuses the same way, naming the entry by position.
    from worker.campaigns import create_campaign
    from worker.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"^audience\.time_zones: .*entry 1 ") as info:
        create_campaign(app.engine, app.clock, created_by="m", **body)  # type: ignore[arg-type]
    assert "Quintanilla" not in str(info.value) and "Preeclampsia" not in str(info.value)


@pytest.mark.parametrize("locale", LOCALES)
def test_confirm_by_reply_texts_name_the_sender_fit_one_segment_and_carry_nothing_of_the_visit(locale: str) -> None:
    from worker.templates import render

    texts = [render(Category.APPOINTMENT_REMINDER, Channel.SMS, locale, template="confirm_by_reply").body]
    texts += [
        render(Category.ACCOUNT_NOTICE, Channel.SMS, locale, sms_reply=kind).body
        for kind in ("appointment_confirmed", "appointment_reschedule")
    ]
    for text in texts:
        assert text.startswith("Partum Health:") and len(text) <= 160
        assert not any(ch.isdigit() for ch in text), "no time, date or place"


def test_no_phi_reaches_outbound_webhooks(make_app) -> None:  # type: ignore[no-untyped-def]
    """Every category x channel x locale with PHI in its context, to a real receiver subscribed to every event."""
    from tests.webhook_receiver import running_receiver
    from worker.outbound.endpoints import add_endpoint, list_endpoints

    fakes = {c.value: ScriptedProvider(name=f"fake-{c}", channel=c) for c in Channel}
    app = make_app(providers=fake_providers(**fakes))
    app.deps.unsubscribe_url = lambda pid: f"https://notify.example/v1/unsubscribe/tok{pid}"
    with running_receiver() as receiver:
        _, receiver.secret = add_endpoint(app.engine, app.clock, url=receiver.url, events="*")
        _send_everything_with_phi_in_context(app)
        assert app.outbound is not None
        app.dispatch_webhooks()
        [view] = list_endpoints(app.engine)
        app.outbound.sender.run(view.id)
    bodies = json.dumps([r.body for r in receiver.accepted()])
    assert len(receiver.accepted()) >= 30 and receiver.refused == []
    for fragment in DISTINCTIVE:
        assert fragment not in bodies, f"{fragment!r} leaked into a webhook"
