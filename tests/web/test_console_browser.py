"""The console in a real headless Chromium (Debian's), keyboard only: sign in, find a patient, open a notification,
replay a dead letter, cancel a campaign, sign out; and a session-less request sent to sign-in. Screenshots of every
page, wide and at 360 px, under test-output/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import live_server
from tests.web.console_seed import PATIENT_REF, PHONE, Seeded, providers, seed
from worker.bootstrap import App
from worker.dead_letters import list_dead_letters
from worker.web.app import create_web_app


@pytest.fixture
def served(make_app) -> Iterator[tuple[str, App, Seeded]]:  # type: ignore[no-untyped-def]
    app = make_app(providers=providers())
    seeded = seed(app)
    with live_server(create_web_app(app)) as base:
        yield base, app, seeded


class Watched:
    """A page whose browser-console errors (a CSP refusal, a missing asset) fail the test."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        page.on("response", lambda r: self.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)


def _fits(page: Any) -> bool:
    """Nothing wider than the window: no sideways scrolling of the page itself."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


#: Controls a screen reader could not name: inputs without a label, links and buttons without text or aria-label.
UNNAMED = """() => [
  ...[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
    .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label')).map(el => el.outerHTML),
  ...[...document.querySelectorAll('a, button')]
    .filter(el => !el.textContent.trim() && !el.getAttribute('aria-label')).map(el => el.outerHTML),
]"""


def _keyboard_to(page: Any, role: str, name: str) -> None:
    """Reach a control with Tab alone and press Enter on it, as a keyboard user would."""
    target = page.get_by_role(role, name=name)
    for _ in range(60):
        if target.evaluate("el => el === document.activeElement"):
            page.keyboard.press("Enter")
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"could not reach the {role} {name!r} with Tab")


def _sign_in(page: Any, base: str, key: str) -> None:
    page.goto(f"{base}/console/health")
    assert page.url == f"{base}/console/sign-in"
    page.wait_for_function("document.activeElement && document.activeElement.id === 'api_key'")  # autofocus
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/console/patients")


def test_console_end_to_end(browser, screenshots: Path, served) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, app, seeded = served
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    watched = Watched(context.new_page())
    page = watched.page

    page.goto(f"{base}/console/patients")
    assert page.url == f"{base}/console/sign-in"
    page.screenshot(path=screenshots / "01-sign-in.png", full_page=True)
    _sign_in(page, base, seeded.console_key)

    page.wait_for_function("document.activeElement && document.activeElement.id === 'ref'")  # autofocus
    page.keyboard.type(PATIENT_REF)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/console/patients/{PATIENT_REF}")
    text = page.inner_text("main")
    assert "+1 ***-***-0142" in text and PHONE[-7:] not in page.content()
    page.screenshot(path=screenshots / "02-patient.png", full_page=True)

    _keyboard_to(page, "link", f"#{seeded.failed_id} care_team_message")
    page.wait_for_url(f"{base}/console/notifications/{seeded.failed_id}")
    assert "InvalidRegistration" in page.inner_text("main")
    page.screenshot(path=screenshots / "03-notification.png", full_page=True)

    _keyboard_to(page, "link", "Dead letters")
    page.wait_for_url(f"{base}/console/dead-letters")
    page.screenshot(path=screenshots / "04-dead-letters.png", full_page=True)
    [letter] = list_dead_letters(app.broker, app.settings.queue_name)
    _keyboard_to(page, "link", f"Replay message {letter.message_id}")
    page.wait_for_url(f"{base}/console/dead-letters/{letter.message_id}/replay")
    page.screenshot(path=screenshots / "05-replay-confirm.png", full_page=True)
    _keyboard_to(page, "button", "Replay")
    page.wait_for_url(f"{base}/console/dead-letters?notice=replayed")
    assert "queued again" in page.inner_text("main") and "No dead letters." in page.inner_text("main")
    assert list_dead_letters(app.broker, app.settings.queue_name) == []

    _keyboard_to(page, "link", "Provider health")
    page.wait_for_url(f"{base}/console/health")
    assert "fake-push" in page.inner_text("main")
    page.screenshot(path=screenshots / "06-health.png", full_page=True)

    _keyboard_to(page, "link", "Campaigns")
    page.wait_for_url(f"{base}/console/campaigns")
    page.screenshot(path=screenshots / "07-campaigns.png", full_page=True)
    _keyboard_to(page, "link", "Cancel campaign Spring classes")
    page.screenshot(path=screenshots / "08-cancel-confirm.png", full_page=True)
    _keyboard_to(page, "button", "Cancel the campaign")
    page.wait_for_url(f"{base}/console/campaigns?notice=cancelled")
    assert "cancelled" in page.inner_text("main")
    page.screenshot(path=screenshots / "09-campaign-cancelled.png", full_page=True)

    _keyboard_to(page, "button", "Sign out")
    page.wait_for_url(f"{base}/console/sign-in?notice=signed-out")
    assert "You are signed out." in page.inner_text("main")
    page.goto(f"{base}/console/campaigns")
    assert page.url == f"{base}/console/sign-in"
    assert watched.errors == []
    context.close()

    # A browser that never signed in is sent to sign-in too.
    fresh = browser.new_context()
    anonymous = fresh.new_page()
    anonymous.goto(f"{base}/console/patients/{PATIENT_REF}")
    assert anonymous.url == f"{base}/console/sign-in"
    assert anonymous.get_by_label("API key").is_visible()
    fresh.close()


def test_console_at_360_px(browser, screenshots: Path, served) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    base, app, seeded = served
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2)
    watched = Watched(context.new_page())
    page = watched.page
    page.goto(f"{base}/console/sign-in")
    assert _fits(page)
    page.screenshot(path=screenshots / "01-sign-in-360.png", full_page=True)
    _sign_in(page, base, seeded.console_key)
    [letter] = list_dead_letters(app.broker, app.settings.queue_name)
    pages = {
        "02-patients-360": "/console/patients",
        "03-patient-360": f"/console/patients/{PATIENT_REF}",
        "04-notification-360": f"/console/notifications/{seeded.failed_id}",
        "05-dead-letters-360": "/console/dead-letters",
        "06-dead-letter-360": f"/console/dead-letters/{letter.message_id}",
        "07-health-360": "/console/health",
        "08-campaigns-360": "/console/campaigns",
        "09-cancel-confirm-360": f"/console/campaigns/{seeded.campaign_id}/cancel",
    }
    for name, path in pages.items():
        page.goto(f"{base}{path}")
        assert page.url == f"{base}{path}"
        assert _fits(page), path
        assert page.evaluate(UNNAMED) == [], path
        assert page.locator("h1").count() == 1 and page.locator("html[lang=en]").count() == 1
        page.screenshot(path=screenshots / f"{name}.png", full_page=True)
    assert watched.errors == []
    context.close()
