"""A provider that answers 503 for a while, then recovers: every notification is delivered exactly once.

Real PostgreSQL, real Redis broker and delay queue, real dramatiq worker threads, the real in-app HTTP adapter;
the provider is mocked only at the httpx boundary (respx). Backoffs are shrunk so the test takes seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import httpx
import pytest
import respx
from sqlalchemy import select
from sqlmodel import col

from tests.conftest import REDIS_URL, create_notification, create_patient, make_settings
from worker.bootstrap import build_app
from worker.categories import Category, Channel
from worker.clock import SystemClock
from worker.db import session_scope
from worker.models import DeliveryAttempt, Notification
from worker.runtime import start_worker, stop_worker
from worker.states import TERMINAL, State

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
URL = "https://secure-messaging.example/api/notices"


def test_503_storm_then_recovery_delivers_each_notification_once(
    pg_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARENOTIFY_INAPP_API_TOKEN", "test-token")
    settings = make_settings(
        database_url=pg_url,
        broker="redis",
        redis_url=REDIS_URL,
        redis_namespace=redis_namespace,
        providers={"inapp": ["inapp"], "push": ["console"], "sms": ["console"], "email": ["console"]},
        provider={"inapp_url": URL, "breaker_failure_threshold": 1000},
        delivery={"min_backoff_seconds": 0.05, "max_backoff_seconds": 0.3, "max_attempts": 40},
    )
    app = build_app(settings, clock=SystemClock())
    received: Counter[str] = Counter()
    lock = threading.Lock()
    failing_until = time.monotonic() + 2.0

    def provider(request: httpx.Request) -> httpx.Response:
        if time.monotonic() < failing_until:
            return httpx.Response(503, json={"error": "maintenance"})
        key = json.loads(request.content)["idempotency_key"]
        with lock:
            received[key] += 1
        return httpx.Response(201, json={"id": key})

    with respx.mock(assert_all_called=False) as mock:
        mock.post(URL).mock(side_effect=provider)
        pid = create_patient(app, devices=())
        ids = [
            create_notification(app, pid, category=Category.CARE_TEAM_MESSAGE, channels=[Channel.INAPP])
            for _ in range(30)
        ]
        worker = start_worker(app, threads=4)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with session_scope(app.engine) as session:
                    states = session.scalars(select(col(Notification.state)).where(col(Notification.id).in_(ids))).all()
                if all(State(s) in TERMINAL for s in states):
                    break
                time.sleep(0.1)
        finally:
            stop_worker(app, worker)
    try:
        with session_scope(app.engine) as session:
            rows = session.scalars(select(Notification).where(col(Notification.id).in_(ids))).all()
            outcomes = Counter(a.outcome for a in session.scalars(select(DeliveryAttempt)))
        assert {r.state for r in rows} == {State.SENT}, [r.reason for r in rows if r.state != State.SENT]
        assert len(received) == 30 and set(received.values()) == {1}, "each notification reached the provider once"
        assert outcomes["retry"] > 0 and outcomes["accepted"] == 30
        assert all(r.attempt_count >= 2 for r in rows), "every notification lived through the outage"
    finally:
        app.close()
