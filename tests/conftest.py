"""Shared fixtures: an injected clock, real SQLite / PostgreSQL / Redis, and small ``create_*`` factories.

PostgreSQL and Redis are the real servers (``CARENOTIFY_TEST_POSTGRES_URL``, ``CARENOTIFY_TEST_REDIS_URL``).
Each test session gets its own PostgreSQL database and each test its own Redis namespace, so parallel runs
never see each other's rows or messages.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_lib
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from integrations.base import Provider
from integrations.fake import ScriptedProvider
from worker.bootstrap import App, build_app
from worker.categories import Category, Channel
from worker.clock import FrozenClock
from worker.db import make_engine
from worker.migrate import upgrade
from worker.patients import register_device, upsert_patient
from worker.settings import Settings, load_settings

#: The real-browser fixtures (``browser``, ``screenshots``): one Chromium for the whole session.
pytest_plugins = ["tests.browser"]

PG_URL = os.environ.get("CARENOTIFY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CARENOTIFY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


#: Tables in delete order (children first) for resetting PostgreSQL between tests.
def _all_tables(engine: Engine) -> list[str]:
    from worker.schema import load_all_models

    return [t.name for t in reversed(load_all_models().sorted_tables)]


@pytest.fixture
def clock() -> FrozenClock:
    # A Monday afternoon in New York: inside every quiet-hour window.
    return FrozenClock(datetime(2026, 3, 2, 18, 0, tzinfo=UTC))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'carenotify.db'}"


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated once, dropped at the end."""
    base = make_url(PG_URL)
    name = f"carenotify_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for this test and is not reachable at {base.host}:{base.port}: {exc}")
    url = base.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database_url: str) -> Iterator[str]:
    """The session database, emptied before each test."""
    engine = make_engine(pg_database_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE " + ", ".join(_all_tables(engine)) + " RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield pg_database_url


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A Redis namespace of our own; its keys are removed afterwards."""
    client = redis_lib.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis_lib.ConnectionError as exc:
        pytest.fail(f"Redis is required for this test and is not reachable at {REDIS_URL}: {exc}")
    namespace = f"carenotify-test-{uuid.uuid4().hex[:10]}"
    yield namespace
    keys = list(client.scan_iter(f"{namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


def make_settings(**overrides: Any) -> Settings:
    return load_settings(**overrides)


AppFactory = Callable[..., App]


@pytest.fixture
def make_app(sqlite_url: str, clock: FrozenClock) -> Iterator[AppFactory]:
    """Build an App on the embedded default (SQLite + in-memory broker) unless told otherwise."""
    apps: list[App] = []

    def factory(
        *,
        providers: Mapping[Channel, Sequence[Provider]] | None = None,
        migrate: bool = True,
        broker_namespace: str | None = None,
        **settings: Any,
    ) -> App:
        settings.setdefault("database_url", sqlite_url)
        settings.setdefault("broker", "memory")
        app = build_app(make_settings(**settings), clock=clock, providers=providers, broker_namespace=broker_namespace)
        if migrate:
            upgrade(app.engine)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.close()


def fake_providers(**by_channel: ScriptedProvider) -> dict[Channel, list[Provider]]:
    """One scripted provider per channel; unspecified channels accept everything."""
    registry: dict[Channel, list[Provider]] = {}
    for channel in Channel:
        registry[channel] = [by_channel.get(channel.value) or ScriptedProvider(name=f"fake-{channel}", channel=channel)]
    return registry


def create_patient(
    app: App,
    *,
    ref: str | None = None,
    time_zone: str = "America/New_York",
    locale: str = "en",
    email: str | None = "patient@example.org",
    phone: str | None = "+12125550123",
    devices: Sequence[tuple[str, str]] = (("ios", "tok-ios-1"),),
) -> int:
    ref = ref or f"pt-{uuid.uuid4().hex[:8]}"
    patient_id = upsert_patient(
        app.engine, app.clock, external_ref=ref, time_zone=time_zone, locale=locale, email=email, phone=phone
    )
    for platform, token in devices:
        register_device(app.engine, app.clock, patient_id=patient_id, platform=platform, token=f"{token}-{ref}")
    return patient_id


def create_notification(
    app: App, patient_id: int, *, category: Category = Category.CARE_TEAM_MESSAGE, **kw: Any
) -> int:
    kw.setdefault("idempotency_key", f"test:{uuid.uuid4()}")
    return app.submit(patient_id=patient_id, category=category, **kw).notification_id


def load(app: App, notification_id: int) -> Any:
    """The notification row as stored now."""
    from worker.db import session_scope
    from worker.models import Notification

    with session_scope(app.engine) as session:
        row = session.get(Notification, notification_id)
        assert row is not None
        session.expunge(row)
        return row


def attempts(app: App, notification_id: int) -> list[Any]:
    from sqlalchemy import select

    from worker.db import session_scope
    from worker.models import DeliveryAttempt

    with session_scope(app.engine) as session:
        rows = list(
            session.scalars(
                select(DeliveryAttempt)
                .where(DeliveryAttempt.notification_id == notification_id)  # type: ignore[arg-type]
                .order_by(DeliveryAttempt.id)  # type: ignore[arg-type]
            )
        )
        for r in rows:
            session.expunge(r)
        return rows


def events(app: App, notification_id: int) -> list[tuple[str | None, str, str | None]]:
    from sqlalchemy import select

    from worker.db import session_scope
    from worker.models import NotificationEvent

    with session_scope(app.engine) as session:
        return [
            (e.from_state, e.to_state, e.reason)
            for e in session.scalars(
                select(NotificationEvent)
                .where(NotificationEvent.notification_id == notification_id)  # type: ignore[arg-type]
                .order_by(NotificationEvent.id)  # type: ignore[arg-type]
            )
        ]


def tick(app: App) -> list[int]:
    """One scheduler tick, then the worker: what the relay queues is delivered (synchronously, on app.clock)."""
    from worker.delivery import deliver
    from worker.outbox import relay

    queued: list[int] = []
    relay(
        app.engine,
        app.clock,
        queued.extend,
        grace=timedelta(seconds=10),
        requeue_after=timedelta(minutes=15),
        batch_size=100,
    )
    for nid in queued:
        deliver(app.deps, nid)
    return queued
