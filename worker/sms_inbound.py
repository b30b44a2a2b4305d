"""Inbound SMS: STOP-family keywords and plain-language revocations opt out, START opts back in, HELP answers.

The opt-out is written to the ledger at once (so queued texts are held back at send time) and answered by one
confirmation text, sent right away and at most once per 5 minutes, carrying no marketing. A reply that uses a
revocation word in another sense ("when does my appointment end?", "don't stop") changes nothing and gets one
clarifying text instead (same limit), unless the number has already opted out. How replies are read, English and
Spanish, is set out above :func:`classify`; ``tests/test_consent.py`` holds the table of phrasings.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.categories import Channel
from worker.clock import Clock
from worker.confirm_by_reply import answer_reply, read_reply, reply_once
from worker.consent import consent_of, record_consent
from worker.db import session_scope
from worker.models import Patient
from worker.models_consent import ConsentSource
from worker.models_replies import ReplyKind
from worker.outbox import Enqueue, Submitted
from worker.patients import normalise_phone

#: Whole-body keywords (case, spacing and punctuation ignored, accents stripped). English: Twilio's and the
#: FCC's; Spanish: what carriers and Spanish-language programmes honour (ALTO, PARAR, BAJA, NO MAS, ...).
OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "END", "QUIT", "CANCEL", "REVOKE", "OPTOUT"}
    | {"ALTO", "PARA", "PARE", "PAREN", "PARAR", "DETENER", "CANCELAR", "BAJA", "BASTA", "FIN", "NOMAS", "REVOCAR"}
)
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})
HELP_KEYWORDS = frozenset({"HELP", "INFO", "AYUDA"})
CONFIRMATION_WINDOW = timedelta(minutes=5)


class Intent(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    #: A revocation word is there, but the reply says something else with it ("when does my appointment end?",
    #: "don't stop"): nothing is recorded, and one clarifying text says how to stop.
    UNCLEAR = "unclear"
    OTHER = "other"


#: The reply each intent gets (``context["sms_reply"]``, a template key in :mod:`worker.templates`).
REPLY_KIND = {Intent.OPT_OUT: "opt_out", Intent.OPT_IN: "opt_in", Intent.HELP: "help", Intent.UNCLEAR: "clarify"}

# How a free-text reply is read (the FCC's 2024 rule, 47 CFR 64.1200(a)(10): a reply using stop, quit, end, revoke,
# opt out, cancel or unsubscribe revokes consent; other wording does too when a reasonable person would read it so).
# The reply is cut into clauses (at . , ! ? ; : and line breaks); any clause that revokes makes the reply a
# revocation. In a clause:
#   1. plain-language revocations without a keyword revoke ("don't text me", "no me envíen más mensajes",
#      "remove me from this list", "dejen de mandarme mensajes", "wrong number");
#   2. an unambiguous keyword (unsubscribe, revoke, opt out, stopall) revokes unless negated;
#   3. a polysemous keyword (stop, quit, end, cancel; parar, cancelar, terminar, alto, ...) revokes when it is the
#      command: alone or with courtesy words ("Please stop", "STOP NOW", "cancel please", "No más por favor"), or
#      followed by what it stops ("stop sending these", "cancel the texts", "paren los mensajes");
#   4. a keyword used otherwise is UNCLEAR, never silently ignored and never a revocation nobody asked for:
#      negated ("don't stop", "no cancelen"), about something else ("cancel my appointment"), or a question
#      about something else ("when does my appointment end?"). The patient gets one clarifying text
#      ("Reply STOP to confirm") and nothing is recorded until she answers;
#   5. a few fixed phrases use a keyword's letters in another sense and are ignored: "stop by", "stop in",
#      "stop over", "end of", "the end", "fin de semana" ("Can I stop by at 3?").
# Opting out is never undone by this reading: only START does that.

#: Courtesy and emphasis around a command ("please just stop it now, thanks"; "ya basta, por favor").
_COURTESY = frozenset(
    "please pls plz pleas now right away immediately asap already thanks thank you u thx ty ok okay just all "
    "yes yeah yea no hey hi hello seriously again forever completely permanently anymore and guys "
    "por favor porfa porfavor xfa ya ahora gracias oye mismo todo todos inmediatamente si hola ahorita".split()
)
#: Also the words around a request ("can you stop", "I want to stop", "how do I stop").
_FILLER = _COURTESY | frozenset(
    "i im said want wanna to would like can could will how do me the a need needs got gotta have has must any "
    "more further yo quiero que lo de el la los las me nos".split()
)
#: What a command may stop without naming texts ("stop it", "stop sending these", "paren esto").
_WEAK_OBJECTS = frozenset(
    "it this these that those them everything sending send texting messaging contacting calling emailing "
    "bothering spamming harassing writing from your ur you us esto estos estas eso esos esas enviar enviarme "
    "mandar mandarme enviando mandando escribir escribirme".split()
)
#: What names our texts: a keyword followed by one of these revokes ("stop the messages", "cancelar suscripción").
_STRONG_OBJECTS = frozenset(
    "text texts texting txt txts txting message messages messaging msg msgs sms notification notifications notifs "
    "alert alerts reminder reminders subscription list mensaje mensajes mensajitos texto textos notificacion "
    "notificaciones recordatorio recordatorios suscripcion lista".split()
)
#: Words skipped between a keyword and what it stops ("stop sending me all of these texts").
_BETWEEN = (
    _WEAK_OBJECTS
    | frozenset("me my all of any these the getting receiving get receive to with more".split())
    | frozenset("de los las el la mis sus estos mas".split())
) - _STRONG_OBJECTS
#: Keywords with no other sense here: they revoke unless negated ("how do I unsubscribe?").
_STRONG_KEYWORDS = frozenset({"stopall", "optout", "revoke", "revoking", "revocar", "revoco"})
_STRONG_PREFIXES = ("unsub", "unsusc", "desuscrib", "desinscrib")
#: Keywords with other senses ("stop by", "cancel my appointment", "when does it end?").
_WEAK_KEYWORDS = frozenset(
    "stop stopping quit cease nomore cancel cancelling canceling end "
    "alto basta parar paren pare detener detengan detenga deten nomas "
    "cancelar cancela cancelen cancele cancelo terminar termina terminen termine fin".split()
)
#: Of those, the ones whose everyday object in a care setting is an appointment, not our texts: a command only
#: with courtesy around it ("cancel please"); "I need to cancel", "cancel it" are UNCLEAR.
_APPOINTMENT_WORDS = frozenset(
    "cancel cancelling canceling end cancelar cancela cancelen cancele cancelo terminar termina terminen termine "
    "fin".split()
)
_SPANISH_KEYWORDS = frozenset(
    "alto basta parar paren pare detener detengan detenga deten nomas cancelar cancela cancelen cancele cancelo "
    "terminar termina terminen termine fin para revocar revoco".split()
)
#: "para" is also the everyday "for": a keyword only as the whole command ("para ya", "para, por favor").
_PARA_AROUND = frozenset("ya ahora ahorita por favor porfa porfavor xfa oye hola inmediatamente".split())
_NEGATORS = frozenset({"not", "never", "nunca"})
_NEGATORS_ES = frozenset({"no", "jamas"})
#: A keyword's letters in another sense.
_NOT_A_KEYWORD = re.compile(r"\bstop (by|in|over)\b|\bend of\b|\bthe end\b|\bfin de semana\b")

_PLAIN_REVOCATIONS = re.compile(
    "|".join(
        [
            # English
            r"\b(do not|never|no longer) (ever )?(text|txt|message|msg|sms|contact|bother|write|reach)\b",
            r"\b(do not|never) send (me|us|these|this|them|any|more|texts?|messages?)\b",
            r"\b(do not|never) want (any |these |this |your |more |of |to |get |receive |getting |receiving |hear |"
            r"from |you |them )*(texts?|messages?|msgs?|sms|texting|messaging|these|this|them|anymore|reminders?|"
            r"notifications?|alerts?)\b",
            r"^(remove|delete|lose) (me|my (phone |cell )?number)( (from|off) (\w+ ){0,2}"
            r"(list|texts?|messages?|sms|system|this|these|them|it))?$",
            r"^take me off( (the|this|your|ur|that) (\w+ )?(list|texts?|messages?|sms))?$",
            r"\bleave me alone\b",
            r"\b(wrong|not my) (number|phone)\b|\bwrong person\b|^(i am |im |i'm )?not interested$",
            # Spanish (accents stripped)
            r"\bno (me |nos )?(envien|envies|envie|enviar|manden|mandes|mande|mandar|escriban|escribas|contacten|"
            r"contactes|texteen|textees)\b",
            r"\b(ya )?no (quiero|deseo|necesito) (recibir |mas |ningun |ninguno |estos |sus |los )*"
            r"(mensajes|textos|sms|notificaciones|recordatorios)\b",
            r"\b(deja|dejen|deje|dejar|dejes|para|paren|pare|parar|detengan|detenga) de (enviar|mandar|escribir|"
            r"textear|contactar|molestar)",
            r"\b(dar|darme|darse|denme|deme|dame|doy|da|dan) de baja\b",
            r"\b(quitenme|quitame|quiteme|sacame|saquenme|saqueme|borrenme|borrame|eliminenme|eliminame)\b",
            r"^numero equivocado$|^no me interesa$",
        ]
    )
)

#: Courtesy around a whole request, dropped from both ends before the anchored phrases above are tried.
_EDGES = re.compile(
    r"^((please|pls|plz|hey|hi|hello|ok|okay|can you|could you|would you|will you|i want to|i would like to|"
    r"i need to|i want you to|just|por favor|porfa|oye|hola) )+|( (please|pls|plz|thanks|thank you|thx|ty|now|asap|"
    r"ok|okay|already|por favor|porfa|gracias|ya|ahora))+$"
)


def _plain(text: str) -> str:
    """Lower case, accents stripped, typographic apostrophes straightened, contractions spelt out."""
    text = unicodedata.normalize("NFKD", text.replace("\u2019", "'").replace("`", "'"))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = re.sub(r"\b(do|does|did|is|are|was|were|have|has|had|would|should|could|must)n'?t\b", r"\1 not", text)
    text = re.sub(r"\bwon'?t\b", "will not", text)
    text = re.sub(r"\b(can'?t|cannot)\b", "can not", text)
    text = re.sub(r"\bopt(ing|ed)? ?me ?out\b", "optout me", text)
    text = re.sub(r"\bopt(ing|ed)?[\s_-]*out\b", "optout", text)
    text = re.sub(r"\bno (more|mas)\b", r"no\1", text)
    return text


def _whole_body(body: str) -> str:
    """The body's letters only, upper case, accents stripped: ``" Stop. "`` -> ``STOP``, ``No más`` -> ``NOMAS``."""
    plain = unicodedata.normalize("NFKD", body)
    return re.sub(r"[^A-Za-z]", "", "".join(ch for ch in plain if not unicodedata.combining(ch))).upper()


