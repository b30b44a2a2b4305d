"""Sending: claim due deliveries of one endpoint, sign them (Standard Webhooks), POST, settle.

A delivery is ``pending`` until a sender claims it (``sending``, under a lease: a sender that dies gives it back
when the lease runs out), then ``delivered`` on a 2xx, or ``pending`` again with exponential backoff on anything
else (a timeout, a refused connection, a 500, a 3xx: redirects are not followed), until ``webhooks.max_age_hours``
after it was queued, when it is ``failed``. A 410 disables the endpoint (``gone``) and leaves the delivery pending;
an endpoint is disabled (``failing``) when a delivery used up its retries with nothing delivered meanwhile, or
when everything has failed for ``webhooks.disable_after_hours``. Either way
operators see it in ``/metrics`` and ``carenotify webhooks list``, and what was pending resumes when it is enabled.

At least once: a delivery is settled after its POST, so a sender that dies between the two sends it again, with the
same ``webhook-id`` (the receiver drops what it has seen). For an endpoint that asks for per-patient order, a
delivery is only claimed when no earlier one for the same patient is still open, so one patient's events arrive
one after another (a failing one holds back that patient's later ones, not other patients').

Signatures (``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``) come from the
``standardwebhooks`` package. ``webhook-timestamp`` is the wall clock's, not the injected one: receivers check it
against theirs (5 minutes of tolerance), so it must be the real time of the request.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import httpx
import structlog
from sqlalchemy import and_, exists, select, update
from sqlalchemy.engine import Connection, Engine
from standardwebhooks.webhooks import Webhook

from worker.clock import Clock
from worker.models_outbound import WebhookDelivery, WebhookEndpoint, WebhookEvent
from worker.outbound.dispatch import due_condition
from worker.settings import WebhookSettings

log = structlog.get_logger(__name__)

_ENDPOINTS = WebhookEndpoint.__table__  # type: ignore[attr-defined]
_DELIVERIES = WebhookDelivery.__table__  # type: ignore[attr-defined]
_EVENTS = WebhookEvent.__table__  # type: ignore[attr-defined]
USER_AGENT = "carenotify-webhooks/1"


class Outcome(StrEnum):
    DELIVERED = "delivered"
    GONE = "gone"
    RETRY = "retry"


def classify(status: int | None) -> Outcome:
    """2xx: done; 410: the receiver says the endpoint is gone; anything else (or no answer): try again later."""
    if status is not None and 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    return Outcome.RETRY


def backoff_seconds(failures: int, settings: WebhookSettings) -> float:
    """After the n-th failure: initial, 2x, 4x, ... at most ``max_backoff_seconds``."""
    return float(min(settings.initial_backoff_seconds * 2 ** max(failures - 1, 0), settings.max_backoff_seconds))


def body_of(event_type: str, occurred_at: datetime, payload: dict[str, Any]) -> str:
    """The Standard Webhooks envelope: ``{"type", "timestamp", "data"}``."""
    stamp = occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event_type, "timestamp": stamp, "data": payload}, separators=(",", ":"), sort_keys=True)


def sign_headers(secret: str, event_key: str, body: str, at: datetime) -> dict[str, str]:
    return {
        "webhook-id": event_key,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_key, at, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    event_key: str
    type: str
    occurred_at: datetime
    payload: dict[str, Any]
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Result:
    claimed: Claimed
    status: int | None
    error: str | None
    outcome: Outcome


@dataclass(frozen=True)
class Round:
    """What one claim-send-settle round did."""

    claimed: int
    delivered: int
    failed: int
    disabled: bool


def _claim(conn: Connection, endpoint_id: int, ordered: bool, now: datetime, lease: timedelta, limit: int) -> list[int]:
    d = _DELIVERIES
    query = select(d.c.id).where(d.c.endpoint_id == endpoint_id, due_condition(now))
    if ordered:
        earlier = _DELIVERIES.alias("earlier")
        query = query.where(
            ~exists().where(
                and_(
                    earlier.c.endpoint_id == d.c.endpoint_id,
                    earlier.c.patient_id == d.c.patient_id,
                    earlier.c.id < d.c.id,
                    earlier.c.state.in_(("pending", "sending")),
                )
            )
        )
    query = query.order_by(d.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = [int(i) for i in conn.execute(query).scalars()]
    if ids:
        conn.execute(update(d).where(d.c.id.in_(ids)).values(state="sending", lease_until=now + lease))
    return ids


def _load(conn: Connection, ids: Sequence[int]) -> list[Claimed]:
    d, e = _DELIVERIES, _EVENTS
    rows = conn.execute(
        select(d.c.id, e.c.event_key, e.c.type, e.c.occurred_at, e.c.payload, d.c.attempts, d.c.created_at)
        .join(e, e.c.id == d.c.event_id)
        .where(d.c.id.in_(list(ids)))
        .order_by(d.c.id)
    ).all()
    return [Claimed(int(r[0]), str(r[1]), str(r[2]), r[3], dict(r[4]), int(r[5]), r[6]) for r in rows]


class Sender:
    """Sends one endpoint's due deliveries; ``run`` is what the ``send_webhooks`` actor does."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        settings: WebhookSettings,
        *,
        client: httpx.Client | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self.client = client or httpx.Client(timeout=settings.timeout_seconds, follow_redirects=False)
        self.wall = wall
        self._pool = ThreadPoolExecutor(max_workers=settings.send_concurrency, thread_name_prefix="webhook-send")

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.client.close()

    def run(self, endpoint_id: int) -> int:
        """Rounds until nothing is due (or ``webhooks.run_seconds`` passed); then the endpoint may be kicked again."""
        deadline = time.monotonic() + self.settings.run_seconds
        delivered = 0
        try:
            while time.monotonic() < deadline:
                done = self.send_due(endpoint_id)
                delivered += done.delivered
                if done.claimed == 0 or done.disabled:
                    break
        finally:
            with self.engine.begin() as conn:
                conn.execute(update(_ENDPOINTS).where(_ENDPOINTS.c.id == endpoint_id).values(kicked_until=None))
        return delivered

    def send_due(self, endpoint_id: int) -> Round:
        """One round: claim up to ``claim_batch_size`` due deliveries, POST them, settle them."""
        now = self.clock.now()
        with self.engine.begin() as conn:
            endpoint = conn.execute(select(_ENDPOINTS).where(_ENDPOINTS.c.id == endpoint_id)).first()
            if endpoint is None or not endpoint.enabled:
                return Round(0, 0, 0, disabled=True)
            lease = timedelta(seconds=self.settings.lease_seconds)
            ids = _claim(conn, endpoint_id, endpoint.ordered, now, lease, self.settings.claim_batch_size)
            claimed = _load(conn, ids) if ids else []
        if not claimed:
            return Round(0, 0, 0, disabled=False)
        results = list(self._pool.map(lambda c: self._post(endpoint.url, endpoint.secret, c), claimed))
        return self._settle(endpoint_id, results)

    def _post(self, url: str, secret: str, claimed: Claimed) -> Result:
        body = body_of(claimed.type, claimed.occurred_at, claimed.payload)
        headers = sign_headers(secret, claimed.event_key, body, self.wall())
        try:
            answer = self.client.post(url, content=body.encode(), headers=headers)
        except httpx.TimeoutException:
            return Result(claimed, None, "timeout", Outcome.RETRY)
        except httpx.HTTPError as exc:
            return Result(claimed, None, f"connect error: {type(exc).__name__}", Outcome.RETRY)
        outcome = classify(answer.status_code)
        return Result(
            claimed, answer.status_code, None if outcome is Outcome.DELIVERED else f"HTTP {answer.status_code}", outcome
        )

    def _settle(self, endpoint_id: int, results: Sequence[Result]) -> Round:
        """Write every answer, then the endpoint's health, in one transaction (one statement per kind of answer)."""
        now = self.clock.now()
        max_age = timedelta(hours=self.settings.max_age_hours)
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        gave_up = 0
        for r in results:
            c = r.claimed
            if r.outcome is Outcome.DELIVERED:
                groups[("delivered", r.status, None, c.attempts + 1, None)].append(c.delivery_id)
            elif r.outcome is Outcome.GONE:
                groups[("pending", r.status, r.error, c.attempts, now)].append(c.delivery_id)
            else:
                failures = c.attempts + 1
                retry_at = now + timedelta(seconds=backoff_seconds(failures, self.settings))
                if retry_at > c.created_at + max_age:
                    gave_up += 1
                    groups[("failed", r.status, r.error, failures, None)].append(c.delivery_id)
                else:
                    groups[("pending", r.status, r.error, failures, retry_at)].append(c.delivery_id)
        delivered = sum(1 for r in results if r.outcome is Outcome.DELIVERED)
        gone = any(r.outcome is Outcome.GONE for r in results)
        last_error = next((r.error for r in reversed(results) if r.error), None)
        d, e = _DELIVERIES, _ENDPOINTS
        with self.engine.begin() as conn:
            for (state, status, error, attempts, retry_at), ids in groups.items():
                values: dict[str, Any] = {
                    "state": state,
                    "last_status": status,
                    "last_error": error,
                    "attempts": attempts,
                    "lease_until": None,
                }
                if state == "delivered":
                    values["delivered_at"] = now
                if retry_at is not None:
                    values["next_attempt_at"] = retry_at
                conn.execute(update(d).where(d.c.id.in_(ids), d.c.state == "sending").values(**values))
            endpoint = conn.execute(select(e.c.failing_since, e.c.enabled).where(e.c.id == endpoint_id)).first()
            health: dict[str, Any] = {}
            if delivered:
                health = {"last_success_at": now, "failing_since": None}
            if len(results) > delivered:
                health |= {"last_failure_at": now, "last_error": last_error}
                if not delivered and endpoint is not None and endpoint.failing_since is None:
                    health["failing_since"] = now
            failing_since = health.get("failing_since", endpoint.failing_since if endpoint else None)
            disable: tuple[str, str] | None = None
            if gone:
                disable = ("gone", "the receiver answered 410 Gone")
            elif failing_since is not None and (
                gave_up or now - failing_since >= timedelta(hours=self.settings.disable_after_hours)
            ):
                # Nothing got through since failing_since, and a delivery has now used up its retries (or that
                # streak is older than disable_after_hours): the endpoint is broken, not having a bad hour.
                disable = (
                    "failing",
                    f"every delivery failed since {failing_since.isoformat() if failing_since else now.isoformat()}"
                    f" (last: {last_error})",
                )
            if disable is not None and endpoint is not None and endpoint.enabled:
                health |= {"enabled": False, "disabled_reason": disable[0], "disabled_detail": disable[1][:300]}
                health["disabled_at"] = now
                log.warning("webhooks.endpoint_disabled", endpoint_id=endpoint_id, reason=disable[0])
            if health:
                conn.execute(update(e).where(e.c.id == endpoint_id).values(updated_at=now, **health))
        return Round(len(results), delivered, gave_up, disabled=disable is not None)
