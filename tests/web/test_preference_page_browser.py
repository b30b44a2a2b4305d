"""The preference page in a real headless Chromium (Debian's ``chromium`` through Playwright), at 360 px.

Open her link, turn off survey texts, save, reload and see it; the ledger row exists and a survey text is then
suppressed at send time (a real dramatiq worker drains the queue); an expired link; Spanish; keyboard-only use; an
axe-core check (axe.min.js bundled in axe-playwright-python, injected by the test: no CDN). Screenshots go to
test-output/screenshots/<test>/.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from sqlalchemy import select

from integrations.fake import ScriptedProvider
from tests.browser import live_server
from tests.conftest import create_notification, create_patient, fake_providers, load
from tests.web.conftest import SIGNING_KEY, drain
from worker.bootstrap import App
from worker.categories import Category, Channel
from worker.db import session_scope
from worker.models_consent import ConsentEvent
from worker.preference_page.links import make_token
from worker.sms_inbound import handle_inbound_sms
from worker.states import State
from worker.web.app import create_web_app

PHONE = {"width": 360, "height": 740}
TTL = timedelta(days=30)


@dataclass
class Site:
    app: App
    base: str
    sms: ScriptedProvider

    def link(self, patient_id: int) -> str:
        return f"{self.base}/p/{make_token(SIGNING_KEY, patient_id=patient_id, now=self.app.clock.now(), ttl=TTL)}"


@pytest.fixture
def site(make_app: Any) -> Iterator[Site]:
    sms = ScriptedProvider(name="fake-sms", channel=Channel.SMS)
    app = make_app(providers=fake_providers(sms=sms), signing_key=SIGNING_KEY)
    with live_server(create_web_app(app)) as base:
        yield Site(app, base, sms)


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:  # noqa: F811
    """A fresh 360 px wide phone-sized page; every request it makes and every console error is recorded."""
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.requests = []  # type: ignore[attr-defined]
    page.errors = []  # type: ignore[attr-defined]
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    yield page
    context.close()


def _no_serious_axe_violations(page: Any) -> None:
    results = Axe().run(page)
    serious = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert serious == [], serious


def _fits_a_phone(page: Any) -> None:
    """No sideways scrolling at 360 px, and every control is a large touch target."""
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for control in page.locator("label.chip, button, .top a").all():
        box = control.bounding_box()
        assert box["height"] >= 44 and box["width"] >= 44, box


def _ledger(site: Site) -> list[tuple[str, str | None, bool, str]]:
    with session_scope(site.app.engine) as session:
        return [(e.channel, e.category, e.granted, e.source) for e in session.scalars(select(ConsentEvent))]


def test_turn_off_survey_texts_save_reload_and_a_survey_text_is_suppressed(
    site: Site,
    phone: Any,
    screenshots: Path,  # noqa: F811
) -> None:
    patient_id = create_patient(site.app, devices=())
    link = site.link(patient_id)
    phone.goto(link)
    assert phone.title() == "Your notices · Partum Health"
    _fits_a_phone(phone)
    phone.screenshot(path=screenshots / "1-opened-360.png", full_page=True)
    texts = phone.get_by_role("group", name="Check-ins").get_by_label("Text")
    assert texts.is_checked()
    texts.tap()
    assert not texts.is_checked()
    phone.get_by_role("button", name="Save my choices").tap()
    phone.wait_for_url("**saved=1")
    assert phone.get_by_role("status").inner_text().startswith("Saved.")
    phone.screenshot(path=screenshots / "2-saved-360.png", full_page=True)
    phone.reload()
    assert not phone.get_by_role("group", name="Check-ins").get_by_label("Text").is_checked()
    assert phone.get_by_role("group", name="Check-ins").get_by_label("Email").is_checked()
    assert _ledger(site) == [("sms", "survey_reminder", False, "preference_page")]
    # The real delivery path: a survey text is held back at send time, with her reason.
    nid = create_notification(site.app, patient_id, category=Category.SURVEY_REMINDER, channels=["sms"])
    drain(site.app)
    row = load(site.app, nid)
    assert row.state == State.SUPPRESSED and "muted by patient: survey_reminder on sms" in row.reason
    assert site.sms.sent == []
    # Everything came from us: the page, its stylesheet; nothing third-party, nothing refused by the CSP.
    assert phone.requests and all(url.startswith(site.base) for url in phone.requests), phone.requests
    assert any(url.endswith("/p/static/page.css") for url in phone.requests)
    assert phone.errors == []


def test_an_expired_link_shows_a_friendly_page_and_changes_nothing(
    site: Site,
    phone: Any,
    screenshots: Path,  # noqa: F811
) -> None:
    patient_id = create_patient(site.app)
    link = site.link(patient_id)
    site.app.clock.advance(TTL + timedelta(hours=2))  # type: ignore[attr-defined]
    response = phone.goto(link)
    assert response.status == 410
    assert phone.get_by_role("heading", level=1).inner_text() == "This link is too old"
    assert phone.locator("form").count() == 0 and "Nothing was changed" in phone.content()
    _fits_a_phone(phone)
    _no_serious_axe_violations(phone)
    phone.screenshot(path=screenshots / "expired-360.png", full_page=True)
    tampered = phone.goto(link[:-3] + ("abc" if not link.endswith("abc") else "xyz"))
    assert tampered.status == 404 and "does not work" in phone.content()
    assert _ledger(site) == []


def test_spanish_from_her_locale_and_the_switch(site: Site, phone: Any, screenshots: Path) -> None:  # noqa: F811
    patient_id = create_patient(site.app, locale="es", devices=())
    phone.goto(site.link(patient_id))
    assert phone.locator("html").get_attribute("lang") == "es"
    assert phone.get_by_role("heading", level=1).inner_text() == "Elija qué le enviamos"
    _fits_a_phone(phone)
    _no_serious_axe_violations(phone)
    phone.screenshot(path=screenshots / "es-360.png", full_page=True)
    offers = phone.get_by_role("group", name="Novedades y ofertas")
    offers.get_by_label("Correo").tap()
    phone.get_by_role("button", name="Guardar").tap()
    phone.wait_for_url("**saved=1")
    assert phone.get_by_role("status").inner_text().startswith("Listo.")
    assert _ledger(site) == [("email", "marketing", False, "preference_page")]
    phone.get_by_role("link", name="English").tap()
    assert phone.get_by_role("heading", level=1).inner_text() == "Choose what we send you"
    assert not phone.get_by_role("group", name="News and offers").get_by_label("Email").is_checked()


def test_keyboard_only_save(site: Site, browser: Any, screenshots: Path) -> None:  # noqa: F811
    """Tab to a box, Space to change it, Tab to Save, Enter: no mouse, no touch; focus is always visible."""
    patient_id = create_patient(site.app)
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    try:
        page.goto(site.link(patient_id))
        focused = []
        for _ in range(40):
            page.keyboard.press("Tab")
            name = page.evaluate("document.activeElement.name || document.activeElement.textContent.trim()")
            focused.append(name)
            if name == "appointment_reminder.sms":
                break
        assert focused[0] in ("English", "Español") and "care_team_message.push" in focused
        outline = page.evaluate("getComputedStyle(document.activeElement.closest('label')).outlineStyle")
        assert outline == "solid"  # the focused box's label shows a focus ring
        page.screenshot(path=screenshots / "keyboard-focus-360.png")
        page.keyboard.press("Space")
        while page.evaluate("document.activeElement.tagName") != "BUTTON":
            page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        page.wait_for_url("**saved=1")
        assert _ledger(site) == [("sms", "appointment_reminder", False, "preference_page")]
        assert not page.get_by_role("group", name="Visit reminders").get_by_label("Text").is_checked()
    finally:
        context.close()


def test_axe_finds_no_serious_violation_in_any_state(site: Site, phone: Any, screenshots: Path) -> None:  # noqa: F811
    patient_id = create_patient(site.app, phone="+12125550123", devices=())
    link = site.link(patient_id)
    phone.goto(link)
    _no_serious_axe_violations(phone)
    phone.get_by_role("group", name="Care team messages").get_by_label("Email").tap()
    phone.get_by_role("button", name="Save my choices").tap()
    phone.wait_for_url("**saved=1")
    _no_serious_axe_violations(phone)
    # After STOP by text: every text box locked, with the way back explained.
    handle_inbound_sms(site.app.engine, site.app.clock, lambda _: None, from_number="+12125550123", body="STOP")
    phone.goto(link)
    assert phone.get_by_role("group", name="Check-ins").get_by_label("Text").is_disabled()
    _no_serious_axe_violations(phone)
    _fits_a_phone(phone)
    phone.screenshot(path=screenshots / "stopped-360.png", full_page=True)
