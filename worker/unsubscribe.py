"""Signed, expiring unsubscribe links: no login needed, and nobody can unsubscribe someone else.

A token is ``<payload>.<signature>``: the payload (base64url JSON: patient id, channel, category, expiry) is
signed with HMAC-SHA256 under ``CARENOTIFY_SIGNING_KEY``. It carries an id, never an address. Applying it is
idempotent and works for the link (GET shows a page) and RFC 8058 one-click (POST).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from worker.categories import Category, Channel
from worker.clock import Clock
from worker.consent import record_consent
from worker.db import session_scope
from worker.errors import InvalidInput
from worker.models import Patient
from worker.models_consent import ConsentSource

DEFAULT_TTL = timedelta(days=60)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


#: What a link is for, and the only thing a token may do: stop marketing email. Care messages, account notices
#: and other channels are never switched off by a link, whatever a (validly signed) payload claims.
LINK_CHANNEL = Channel.EMAIL
LINK_CATEGORY = Category.MARKETING
#: Largest patient id either database holds.
_MAX_ID = 2**63 - 1


def mac(key: str, message: bytes) -> bytes:
    """HMAC-SHA256 under ``CARENOTIFY_SIGNING_KEY``: the one signature every patient link carries.

    Other links (the preference page) sign a message that starts with their own purpose label, which no
    unsubscribe payload (base64url JSON, always starting ``ey``) can, so a token of one kind never verifies as another.
    """
    return hmac.new(key.encode(), message, hashlib.sha256).digest()


def sign_payload(key: str, data: object) -> str:
    """``<base64url JSON>.<base64url HMAC-SHA256>`` of ``data`` (tests use it to forge-with-the-key)."""
    payload = _b64(json.dumps(data, separators=(",", ":")).encode())
    return f"{payload}.{_b64(mac(key, payload.encode()))}"


def make_token(key: str, *, patient_id: int, now: datetime, ttl: timedelta = DEFAULT_TTL) -> str:
    """A link token: marketing email, for this patient, until ``now + ttl``."""
    return sign_payload(
        key,
        {"p": patient_id, "ch": LINK_CHANNEL.value, "c": LINK_CATEGORY.value, "exp": int((now + ttl).timestamp())},
    )


def make_unsubscribe_url(base_url: str, key: str, *, patient_id: int, now: datetime) -> str:
    return f"{base_url.rstrip('/')}/v1/unsubscribe/{make_token(key, patient_id=patient_id, now=now)}"


def read_token(key: str, token: str, now: datetime) -> tuple[int, Channel, Category]:
    """Verify signature, shape, purpose and expiry; raises :class:`InvalidInput` (field ``token``) otherwise.

    The signature proves we minted the payload, not that it is one a link may carry: a payload that is not
    an object, lacks a field, or names another channel or category is refused too (a 4xx, never a 500).
    """
    try:
        payload, signature = token.split(".", 1)
        expected = _b64(mac(key, payload.encode()))
        if not hmac.compare_digest(expected, signature):
            raise InvalidInput("token", "signature does not match")
        data = json.loads(_unb64(payload))
    except (ValueError, json.JSONDecodeError):
        raise InvalidInput("token", "malformed") from None
    if not isinstance(data, dict):
        raise InvalidInput("token", "malformed")
    patient_id, expires = data.get("p"), data.get("exp")
    if (
        type(patient_id) is not int  # not a bool, a float or a string
        or type(expires) is not int
        or not 1 <= patient_id <= _MAX_ID
    ):
        raise InvalidInput("token", "malformed")
    if data.get("ch") != LINK_CHANNEL.value or data.get("c") != LINK_CATEGORY.value:
        raise InvalidInput("token", "a link may only unsubscribe from marketing email")
    if expires < now.timestamp():
        raise InvalidInput("token", "expired")
    return patient_id, LINK_CHANNEL, LINK_CATEGORY


def apply_unsubscribe_token(engine: Engine, clock: Clock, key: str, token: str) -> bool:
    """Record the opt-out; ``False`` if the patient no longer exists (erased). Idempotent."""
    now = clock.now()
    patient_id, channel, category = read_token(key, token, now)
    with session_scope(engine) as session:
        if session.get(Patient, patient_id) is None:
            return False
        record_consent(
            session,
            patient_id=patient_id,
            channel=channel,
            category=category,
            granted=False,
            source=ConsentSource.UNSUBSCRIBE_LINK,
            actor="patient",
            at=now,
            detail="one-click unsubscribe",
        )
    return True
