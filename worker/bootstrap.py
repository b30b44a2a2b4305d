"""The composition root: the one place that builds engine, broker, providers and actors and wires them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import dramatiq
from sqlalchemy.engine import Engine

from integrations.base import Provider
from integrations.console import ConsoleProvider
from worker.actors import Actors, declare_actors
from worker.broker import build_broker
from worker.categories import Channel
from worker.clock import Clock, SystemClock
from worker.db import make_engine
from worker.delivery import DeliveryDeps
from worker.errors import ConfigError
from worker.notifications import Submitted, relay, submit
from worker.settings import Settings, load_settings


def build_providers(settings: Settings) -> dict[Channel, list[Provider]]:
    """Instantiate the providers named per channel in settings, in failover order."""
    registry: dict[Channel, list[Provider]] = {}
    for channel_name, names in settings.providers.items():
        channel = Channel(channel_name)
        providers: list[Provider] = []
        for name in names:
            if name == "console":
                providers.append(ConsoleProvider(channel=channel, sink=settings.console_sink))
            else:
                raise ConfigError(
                    f"CARENOTIFY_PROVIDERS: unknown provider {name!r} for channel {channel_name!r} (known: console)"
                )
        registry[channel] = providers
    return registry


@dataclass
class App:
    """Everything a process needs, built once."""

    settings: Settings
    clock: Clock
    engine: Engine
    broker: dramatiq.Broker
    providers: Mapping[Channel, Sequence[Provider]]
    deps: DeliveryDeps
    actors: Actors
    extras: dict[str, Any] = field(default_factory=dict)

    def enqueue(self, notification_id: int) -> None:
        self.actors.deliver.send(notification_id)

    def submit(self, **kwargs: Any) -> Submitted:
        return submit(self.engine, self.clock, self.enqueue, **kwargs)

    def relay(self) -> int:
        cfg = self.settings.outbox
        return relay(
            self.engine,
            self.clock,
            self.enqueue,
            grace=timedelta(seconds=cfg.grace_seconds),
            requeue_after=timedelta(seconds=cfg.requeue_after_seconds),
            batch_size=cfg.batch_size,
        )

    def close(self) -> None:
        self.broker.close()
        self.engine.dispose()


def build_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    providers: Mapping[Channel, Sequence[Provider]] | None = None,
    broker: dramatiq.Broker | None = None,
    broker_namespace: str = "carenotify",
) -> App:
    """Wire a whole application. Tests pass a clock, fake providers or a broker; production passes nothing."""
    settings = settings or load_settings()
    clock = clock or SystemClock()
    engine = make_engine(settings.database_url)
    broker = broker or build_broker(settings, namespace=broker_namespace)
    registry = providers if providers is not None else build_providers(settings)
    deps = DeliveryDeps(engine=engine, clock=clock, providers=registry, settings=settings.delivery)
    actors = declare_actors(broker, deps, queue_name=settings.queue_name)
    return App(
        settings=settings,
        clock=clock,
        engine=engine,
        broker=broker,
        providers=registry,
        deps=deps,
        actors=actors,
    )
