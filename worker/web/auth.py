"""API keys: created once, shown once, stored as a SHA-256 digest, checked in constant time.

A key looks like ``cn_<key_id>_<secret>``: ``key_id`` (public, 12 hex characters) finds the row, and the
digest of the whole key is compared with :func:`hmac.compare_digest`, so neither a timing difference nor a
copy of the table gives a usable key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from worker.clock import Clock
from worker.db import session_scope
from worker.errors import InvalidInput
from worker.models_api import ApiClient
from worker.web.errors import ApiError

_KEY = re.compile(r"^cn_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class Caller:
    """The authenticated API client of a request."""

    id: int
    name: str


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(engine: Engine, clock: Clock, name: str) -> str:
    """Register a client and return its key; this is the only time the key exists in clear."""
    if not _NAME.match(name):
        raise InvalidInput("name", "must be 1 to 64 letters, digits, '.', '_' or '-'")
    key_id = secrets.token_hex(6)
    key = f"cn_{key_id}_{secrets.token_urlsafe(32)}"
    try:
        with session_scope(engine) as session:
            session.add(ApiClient(name=name, key_id=key_id, key_sha256=_digest(key), created_at=clock.now()))
    except IntegrityError:
        raise InvalidInput("name", "an API client with that name exists") from None
    return key


def revoke_api_key(engine: Engine, clock: Clock, name: str) -> bool:
    """Refuse the client's key from now on; returns False if there is no such (live) client."""
    with session_scope(engine) as session:
        client = session.scalars(select(ApiClient).where(col(ApiClient.name) == name)).first()
        if client is None or client.revoked_at is not None:
            return False
        client.revoked_at = clock.now()
        session.add(client)
    return True


def authenticate(engine: Engine, key: str) -> Caller | None:
    """The live client owning ``key``, or None."""
    match = _KEY.match(key)
    if match is None:
        return None
    with session_scope(engine) as session:
        client = session.scalars(select(ApiClient).where(col(ApiClient.key_id) == match.group(1))).first()
        if client is None or client.id is None:
            # Spend the same time as a real compare so a key_id cannot be probed by timing.
            hmac.compare_digest(_digest(key), "0" * 64)
            return None
        if not hmac.compare_digest(_digest(key), client.key_sha256) or client.revoked_at is not None:
            return None
        return Caller(id=client.id, name=client.name)


_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_bearer = HTTPBearer(auto_error=False, description="An API key from `carenotify api-key create NAME`.")


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
