"""Consent and privacy rules, each with a test that fails without it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from integrations.fake import ScriptedProvider
from tests.conftest import create_notification, create_patient, fake_providers, load
from worker.categories import Category, Channel
from worker.consent import current_consent
from worker.db import session_scope
from worker.delivery import deliver
from worker.errors import InvalidInput
from worker.models_consent import ConsentEvent, ConsentSource
from worker.preferences import PreferenceChange, get_preferences, set_preferences
from worker.sms_inbound import Intent, classify, handle_inbound_sms
from worker.states import State
from worker.unsubscribe import apply_unsubscribe_token, make_token, read_token

KEY = "test-signing-key"


@pytest.fixture
def app_and_fakes(make_app):  # type: ignore[no-untyped-def]
    fakes = {c.value: ScriptedProvider(name=f"fake-{c}", channel=c) for c in Channel}
    app = make_app(providers=fake_providers(**fakes))
    app.deps.unsubscribe_url = lambda pid: (
        f"https://notify.example/v1/unsubscribe/{make_token(KEY, patient_id=pid, now=app.clock.now())}"
    )
    return app, fakes


#: How free-text replies are read (worker/sms_inbound.py sets out the rules). The FCC's 2024 rule: a reply using
#: stop, quit, end, revoke, opt out, cancel or unsubscribe revokes consent, and other wording a reasonable person
#: reads as "stop texting me" does too. Where a keyword is used in another sense, nothing is recorded and one
#: clarifying text asks (UNCLEAR): never a silent miss, never an opt-out nobody asked for.
REPLIES: list[tuple[str, Intent]] = [
    # Whole-body keywords, any case or punctuation.
    ("STOP", Intent.OPT_OUT),
    ("stop", Intent.OPT_OUT),
    (" Stop. ", Intent.OPT_OUT),
    ("S.T.O.P.", Intent.OPT_OUT),
    ("Stop!!!", Intent.OPT_OUT),
    ("UNSUBSCRIBE", Intent.OPT_OUT),
    ("cancel", Intent.OPT_OUT),
    ("STOPALL", Intent.OPT_OUT),
    ("end", Intent.OPT_OUT),
    ("quit", Intent.OPT_OUT),
    ("revoke", Intent.OPT_OUT),
    ("optout", Intent.OPT_OUT),
    ("Opt-out", Intent.OPT_OUT),
    ("Opt out", Intent.OPT_OUT),
    # The keyword as the command, with courtesy or emphasis around it.
    ("Please stop", Intent.OPT_OUT),
    ("stop please", Intent.OPT_OUT),
    ("STOP NOW", Intent.OPT_OUT),
    ("Quit please", Intent.OPT_OUT),
    ("cancel please", Intent.OPT_OUT),
    ("pls stop", Intent.OPT_OUT),
    ("Stop it now, thank you", Intent.OPT_OUT),
    ("Can you please stop?", Intent.OPT_OUT),
    ("I said stop", Intent.OPT_OUT),
    ("no stop", Intent.OPT_OUT),
    ("I want to stop", Intent.OPT_OUT),
    ("Stop all texts", Intent.OPT_OUT),
    # The keyword and what it stops.
    ("stop sending these", Intent.OPT_OUT),
    ("please stop texting me", Intent.OPT_OUT),
    ("Quit texting me", Intent.OPT_OUT),
    ("stop sending me reminders", Intent.OPT_OUT),
    ("cancel the texts", Intent.OPT_OUT),
    ("end these messages", Intent.OPT_OUT),
    ("Cancel my subscription", Intent.OPT_OUT),
    ("How do I stop these texts?", Intent.OPT_OUT),
    ("These texts need to stop", Intent.OPT_OUT),
    ("Why won't you stop texting me", Intent.OPT_OUT),
    ("Cancel my appointment and stop texting me", Intent.OPT_OUT),
    ("Stop. Wrong number", Intent.OPT_OUT),
    # Keywords with no other sense: revoke wherever they stand, unless negated.
    ("I want to unsubscribe", Intent.OPT_OUT),
    ("How do I unsubscribe?", Intent.OPT_OUT),
    ("opt me out", Intent.OPT_OUT),
    ("I revoke my consent", Intent.OPT_OUT),
    # Plain language without a keyword.
    ("Don't text me anymore", Intent.OPT_OUT),
    ("do not contact me", Intent.OPT_OUT),
    ("never message me again", Intent.OPT_OUT),
    ("I don't want these messages", Intent.OPT_OUT),
    ("no more messages please", Intent.OPT_OUT),
    ("No more!", Intent.OPT_OUT),
    ("remove me from this list", Intent.OPT_OUT),
    ("take me off your list", Intent.OPT_OUT),
    ("leave me alone", Intent.OPT_OUT),
    ("Wrong number", Intent.OPT_OUT),
    ("You have the wrong number", Intent.OPT_OUT),
    ("Not interested", Intent.OPT_OUT),
    # Spanish.
    ("No más mensajes por favor", Intent.OPT_OUT),
    ("No más", Intent.OPT_OUT),
    ("Por favor no me envíen más mensajes", Intent.OPT_OUT),
    ("No me manden más textos", Intent.OPT_OUT),
    ("Dejen de enviarme mensajes", Intent.OPT_OUT),
    ("Ya no quiero recibir mensajes", Intent.OPT_OUT),
    ("Quiero darme de baja", Intent.OPT_OUT),
    ("Baja", Intent.OPT_OUT),
    ("ALTO", Intent.OPT_OUT),
    ("Alto por favor", Intent.OPT_OUT),
    ("Ya basta", Intent.OPT_OUT),
    ("Para ya", Intent.OPT_OUT),
    ("Paren los mensajes", Intent.OPT_OUT),
    ("Cancelar suscripción", Intent.OPT_OUT),
    ("Número equivocado", Intent.OPT_OUT),
    ("Quítenme de la lista", Intent.OPT_OUT),
    # Opt back in, help.
    ("START", Intent.OPT_IN),
    ("unstop", Intent.OPT_IN),
    ("HELP", Intent.HELP),
    ("info", Intent.HELP),
    ("Ayuda", Intent.HELP),
    # A keyword in another sense: nothing recorded, one clarifying text. Negated, a question about something
    # else, or aimed at something else ("cancel" and "end" are about appointments as often as about texts).
    ("don't stop", Intent.UNCLEAR),
    ("no, don't stop", Intent.UNCLEAR),
    ("Please don't stop the reminders", Intent.UNCLEAR),
    ("Don't unsubscribe me", Intent.UNCLEAR),
    ("when does my appointment end?", Intent.UNCLEAR),
    ("when do these texts end?", Intent.UNCLEAR),
    ("Can I cancel my appointment?", Intent.UNCLEAR),
    ("I need to cancel", Intent.UNCLEAR),
    ("cancel it", Intent.UNCLEAR),
    ("The bleeding won't stop", Intent.UNCLEAR),
    ("No cancelen mi cita", Intent.UNCLEAR),
    ("¿Puedo cancelar mi cita?", Intent.UNCLEAR),
    ("¿Cuándo termina mi cita?", Intent.UNCLEAR),
    # No revocation at all: a keyword's letters in another sense, or none.
    ("Thanks, see you Tuesday!", Intent.OTHER),
    ("Can I stop by at 3?", Intent.OTHER),
    ("See you at the end of the week", Intent.OTHER),
    ("I stopped taking it", Intent.OTHER),
    ("No, thank you", Intent.OTHER),
    ("ok thanks", Intent.OTHER),
    ("Gracias, nos vemos el martes", Intent.OTHER),
    ("Nos vemos el fin de semana", Intent.OTHER),
    ("Gracias para todo", Intent.OTHER),  # "para" is also "for"
    ("Please do not call me, text instead", Intent.OTHER),  # she wants the texts
    ("Take me off the waitlist", Intent.OTHER),
    ("Para mi cita de mañana, ¿qué llevo?", Intent.OTHER),
]


@pytest.mark.parametrize(("body", "intent"), REPLIES, ids=[r[0].strip() or "blank" for r in REPLIES])
def test_inbound_sms_classification(body: str, intent: Intent) -> None:
    assert classify(body) is intent


def test_the_reply_table_covers_english_and_spanish_both_ways() -> None:
    assert len(REPLIES) >= 40 and len({body for body, _ in REPLIES}) == len(REPLIES)
    kinds = {intent for _, intent in REPLIES}
    assert kinds == set(Intent)
    spanish = [body for body, _ in REPLIES if any(w in body.lower() for w in ("más", "por favor", "cita", "para"))]
    assert len(spanish) >= 10


def test_stop_opts_out_holds_queued_texts_and_confirms_once(app_and_fakes) -> None:  # type: ignore[no-untyped-def]
    app, fakes = app_and_fakes
    pid = create_patient(app, devices=())
    queued = create_notification(app, pid, category=Category.APPOINTMENT_REMINDER, channels=[Channel.SMS])
    replies: list[int] = []
    intent, reply = handle_inbound_sms(app.engine, app.clock, replies.append, from_number="(212) 555-0123", body="STOP")
    assert intent is Intent.OPT_OUT and reply is not None
    # Texting STOP again within 5 minutes: still opted out, no second confirmation.
    app.clock.advance(minutes=2)
    assert handle_inbound_sms(app.engine, app.clock, replies.append, from_number="+12125550123", body="stop")[1] is None
    assert deliver(app.deps, queued).state is State.SUPPRESSED, "work queued before the STOP is held back"
    assert deliver(app.deps, replies[0]).state is State.SENT, "the confirmation itself goes out"
    [confirmation] = fakes["sms"].sent
    assert confirmation.body.startswith("Partum Health: You are unsubscribed") and "START" in confirmation.body
    with session_scope(app.engine) as session:
        events = session.scalars(select(ConsentEvent)).all()
    assert [(e.channel, e.category, e.granted, e.source, e.detail) for e in events] == [
        ("sms", None, False, ConsentSource.SMS_KEYWORD, "keyword STOP"),
        ("sms", None, False, ConsentSource.SMS_KEYWORD, "keyword STOP"),
    ]


def test_start_opts_back_in_and_help_changes_nothing(app_and_fakes) -> None:  # type: ignore[no-untyped-def]
    app, fakes = app_and_fakes
    pid = create_patient(app, devices=())
    handle_inbound_sms(app.engine, app.clock, lambda _: None, from_number="+12125550123", body="please stop texting me")
    handle_inbound_sms(app.engine, app.clock, lambda _: None, from_number="+12125550123", body="START")
    with session_scope(app.engine) as session:
        assert current_consent(session, pid) == {("sms", None): True}
    _, help_reply = handle_inbound_sms(app.engine, app.clock, lambda _: None, from_number="+12125550123", body="HELP")
    assert help_reply is not None
    assert deliver(app.deps, help_reply.notification_id).state is State.SENT
    assert "STOP" in fakes["sms"].sent[-1].body and "support@" in fakes["sms"].sent[-1].body
    with session_scope(app.engine) as session:
        assert session.scalar(select(func.count()).select_from(ConsentEvent)) == 2


def test_plain_language_revocations_opt_out_and_are_confirmed(app_and_fakes) -> None:  # type: ignore[no-untyped-def]
    app, fakes = app_and_fakes
    pid = create_patient(app, devices=(), locale="es")
    intent, reply = handle_inbound_sms(
        app.engine, app.clock, lambda _: None, from_number="+12125550123", body="No más mensajes por favor"
    )
    assert intent is Intent.OPT_OUT and reply is not None
    with session_scope(app.engine) as session:
        assert current_consent(session, pid) == {("sms", None): False}
        [event] = session.scalars(select(ConsentEvent)).all()
    assert event.detail == "plain-language revocation"  # the text itself is never stored
    assert deliver(app.deps, reply.notification_id).state is State.SENT
    assert fakes["sms"].sent[-1].body.startswith("Partum Health: Ya no recibirá mensajes")


@pytest.mark.parametrize(
    ("locale", "question"),
    [("en", "Did you want to stop texts from us? Reply STOP to confirm."), ("es", "¿Desea dejar de recibir")],
)
def test_an_unclear_reply_records_nothing_and_gets_one_clarifying_text(
    app_and_fakes, locale: str, question: str
) -> None:  # type: ignore[no-untyped-def]
    app, fakes = app_and_fakes
    pid = create_patient(app, devices=(), locale=locale)
    sent: list[int] = []
    body = "When does my appointment end? The bleeding won't stop"
    intent, reply = handle_inbound_sms(app.engine, app.clock, sent.append, from_number="+12125550123", body=body)
    assert intent is Intent.UNCLEAR and reply is not None and sent == [reply.notification_id]
    with session_scope(app.engine) as session:
        assert current_consent(session, pid) == {}, "nothing is recorded until she answers"
    # Asked once: a second unclear reply within 5 minutes gets no second question.
    app.clock.advance(minutes=4)
    assert (
        handle_inbound_sms(app.engine, app.clock, sent.append, from_number="+12125550123", body="don't stop")[1] is None
    )
    assert deliver(app.deps, reply.notification_id).state is State.SENT
    [clarifying] = fakes["sms"].sent
    assert question in clarifying.body and clarifying.body.startswith("Partum Health:") and len(clarifying.body) <= 160
    for fragment in ("appointment", "bleeding", "cita"):
        assert fragment not in clarifying.body.lower(), "the question never repeats what she wrote"
    # Later, another unclear reply is asked about again; her STOP is then a plain opt-out, confirmed.
    app.clock.advance(minutes=2)
    assert handle_inbound_sms(app.engine, app.clock, sent.append, from_number="+12125550123", body="cancel it")[1]
    intent, confirmation = handle_inbound_sms(
        app.engine, app.clock, sent.append, from_number="+12125550123", body="STOP"
    )
    assert intent is Intent.OPT_OUT and confirmation is not None
    with session_scope(app.engine) as session:
        assert current_consent(session, pid) == {("sms", None): False}


def test_no_clarifying_text_once_the_number_has_opted_out(app_and_fakes) -> None:  # type: ignore[no-untyped-def]
    app, _ = app_and_fakes
    pid = create_patient(app, devices=())
    handle_inbound_sms(app.engine, app.clock, lambda _: None, from_number="+12125550123", body="STOP")
    app.clock.advance(minutes=10)
    intent, reply = handle_inbound_sms(
        app.engine, app.clock, lambda _: None, from_number="+12125550123", body="when does my appointment end?"
    )
    assert intent is Intent.UNCLEAR and reply is None, "after a revocation, not even a question"
    with session_scope(app.engine) as session:
        assert current_consent(session, pid) == {("sms", None): False}


def test_unsubscribe_token_is_signed_expiring_and_personal(app_and_fakes) -> None:  # type: ignore[no-untyped-def]
    app, _ = app_and_fakes
    pid = create_patient(app)
    token = make_token(KEY, patient_id=pid, now=app.clock.now(), ttl=timedelta(days=1))
    assert read_token(KEY, token, app.clock.now()) == (pid, Channel.EMAIL, Category.MARKETING)
    payload, signature = token.split(".")
    forged = make_token("guessed-key", patient_id=pid + 1, now=app.clock.now()).split(".")[0] + "." + signature
    with pytest.raises(InvalidInput, match="^token: signature does not match"):
        read_token(KEY, forged, app.clock.now())
    with pytest.raises(InvalidInput, match="^token: expired"):
        read_token(KEY, token, app.clock.now() + timedelta(days=2))
    with pytest.raises(InvalidInput, match="^token: malformed"):
        read_token(KEY, "not-a-token", app.clock.now())


def test_unsubscribe_stops_marketing_email_but_never_care_messages(app_and_fakes) -> None:  # type: ignore[no-untyped-def]
    app, fakes = app_and_fakes
    pid = create_patient(app, devices=())
    first = create_notification(app, pid, category=Category.MARKETING, channels=[Channel.EMAIL])
    assert deliver(app.deps, first).state is State.SENT
    [email] = fakes["email"].sent
    url = email.data["unsubscribe_url"]
    assert url in email.body and email.promotional
    assert apply_unsubscribe_token(app.engine, app.clock, KEY, url.rsplit("/", 1)[1])
    later = create_notification(app, pid, category=Category.MARKETING, channels=[Channel.EMAIL])
    assert deliver(app.deps, later).state is State.SUPPRESSED
    notice = create_notification(app, pid, category=Category.ACCOUNT_NOTICE)
    assert deliver(app.deps, notice).state is State.SENT
    reminder = create_notification(app, pid, category=Category.SURVEY_REMINDER, channels=[Channel.EMAIL])
    assert deliver(app.deps, reminder).state is State.SENT


def test_marketing_sms_needs_written_consent_and_push_is_opt_out(app_and_fakes) -> None:  # type: ignore[no-untyped-def]
    app, fakes = app_and_fakes
    pid = create_patient(app)
    nid = create_notification(app, pid, category=Category.MARKETING, channels=[Channel.SMS, Channel.PUSH])
    assert deliver(app.deps, nid).state is State.SENT
    assert fakes["sms"].sent == [] and len(fakes["push"].sent) == 1
    with pytest.raises(InvalidInput, match="^sms_consent_evidence"):
        set_preferences(
            app.engine,
            app.clock,
            patient_id=pid,
            changes=[PreferenceChange(Category.MARKETING, Channel.SMS, True)],
            source=ConsentSource.API,
            actor="api-client:test",
        )
    set_preferences(
        app.engine,
        app.clock,
        patient_id=pid,
        changes=[PreferenceChange(Category.MARKETING, Channel.SMS, True)],
        source=ConsentSource.API,
        actor="api-client:test",
        sms_consent_evidence="web form v3 #8812",
    )
    nid = create_notification(app, pid, category=Category.MARKETING, channels=[Channel.SMS])
    assert deliver(app.deps, nid).state is State.SENT
    assert fakes["sms"].sent[-1].body.endswith("Reply STOP to opt out.")
    assert get_preferences(app.engine, pid)["marketing"]["sms"] is True


def test_account_notices_cannot_be_muted(app_and_fakes) -> None:  # type: ignore[no-untyped-def]
    app, _ = app_and_fakes
    pid = create_patient(app)
    with pytest.raises(InvalidInput, match="^account_notice.email: account notices are required"):
        set_preferences(
            app.engine,
            app.clock,
            patient_id=pid,
            changes=[PreferenceChange(Category.ACCOUNT_NOTICE, Channel.EMAIL, False)],
            source=ConsentSource.APP,
            actor="patient",
        )
    set_preferences(
        app.engine,
        app.clock,
        patient_id=pid,
        changes=[PreferenceChange(Category.SURVEY_REMINDER, Channel.PUSH, False)],
        source=ConsentSource.APP,
        actor="patient",
    )
    prefs = get_preferences(app.engine, pid)
    assert prefs["survey_reminder"]["push"] is False and prefs["account_notice"]["email"] is True


def test_marketing_is_capped_at_three_a_day(app_and_fakes) -> None:  # type: ignore[no-untyped-def]
    app, fakes = app_and_fakes
    pid = create_patient(app)
    states = [
        deliver(app.deps, create_notification(app, pid, category=Category.MARKETING, channels=[Channel.PUSH])).state
        for _ in range(4)
    ]
    assert states == [State.SENT, State.SENT, State.SENT, State.SUPPRESSED]
    app.clock.advance(hours=24, seconds=1)
    assert (
        deliver(app.deps, create_notification(app, pid, category=Category.MARKETING, channels=[Channel.PUSH])).state
        is State.SENT
    )


def test_healthcare_texts_capped_one_a_day_three_a_week(app_and_fakes) -> None:  # type: ignore[no-untyped-def]
    app, fakes = app_and_fakes
    pid = create_patient(app, devices=())

    def text_reminder() -> State | None:
        nid = create_notification(app, pid, category=Category.SURVEY_REMINDER, channels=[Channel.SMS])
        return deliver(app.deps, nid).state

    assert text_reminder() is State.SENT
    assert text_reminder() is State.SUPPRESSED
    for _ in range(2):
        app.clock.advance(days=1, seconds=1)
        assert text_reminder() is State.SENT
    app.clock.advance(days=1, seconds=1)
    assert text_reminder() is State.SUPPRESSED, "a fourth within 7 days"
    assert len(fakes["sms"].sent) == 3


def test_marketing_waits_for_its_stricter_evening_window(app_and_fakes) -> None:  # type: ignore[no-untyped-def]
    app, fakes = app_and_fakes
    pid = create_patient(app, time_zone="America/New_York")
    app.clock.set(datetime(2026, 3, 3, 1, 30, tzinfo=UTC))  # 20:30 in New York
    marketing = create_notification(app, pid, category=Category.MARKETING, channels=[Channel.PUSH])
    reminder = create_notification(app, pid, category=Category.SURVEY_REMINDER, channels=[Channel.PUSH])
    assert deliver(app.deps, marketing).state is State.DEFERRED
    assert load(app, marketing).not_before == datetime(2026, 3, 3, 13, 0, tzinfo=UTC)
    assert deliver(app.deps, reminder).state is State.SENT


def _stop(app, patient_id: int) -> int:  # type: ignore[no-untyped-def]
    from worker.consent import record_consent

    with session_scope(app.engine) as session:
        event = record_consent(
            session,
            patient_id=patient_id,
            channel=Channel.SMS,
            category=None,
            granted=False,
            source=ConsentSource.SMS_KEYWORD,
            actor="patient",
            at=app.clock.now(),
        )
        session.flush()
        assert event.id is not None
        return event.id


def test_ledger_ids_erased_at_the_top_are_never_handed_out_again(make_app) -> None:  # type: ignore[no-untyped-def]
    """The outbound webhooks read the ledger past a watermark: on SQLite a new row must not take an erased top id
    (migration 0065 makes the table AUTOINCREMENT), or its consent.changed event would never go out."""
    from worker.erasure import erase_patient

    app = make_app()
    assert app.engine.dialect.name == "sqlite"
    _stop(app, create_patient(app, ref="stays"))
    erased = create_patient(app, ref="erased")
    top = max(_stop(app, erased) for _ in range(2))  # the newest ledger rows are hers
    erase_patient(app.engine, app.clock, patient_id=erased, reason="under_13")
    assert _stop(app, create_patient(app, ref="fresh")) > top
