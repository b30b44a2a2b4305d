"""The composition root: the one place that builds engine, broker, providers and actors and wires them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import dramatiq
from sqlalchemy.engine import Engine

from integrations.apns import ApnsProvider
from integrations.base import Provider
from integrations.console import ConsoleProvider
from integrations.fcm import FcmProvider
from integrations.http import HttpClients, build_clients
from integrations.inapp import InAppProvider
from integrations.sendgrid import SendGridEmailProvider
from integrations.twilio import TwilioSmsProvider
from worker.actors import Actors, declare_actors
from worker.broker import BrokerEpoch, build_broker
from worker.campaigns import launch_due
from worker.care_team import digest_rule, escalate_due
from worker.categories import Channel
from worker.clock import Clock, SystemClock
from worker.db import make_engine
from worker.delivery import DeliveryDeps
from worker.delivery.circuit import CircuitBreakers
from worker.delivery.claims import Leases
from worker.delivery.ratelimit import build_rate_limits
from worker.errors import ConfigError
from worker.metrics.rollup import MetricsRollup
from worker.outbound import Outbound, build_outbound
from worker.outbox import Relay, Submitted, submit
from worker.outbox.stamps import EnqueueStamps
from worker.preference_page.links import make_url as make_preference_url
from worker.retention import Retention
from worker.settings import Settings, load_settings
from worker.unsubscribe import make_unsubscribe_url

#: Which channels each provider can serve.
PROVIDER_CHANNELS: dict[str, frozenset[Channel]] = {
    "console": frozenset(Channel),
    "fcm": frozenset({Channel.PUSH}),
    "apns": frozenset({Channel.PUSH}),
    "twilio": frozenset({Channel.SMS}),
    "sendgrid": frozenset({Channel.EMAIL}),
    "inapp": frozenset({Channel.INAPP}),
}


def _required(value: str | None, key: str) -> str:
    if not value:
        raise ConfigError(f"missing setting: CARENOTIFY_PROVIDER__{key.upper()} (settings.toml provider.{key})")
    return value


def _make_provider(name: str, channel: Channel, settings: Settings, clients: HttpClients, clock: Clock) -> Provider:
    """One adapter, with its non-secret settings and its secret from the environment; fail fast naming keys."""
    cfg = settings.provider
    if name == "console":
        return ConsoleProvider(channel=channel, sink=settings.console_sink)
    if name == "fcm":
        return FcmProvider(
            client=clients.default,
            clock=clock,
            service_account_json=settings.require_secret("fcm_service_account_json"),
            project_id=cfg.fcm_project_id,
            base_url=cfg.fcm_base_url,
        )
    if name == "apns":
        return ApnsProvider(
            client=clients.http2,
            clock=clock,
            private_key_pem=settings.require_secret("apns_private_key"),
            key_id=_required(cfg.apns_key_id, "apns_key_id"),
            team_id=_required(cfg.apns_team_id, "apns_team_id"),
            topic=_required(cfg.apns_topic, "apns_topic"),
            sandbox=cfg.apns_sandbox,
            base_url=cfg.apns_base_url,
        )
    if name == "twilio":
        if not (cfg.twilio_from_number or cfg.twilio_messaging_service_sid):
            raise ConfigError("missing setting: CARENOTIFY_PROVIDER__TWILIO_FROM_NUMBER or ..._MESSAGING_SERVICE_SID")
        return TwilioSmsProvider(
            client=clients.default,
            clock=clock,
            account_sid=_required(cfg.twilio_account_sid, "twilio_account_sid"),
            auth_token=settings.require_secret("twilio_auth_token"),
            from_number=cfg.twilio_from_number,
            messaging_service_sid=cfg.twilio_messaging_service_sid,
            status_callback=cfg.twilio_status_callback_url,
            base_url=cfg.twilio_base_url,
        )
    if name == "sendgrid":
        return SendGridEmailProvider(
            client=clients.default,
            clock=clock,
            api_key=settings.require_secret("sendgrid_api_key"),
            from_email=_required(cfg.sendgrid_from_email, "sendgrid_from_email"),
            from_name=cfg.sendgrid_from_name,
            unsubscribe_group_id=cfg.sendgrid_unsubscribe_group_id,
            postal_address=cfg.postal_address,
            base_url=cfg.sendgrid_base_url,
        )
    return InAppProvider(
        client=clients.default,
        clock=clock,
        url=_required(cfg.inapp_url, "inapp_url"),
        token=settings.require_secret("inapp_api_token"),
    )


def build_providers(
    settings: Settings, *, clients: HttpClients | None = None, clock: Clock | None = None
) -> dict[Channel, list[Provider]]:
    """Instantiate the providers named per channel in settings, in failover order."""
    clients = clients or build_clients(settings.provider.http_timeout_seconds)
    clock = clock or SystemClock()
    registry: dict[Channel, list[Provider]] = {}
    for channel_name, names in settings.providers.items():
        channel = Channel(channel_name)
        providers: list[Provider] = []
        for name in names:
            if channel not in PROVIDER_CHANNELS.get(name, frozenset()):
                known = ", ".join(n for n, chans in PROVIDER_CHANNELS.items() if channel in chans)
                raise ConfigError(
                    f"CARENOTIFY_PROVIDERS: unknown provider {name!r} for channel {channel_name!r} (known: {known})"
                )
            providers.append(_make_provider(name, channel, settings, clients, clock))
        registry[channel] = providers
    return registry


def _unsubscribe_links(settings: Settings, clock: Clock) -> Callable[[int], str] | None:
    if settings.signing_key is None:
        return None
    key = settings.require_secret("signing_key")
    return lambda patient_id: make_unsubscribe_url(
        settings.public_base_url, key, patient_id=patient_id, now=clock.now()
    )


def preference_links(settings: Settings, clock: Clock) -> Callable[[int], str] | None:
    """patient id -> her signed preference-page link (worker/preference_page), or ``None`` without a signing key."""
    if settings.signing_key is None:
        return None
    key = settings.require_secret("signing_key")
    ttl = timedelta(days=settings.preference_page.link_ttl_days)
    return lambda patient_id: make_preference_url(
        settings.public_base_url, key, patient_id=patient_id, now=clock.now(), ttl=ttl
    )


def queue_in_batches(actors: Actors, size: int, notification_ids: Sequence[int]) -> None:
    """``deliver_batch`` messages of ``size`` ids each (a lone id goes as a plain ``deliver``)."""
    ids = list(notification_ids)
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        if len(chunk) == 1:
            actors.deliver.send(chunk[0])
        else:
            actors.deliver_batch.send(chunk)


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
    relay_job: Relay
    #: Marks submitted rows as queued in the background (one statement per trigger on the request path).
    stamps: EnqueueStamps
    metrics_job: MetricsRollup
    #: The scheduler's ``retention`` job (what is past its retention, in small batches).
    retention_job: Retention
    clients: HttpClients | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: Outbound webhooks: the dispatcher job, the sender and its actor (``worker.outbound``).
    outbound: Outbound | None = None

    def enqueue(self, notification_id: int) -> None:
        self.actors.deliver.send(notification_id)

    def enqueue_many(self, notification_ids: Sequence[int]) -> None:
        """Queue many notifications in ``deliver_batch`` messages of ``delivery.batch_size`` ids each."""
        queue_in_batches(self.actors, self.settings.delivery.batch_size, notification_ids)

    def submit(self, **kwargs: Any) -> Submitted:
        """Submit with the default time-to-live: a notice that could not go out in time expires, with a reason."""
        if kwargs.get("expires_at") is None:
            kwargs.setdefault("ttl", timedelta(hours=self.settings.delivery.default_ttl_hours))
        kwargs.setdefault("digest", digest_rule(self.settings.care_team))  # care-team message notices fold
        return submit(self.engine, self.clock, self.enqueue, stamps=self.stamps, **kwargs)

    def escalate_care_team(self) -> int:
        """One escalation scan: follow-ups for care-team messages still unread (:mod:`worker.care_team`)."""
        return escalate_due(self.engine, self.clock, self.enqueue_many, self.settings.care_team).escalated

    def relay(self) -> int:
        """One relay tick: queue what is due and has no live broker message (see :mod:`worker.outbox.relay`)."""
        return self.relay_job.tick()

    def launch_campaigns(self) -> int:
        """Fan out every campaign whose launch time has come; returns how many notifications were created."""
        done = launch_due(self.engine, self.clock, self.enqueue_many, self.settings.campaigns)
        return sum(progress.created for progress in done)

    def roll_up_metrics(self) -> int:
        """One rollup tick: fold newly committed log rows into the counts /metrics reads (``worker.metrics.rollup``)."""
        return self.metrics_job.tick()

    def dispatch_webhooks(self) -> int:
        """One outbound-webhook dispatcher tick: change logs -> deliveries, senders queued (``worker.outbound``)."""
        return self.outbound.tick() if self.outbound is not None else 0

    def close(self) -> None:
        if self.outbound is not None:
            self.outbound.close()
        self.stamps.close()
        self.deps.leases.stop()
        self.broker.close()
        self.engine.dispose()
        if self.clients is not None:
            self.clients.close()


def build_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    providers: Mapping[Channel, Sequence[Provider]] | None = None,
    broker: dramatiq.Broker | None = None,
    broker_namespace: str | None = None,
) -> App:
    """Wire a whole application. Tests pass a clock, fake providers or a broker; production passes nothing."""
    settings = settings or load_settings()
    clock = clock or SystemClock()
    engine = make_engine(settings.database_url)
    broker = broker or build_broker(settings, namespace=broker_namespace or settings.redis_namespace)
    clients = build_clients(settings.provider.http_timeout_seconds)
    registry = providers if providers is not None else build_providers(settings, clients=clients, clock=clock)
    namespace = broker_namespace or settings.redis_namespace
    leases = Leases(
        engine,
        clock,
        lease=timedelta(seconds=settings.delivery.claim_lease_seconds),
        beat=timedelta(seconds=settings.delivery.heartbeat_seconds),
    )
    deps = DeliveryDeps(
        engine=engine,
        clock=clock,
        providers=registry,
        settings=settings.delivery,
        leases=leases,
        quiet_window=(settings.scheduling.quiet_hours_start, settings.scheduling.quiet_hours_end),
        unsubscribe_url=_unsubscribe_links(settings, clock),
        preference_url=preference_links(settings, clock),
        breakers=CircuitBreakers(
            clock,
            threshold=settings.provider.breaker_failure_threshold,
            cooldown=timedelta(seconds=settings.provider.breaker_cooldown_seconds),
            # A trial outlives no HTTP call: past the client's timeout it was lost, and the next caller tries.
            trial_timeout=timedelta(seconds=2 * settings.provider.http_timeout_seconds),
        ),
        rate_limits=build_rate_limits(broker, clock, settings.provider.rate_limits_per_second, namespace=namespace),
    )
    actors = declare_actors(broker, deps, queue_name=settings.queue_name)
    epoch = BrokerEpoch(broker, namespace=namespace)
    relay_job = Relay(
        engine,
        clock,
        partial(queue_in_batches, actors, settings.delivery.batch_size),
        settings.outbox,
        lease=leases.lease,
        broker_lost=epoch.lost,
    )
    return App(
        clients=clients,
        settings=settings,
        clock=clock,
        engine=engine,
        broker=broker,
        providers=registry,
        deps=deps,
        actors=actors,
        relay_job=relay_job,
        # A row still unclaimed this long after its trigger is stamped, well before the relay's grace runs out.
        stamps=EnqueueStamps(
            engine,
            clock,
            hold=timedelta(seconds=min(2.0, settings.outbox.grace_seconds / 2)),
            broker_epoch=epoch.current,
        ),
        metrics_job=MetricsRollup(engine, clock, settings.metrics),
        retention_job=Retention(engine, clock, settings),
        outbound=build_outbound(engine, clock, broker, settings.webhooks),
    )
