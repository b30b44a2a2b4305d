"""API clients, their keys and their scopes: created once, shown once, stored as a SHA-256 digest.

A key looks like ``cn_<key_id>_<secret>``: ``key_id`` (public, 12 hex characters) finds the row, and the
digest of the whole key is compared with :func:`hmac.compare_digest`, so neither a timing difference nor a
copy of the table gives a usable key.

A client (``care-platform``) holds scopes (what it may do) and one or more keys: a new key is added before the old
one is revoked, so a key is rotated without downtime and without becoming another client (its Idempotency-Key
records and its name in the consent ledger stay the same). Every route names the scope it needs; a key whose
client lacks it gets 403 naming that scope.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from worker.clock import Clock
from worker.db import session_scope
from worker.errors import InvalidInput
from worker.models_api import ApiClient, ApiKey
from worker.web.errors import ApiError, ErrorBody

_KEY = re.compile(r"^cn_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Scope(StrEnum):
    """What an API client may do. Each route needs one (reads accept ``read`` or the scope that writes)."""

    #: Trigger notifications: care-team messages, appointments and their reminders, surveys.
    NOTIFY = "notify"
    #: Create and update patients (contact data) and register their devices.
    PATIENTS = "patients"
    #: Change (and read) a patient's mute switches and consent.
    PREFERENCES = "preferences"
    #: Create, launch, cancel (and read) marketing campaigns.
    CAMPAIGNS = "campaigns"
    #: Erase a patient and everything about her.
    ERASE = "erase"
    #: Read any notification's status, any campaign's figures and any patient's preferences.
    READ = "read"
    #: Sign in to the operators' web console (``/console``, :mod:`worker.web.console`); no API route accepts it.
    CONSOLE = "console"
    #: Register, list, disable, enable and remove outbound-webhook endpoints; replay their events.
    WEBHOOKS = "webhooks"


#: The scopes of the patient-facing API: what a client created before scopes existed had (migration 0040), and the
#: default of :func:`create_api_key`. ``console`` and ``webhooks`` are never implied: they must be granted by name
#: (an outbound-webhook endpoint hears about every patient, so registering one is an operator's decision).
API_SCOPES: frozenset[Scope] = frozenset(Scope) - {Scope.CONSOLE, Scope.WEBHOOKS}


@dataclass(frozen=True)
class Caller:
    """The authenticated API client of a request, and the key it used."""

    id: int
    name: str
    scopes: frozenset[Scope]
    key_id: str


def parse_scopes(raw: str | Iterable[str]) -> frozenset[Scope]:
    """``"notify,read"`` (or an iterable of names) -> scopes; refuses unknown names and an empty set."""
    names = [part.strip().lower() for part in (raw.split(",") if isinstance(raw, str) else raw)]
    names = [name for name in names if name]
    if not names:
        raise InvalidInput("scopes", f"name at least one scope (known: {', '.join(Scope)})")
    scopes: set[Scope] = set()
    for name in names:
        try:
            scopes.add(Scope(name))
        except ValueError:
            raise InvalidInput("scopes", f"unknown scope {name[:32]!r} (known: {', '.join(Scope)})") from None
    return frozenset(scopes)


def _stored(scopes: Iterable[Scope]) -> str:
    return ",".join(sorted(scope.value for scope in scopes))


def _loaded(stored: str) -> frozenset[Scope]:
    # A name this version does not know (written by a newer one) grants nothing rather than failing every request.
    return frozenset(Scope(name) for name in stored.split(",") if name in Scope.__members__.values())


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key(session: Session, client_id: int, now: datetime) -> str:
    key_id = secrets.token_hex(6)
    key = f"cn_{key_id}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(client_id=client_id, key_id=key_id, key_sha256=_digest(key), created_at=now))
    return key


def _live_client(session: Session, name: str) -> ApiClient | None:
    client = session.scalars(select(ApiClient).where(col(ApiClient.name) == name)).first()
    return client if client is not None and client.revoked_at is None else None


def create_api_key(engine: Engine, clock: Clock, name: str, *, scopes: str | Iterable[str] | None = None) -> str:
    """Register a client with ``scopes`` (default: every API scope) and return its first key; this is the only
    time the key exists in clear."""
    if not _NAME.match(name):
        raise InvalidInput("name", "must be 1 to 64 letters, digits, '.', '_' or '-'")
    granted = API_SCOPES if scopes is None else parse_scopes(scopes)
    now = clock.now()
    try:
        with session_scope(engine) as session:
            client = ApiClient(name=name, scopes=_stored(granted), created_at=now)
            session.add(client)
            session.flush()
            assert client.id is not None
            return _new_key(session, client.id, now)
    except IntegrityError:
        raise InvalidInput("name", "an API client with that name exists") from None


def add_api_key(engine: Engine, clock: Clock, name: str, *, revoke_others: bool = False) -> str | None:
    """A further key for a live client (None if there is none). Its other keys keep working unless
    ``revoke_others`` (a rotation after a leak), in the same transaction."""
    now = clock.now()
    with session_scope(engine) as session:
        client = _live_client(session, name)
        if client is None or client.id is None:
            return None
        if revoke_others:
            session.execute(
                update(ApiKey)
                .where(col(ApiKey.client_id) == client.id, col(ApiKey.revoked_at).is_(None))
                .values(revoked_at=now)
            )
        return _new_key(session, client.id, now)


def rotate_api_key(engine: Engine, clock: Clock, name: str) -> str | None:
    """A new key for the client; every other key of it stops working at once. None if there is no such client."""
    return add_api_key(engine, clock, name, revoke_others=True)


def revoke_api_key(engine: Engine, clock: Clock, name: str, *, key_id: str | None = None) -> bool:
    """Refuse one key of the client (``key_id``), or the whole client and all its keys. False if there is no
    such live client or key."""
    now = clock.now()
    with session_scope(engine) as session:
        client = _live_client(session, name)
        if client is None:
            return False
        if key_id is None:
            client.revoked_at = now
            session.add(client)
            return True
        key = session.scalars(
            select(ApiKey).where(col(ApiKey.client_id) == client.id, col(ApiKey.key_id) == key_id)
        ).first()
        if key is None or key.revoked_at is not None:
            return False
        key.revoked_at = now
        session.add(key)
    return True


def set_api_scopes(engine: Engine, name: str, scopes: str | Iterable[str]) -> frozenset[Scope] | None:
    """Replace a live client's scopes (e.g. narrow a client that the upgrade gave every scope)."""
    granted = parse_scopes(scopes)
    with session_scope(engine) as session:
        client = _live_client(session, name)
        if client is None:
            return None
        client.scopes = _stored(granted)
        session.add(client)
    return granted


