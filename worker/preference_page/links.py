"""Short, signed, expiring links to a patient's preference page: ``<public base>/p/<token>``.

The token names her by id only and fits an SMS: ``base64url(expiry hours (3 bytes) + patient id (1-8 bytes,
minimal big-endian) + tag (12 bytes))``, 24 characters for ids below 16.7 million. The tag is the unsubscribe
links' HMAC-SHA256 under ``CARENOTIFY_SIGNING_KEY`` (:func:`worker.unsubscribe.mac`), over a message that starts with
this link's purpose label and truncated to 96 bits (every guess costs a request). An unsubscribe token cannot open
the page (no dot, other signed message) and a page token cannot unsubscribe (it is not ``<payload>.<signature>``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from worker.errors import InvalidInput
from worker.unsubscribe import mac

#: Bound into every tag: what this signature is for.
PURPOSE = b"carenotify/preference-page/v1\x00"
#: Expiry is counted in whole hours from here (3 bytes last until the year 3934).
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
TAG_BYTES = 12
_EXPIRY_BYTES = 3
_MAX_ID = 2**63 - 1
#: base64url of 16 to 23 bytes, no padding.
_SHAPE = re.compile(r"^[A-Za-z0-9_-]{22,31}$")
#: Where the page is served; short, because the SMS HELP answer carries it.
PATH_PREFIX = "/p/"


class LinkInvalid(InvalidInput):
    """Not a link we made (tampered, truncated, another key or another kind of link)."""

    def __init__(self) -> None:
        super().__init__("token", "not a valid preference link")


class LinkExpired(InvalidInput):
    """A genuine link past its time; says whose, so the page that says so can be in her language."""

    def __init__(self, patient_id: int) -> None:
        super().__init__("token", "the preference link has expired")
        self.patient_id = patient_id


@dataclass(frozen=True)
class Link:
    patient_id: int
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tag(key: str, body: bytes) -> bytes:
    return mac(key, PURPOSE + body)[:TAG_BYTES]


def make_token(key: str, *, patient_id: int, now: datetime, ttl: timedelta) -> str:
    """A token opening this patient's page until ``now + ttl`` (rounded up to the hour)."""
    if not 1 <= patient_id <= _MAX_ID:
        raise ValueError("patient id out of range")
    hours = math.ceil((now + ttl - EPOCH).total_seconds() / 3600)
    body = hours.to_bytes(_EXPIRY_BYTES, "big") + patient_id.to_bytes((patient_id.bit_length() + 7) // 8, "big")
    return _b64(body + _tag(key, body))


def make_url(base_url: str, key: str, *, patient_id: int, now: datetime, ttl: timedelta) -> str:
    return f"{base_url.rstrip('/')}{PATH_PREFIX}{make_token(key, patient_id=patient_id, now=now, ttl=ttl)}"


def read_token(key: str, token: str, now: datetime) -> Link:
    """Verify shape, tag and expiry. Raises :class:`LinkInvalid` or :class:`LinkExpired`; never anything else."""
    if not _SHAPE.match(token):
        raise LinkInvalid()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, binascii.Error):
        raise LinkInvalid() from None
    if _b64(raw) != token:
        raise LinkInvalid()  # base64's spare low bits: one spelling per token, so any change is refused
    body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    id_bytes = body[_EXPIRY_BYTES:]
    if not 1 <= len(id_bytes) <= 8 or not hmac.compare_digest(tag, _tag(key, body)):
        raise LinkInvalid()
    patient_id = int.from_bytes(id_bytes, "big")
    if id_bytes[0] == 0 or not 1 <= patient_id <= _MAX_ID:
        raise LinkInvalid()  # only the one canonical spelling of an id is ever signed
    expires_at = EPOCH + timedelta(hours=int.from_bytes(body[:_EXPIRY_BYTES], "big"))
    if expires_at <= now:
        raise LinkExpired(patient_id)
    return Link(patient_id=patient_id, expires_at=expires_at)