def _is_keyword(token: str) -> bool:
    return token in _STRONG_KEYWORDS or token.startswith(_STRONG_PREFIXES) or token in _WEAK_KEYWORDS


def _is_command(token: str, before: list[str], after: list[str]) -> bool:
    """The keyword is the request itself, with nothing around it but courtesy and what it stops."""
    if token == "para":
        return set(before) <= _PARA_AROUND and all(t in _PARA_AROUND or t in _STRONG_OBJECTS for t in after)
    if token in _APPOINTMENT_WORDS:
        return set(before) <= _COURTESY and all(t in _COURTESY or t in _STRONG_OBJECTS or _is_keyword(t) for t in after)
    allowed = _FILLER | _WEAK_OBJECTS | _STRONG_OBJECTS
    return set(before) <= _FILLER and all(t in allowed or _is_keyword(t) for t in after)


def _read_clause(clause: str) -> Intent:
    """OPT_OUT, UNCLEAR (a keyword used otherwise) or OTHER, for one clause of a reply."""
    tokens = [t.strip("'") for t in re.findall(r"[a-z0-9']+", clause) if t.strip("'")]
    if not tokens:
        return Intent.OTHER
    joined = " ".join(tokens)
    core = _EDGES.sub("", joined)
    if _PLAIN_REVOCATIONS.search(joined) or _PLAIN_REVOCATIONS.search(core):
        return Intent.OPT_OUT
    other_sense = [(m.start(), m.end()) for m in _NOT_A_KEYWORD.finditer(joined)]
    mentioned = False
    start = 0
    for index, token in enumerate(tokens):
        token_start, start = start, start + len(token) + 1
        if not (_is_keyword(token) or token == "para") or any(a <= token_start < b for a, b in other_sense):
            continue
        before, after = tokens[:index], tokens[index + 1 :]
        negators = _NEGATORS | (_NEGATORS_ES if token in _SPANISH_KEYWORDS else frozenset())
        rhetorical = tokens[0] == "why"  # "why won't you stop texting me" is a complaint, not a wish
        if not rhetorical and any(t in negators for t in before[-3:]):
            mentioned = mentioned or token != "para"  # "don't stop", "no cancelen": say how, record nothing
            continue
        if token in _STRONG_KEYWORDS or token.startswith(_STRONG_PREFIXES) or _is_command(token, before, after):
            return Intent.OPT_OUT
        if token == "para":
            continue
        following = [t for t in after if t not in _BETWEEN]
        if following and following[0] in _STRONG_OBJECTS:
            return Intent.OPT_OUT  # "how do I stop these texts", "cancel my subscription", "paren los mensajes"
        if any(t in _STRONG_OBJECTS for t in before) and set(before[-2:]) & {"need", "needs", "must", "to", "gotta"}:
            return Intent.OPT_OUT  # "these texts need to stop"
        mentioned = True
    return Intent.UNCLEAR if mentioned else Intent.OTHER


