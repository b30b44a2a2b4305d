"""The preference page's parts without HTTP: its signed short link, the form token, what may be changed, the words
(reading level), and the link in every email footer and the SMS HELP answer (through the real delivery path)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import textstat

from integrations.fake import ScriptedProvider
from integrations.sendgrid import PREFERENCES_TAG, UNSUBSCRIBE_TAG, SendGridEmailProvider
from tests.conftest import create_notification, create_patient, fake_providers, load
from tests.integrations.conftest import make_message
from tests.test_cli import _run
from worker.categories import Category, Channel
from worker.clock import FrozenClock
from worker.consent import current_consent
from worker.db import session_scope
from worker.delivery import deliver
from worker.errors import InvalidInput
from worker.preference_page import text
from worker.preference_page.forms import FormExpired, make_form_token, read_form_token
from worker.preference_page.grid import CATEGORIES, CHANNELS, Lock, build_cells, changes_from, shown_state
from worker.preference_page.links import LinkExpired, LinkInvalid, make_token, make_url, read_token
from worker.sms_inbound import handle_inbound_sms
from worker.states import State
from worker.templates import SMS_SEGMENT, render
from worker.unsubscribe import make_token as make_unsubscribe_token
from worker.unsubscribe import read_token as read_unsubscribe_token

KEY = "test-signing-key-for-preference-links"
NOW = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
TTL = timedelta(days=30)
#: GSM 03.38's basic set (an SMS in it is one 160-character segment; anything else makes it UCS-2, 70 characters).
GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)


# --- the link ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patient_id", [1, 255, 256, 16_777_215, 16_777_216, 2**63 - 1])
def test_a_link_names_the_patient_by_id_and_expires(patient_id: int) -> None:
    token = make_token(KEY, patient_id=patient_id, now=NOW, ttl=TTL)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    link = read_token(KEY, token, NOW + TTL - timedelta(seconds=1))
    assert link.patient_id == patient_id and NOW + TTL <= link.expires_at < NOW + TTL + timedelta(hours=1)
    with pytest.raises(LinkExpired) as expired:
        read_token(KEY, token, link.expires_at)
    assert expired.value.patient_id == patient_id
    if patient_id < 2**24:
        assert len(token) <= 24  # short enough for a text


def test_any_change_to_a_link_or_another_key_makes_it_invalid() -> None:
    token = make_token(KEY, patient_id=1234, now=NOW, ttl=TTL)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for position in range(len(token)):
        for replacement in (alphabet[(alphabet.index(token[position]) + 1) % 64], "A"):
            tampered = token[:position] + replacement + token[position + 1 :]
            if tampered == token:
                continue
            with pytest.raises((LinkInvalid, LinkExpired)) as refused:
                read_token(KEY, tampered, NOW)
            # A tampered expiry byte can still only be read as "invalid": the tag covers the expiry too.
            assert isinstance(refused.value, LinkInvalid), (position, replacement)
    for bad in ("", "x", token[:-1], token + "A", token + "=", "a" * 200, token.replace(token[3], "+"), "../" * 8):
        with pytest.raises(LinkInvalid):
            read_token(KEY, bad, NOW)
    with pytest.raises(LinkInvalid):
        read_token("another-key", token, NOW)


def test_a_link_is_bound_to_its_purpose_both_ways() -> None:
    """An unsubscribe token cannot open the page, and a page token cannot unsubscribe."""
    unsubscribe = make_unsubscribe_token(KEY, patient_id=1234, now=NOW)
    with pytest.raises(LinkInvalid):
        read_token(KEY, unsubscribe, NOW)
    for part in unsubscribe.split("."):
        with pytest.raises(LinkInvalid):
            read_token(KEY, part, NOW)
    page = make_token(KEY, patient_id=1234, now=NOW, ttl=TTL)
    with pytest.raises(InvalidInput):
        read_unsubscribe_token(KEY, page, NOW)
    assert read_unsubscribe_token(KEY, unsubscribe, NOW)[0] == 1234  # both still work for what they are for


def test_only_the_canonical_spelling_of_an_id_is_accepted() -> None:
    import base64

    from worker.preference_page.links import PURPOSE, TAG_BYTES
    from worker.unsubscribe import mac

    hours = (24 * 365 * 10).to_bytes(3, "big")
    body = hours + b"\x00\x05"  # id 5 with a leading zero byte, signed with the right key
    forged = base64.urlsafe_b64encode(body + mac(KEY, PURPOSE + body)[:TAG_BYTES]).rstrip(b"=").decode()
    with pytest.raises(LinkInvalid):
        read_token(KEY, forged, NOW)
    body = hours + b"\x05"
    canonical = base64.urlsafe_b64encode(body + mac(KEY, PURPOSE + body)[:TAG_BYTES]).rstrip(b"=").decode()
    assert read_token(KEY, canonical, NOW).patient_id == 5


# --- the form token ---------------------------------------------------------------------------------------------


def test_the_form_token_is_bound_to_the_link_the_state_shown_and_time() -> None:
    link = make_token(KEY, patient_id=7, now=NOW, ttl=TTL)
    other = make_token(KEY, patient_id=8, now=NOW, ttl=TTL)
    form = make_form_token(KEY, link_token=link, shown="101", now=NOW)
    day = timedelta(hours=24)
    assert read_form_token(KEY, form, link_token=link, now=NOW + timedelta(hours=23), ttl=day) == "101"
    with pytest.raises(FormExpired):
        read_form_token(KEY, form, link_token=link, now=NOW + timedelta(hours=25), ttl=day)
    issued, shown, tag = form.split(".")
    for bad in (None, "", "junk", f"{issued}.111.{tag}", f"{int(issued) + 1}.{shown}.{tag}", form + "x"):
        with pytest.raises(InvalidInput) as refused:
            read_form_token(KEY, bad, link_token=link, now=NOW, ttl=day)
        assert not isinstance(refused.value, FormExpired)
    for key, token in ((KEY, other), ("another-key", link)):
        with pytest.raises(InvalidInput):
            read_form_token(key, form, link_token=token, now=NOW, ttl=day)


# --- what may be changed ----------------------------------------------------------------------------------------


def _prefs(**off: list[str]) -> dict[str, dict[str, bool]]:
    grid = {c.value: {ch.value: True for ch in Channel} for c in Category}
    grid["marketing"]["sms"] = False
    for category, channels in off.items():
        for channel in channels:
            grid[category][channel] = False
    return grid


def test_the_grid_locks_sms_offers_without_consent_and_every_text_after_stop() -> None:
    cells = build_cells(_prefs(), {})
    assert [(c.category, c.channel) for c in cells] == [(c, ch) for c in CATEGORIES for ch in CHANNELS]
    assert Category.ACCOUNT_NOTICE not in {c.category for c in cells}  # always on: no control at all
    locked = {c.name: c.lock for c in cells if c.lock}
    assert locked == {"marketing.sms": Lock.SMS_OFFERS_NEED_CONSENT}
    with_consent = build_cells({**_prefs(), "marketing": {"push": True, "sms": True, "email": True, "inapp": True}}, {})
    assert all(c.changeable for c in with_consent)  # on with evidence: she may turn it off here
    stopped = build_cells(_prefs(), {("sms", None): False})
    assert {c.name for c in stopped if c.lock is Lock.SMS_STOPPED} == {f"{c.value}.sms" for c in CATEGORIES}
    assert not any(c.on for c in stopped if c.channel is Channel.SMS)


def test_a_save_changes_only_what_she_changed_and_never_turns_sms_offers_on() -> None:
    cells = build_cells(_prefs(), {})
    shown = shown_state(cells)
    ticked = {c.name for c in cells if c.on}
    assert changes_from(cells, shown, ticked) == []
    [change] = changes_from(cells, shown, ticked - {"survey_reminder.sms"})
    assert (change.category, change.channel, change.enabled) == (Category.SURVEY_REMINDER, Channel.SMS, False)
    assert changes_from(cells, shown, ticked | {"marketing.sms"}) == []  # locked: needs written consent
    # Changed elsewhere since the page loaded (the app turned care texts off): a box she left alone stays as it is.
    now = build_cells(_prefs(care_team_message=["sms"]), {})
    assert changes_from(now, shown, ticked) == []
    with pytest.raises(InvalidInput):
        changes_from(cells, shown, ticked | {"account_notice.email"})
    with pytest.raises(InvalidInput):
        changes_from(cells, shown[:-1], ticked)


# --- the words --------------------------------------------------------------------------------------------------


def test_the_page_reads_at_a_sixth_grade_level_in_both_languages() -> None:
    english = " ".join(text.every_sentence("en"))
    textstat.set_lang("en_US")
    grade = textstat.flesch_kincaid_grade(english)
    assert grade <= 6.0, grade
    spanish = " ".join(text.every_sentence("es"))
    textstat.set_lang("es")
    ease = textstat.fernandez_huerta(spanish)  # 70-80: "fairly easy", a 6th-grade text
    textstat.set_lang("en_US")
    assert ease >= 70, ease
    assert text.words("en").keys() == text.words("es").keys()


def test_the_page_says_nothing_about_health() -> None:
    words = " ".join(text.every_sentence("en") + text.every_sentence("es")).lower()
    for health in ("pregnan", "baby", "postpartum", "birth", "embaraz", "bebé", "parto", "diagnos", "medic"):
        assert health not in words


def test_language_from_the_request_her_locale_or_the_browser() -> None:
    assert text.language("es", "en") == "es"
    assert text.language(None, "es-MX") == "es"
    assert text.language("fr", None, "es") == "es"
    assert text.language(None) == "en"
    assert text.from_accept_language("fr-CA, es;q=0.8, en;q=0.5") == "es"
    assert text.from_accept_language("en-US,en;q=0.9,es;q=0.8") == "en"
    assert text.from_accept_language("es;q=0, en;q=bad") is None
    assert text.from_accept_language(None) is None


# --- the link in texts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", ["en", "es"])
def test_the_help_answer_carries_her_link_in_one_gsm_segment(locale: str) -> None:
    base = "https://notify.partumhealth.com"  # 31 characters: room is left for a longer one
    url = make_url(base, KEY, patient_id=16_777_215, now=NOW, ttl=TTL)
    help_ = render(Category.ACCOUNT_NOTICE, Channel.SMS, locale, sms_reply="help", preference_url=url)
    assert help_.body.startswith("Partum Health:") and help_.body.endswith(url)
    assert "STOP" in help_.body and "support@partumhealth.com" in help_.body
    assert len(help_.body) <= SMS_SEGMENT and set(help_.body) <= GSM7, (len(help_.body), set(help_.body) - GSM7)
    # A public URL too long to fit: the plain HELP answer, never a second segment.
    long_url = make_url("https://" + "x" * 60 + ".example", KEY, patient_id=1, now=NOW, ttl=TTL)
    plain = render(Category.ACCOUNT_NOTICE, Channel.SMS, locale, sms_reply="help", preference_url=long_url)
    assert plain == render(Category.ACCOUNT_NOTICE, Channel.SMS, locale, sms_reply="help")
    assert len(plain.body) <= SMS_SEGMENT
    # Other replies never carry it.
    stop = render(Category.ACCOUNT_NOTICE, Channel.SMS, locale, sms_reply="opt_out", preference_url=url)
    assert url not in stop.body


@pytest.mark.parametrize("category", list(Category))
def test_every_email_footer_carries_her_link(category: Category) -> None:
    url = make_url("https://notify.example", KEY, patient_id=3, now=NOW, ttl=TTL)
    unsubscribe = "https://notify.example/v1/unsubscribe/a.b" if category is Category.MARKETING else None
    email = render(category, Channel.EMAIL, "en", unsubscribe_url=unsubscribe, preference_url=url)
    assert email.body.endswith(f"Choose which notices you get: {url}")
    assert render(category, Channel.EMAIL, "es", unsubscribe_url=unsubscribe, preference_url=url).body.endswith(
        f"Elija qué avisos recibe: {url}"
    )
    for channel in (Channel.PUSH, Channel.INAPP, Channel.SMS):
        assert url not in render(category, channel, "en", unsubscribe_url=unsubscribe, preference_url=url).body


def test_a_bulk_email_shares_one_content_and_substitutes_each_recipients_link() -> None:
    messages = []
    for n in (1, 2, 3):
        url = make_url("https://notify.example", KEY, patient_id=n, now=NOW, ttl=TTL)
        unsubscribe = f"https://notify.example/v1/unsubscribe/tok{n}.sig{n}"
        rendered = render(Category.MARKETING, Channel.EMAIL, "en", unsubscribe_url=unsubscribe, preference_url=url)
        messages.append(
            make_message(
                Channel.EMAIL,
                notification_id=n,
                idempotency_key=f"c:{n}",
                category="marketing",
                address=f"p{n}@example.org",
                platform=None,
                title=rendered.title,
                body=rendered.body,
                data={"notification_id": str(n), "unsubscribe_url": unsubscribe, "preferences_url": url},
                promotional=True,
            )
        )
    with respx.mock, httpx.Client() as client:
        route = respx.post("https://api.sendgrid.com/v3/mail/send").mock(
            return_value=httpx.Response(202, headers={"X-Message-Id": "sg-1"})
        )
        provider = SendGridEmailProvider(client=client, clock=FrozenClock(), api_key="k", from_email="a@b.example")
        results = provider.send_many(messages=messages)
    assert [r.provider_ref for r in results] == ["sg-1"] * 3
    [call] = route.calls
    body: dict[str, Any] = json.loads(call.request.content)
    assert PREFERENCES_TAG in body["content"][0]["value"] and UNSUBSCRIBE_TAG in body["content"][0]["value"]
    for message, personalization in zip(messages, body["personalizations"], strict=True):
        assert personalization["substitutions"] == {
            UNSUBSCRIBE_TAG: message.data["unsubscribe_url"],
            PREFERENCES_TAG: message.data["preferences_url"],
        }


def _app(make_app: Any, **kw: Any) -> tuple[Any, dict[str, ScriptedProvider]]:
    fakes = {ch.value: ScriptedProvider(name=f"fake-{ch.value}", channel=ch) for ch in Channel}
    app = make_app(providers=fake_providers(**fakes), signing_key=KEY, public_base_url="https://notify.example", **kw)
    return app, fakes


def test_help_by_text_answers_with_a_link_that_opens_her_page(make_app: Any) -> None:
    app, fakes = _app(make_app)
    patient_id = create_patient(app, devices=(), locale="es")
    _, reply = handle_inbound_sms(app.engine, app.clock, lambda _: None, from_number="+12125550123", body="AYUDA")
    assert reply is not None and deliver(app.deps, reply.notification_id).state is State.SENT
    body = fakes["sms"].sent[-1].body
    assert len(body) <= SMS_SEGMENT and body.startswith("Partum Health: Pueden aplicar tarifas.")
    [token] = re.findall(r"https://notify\.example/p/([A-Za-z0-9_-]+)$", body)
    assert read_token(KEY, token, app.clock.now()).patient_id == patient_id


def test_every_email_sent_carries_her_link_and_nothing_without_a_key(make_app: Any) -> None:
    app, fakes = _app(make_app)
    patient_id = create_patient(app, devices=())
    nid = create_notification(app, patient_id, category=Category.SURVEY_REMINDER, channels=["email"])
    assert deliver(app.deps, nid).state is State.SENT
    [email] = fakes["email"].sent
    [token] = re.findall(r"https://notify\.example/p/([A-Za-z0-9_-]+)$", email.body)
    assert read_token(KEY, token, app.clock.now()).patient_id == patient_id
    assert email.data["preferences_url"].endswith(token)
    keyless = make_app(providers=fake_providers(email=ScriptedProvider(name="e", channel=Channel.EMAIL)))
    assert keyless.deps.preference_url is None
    other = create_patient(keyless, ref="pt-keyless", devices=())
    sent = create_notification(keyless, other, category=Category.SURVEY_REMINDER, channels=["email"])
    assert deliver(keyless.deps, sent).state is State.SENT and "/p/" not in str(load(keyless, sent).reason)


def test_cli_prints_a_link_the_page_accepts(tmp_path: Path, make_app: Any) -> None:
    assert _run(["db", "upgrade"], tmp_path).returncode == 0
    missing_key = _run(["preference-link", "pt-cli"], tmp_path)
    assert missing_key.returncode == 2 and "CARENOTIFY_SIGNING_KEY" in missing_key.stderr
    env = {"CARENOTIFY_SIGNING_KEY": KEY, "CARENOTIFY_PUBLIC_BASE_URL": "https://notify.example"}
    unknown = _run(["preference-link", "pt-cli"], tmp_path, **env)
    assert unknown.returncode == 2 and "no patient with that external_ref" in unknown.stderr
    app = make_app(database_url=f"sqlite:///{tmp_path / 'cli.db'}")
    patient_id = create_patient(app, ref="pt-cli")
    printed = _run(["preference-link", "pt-cli"], tmp_path, **env)
    assert printed.returncode == 0, printed.stderr
    [token] = re.findall(r"^https://notify\.example/p/([A-Za-z0-9_-]+)$", printed.stdout.strip())
    link = read_token(KEY, token, datetime.now(UTC))
    assert link.patient_id == patient_id
    with session_scope(app.engine) as session:
        assert current_consent(session, patient_id) == {}  # making a link changes nothing
