"""The preference page over HTTP (the real app, TestClient): GET shows and never changes anything; POST saves what
she changed, through the consent ledger (source ``preference_page``), CSRF-safe; bad links change nothing."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import attempts, create_notification, create_patient, load
from tests.web.conftest import SIGNING_KEY, Api, drain
from worker.categories import Category, Channel
from worker.db import session_scope
from worker.delivery import deliver
from worker.erasure import erase_patient
from worker.models import Preference
from worker.models_consent import ConsentEvent, ConsentSource
from worker.preference_page.links import make_token
from worker.preferences import PreferenceChange, set_preferences
from worker.sms_inbound import handle_inbound_sms
from worker.states import State
from worker.unsubscribe import make_token as make_unsubscribe_token

TTL = timedelta(days=30)
BOXES = {
    f"{c}.{ch}"
    for c in ("care_team_message", "appointment_reminder", "survey_reminder", "marketing")
    for ch in ("push", "sms", "email")
}


def _token(api: Api, patient_id: int, key: str = SIGNING_KEY) -> str:
    return make_token(key, patient_id=patient_id, now=api.app.clock.now(), ttl=TTL)


def _ledger(api: Api) -> list[tuple[int, str, str | None, bool, str, str]]:
    with session_scope(api.app.engine) as session:
        return [
            (e.patient_id, e.channel, e.category, e.granted, e.source, e.actor)
            for e in session.scalars(select(ConsentEvent).order_by(ConsentEvent.id))  # type: ignore[arg-type]
        ]


def _rows(api: Api) -> list[tuple[int, str, str, bool]]:
    with session_scope(api.app.engine) as session:
        return [(p.patient_id, p.category, p.channel, p.enabled) for p in session.scalars(select(Preference))]


def _boxes(html: str) -> dict[str, dict[str, bool]]:
    """name -> {checked, disabled} for every checkbox on the page."""
    out = {}
    for tag in re.findall(r"<input type=\"checkbox\"[^>]*>", html):
        name = re.search(r'name="([^"]+)"', tag)
        assert name is not None
        out[name.group(1)] = {"checked": " checked" in tag, "disabled": " disabled" in tag}
    return out


def _form(html: str) -> dict[str, str]:
    """What the browser would post: the hidden fields and every ticked, enabled box."""
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html))
    fields = {k: unescape(v) for k, v in fields.items()}
    for name, box in _boxes(html).items():
        if box["checked"] and not box["disabled"]:
            fields[name] = "on"
    return fields


def test_the_page_shows_every_category_and_channel_and_get_changes_nothing(api: Api) -> None:
    patient_id = create_patient(api.app, ref="pt-secret-ref", email="jane.doe@example.org")
    token = _token(api, patient_id)
    for query in ("", "?saved=1", "?lang=es", "?lang=zz&saved=junk"):
        page = api.client.get(f"/p/{token}{query}")
        assert page.status_code == 200, page.text
    page = api.client.get(f"/p/{token}")
    assert page.headers["content-type"].startswith("text/html")
    boxes = _boxes(page.text)
    assert set(boxes) == BOXES
    assert boxes["marketing.sms"] == {"checked": False, "disabled": True}  # no written consent on record
    assert all(b == {"checked": True, "disabled": False} for n, b in boxes.items() if n != "marketing.sms")
    for name in boxes:  # every control has a label
        assert f'<label class="chip" for="{name}">' in page.text or f'for="{name}"' in page.text
    assert "Account notices" in page.text and "always on" in page.text
    assert "To get offers by text, sign up in the app." in page.text
    # Nothing about her: no reference, address, phone; nothing loaded from elsewhere.
    for private in ("pt-secret-ref", "jane.doe", "5550123", str(patient_id) + "<"):
        assert private not in page.text
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    assert "<script" not in page.text
    head = api.client.head(f"/p/{token}")
    assert head.status_code == 200 and head.content == b"" and head.headers["referrer-policy"] == "no-referrer"
    assert _ledger(api) == [] and _rows(api) == []  # a link scanner or preview fetching it changes nothing


def test_security_headers_on_every_answer(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    patient_id = create_patient(api.app)
    token = _token(api, patient_id)
    for response in (
        api.client.get(f"/p/{token}"),
        api.client.get("/p/not-a-real-token-at-all-000"),
        api.client.post(f"/p/{token}", data={"lang": "en"}),
    ):
        headers = response.headers
        assert headers["referrer-policy"] == "no-referrer"
        assert "noindex" in headers["x-robots-tag"]
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "style-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["cache-control"] == "no-store" and headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert '<meta name="robots" content="noindex' in response.text
    css = api.client.get("/p/static/page.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and ".chip" in css.text
    assert "url(" not in css.text and "@import" not in css.text  # no font or image from anywhere
    assert "/p/{token}" not in api.client.get("/openapi.json").text  # a page, not an API
    logged = capsys.readouterr()
    assert "route=/p/{token}" in logged.out and token not in logged.out + logged.err  # the link is never logged


def test_saving_writes_the_ledger_and_the_preference_and_a_queued_text_is_suppressed(api: Api) -> None:
    patient_id = create_patient(api.app)
    queued = create_notification(api.app, patient_id, category=Category.SURVEY_REMINDER, channels=["sms"])
    token = _token(api, patient_id)
    form = _form(api.client.get(f"/p/{token}").text)
    del form["survey_reminder.sms"]
    saved = api.client.post(f"/p/{token}", data=form, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == f"/p/{token}?lang=en&saved=1"
    assert _ledger(api) == [(patient_id, "sms", "survey_reminder", False, ConsentSource.PREFERENCE_PAGE, "patient")]
    assert _rows(api) == [(patient_id, "survey_reminder", "sms", False)]
    page = api.client.get(saved.headers["location"])
    assert "Saved." in page.text and 'role="status"' in page.text
    assert _boxes(page.text)["survey_reminder.sms"] == {"checked": False, "disabled": False}
    # The same form again (a double tap): nothing new is written.
    again = api.client.post(f"/p/{token}", data=form, follow_redirects=False)
    assert again.headers["location"].endswith("saved=0") and len(_ledger(api)) == 1
    assert "Nothing changed." in api.client.get(again.headers["location"]).text
    # Checked at send time like any other change: the survey text queued before the save is held back.
    drain(api.app)
    row = load(api.app, queued)
    assert row.state == State.SUPPRESSED and "muted by patient: survey_reminder on sms" in row.reason
    assert api.sms.sent == []
    # And turned back on from the page.
    form = _form(api.client.get(f"/p/{token}").text)
    form["survey_reminder.sms"] = "on"
    assert api.client.post(f"/p/{token}", data=form, follow_redirects=False).status_code == 303
    assert _ledger(api)[-1][1:4] == ("sms", "survey_reminder", True) and _rows(api)[0][3] is True


def test_a_box_she_did_not_touch_keeps_a_change_made_elsewhere_meanwhile(api: Api) -> None:
    patient_id = create_patient(api.app)
    token = _token(api, patient_id)
    form = _form(api.client.get(f"/p/{token}").text)
    changes = [PreferenceChange(Category.CARE_TEAM_MESSAGE, Channel.PUSH, False)]
    set_preferences(
        api.app.engine, api.app.clock, patient_id=patient_id, changes=changes, source=ConsentSource.APP, actor="app"
    )
    del form["appointment_reminder.email"]
    assert api.client.post(f"/p/{token}", data=form, follow_redirects=False).status_code == 303
    assert sorted(_rows(api)) == [
        (patient_id, "appointment_reminder", "email", False),
        (patient_id, "care_team_message", "push", False),  # the app's change stands
    ]


def test_sms_offers_can_be_turned_off_here_but_never_on(api: Api) -> None:
    patient_id = create_patient(api.app)
    token = _token(api, patient_id)
    form = _form(api.client.get(f"/p/{token}").text)
    form["marketing.sms"] = "on"  # a hand-made form: the box is disabled on the page
    assert api.client.post(f"/p/{token}", data=form, follow_redirects=False).headers["location"].endswith("saved=0")
    assert _ledger(api) == []
    set_preferences(
        api.app.engine,
        api.app.clock,
        patient_id=patient_id,
        changes=[PreferenceChange(Category.MARKETING, Channel.SMS, True)],
        source=ConsentSource.APP,
        actor="app",
        sms_consent_evidence="form v3",
    )
    page = api.client.get(f"/p/{token}").text
    assert _boxes(page)["marketing.sms"] == {"checked": True, "disabled": False}
    form = _form(page)
    del form["marketing.sms"]
    assert api.client.post(f"/p/{token}", data=form, follow_redirects=False).status_code == 303
    assert _ledger(api)[-1] == (patient_id, "sms", "marketing", False, ConsentSource.PREFERENCE_PAGE, "patient")
    assert _boxes(api.client.get(f"/p/{token}").text)["marketing.sms"] == {"checked": False, "disabled": True}


def test_after_stop_the_text_boxes_are_locked_and_say_how_to_restart(api: Api) -> None:
    patient_id = create_patient(api.app, phone="+12125550123")
    handle_inbound_sms(api.app.engine, api.app.clock, lambda _: None, from_number="+12125550123", body="STOP")
    token = _token(api, patient_id)
    page = api.client.get(f"/p/{token}").text
    assert "reply START" in page
    boxes = _boxes(page)
    assert all(b == {"checked": False, "disabled": True} for n, b in boxes.items() if n.endswith(".sms"))
    before = _ledger(api)
    form = _form(page) | {"care_team_message.sms": "on"}
    assert api.client.post(f"/p/{token}", data=form, follow_redirects=False).headers["location"].endswith("saved=0")
    assert _ledger(api) == before


def test_expired_tampered_foreign_and_erased_links_show_a_friendly_page_and_change_nothing(api: Api) -> None:
    patient_id = create_patient(api.app, locale="es")
    token = _token(api, patient_id)
    form = _form(api.client.get(f"/p/{token}").text)
    del form["survey_reminder.sms"]
    bad = {
        "tampered": (token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), 404, "no sirve"),
        "another key": (_token(api, patient_id, key="someone-elses-key"), 404, "no sirve"),
        "an unsubscribe token": (
            make_unsubscribe_token(SIGNING_KEY, patient_id=patient_id, now=api.app.clock.now()),
            404,
            "no sirve",
        ),
        "garbage": ("nope", 404, "no sirve"),
        "too long": ("A" * 300, 404, "no sirve"),
    }
    for name, (link, status, words) in bad.items():
        headers = {"Accept-Language": "es-MX,es;q=0.9"}
        for response in (
            api.client.get(f"/p/{link}", headers=headers),
            api.client.post(f"/p/{link}", data=form, headers=headers),
        ):
            assert response.status_code == status, (name, response.status_code)
            assert words in response.text and "No cambió nada" in response.text and "<form" not in response.text
    assert "does not work" in api.client.get(f"/p/{bad['tampered'][0]}").text  # English without a hint
    # The preference token cannot unsubscribe either.
    assert api.client.post(f"/v1/unsubscribe/{token}").status_code == 422
    api.app.clock.advance(TTL + timedelta(hours=1))  # type: ignore[attr-defined]
    for response in (api.client.get(f"/p/{token}"), api.client.post(f"/p/{token}", data=form)):
        assert response.status_code == 410 and 'lang="es"' in response.text and "ya venció" in response.text
        assert "<form" not in response.text
    assert _ledger(api) == [] and _rows(api) == []
    fresh = _token(api, patient_id)
    erase_patient(api.app.engine, api.app.clock, patient_id=patient_id, reason="test")
    assert api.client.get(f"/p/{fresh}").status_code == 404


def test_saving_needs_the_pages_own_form_token_and_a_same_origin_post(api: Api) -> None:
    patient_id = create_patient(api.app)
    other = create_patient(api.app, ref="pt-other", phone="+12125550124")
    token, other_token = _token(api, patient_id), _token(api, other)
    form = _form(api.client.get(f"/p/{token}").text)
    del form["survey_reminder.sms"]
    other_form = _form(api.client.get(f"/p/{other_token}").text)
    attempts: list[tuple[dict[str, Any], dict[str, str], int]] = [
        ({k: v for k, v in form.items() if k != "csrf"}, {}, 400),  # no token
        ({**form, "csrf": other_form["csrf"]}, {}, 400),  # another link's token
        ({**form, "csrf": form["csrf"][:-1] + "x"}, {}, 400),
        (form, {"Sec-Fetch-Site": "cross-site"}, 403),  # a form on another site posting here
        (form, {"Sec-Fetch-Site": "same-site"}, 403),
        ({**form, "account_notice.email": "on"}, {}, 400),  # not on the page: cannot be switched
        ({**form, "nonsense": "1"}, {}, 400),
    ]
    for data, headers, status in attempts:
        response = api.client.post(f"/p/{token}", data=data, headers=headers, follow_redirects=False)
        assert response.status_code == status, (data.keys(), headers, response.status_code)
        assert "Nothing was changed" in response.text
    twice = api.client.post(
        f"/p/{token}", content="csrf=a&csrf=b&lang=en", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert twice.status_code == 400
    assert _ledger(api) == []
    # A page left open past form_ttl_hours: shown again with fresh state and a note; nothing saved.
    api.app.clock.advance(timedelta(hours=25))  # type: ignore[attr-defined]
    stale = api.client.post(f"/p/{token}", data=form, follow_redirects=False)
    assert stale.status_code == 200 and "open a long time" in stale.text and 'role="alert"' in stale.text
    assert _ledger(api) == []
    fresh = _form(stale.text)
    del fresh["survey_reminder.sms"]
    assert api.client.post(f"/p/{token}", data=fresh, follow_redirects=False).status_code == 303
    assert len(_ledger(api)) == 1


def test_spanish_from_her_locale_with_a_switch_to_english(api: Api) -> None:
    patient_id = create_patient(api.app, locale="es")
    token = _token(api, patient_id)
    page = api.client.get(f"/p/{token}").text
    assert '<html lang="es">' in page and "Elija qué le enviamos" in page and "Guardar" in page
    assert 'href="?lang=en" hreflang="en" lang="en">English<' in page
    english = api.client.get(f"/p/{token}?lang=en").text
    assert '<html lang="en">' in english and "Choose what we send you" in english
    assert 'href="?lang=es" hreflang="es" lang="es">Español<' in english
    form = _form(english)
    del form["marketing.email"]
    saved = api.client.post(f"/p/{token}", data=form, follow_redirects=False)
    assert saved.headers["location"] == f"/p/{token}?lang=en&saved=1"  # stays in the language she chose


def test_without_a_signing_key_the_page_says_try_later(make_app: Any) -> None:
    from fastapi.testclient import TestClient

    from worker.web.app import create_web_app

    app = make_app()
    patient_id = create_patient(app)
    token = make_token(SIGNING_KEY, patient_id=patient_id, now=app.clock.now(), ttl=TTL)
    with TestClient(create_web_app(app)) as client:
        response = client.get(f"/p/{token}")
    assert response.status_code == 503 and "try again later" in response.text


@pytest.mark.postgres
@pytest.mark.redis
def test_on_postgres_and_redis_a_save_suppresses_a_queued_text_at_send_time(
    make_app: Any, pg_url: str, redis_namespace: str
) -> None:
    """The production stack: the page's save and the fast send-time path (one statement reads every fact)."""
    from fastapi.testclient import TestClient

    from worker.web.app import create_web_app

    app = make_app(database_url=pg_url, broker="redis", broker_namespace=redis_namespace, signing_key=SIGNING_KEY)
    patient_id = create_patient(app)
    queued = create_notification(app, patient_id, category=Category.SURVEY_REMINDER, channels=["sms", "email"])
    token = make_token(SIGNING_KEY, patient_id=patient_id, now=app.clock.now(), ttl=TTL)
    with TestClient(create_web_app(app)) as client:
        form = _form(client.get(f"/p/{token}").text)
        del form["survey_reminder.sms"]
        assert client.post(f"/p/{token}", data=form, follow_redirects=False).status_code == 303
    with session_scope(app.engine) as session:
        [event] = session.scalars(select(ConsentEvent)).all()
        assert (event.channel, event.category, event.granted, event.source) == (
            "sms",
            "survey_reminder",
            False,
            "preference_page",
        )
    assert deliver(app.deps, queued).state is State.SENT  # by email only: the text is held back
    row = load(app, queued)
    assert row.reason == "accepted: email (1 target); sms muted"
    assert {a.channel for a in attempts(app, queued)} == {"email"}
