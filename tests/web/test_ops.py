"""/healthz and /metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import create_notification, create_patient, fake_providers
from tests.web.conftest import Api, drain
from worker.bootstrap import App
from worker.categories import Category, Channel
from worker.web.app import create_web_app


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_healthz(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok", "database": "ok"}


def test_healthz_reports_an_unreachable_database(make_app, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url=f"sqlite:///{tmp_path}/missing-dir/x/y.db", migrate=False)
    with TestClient(create_web_app(app)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503 and response.json()["status"] == "unavailable"


def test_metrics_count_by_state_category_and_provider_and_show_queue_depth(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(
        name="fake-push",
        channel=Channel.PUSH,
        script=[SendResult(outcome=Outcome.ACCEPTED), SendResult(outcome=Outcome.FAILED, error_code="INVALID")],
    )
    app = make_app(providers=fake_providers(push=push, sms=ScriptedProvider(name="fake-sms", channel=Channel.SMS)))
    with TestClient(create_web_app(app)) as client:
        _check_metrics(app, client)


def _check_metrics(app: App, client: TestClient) -> None:
    sent_to = create_patient(app)
    unreachable = create_patient(app, devices=(), phone=None)  # nothing to send a care-team notice on
    create_notification(app, sent_to)
    create_notification(app, sent_to, category=Category.APPOINTMENT_REMINDER)
    create_notification(app, unreachable)
    before = _samples(client)
    assert before[("carenotify_queue_depth", (("queue", "deliveries"),))] == 3
    assert (
        before[
            (
                "carenotify_notifications",
                (("category", "care_team_message"), ("provider", "none"), ("state", "pending")),
            )
        ]
        == 2
    )

    drain(app)
    app.roll_up_metrics()  # the scheduler's metrics_rollup job: settled counts come from its rollup
    after = _samples(client)
    assert after[("carenotify_queue_depth", (("queue", "deliveries"),))] == 0
    states = {labels: value for (name, labels), value in after.items() if name == "carenotify_notifications" and value}
    assert states == {
        (("category", "care_team_message"), ("provider", "fake-push"), ("state", "sent")): 1,
        (("category", "appointment_reminder"), ("provider", "fake-sms"), ("state", "sent")): 1,
        (("category", "care_team_message"), ("provider", "none"), ("state", "failed")): 1,
    }
    calls = {labels: v for (name, labels), v in after.items() if name == "carenotify_provider_calls"}
    assert (
        calls[
            (
                ("category", "appointment_reminder"),
                ("channel", "push"),
                ("outcome", "failed"),
                ("provider", "fake-push"),
            )
        ]
        == 1
    )
    # A registry of the app's own: nothing leaks into prometheus-client's global one.
    assert REGISTRY.get_sample_value("carenotify_queue_depth", {"queue": "deliveries"}) is None
