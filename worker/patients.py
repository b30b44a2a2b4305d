"""Patients and their devices: upserts with validation that names the bad field (never echoes its value)."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.clock import Clock
from worker.db import session_scope
from worker.errors import InvalidInput, NotFound
from worker.models import Device, Patient
from worker.templates import LOCALES

PLATFORMS = ("ios", "android", "web")


def normalise_phone(raw: str) -> str:
    """E.164 for a US (or explicitly +country) number; raises naming the field."""
    try:
        number = phonenumbers.parse(raw, "US")
    except phonenumbers.NumberParseException:
        raise InvalidInput("phone", "not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidInput("phone", "not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _check_zone(zone: str) -> str:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput("time_zone", "not a known IANA time zone (e.g. America/Chicago)") from None
    return zone


def upsert_patient(
    engine: Engine,
    clock: Clock,
    *,
    external_ref: str,
    time_zone: str,
    locale: str = "en",
    email: str | None = None,
    phone: str | None = None,
    us_state: str | None = None,
) -> int:
    """Create or update a patient by the platform's reference; returns our id."""
    if not external_ref or len(external_ref) > 128:
        raise InvalidInput("external_ref", "must be 1 to 128 characters")
    _check_zone(time_zone)
    if locale not in LOCALES:
        raise InvalidInput("locale", f"must be one of {', '.join(LOCALES)}")
    if email is not None and ("@" not in email or len(email) > 320):
        raise InvalidInput("email", "not an email address")
    phone_e164 = normalise_phone(phone) if phone else None
    if us_state is not None and (len(us_state) != 2 or not us_state.isalpha()):
        raise InvalidInput("us_state", "must be a two-letter US state code")
    now = clock.now()
    with session_scope(engine) as session:
        patient = session.scalars(select(Patient).where(col(Patient.external_ref) == external_ref)).first()
        if patient is None:
            patient = Patient(external_ref=external_ref, time_zone=time_zone, created_at=now, updated_at=now)
        patient.time_zone = time_zone
        patient.locale = locale
        patient.email = email
        patient.phone_e164 = phone_e164
        patient.us_state = us_state.upper() if us_state else None
        patient.updated_at = now
        session.add(patient)
        session.flush()
        assert patient.id is not None
        return patient.id


def patient_id_for(engine: Engine, external_ref: str) -> int:
    with session_scope(engine) as session:
        found = session.scalars(select(col(Patient.id)).where(col(Patient.external_ref) == external_ref)).first()
    if found is None:
        raise NotFound("no patient with that external_ref")
    return int(found)


def register_device(engine: Engine, clock: Clock, *, patient_id: int, platform: str, token: str) -> int:
    """Register (or revive, or move to another patient) a push token; returns the device id."""
    if platform not in PLATFORMS:
        raise InvalidInput("platform", f"must be one of {', '.join(PLATFORMS)}")
    if not token or len(token) > 4096:
        raise InvalidInput("token", "must be 1 to 4096 characters")
    now = clock.now()
    with session_scope(engine) as session:
        if session.get(Patient, patient_id) is None:
            raise NotFound(f"patient {patient_id} does not exist")
        device = session.scalars(select(Device).where(col(Device.token) == token)).first()
        if device is None:
            device = Device(patient_id=patient_id, platform=platform, token=token, created_at=now, last_seen_at=now)
        device.patient_id = patient_id
        device.platform = platform
        device.live = True
        device.dead_at = None
        device.dead_reason = None
        device.last_seen_at = now
        session.add(device)
        session.flush()
        assert device.id is not None
        return device.id