def list_api_clients(engine: Engine) -> list[dict[str, Any]]:
    """Every client with its scopes and keys (public ids and dates only: a key is never shown again)."""
    with session_scope(engine) as session:
        clients = session.scalars(select(ApiClient).order_by(col(ApiClient.name))).all()
        keys = session.scalars(select(ApiKey).order_by(col(ApiKey.id))).all()
        out: list[dict[str, Any]] = []
        for client in clients:
            out.append(
                {
                    "name": client.name,
                    "scopes": sorted(_loaded(client.scopes)),
                    "created_at": client.created_at.isoformat(),
                    "revoked_at": client.revoked_at.isoformat() if client.revoked_at else None,
                    "keys": [
                        {
                            "key_id": key.key_id,
                            "created_at": key.created_at.isoformat(),
                            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
                        }
                        for key in keys
                        if key.client_id == client.id
                    ],
                }
            )
    return out


def authenticate(engine: Engine, key: str) -> Caller | None:
    """The live client owning ``key`` (a live key of it), or None."""
    match = _KEY.match(key)
    if match is None:
        return None
    with session_scope(engine) as session:
        row = session.execute(
            select(ApiKey, ApiClient)
            .join(ApiClient, col(ApiClient.id) == col(ApiKey.client_id))
            .where(col(ApiKey.key_id) == match.group(1))
        ).first()
        if row is None:
            # Spend the same time as a real compare so a key_id cannot be probed by timing.
            hmac.compare_digest(_digest(key), "0" * 64)
            return None
        api_key, client = row
        if not hmac.compare_digest(_digest(key), api_key.key_sha256):
            return None
        if api_key.revoked_at is not None or client.revoked_at is not None or client.id is None:
            return None
        return Caller(id=client.id, name=client.name, scopes=_loaded(client.scopes), key_id=api_key.key_id)


_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_bearer = HTTPBearer(auto_error=False, description="An API key from `carenotify api-key create NAME --scopes ...`.")


def require_caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    """FastAPI dependency: the request's API client, or 401 naming the Authorization header."""
    if credentials is None:
        raise ApiError(
            401, "unauthenticated", "Authorization", "Authorization: send 'Bearer <API key>'", headers=_CHALLENGE
        )
    caller = authenticate(request.app.state.app.engine, credentials.credentials)
    if caller is None:
        raise ApiError(
            401, "unauthenticated", "Authorization", "Authorization: unknown or revoked API key", headers=_CHALLENGE
        )
    return caller


CallerDep = Annotated[Caller, Depends(require_caller)]


def require_scope(*accepted: Scope) -> Callable[[Caller], Caller]:
    """A dependency admitting a caller whose client holds any of ``accepted``; else 403 naming the scope."""
    needed = " or ".join(f"'{scope}'" for scope in accepted)

    def check(caller: CallerDep) -> Caller:
        if caller.scopes.isdisjoint(accepted):
            raise ApiError(
                403,
                "forbidden",
                "Authorization",
                f"Authorization: this API client lacks the scope {needed}"
                " (grant it with `carenotify api-key set-scopes`)",
            )
        return caller

    check.__name__ = f"require_{'_or_'.join(accepted)}"
    return check


#: A caller that may trigger notifications (care-team messages, appointments, surveys).
Notifier = Annotated[Caller, Depends(require_scope(Scope.NOTIFY))]
#: A caller that may create and update patients and their devices.
PatientWriter = Annotated[Caller, Depends(require_scope(Scope.PATIENTS))]
#: A caller that may change a patient's preferences; reading them takes ``preferences`` or ``read``.
PreferenceWriter = Annotated[Caller, Depends(require_scope(Scope.PREFERENCES))]
PreferenceReader = Annotated[Caller, Depends(require_scope(Scope.PREFERENCES, Scope.READ))]
#: A caller that may run campaigns; reading their figures takes ``campaigns`` or ``read``.
CampaignWriter = Annotated[Caller, Depends(require_scope(Scope.CAMPAIGNS))]
CampaignReader = Annotated[Caller, Depends(require_scope(Scope.CAMPAIGNS, Scope.READ))]
#: A caller that may erase patients.
Eraser = Annotated[Caller, Depends(require_scope(Scope.ERASE))]
#: A caller that may read any notification's status.
Reader = Annotated[Caller, Depends(require_scope(Scope.READ))]

WebhookAdmin = Annotated[Caller, Depends(require_scope(Scope.WEBHOOKS))]

#: The OpenAPI description of a 403, for the routes' ``responses``.
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "The API client lacks the scope the route needs"}
}
