"""Inbound SMS: STOP-family keywords and plain-language revocations opt out, START opts back in, HELP answers.

The opt-out is written to the ledger at once (so queued texts are held back at send time) and answered by one
confirmation text, sent right away and at most once per 5 minutes, carrying no marketing.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.categories import Category, Channel
from worker.clock import Clock
from worker.consent import record_consent
from worker.db import session_scope
from worker.models import Notification, Patient
from worker.models_consent import ConsentSource
from worker.outbox import Enqueue, Submitted, add_notification
from worker.patients import normalise_phone

OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "END", "QUIT", "CANCEL", "REVOKE", "OPTOUT"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})
CONFIRMATION_WINDOW = timedelta(minutes=5)

#: Plain-language revocations (the FCC counts "any reasonable means"), English and Spanish.
_REVOCATION = re.compile(
    r"\b(stop|quit|cease|no more|don'?t|do not|never)\b.{0,30}\b(text|texting|message|messaging|sms|contact)"
    r"|\b(unsubscribe|opt(\s|-)?out|remove me|take me off|leave me alone)\b"
    r"|\b(no (me )?(env[ií]e[ns]?|mande[ns]?) (m[aá]s )?mensajes|dejen? de (enviar|mandar)|cancelar)\b",
    re.IGNORECASE,
)


class Intent(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    OTHER = "other"


def classify(body: str) -> Intent:
    """What an inbound text asks for. Keywords are whole-body, case-insensitive; then plain language."""
    word = re.sub(r"[^A-Za-z]", "", body).upper()
    if word in OPT_OUT_KEYWORDS:
        return Intent.OPT_OUT
    if word in OPT_IN_KEYWORDS:
        return Intent.OPT_IN
    if word in HELP_KEYWORDS:
        return Intent.HELP
    if _REVOCATION.search(body):
        return Intent.OPT_OUT
    return Intent.OTHER


def handle_inbound_sms(
    engine: Engine, clock: Clock, enqueue: Enqueue, *, from_number: str, body: str
) -> tuple[Intent, Submitted | None]:
    """Apply one inbound text. Returns the intent and the reply notification, if one was sent."""
    intent = classify(body)
    if intent is Intent.OTHER:
        return intent, None
    try:
        phone = normalise_phone(from_number)
    except Exception:
        return intent, None
    now = clock.now()
    with session_scope(engine) as session:
        patients = list(session.scalars(select(Patient).where(col(Patient.phone_e164) == phone)))
        if not patients:
            return intent, None
        keyword = re.sub(r"[^A-Za-z]", "", body).upper()
        how = f"keyword {keyword}" if keyword in OPT_OUT_KEYWORDS | OPT_IN_KEYWORDS else "plain-language revocation"
        for patient in patients:
            assert patient.id is not None
            if intent is not Intent.HELP:
                record_consent(
                    session,
                    patient_id=patient.id,
                    channel=Channel.SMS,
                    category=None,
                    granted=intent is Intent.OPT_IN,
                    source=ConsentSource.SMS_KEYWORD,
                    actor="patient",
                    at=now,
                    detail=how,
                )
        patient = patients[0]
        assert patient.id is not None
        recent = session.scalars(
            select(Notification).where(
                col(Notification.patient_id) == patient.id,
                col(Notification.category) == Category.ACCOUNT_NOTICE,
                col(Notification.created_at) > now - CONFIRMATION_WINDOW,
            )
        ).all()
        if any(n.context.get("sms_reply") == intent.value for n in recent):
            return intent, None  # one confirmation, even if STOP is sent three times
        reply_id, _ = add_notification(
            session,
            now,
            patient_id=patient.id,
            category=Category.ACCOUNT_NOTICE,
            idempotency_key=f"sms-reply:{patient.id}:{intent.value}:{now.isoformat()}",
            channels=[Channel.SMS],
            context={"sms_reply": intent.value},
        )
    enqueue(reply_id)
    return intent, Submitted(notification_id=reply_id, created=True)
