"""Endpoints the operators register: add, list, disable, enable, remove. Each has its own signing secret.

A secret is ``whsec_`` + 32 random bytes in base64 (the Standard Webhooks form every library accepts), shown once
when the endpoint is added. It is kept as issued, since signing needs it; it never appears in a listing or a log.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.clock import Clock
from worker.db import session_scope
from worker.errors import InvalidInput, NotFound
from worker.models_outbound import WebhookEndpoint
from worker.outbound.events import parse_event_types


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_url(url: str) -> str:
    """An absolute http(s) URL without credentials (https is expected; http is for local receivers and tests)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("url", "must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise InvalidInput("url", "must not carry credentials: the signature authenticates us")
    if len(url) > 2048:
        raise InvalidInput("url", "must be at most 2048 characters")
    return url.strip()


def check_events(raw: str | list[str]) -> list[str]:
    try:
        return parse_event_types(raw)
    except ValueError as exc:
        raise InvalidInput("events", str(exc)) from None


@dataclass(frozen=True)
class EndpointView:
    """An endpoint as operators see it (never its secret)."""

    id: int
    url: str
    description: str | None
    events: list[str]
    ordered: bool
    enabled: bool
    disabled_reason: str | None
    disabled_detail: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _view(row: WebhookEndpoint) -> EndpointView:
    assert row.id is not None
    return EndpointView(
        id=row.id,
        url=row.url,
        description=row.description,
        events=list(row.events),
        ordered=row.ordered,
        enabled=row.enabled,
        disabled_reason=row.disabled_reason,
        disabled_detail=row.disabled_detail,
        disabled_at=row.disabled_at,
        failing_since=row.failing_since,
        last_success_at=row.last_success_at,
        last_failure_at=row.last_failure_at,
        last_error=row.last_error,
        created_at=row.created_at,
    )


def add_endpoint(
    engine: Engine,
    clock: Clock,
    *,
    url: str,
    events: str | list[str],
    ordered: bool = False,
    description: str | None = None,
) -> tuple[EndpointView, str]:
    """Register an endpoint; returns it and its secret (to be shown once)."""
    url = check_url(url)
    types = check_events(events)
    if description is not None and len(description) > 200:
        raise InvalidInput("description", "must be at most 200 characters")
    secret = new_secret()
    now = clock.now()
    with session_scope(engine) as session:
        row = WebhookEndpoint(
            url=url,
            description=description,
            events=types,
            ordered=ordered,
            secret=secret,
            created_at=now,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        return _view(row), secret


def list_endpoints(engine: Engine) -> list[EndpointView]:
    with session_scope(engine) as session:
        return [_view(r) for r in session.scalars(select(WebhookEndpoint).order_by(col(WebhookEndpoint.id)))]


def get_endpoint(engine: Engine, endpoint_id: int) -> EndpointView:
    with session_scope(engine) as session:
        row = session.get(WebhookEndpoint, endpoint_id)
        if row is None:
            raise NotFound(f"no webhook endpoint {endpoint_id}")
        return _view(row)


def set_enabled(engine: Engine, clock: Clock, endpoint_id: int, *, enabled: bool) -> EndpointView:
    """Disable (reason ``operator``) or enable again; enabling clears the failure streak, and what was pending
    resumes (``webhooks replay`` re-sends what was missed while it was off)."""
    now = clock.now()
    values: dict[str, Any] = {"enabled": enabled, "updated_at": now}
    if enabled:
        values |= {"disabled_reason": None, "disabled_detail": None, "disabled_at": None, "failing_since": None}
    else:
        values |= {"disabled_reason": "operator", "disabled_detail": "disabled by an operator", "disabled_at": now}
    with session_scope(engine) as session:
        found = session.execute(
            update(WebhookEndpoint).where(col(WebhookEndpoint.id) == endpoint_id).values(**values)
        ).rowcount  # type: ignore[attr-defined]
        if not found:
            raise NotFound(f"no webhook endpoint {endpoint_id}")
    return get_endpoint(engine, endpoint_id)


def remove_endpoint(engine: Engine, endpoint_id: int) -> None:
    """Delete it and its deliveries (events stay for other endpoints)."""
    with session_scope(engine) as session:
        result = session.execute(delete(WebhookEndpoint).where(col(WebhookEndpoint.id) == endpoint_id))
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"no webhook endpoint {endpoint_id}")
