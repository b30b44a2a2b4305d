"""The operators' console through the real web app (TestClient): sessions, CSRF, masking and every page's action."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from tests.web.console_seed import EMAIL, PATIENT_REF, Seeded, providers, seed
from worker.bootstrap import App
from worker.dead_letters import list_dead_letters
from worker.web.app import create_web_app
from worker.web.auth import revoke_api_key, set_api_scopes

PAGES = [
    "/console",
    "/console/patients",
    f"/console/patients/{PATIENT_REF}",
    "/console/notifications/1",
    "/console/dead-letters",
    "/console/dead-letters/replay-all",
    "/console/health",
    "/console/campaigns",
    "/console/campaigns/1/cancel",
]


@dataclass
class Console:
    app: App
    client: TestClient
    seeded: Seeded

    def sign_in(self, key: str | None = None, **headers: str) -> Any:
        page = self.client.get("/console/sign-in")
        token = _csrf(page.text)
        return self.client.post(
            "/console/sign-in",
            data={"csrf": token, "api_key": key or self.seeded.console_key},
            headers=headers,
            follow_redirects=False,
        )

    def csrf(self, path: str = "/console/patients") -> str:
        return _csrf(self.client.get(path).text)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


@pytest.fixture
def console(make_app) -> Iterator[Console]:  # type: ignore[no-untyped-def]
    app = make_app(providers=providers())
    seeded = seed(app)
    with TestClient(create_web_app(app)) as client:
        yield Console(app, client, seeded)


def test_no_page_without_a_session(console: Console) -> None:
    for path in PAGES:
        response = console.client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/console/sign-in"
    for path in ("/console/sign-out", "/console/dead-letters/replay-all", "/console/campaigns/1/cancel"):
        response = console.client.post(path, data={"csrf": "x"}, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/console/sign-in"
    assert list_dead_letters(console.app.broker, console.app.settings.queue_name)  # nothing was replayed
    # The sign-in page's own assets are served to anyone, from the app itself; nothing else is.
    css = console.client.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert console.client.get("/console/static/../routes.py").status_code == 404
    assert console.client.get("/console/static/routes.py").status_code == 404


def test_sign_in_needs_a_live_key_with_the_console_scope(console: Console) -> None:
    for key in ("cn_000000000000_" + "a" * 43, "not a key", console.seeded.api_key):  # unknown, garbage, no scope
        with capture_logs() as logs:
            response = console.sign_in(key)
        assert [e["event"] for e in logs if e["event"].startswith("console.")] == ["console.sign_in_refused"]
        assert key not in repr(logs)
        assert response.status_code == 401
        assert "lacks the console scope" in response.text and key not in response.text
        assert "cn_console=" not in response.headers.get("set-cookie", "")
    # The sign-in form's own token: a post from elsewhere (no cookie, or another token) is refused.
    console.client.cookies.clear()
    forged = console.client.post("/console/sign-in", data={"csrf": "x", "api_key": console.seeded.console_key})
    assert forged.status_code == 403


def test_session_cookie_attributes(console: Console) -> None:
    response = console.sign_in()
    assert response.status_code == 303 and response.headers["location"] == "/console/patients"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("cn_console="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP on localhost
    behind_proxy = console.sign_in(**{"X-Forwarded-Proto": "https"})
    cookie = next(c for c in behind_proxy.headers.get_list("set-cookie") if c.startswith("cn_console="))
    assert "Secure" in cookie
    page = console.client.get("/console/patients")
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_every_post_needs_the_session_csrf_token(console: Console) -> None:
    console.sign_in()
    dead = list_dead_letters(console.app.broker, console.app.settings.queue_name)
    for path in (
        "/console/sign-out",
        "/console/dead-letters/replay-all",
        f"/console/dead-letters/{dead[0].message_id}/replay",
        f"/console/campaigns/{console.seeded.campaign_id}/cancel",
    ):
        for data in ({}, {"csrf": "forged"}):
            assert console.client.post(path, data=data).status_code == 403, path
    assert list_dead_letters(console.app.broker, console.app.settings.queue_name) == dead
    assert console.client.get("/console/patients").status_code == 200  # still signed in


def test_sign_out_ends_the_session(console: Console) -> None:
    console.sign_in()
    old_cookie = console.client.cookies.get("cn_console")
    response = console.client.post("/console/sign-out", data={"csrf": console.csrf()}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/console/sign-in?notice=signed-out"
    assert console.client.get("/console/patients", follow_redirects=False).status_code == 303
    # The old cookie, replayed, opens nothing: the session is gone server-side.
    console.client.cookies.set("cn_console", old_cookie or "", path="/console")
    assert console.client.get("/console/patients", follow_redirects=False).status_code == 303
    assert "You are signed out." in console.client.get("/console/sign-in?notice=signed-out").text


def test_idle_timeout_and_lifetime(console: Console) -> None:
    console.sign_in()
    for _ in range(3):  # activity keeps it alive
        console.app.clock.advance(minutes=29)
        assert console.client.get("/console/patients", follow_redirects=False).status_code == 200
    console.app.clock.advance(minutes=31)
    response = console.client.get("/console/patients", follow_redirects=False)
    assert response.headers["location"] == "/console/sign-in?notice=expired"
    # However busy, a session ends after console.max_session_hours (12).
    console.sign_in()
    for _ in range(25):
        console.app.clock.advance(minutes=29)
        last = console.client.get("/console/patients", follow_redirects=False)
    assert last.status_code == 303


def test_revoking_the_key_or_the_scope_ends_sessions(console: Console) -> None:
    console.sign_in()
    set_api_scopes(console.app.engine, "support-desk", "read")
    assert console.client.get("/console/patients", follow_redirects=False).status_code == 303
    set_api_scopes(console.app.engine, "support-desk", "console")
    console.sign_in()
    assert console.client.get("/console/patients", follow_redirects=False).status_code == 200
    assert revoke_api_key(console.app.engine, console.app.clock, "support-desk")
    assert console.client.get("/console/patients", follow_redirects=False).status_code == 303


def test_patient_search_timeline_and_masking(console: Console) -> None:
    console.sign_in()
    missing = console.client.get("/console/patients", params={"ref": "<script>x</script>"})
    assert missing.status_code == 404 and "No patient has the ref" in missing.text
    assert "&lt;script&gt;" in missing.text and "<script>x" not in missing.text  # echoed escaped, never as markup
    found = console.client.get("/console/patients", params={"ref": PATIENT_REF}, follow_redirects=False)
    assert found.headers["location"] == f"/console/patients/{PATIENT_REF}"
    page = console.client.get(found.headers["location"]).text
    assert "+1 ***-***-0142" in page and "j***@e***.org" in page
    assert "5550142" not in page and EMAIL not in page and "jane" not in page
    seeded = console.seeded
    for nid in (seeded.sent_id, seeded.failed_id, seeded.dead_id):
        assert f'href="/console/notifications/{nid}"' in page
    assert "InvalidRegistration" in page and "21211" in page  # provider answers (error codes)
    assert "ledger: preference" in page and "api:care-platform" in page
    # Newest first: the dead-lettered one, the failed one, the mute, the sent one.
    order = [page.index(f"#{seeded.dead_id} "), page.index(f"#{seeded.failed_id} "), page.index("ledger: preference")]
    assert order == sorted(order) and page.index("ledger: preference") < page.index(f"#{seeded.sent_id} ")
    detail = console.client.get(f"/console/notifications/{seeded.failed_id}").text
    assert "pending" in detail and "failed" in detail and "InvalidRegistration" in detail
    assert "5550142" not in detail
    assert console.client.get("/console/notifications/999999").status_code == 404
    bad = console.client.get(f"/console/patients/{PATIENT_REF}", params={"cursor": "garbage"})
    assert bad.status_code == 422


def test_timeline_shows_her_care_pauses(console: Console) -> None:
    from worker.care_pause import lift_pause, set_pause
    from worker.models_consent import ConsentSource, PauseReason

    app, patient = console.app, console.seeded.patient_id
    set_pause(
        app.engine,
        app.clock,
        patient_id=patient,
        reason=PauseReason.NICU_STAY,
        until=None,
        hold_appointment_reminders=True,
        source=ConsentSource.API,
        actor="api:care-platform",
    )
    app.clock.advance(minutes=1)
    lift_pause(app.engine, app.clock, patient_id=patient, source=ConsentSource.OPERATOR, actor="operator:dana")
    console.sign_in()
    page = console.client.get(f"/console/patients/{PATIENT_REF}").text
    assert page.index("Pause lifted") < page.index("Paused (nicu_stay)")  # newest first
    assert "until lifted" in page and "appointment reminders held too" in page and "operator:dana" in page


def test_patient_timeline_pages(console: Console) -> None:
    from tests.conftest import create_notification

    for _ in range(30):
        console.app.clock.advance(seconds=1)
        create_notification(console.app, console.seeded.patient_id)
    console.sign_in()
    page = console.client.get(f"/console/patients/{PATIENT_REF}").text
    assert page.count('class="item notification') == 25
    older = re.search(r'href="(/console/patients/[^"]+\?cursor=[^"]+)">Older', page)
    assert older
    rest = console.client.get(older.group(1).replace("&amp;", "&")).text
    assert "(older)" in rest and 'href="/console/notifications/' in rest and "Older</a>" not in rest


def test_dead_letters_inspect_and_replay(console: Console) -> None:
    console.sign_in()
    [letter] = list_dead_letters(console.app.broker, console.app.settings.queue_name)
    listing = console.client.get("/console/dead-letters").text
    assert letter.message_id in listing and f"Notification #{console.seeded.dead_id}" in listing
    inspect = console.client.get(f"/console/dead-letters/{letter.message_id}").text
    assert "deliver" in inspect and "failed" in inspect
    confirm = console.client.get(f"/console/dead-letters/{letter.message_id}/replay")
    assert "Replay this dead letter?" in confirm.text
    with capture_logs() as logs:
        done = console.client.post(
            f"/console/dead-letters/{letter.message_id}/replay",
            data={"csrf": _csrf(confirm.text)},
            follow_redirects=False,
        )
    assert done.headers["location"] == "/console/dead-letters?notice=replayed"
    [audit] = [e for e in logs if e["event"] == "console.dead_letter_replayed"]  # who did it, for the audit trail
    assert audit["operator"] == "support-desk" and audit["notification_id"] == console.seeded.dead_id
    assert list_dead_letters(console.app.broker, console.app.settings.queue_name) == []
    history = console.client.get(f"/console/notifications/{console.seeded.dead_id}").text
    assert "replayed from dead letters" in history
    again = console.client.post(
        f"/console/dead-letters/{letter.message_id}/replay", data={"csrf": _csrf(confirm.text)}, follow_redirects=False
    )
    assert again.headers["location"] == "/console/dead-letters?notice=gone"


def test_replay_all(console: Console) -> None:
    console.sign_in()
    confirm = console.client.get("/console/dead-letters/replay-all").text
    assert "1 dead letter(s)" in confirm
    done = console.client.post(
        "/console/dead-letters/replay-all", data={"csrf": _csrf(confirm)}, follow_redirects=False
    )
    assert done.headers["location"] == "/console/dead-letters?notice=replayed-all"
    assert list_dead_letters(console.app.broker, console.app.settings.queue_name) == []


def test_provider_health(console: Console) -> None:
    console.sign_in()
    page = console.client.get("/console/health").text
    counts = {
        (provider, what): int(n)
        for provider, body in re.findall(r'data-provider="([^"]+)">(.*?)</li>', page, re.S)
        for what, n in re.findall(r'data-count="([a-z_]+)">(\d+)<', body)
    }
    assert [counts["fake-push", k] for k in ("accepted", "retried", "failed", "rate_limit_waits")] == [1, 0, 1, 0]
    assert [counts["fake-sms", k] for k in ("accepted", "retried", "failed", "rate_limit_waits")] == [0, 0, 1, 0]
    assert "circuit-closed" in page
    assert "deliveries" in page  # the queue, with its depth


def test_campaign_progress_and_cancel(console: Console) -> None:
    console.sign_in()
    cid = console.seeded.campaign_id
    page = console.client.get("/console/campaigns").text
    assert "Spring classes" in page and "launched" in page
    assert "no_consent: <strong>1</strong>" in page and "unreachable: <strong>1</strong>" in page  # held back
    confirm = console.client.get(f"/console/campaigns/{cid}/cancel")
    assert "Cancel the campaign" in confirm.text and "not yet sent will be cancelled" in confirm.text
    done = console.client.post(
        f"/console/campaigns/{cid}/cancel", data={"csrf": _csrf(confirm.text)}, follow_redirects=False
    )
    assert done.headers["location"] == "/console/campaigns?notice=cancelled"
    after = console.client.get("/console/campaigns").text
    assert "cancelled" in after and f"/console/campaigns/{cid}/cancel" not in after
    assert "<dt>Cancelled</dt><dd>4</dd>" in after
    assert console.client.get("/console/campaigns/9999/cancel").status_code == 404


def test_run_demo_prints_the_console_and_a_one_time_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.test_cli import _run
    from worker.db import make_engine
    from worker.web.auth import Scope, authenticate

    keys = []
    for _ in range(2):
        result = _run(["run", "--demo", "--once", "--port", "0"], tmp_path)
        assert result.returncode == 0, result.stderr
        match = re.search(
            r"operator console: http://127\.0\.0\.1:\d+/console  \(one-time demo key: (cn_\S+)\)", result.stdout
        )
        assert match, result.stdout
        keys.append(match.group(1))
    engine = make_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    try:
        latest = authenticate(engine, keys[1])
        assert latest is not None and latest.scopes == {Scope.CONSOLE}
        assert authenticate(engine, keys[0]) is None  # each run's key replaces the last
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_console_on_postgres(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=providers(), database_url=pg_url)
    seeded = seed(app)
    with TestClient(create_web_app(app)) as client:
        console = Console(app, client, seeded)
        assert console.sign_in().status_code == 303
        page = client.get(f"/console/patients/{PATIENT_REF}").text
        assert "+1 ***-***-0142" in page and f"#{seeded.failed_id} " in page and "ledger: preference" in page
        assert "fake-push" in client.get("/console/health").text
        confirm = client.get(f"/console/campaigns/{seeded.campaign_id}/cancel").text
        done = client.post(
            f"/console/campaigns/{seeded.campaign_id}/cancel", data={"csrf": _csrf(confirm)}, follow_redirects=False
        )
        assert done.headers["location"] == "/console/campaigns?notice=cancelled"
        app.clock.advance(minutes=31)
        assert client.get("/console/patients", follow_redirects=False).status_code == 303