def classify(body: str) -> Intent:
    """What an inbound text asks for. Keywords are whole-body first; then plain language, clause by clause."""
    word = _whole_body(body)
    if word in OPT_OUT_KEYWORDS:
        return Intent.OPT_OUT
    if word in OPT_IN_KEYWORDS:
        return Intent.OPT_IN
    if word in HELP_KEYWORDS:
        return Intent.HELP
    readings = [_read_clause(clause) for clause in re.split(r"[.,!?;:\n\r\u00a1\u00bf]+", _plain(body))]
    if Intent.OPT_OUT in readings:
        return Intent.OPT_OUT
    if Intent.UNCLEAR in readings:
        return Intent.UNCLEAR
    return Intent.OTHER


def handle_inbound_sms(
    engine: Engine, clock: Clock, enqueue: Enqueue, *, from_number: str, body: str
) -> tuple[Intent | ReplyKind, Submitted | None]:
    """Apply one inbound text. Returns the intent (or the appointment answer) and the reply notification, if any.

    The body is read here and nowhere else: it is never stored or logged (a reply may carry health details).
    A C or R answers an appointment reminder that asked for it; with no such reminder it is read as any text.
    """
    kind = read_reply(body)
    if kind is not None:
        answered, ack = answer_reply(engine, clock, enqueue, from_number=from_number, kind=kind)
        if answered:
            return kind, ack
    intent = classify(body)
    if intent is Intent.OTHER:
        return intent, None
    try:
        phone = normalise_phone(from_number)
    except Exception:
        return intent, None
    now = clock.now()
    reply = REPLY_KIND[intent]
    with session_scope(engine) as session:
        patients = list(session.scalars(select(Patient).where(col(Patient.phone_e164) == phone)))
        if not patients:
            return intent, None
        ids = [patient.id for patient in patients if patient.id is not None]
        if intent is Intent.UNCLEAR:
            consent = consent_of(session, ids)
            if any(consent[pid].get((Channel.SMS.value, None)) is False for pid in ids):
                # Whoever has this number already said stop: no more texts, not even a question.
                return intent, None
        keyword = _whole_body(body)
        how = f"keyword {keyword}" if keyword in OPT_OUT_KEYWORDS | OPT_IN_KEYWORDS else "plain-language revocation"
        if intent in (Intent.OPT_OUT, Intent.OPT_IN):
            for patient_id in ids:
                record_consent(
                    session,
                    patient_id=patient_id,
                    channel=Channel.SMS,
                    category=None,
                    granted=intent is Intent.OPT_IN,
                    source=ConsentSource.SMS_KEYWORD,
                    actor="patient",
                    at=now,
                    detail=how,
                )
        # One confirmation (or question), even if the text is sent three times.
        reply_id = reply_once(session, now, ids[0], reply)
        if reply_id is None:
            return intent, None
    enqueue(reply_id)
    return intent, Submitted(notification_id=reply_id, created=True)
