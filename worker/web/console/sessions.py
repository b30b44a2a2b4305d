"""Console sessions: opened with an API key whose client holds the ``console`` scope, kept server-side.

The cookie carries a random token; the table keeps its SHA-256 (:class:`~worker.models_console.ConsoleSession`).
Every request re-checks what made the session valid: the key and its client are live, the client still holds
``console``, the session is neither idle past ``console.idle_timeout_minutes`` nor older than
``console.max_session_hours``. A session failing any of that is deleted, not just refused.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.clock import Clock
from worker.db import session_scope
from worker.models_api import ApiClient, ApiKey
from worker.models_console import ConsoleSession
from worker.settings import ConsoleSettings
from worker.web.auth import Scope, authenticate


@dataclass(frozen=True)
class Operator:
    """The signed-in operator of a request: the API client's name and the session's CSRF token."""

    session_id: int
    name: str
    key_id: str
    csrf_token: str


class NotAllowed(Exception):
    """The key is unknown or revoked, or its client lacks the ``console`` scope (which, is not said)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def sign_in(engine: Engine, clock: Clock, key: str) -> tuple[str, Operator]:
    """A new session for ``key``; returns the cookie's token (shown only here) and the operator."""
    caller = authenticate(engine, key.strip())
    if caller is None or Scope.CONSOLE not in caller.scopes:
        raise NotAllowed
    token = secrets.token_urlsafe(32)
    now = clock.now()
    row = ConsoleSession(
        token_sha256=_digest(token),
        client_id=caller.id,
        key_id=caller.key_id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
    )
    with session_scope(engine) as session:
        session.add(row)
        session.flush()
        assert row.id is not None
        return token, Operator(session_id=row.id, name=caller.name, key_id=caller.key_id, csrf_token=row.csrf_token)


def resume(engine: Engine, clock: Clock, settings: ConsoleSettings, token: str) -> Operator | None:
    """The operator whose session ``token`` opens, its idle clock restarted; ``None`` (and the session gone) if
    it no longer may."""
    now = clock.now()
    with session_scope(engine) as session:
        found = session.execute(
            select(ConsoleSession, ApiClient, ApiKey)
            .join(ApiClient, col(ApiClient.id) == col(ConsoleSession.client_id))
            .join(ApiKey, col(ApiKey.key_id) == col(ConsoleSession.key_id))
            .where(col(ConsoleSession.token_sha256) == _digest(token))
        ).first()
        if found is None:
            return None
        row, client, key = found
        valid = (
            client.revoked_at is None
            and key.revoked_at is None
            and key.client_id == client.id
            and Scope.CONSOLE.value in client.scopes.split(",")
            and now - row.last_seen_at <= timedelta(minutes=settings.idle_timeout_minutes)
            and now - row.created_at <= timedelta(hours=settings.max_session_hours)
        )
        if not valid:
            session.delete(row)
            return None
        row.last_seen_at = now
        session.add(row)
        assert row.id is not None
        return Operator(session_id=row.id, name=client.name, key_id=row.key_id, csrf_token=row.csrf_token)


def sign_out(engine: Engine, session_id: int) -> None:
    with session_scope(engine) as session:
        session.execute(delete(ConsoleSession).where(col(ConsoleSession.id) == session_id))


def forget_expired(engine: Engine, clock: Clock, settings: ConsoleSettings) -> int:
    """Delete sessions idle past the timeout or past their lifetime (called at each sign-in: no job needed)."""
    now = clock.now()
    with session_scope(engine) as session:
        result = session.execute(
            delete(ConsoleSession).where(
                (col(ConsoleSession.last_seen_at) < now - timedelta(minutes=settings.idle_timeout_minutes))
                | (col(ConsoleSession.created_at) < now - timedelta(hours=settings.max_session_hours))
            )
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
