"""Patients and their devices: upserts with validation that names the bad field (never echoes its value)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import cache

import phonenumbers
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.clock import Clock, is_place_zone
from worker.db import pyformat, retry_transient, run_raw, session_scope
from worker.errors import InvalidInput, NotFound
from worker.models import Device, Patient
from worker.templates import LOCALES

PLATFORMS = ("ios", "android", "web")


#: Regions a number may belong to when the caller does not say (the platform is US-only: ``patients.phone_regions``).
DEFAULT_PHONE_REGIONS: tuple[str, ...] = ("US",)

#: Number types that can receive a text. ``FIXED_LINE_OR_MOBILE`` is what every geographic US number is (the
#: North American plan does not tell them apart); VOIP numbers (Google Voice and the like) receive SMS and patients
#: do use them. Refused: premium rate (+1 900) and shared cost (they bill the caller), toll free (a business
#: line), fixed line (where a region tells landlines apart), pager, personal numbers, UAN, voicemail, unknown.
SMS_CAPABLE_TYPES = frozenset(
    {
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
        phonenumbers.PhoneNumberType.VOIP,
    }
)


def _parse_phone(raw: str, default_region: str) -> phonenumbers.PhoneNumber:
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidInput("phone", "not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidInput("phone", "not a valid phone number")
    return number


def normalise_phone(raw: str) -> str:
    """E.164 for a US (or explicitly +country) number; raises naming the field.

    Lenient on purpose: it also finds the patient a text came from (a STOP must match whatever number was
    stored, whatever the rules for new numbers are now). A patient's own number goes through
    :func:`patient_phone`.
    """
    return phonenumbers.format_number(_parse_phone(raw, "US"), phonenumbers.PhoneNumberFormat.E164)


def patient_phone(raw: str, regions: Sequence[str] = DEFAULT_PHONE_REGIONS) -> str:
    """E.164 for a number of one of ``regions`` that can receive a text; raises naming the field.

    A number without a ``+country`` prefix is read as one of the first region's.
    """
    number = _parse_phone(raw, regions[0])
    if phonenumbers.region_code_for_number(number) not in regions:
        raise InvalidInput("phone", f"must be a number from {', '.join(regions)}")
    if phonenumbers.number_type(number) not in SMS_CAPABLE_TYPES:
        raise InvalidInput("phone", "must be a mobile number that can receive texts (not premium rate or toll free)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@cache
def is_known_zone(zone: str) -> bool:
    return is_place_zone(zone)


def _check_zone(zone: str) -> str:
    if not is_known_zone(zone):
        raise InvalidInput("time_zone", "not a known IANA time zone (e.g. America/Chicago)")
    return zone


#: RFC 5322 dot-atom characters (``atext``) of an address's local part.
_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def _unicode_word(part: str) -> bool:
    """Internationalised (SMTPUTF8) text: letters, marks and digits beyond ASCII."""
    return all(ord(c) > 127 and unicodedata.category(c)[0] in "LMN" for c in part)


def email_problem(email: str) -> str | None:
    """Why ``email`` cannot be delivered to, or None. Checks the syntax a mail provider accepts (no DNS):
    ``local@domain.tld`` with a dot-atom local part and a domain of at least two labels ending in a name."""
    if len(email) > 254:
        return "longer than an email address can be"
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        return "not an email address"
    if len(local.encode()) > 64:
        return "the part before @ is longer than 64 bytes"
    for part in local.split("."):
        if not part or not all(_ATEXT.match(c) or _unicode_word(c) for c in part):
            return "the part before @ has characters or dots an address cannot have"
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return "the domain is not a valid domain name"
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 253 or not all(_LABEL.match(label) for label in labels):
        return "the domain is not a valid domain name"
    if len(labels) < 2:
        return "the domain needs a dot, e.g. example.org"
    top = labels[-1]
    if len(top) < 2 or not (top.isalpha() or top.lower().startswith("xn--")):
        return "the domain must end in a top-level domain name, e.g. .org"
    return None


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
    phone_regions: Sequence[str] = DEFAULT_PHONE_REGIONS,
) -> int:
    """Create or update a patient by the platform's reference; returns our id."""
    if not external_ref or len(external_ref) > 128:
        raise InvalidInput("external_ref", "must be 1 to 128 characters")
    _check_zone(time_zone)
    if locale not in LOCALES:
        raise InvalidInput("locale", f"must be one of {', '.join(LOCALES)}")
    if email is not None and (problem := email_problem(email)) is not None:
        raise InvalidInput("email", problem)
    phone_e164 = patient_phone(phone, phone_regions) if phone else None
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


_ID_FOR_REF_PG = pyformat("SELECT id FROM patient WHERE external_ref = :ref")


def patient_id_for(engine: Engine, external_ref: str) -> int:
    """Her id, from the reference the platform knows her by (every API route by patient starts here). On
    PostgreSQL one statement in autocommit, one round trip (a session's BEGIN, SELECT and COMMIT were three, and
    its query building cost more than the trigger that follows); a dropped connection is retried (a read)."""
    if engine.dialect.name == "postgresql":
        rows = retry_transient(lambda: run_raw(engine, _ID_FOR_REF_PG, {"ref": external_ref}), seconds=2.0)
        found = rows[0]["id"] if rows else None
    else:
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
