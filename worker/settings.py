"""One typed settings object.

Sources, strongest first: explicit keyword arguments (tests, CLI flags), environment variables
(``CARENOTIFY_<KEY>``, nested with ``__``), then ``settings.toml``: its ``[default]`` table overlaid by the
table named after the environment (``CARENOTIFY_ENV``, e.g. ``[production]``). Secrets are accepted from the
environment only; a secret found in ``settings.toml`` is an error, so one can never be committed by accident.
Nothing is read at import time: :func:`load_settings` is called by the bootstrap.
"""

from __future__ import annotations

import os
import tomllib
import warnings
from datetime import time, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.clock import is_place_zone
from worker.errors import ConfigError

ENV_PREFIX = "CARENOTIFY_"

#: Field names that are secrets: only ever read from the environment.
SECRET_FIELDS = frozenset(
    {
        "fcm_service_account_json",
        "apns_private_key",
        "twilio_auth_token",
        "sendgrid_api_key",
        "inapp_api_token",
        "signing_key",
    }
)


class DeliverySettings(BaseModel):
    """How hard we try before a notification is given up as ``failed``."""

    model_config = {"extra": "forbid"}

    max_attempts: int = Field(8, ge=1, le=50)
    min_backoff_seconds: float = Field(15.0, gt=0)
    max_backoff_seconds: float = Field(3600.0, gt=0)
    #: A claim's lease. Its holder's heartbeat extends it every ``heartbeat_seconds`` while the send runs, so
    #: it bounds how long a dead worker's rows wait, not how long a send may take.
    claim_lease_seconds: float = Field(6.0, ge=1)
    heartbeat_seconds: float = Field(2.0, gt=0)
    #: How long a worker keeps trying to write down a provider's answer when the database is away, before it
    #: parks the write with its heartbeat (the row stays held until it is written: never sent twice).
    record_retry_seconds: float = Field(20.0, ge=0)
    time_limit_seconds: int = Field(120, ge=5)
    #: A notification not sent by then (from its creation) expires instead of arriving late.
    default_ttl_hours: int = Field(72, ge=1)
    #: Notifications per ``deliver_batch`` broker message (campaign fan-out, relayed rows).
    batch_size: int = Field(50, ge=1, le=1000)
    #: Provider calls one batch makes at once (different patients; PostgreSQL only, SQLite writes one at a time).
    send_concurrency: int = Field(8, ge=1, le=64)


class OutboxSettings(BaseModel):
    """The relay that re-enqueues rows committed but never queued (or whose message was lost)."""

    model_config = {"extra": "forbid"}

    #: Also how soon a dead worker's claims and a lost broker's messages are queued again.
    relay_interval_seconds: float = Field(1.0, gt=0)
    #: A fresh row gets this long to be enqueued by whoever created it before the relay steps in.
    grace_seconds: float = Field(10.0, ge=0)
    #: A queued row not picked up after this long is assumed lost by the broker and queued again.
    requeue_after_seconds: float = Field(900.0, gt=0)
    batch_size: int = Field(500, ge=1)
    #: Rows one tick may queue (batch after batch): a broker that lost its queue is refilled in one tick.
    max_per_tick: int = Field(20_000, ge=1)


class ProviderSettings(BaseModel):
    """Non-secret provider configuration. Credentials come from the environment (SECRET_FIELDS)."""

    model_config = {"extra": "forbid"}

    #: How long one provider call may take. Well above a healthy provider's slowest answer: a call that times out
    #: has an unknown outcome, and its retry may repeat a send the provider did take.
    http_timeout_seconds: float = Field(30.0, gt=0, le=60)
    fcm_project_id: str | None = None
    fcm_base_url: str = "https://fcm.googleapis.com"
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = None
    apns_sandbox: bool = False
    apns_base_url: str | None = None
    twilio_account_sid: str | None = None
    twilio_from_number: str | None = None
    twilio_messaging_service_sid: str | None = None
    twilio_status_callback_url: str | None = None
    #: The public URL Twilio posts inbound texts to (the number's or messaging service's webhook): what Twilio
    #: signs. Without it /webhooks/twilio/sms answers 503: a URL rebuilt from the request's Host header would
    #: accept a signature captured on another host.
    twilio_inbound_url: str | None = None
    twilio_base_url: str = "https://api.twilio.com"
    sendgrid_from_email: str | None = None
    sendgrid_from_name: str = "Partum Health"
    sendgrid_unsubscribe_group_id: int | None = None
    #: The Event Webhook verification key (public, base64 DER).
    sendgrid_event_public_key: str | None = None
    sendgrid_base_url: str = "https://api.sendgrid.com"
    #: CAN-SPAM: a physical postal address in every commercial email.
    postal_address: str = "Partum Health, 123 Example Street, New York, NY 10001"
    inapp_url: str | None = None
    #: Consecutive failures that open a provider's circuit, and how long it stays open.
    breaker_failure_threshold: int = Field(5, ge=1)
    breaker_cooldown_seconds: float = Field(60.0, gt=0)
    #: Sends per second per provider across all workers (Redis window rate limiter); 0 = unlimited.
    rate_limits_per_second: dict[str, int] = Field(
        default_factory=lambda: {"fcm": 5000, "apns": 5000, "twilio": 50, "sendgrid": 500, "inapp": 200}
    )


class SchedulingSettings(BaseModel):
    """Reminder plans and quiet hours (local to each patient)."""

    model_config = {"extra": "forbid"}

    #: Appointment reminders, hours before the start.
    reminder_offsets_hours: list[float] = Field(default_factory=lambda: [24.0, 2.0])
    quiet_hours_start: time = time(8, 0)
    quiet_hours_end: time = time(21, 0)
    survey_reminders: int = Field(2, ge=0, le=10)
    survey_interval_days: int = Field(3, ge=1, le=60)

    @field_validator("reminder_offsets_hours")
    @classmethod
    def _offsets_before_the_start(cls, value: list[float]) -> list[float]:
        # A reminder at or after the start would expire the moment it is due.
        if any(not 0 < hours <= 24 * 60 for hours in value):
            raise ValueError("every reminder offset must be more than 0 and at most 1440 hours")
        return value

    @field_validator("quiet_hours_end")
    @classmethod
    def _window_not_empty(cls, value: time, info: Any) -> time:
        start = info.data.get("quiet_hours_start")
        if start is not None and value <= start:
            raise ValueError("quiet_hours_end must be after quiet_hours_start")
        return value


class CampaignSettings(BaseModel):
    """Marketing campaign fan-out."""

    model_config = {"extra": "forbid"}

    #: Patients examined per fan-out transaction (one audience query, one bulk insert).
    chunk_size: int = Field(1000, ge=10, le=20_000)
    #: How often the scheduler looks for campaigns whose launch time has come.
    scan_interval_seconds: float = Field(10.0, gt=0)
    #: A campaign's send window when none is given, and the longest allowed.
    default_window_hours: int = Field(48, ge=1)
    max_window_hours: int = Field(14 * 24, ge=1)


class MetricsSettings(BaseModel):
    """The rollup behind ``/metrics``: settled notifications and provider calls, counted from the append-only logs."""

    model_config = {"extra": "forbid"}

    #: How often the scheduler folds new log rows into the rollup: settled counts lag by about this much.
    rollup_interval_seconds: float = Field(5.0, gt=0)
    #: Log ids (of each log) folded in per transaction, and at most per tick (a backlog is caught up over ticks).
    batch_size: int = Field(20_000, ge=1)
    max_per_tick: int = Field(500_000, ge=1)
    #: PostgreSQL: how long a tick waits for the writers that were mid-transaction when it read the logs' ends
    #: (their rows may still commit below those ends); if they are not done, the next tick picks up from there.
    barrier_wait_seconds: float = Field(2.0, ge=0)


class WebSettings(BaseModel):
    """The HTTP ingress: request size limits, and how long idempotency keys and webhook receipts are kept."""

    model_config = {"extra": "forbid"}

    #: Largest request body accepted (bytes), checked before any of it is read: every API body is far smaller.
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    #: The same for ``/webhooks/``: SendGrid posts event batches of up to 768 KB, Twilio a few KB of form fields.
    max_webhook_body_bytes: int = Field(1024 * 1024, ge=1024)
    #: An Idempotency-Key replays its first answer this long; after it the key may be used afresh.
    idempotency_key_hours: float = Field(24.0, gt=0)
    #: A key still marked in progress after this long belongs to a request that died: the next request with it
    #: (same body) takes it over instead of getting 409 for ever.
    idempotency_in_progress_seconds: float = Field(60.0, gt=0)
    #: How long a provider callback's receipt is kept to recognise the provider's retries (SendGrid: 24 h).
    webhook_receipt_hours: float = Field(168.0, gt=0)


class CarePauseSettings(BaseModel):
    """The care pause (worker/care_pause): what a survey's notices do while a patient is paused, unless the
    survey assignment says (``on_care_pause``)."""

    model_config = {"extra": "forbid"}

    survey_default: Literal["defer", "cancel"] = "defer"


class RetentionSettings(BaseModel):
    """The scheduler's ``retention`` job (worker/retention): what is deleted when, in small batches."""

    model_config = {"extra": "forbid"}

    #: Terminal notifications (with their events and provider calls) are deleted this long after they settled.
    days: int = Field(400, ge=1)
    #: Consent-ledger entries (consent and care pauses) are kept this long after they stopped being in force
    #: (the TCPA's 4-year look-back, with margin); a patient's current consent and pause are always kept.
    consent_years: int = Field(5, ge=1)
    #: How often the job runs, rows per delete transaction, and rows examined per table per tick.
    interval_seconds: float = Field(30.0, gt=0)
    batch_size: int = Field(500, ge=1, le=10_000)
    max_per_tick: int = Field(50_000, ge=1)


class PreferencePageSettings(BaseModel):
    """The patient's preference page (worker/preference_page): how long her signed links and a loaded form last."""

    model_config = {"extra": "forbid"}

    #: A link in an email footer or the SMS HELP answer opens her page this long.
    link_ttl_days: float = Field(30.0, gt=0, le=365)
    #: A page left open longer than this asks her to look again before saving (nothing is changed).
    form_ttl_hours: float = Field(24.0, gt=0, le=24 * 7)


class ConsoleSettings(BaseModel):
    """The operators' web console (``/console``): how long a signed-in session lasts."""

    model_config = {"extra": "forbid"}

    #: A session with no request for this long is over (the operator signs in again).
    idle_timeout_minutes: float = Field(30.0, gt=0, le=24 * 60)
    #: However busy, a session ends this long after sign-in.
    max_session_hours: float = Field(12.0, gt=0, le=7 * 24)
    #: Provider health looks back this far (accepted / retried / failed counts, rate-limit waits).
    health_window_minutes: int = Field(60, ge=1, le=24 * 60)


class WebhookSettings(BaseModel):
    """Outbound webhooks (:mod:`worker.outbound`): how often events are dispatched, how hard each is retried."""

    model_config = {"extra": "forbid"}

    #: How often the scheduler reads the change logs past its watermark and queues what is due.
    dispatch_interval_seconds: float = Field(0.5, gt=0)
    #: PostgreSQL: how long a tick waits for writers still in flight when it read the logs' ends.
    barrier_wait_seconds: float = Field(0.5, ge=0)
    #: Log ids read per transaction, and at most per tick.
    batch_size: int = Field(2000, ge=1)
    max_per_tick: int = Field(50_000, ge=1)
    #: Backoff after the n-th failure: initial * 2**(n-1), at most max; retried until max_age_hours after the event.
    initial_backoff_seconds: float = Field(5.0, gt=0)
    max_backoff_seconds: float = Field(4 * 3600.0, gt=0)
    max_age_hours: float = Field(72.0, gt=0)
    #: An endpoint where every delivery has failed for this long is disabled (operators see it in /metrics, CLI).
    disable_after_hours: float = Field(72.0, gt=0)
    #: The receiver must answer within this; slower counts as a failure and is retried.
    timeout_seconds: float = Field(10.0, gt=0)
    #: Deliveries claimed per round by a sender, sent this many at a time (different patients when ordered).
    claim_batch_size: int = Field(50, ge=1, le=1000)
    send_concurrency: int = Field(8, ge=1, le=64)
    #: Sender messages queued at once per endpoint with work due.
    senders_per_endpoint: int = Field(1, ge=1, le=32)
    #: A claim's lease (a sender that died gives its rows back after this); a sender stops after run_seconds.
    lease_seconds: float = Field(60.0, gt=0)
    run_seconds: float = Field(20.0, gt=0)
    queue_name: str = "webhooks"
    #: Delivered and given-up deliveries (and their events) are deleted after this long (replay reads the logs), by
    #: the ``retention`` job, in its batches (``[retention]``).
    retention_days: float = Field(14.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _retired_keys(cls, data: Any) -> Any:
        """The webhooks' own purge job became part of the ``retention`` job: its two knobs are accepted (an
        existing settings file still loads) and ignored, with a warning naming them."""
        if isinstance(data, dict):
            retired = sorted(k for k in ("retention_interval_seconds", "retention_batch_size") if k in data)
            if retired:
                warnings.warn(
                    f"webhooks.{', webhooks.'.join(retired)}: no longer used (the retention job purges webhook "
                    "deliveries, every retention.interval_seconds, retention.batch_size at a time)",
                    FutureWarning,  # shown by default: meant for the operator, not a developer
                    stacklevel=2,
                )
                data = {k: v for k, v in data.items() if k not in retired}
        return data


class PatientSettings(BaseModel):
    """What contact data the platform's patients may give."""

    model_config = {"extra": "forbid"}

    #: Phone numbers must belong to one of these regions (``phonenumbers`` region codes, e.g. US, PR, CA).
    phone_regions: list[str] = Field(default_factory=lambda: ["US"], min_length=1)

    @field_validator("phone_regions")
    @classmethod
    def _known_regions(cls, value: list[str]) -> list[str]:
        import phonenumbers

        unknown = [region for region in value if region not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone region code(s): {', '.join(unknown)}")
        return value


class CareTeamSettings(BaseModel):
    """Care-team message notices: the digest (one notice for a burst) and the follow-up of an unread message."""

    model_config = {"extra": "forbid"}

    #: A care-team notice within this long of an unread one to the same patient folds into it (0 disables).
    digest_window: timedelta = timedelta(minutes=10)
    #: A message still unread this long after its notice gets one follow-up on the next allowed channel.
    escalate_after: timedelta = timedelta(hours=4)
    #: The same for a message the care team marked ``urgent: true``.
    urgent_escalate_after: timedelta = timedelta(minutes=30)
    #: The scheduler's ``care_team_escalation`` job: how often it looks, and notices per transaction.
    escalation_interval_seconds: float = Field(30.0, gt=0)
    escalation_batch_size: int = Field(100, ge=1, le=5000)

    @field_validator("digest_window")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0) or value > timedelta(days=1):
            raise ValueError("must be between 0 (no digest) and one day")
        return value

    @field_validator("escalate_after", "urgent_escalate_after")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= value <= timedelta(days=7):
            raise ValueError("must be between one minute and seven days")
        return value


class Settings(BaseSettings):
    """Everything carenotify can be told. See ``settings.toml`` for the defaults and their meaning."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    env: str = "embedded"
    database_url: str = "sqlite:///var/carenotify.db"
    broker: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Redis broker: a worker process silent this long is dead and its fetched messages go back on the queue.
    broker_heartbeat_timeout_seconds: float = Field(5.0, ge=1)
    #: Redis broker: the share of broker commands that also run that check (dramatiq's maintenance).
    broker_maintenance_chance: float = Field(0.1, gt=0, le=1)
    #: Key prefix on Redis, so several deployments (or test runs) can share one server.
    redis_namespace: str = "carenotify"
    queue_name: str = "deliveries"
    worker_threads: int = Field(4, ge=1, le=64)
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"
    #: Providers tried per channel, in order.
    providers: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "push": ["console"],
            "sms": ["console"],
            "email": ["console"],
            "inapp": ["console"],
        }
    )
    #: Where the console provider writes (``-`` for standard output).
    console_sink: str = "-"
    default_time_zone: str = "America/New_York"
    #: Where patients reach us (unsubscribe links); must be the public HTTPS origin in production.
    public_base_url: str = "http://127.0.0.1:8000"
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    provider: ProviderSettings = Field(default_factory=ProviderSettings)
    scheduling: SchedulingSettings = Field(default_factory=SchedulingSettings)
    campaigns: CampaignSettings = Field(default_factory=CampaignSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    patients: PatientSettings = Field(default_factory=PatientSettings)
    care_team: CareTeamSettings = Field(default_factory=CareTeamSettings)
    preference_page: PreferencePageSettings = Field(default_factory=PreferencePageSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    care_pause: CarePauseSettings = Field(default_factory=CarePauseSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)

    # Secrets: environment only (see SECRET_FIELDS).
    fcm_service_account_json: SecretStr | None = None
    apns_private_key: SecretStr | None = None
    twilio_auth_token: SecretStr | None = None
    sendgrid_api_key: SecretStr | None = None
    inapp_api_token: SecretStr | None = None
    signing_key: SecretStr | None = None

    @field_validator("default_time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not is_place_zone(value):
            raise ValueError(f"unknown IANA time zone {value!r} (a place's zone, e.g. America/New_York)")
        return value

    @field_validator("providers")
    @classmethod
    def _channels_known(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from worker.categories import Channel

        for channel, names in value.items():
            if channel not in Channel.__members__.values():
                raise ValueError(f"unknown channel {channel!r} (known: {', '.join(Channel)})")
            if not names:
                raise ValueError(f"channel {channel!r} lists no provider")
        return value

    def require_secret(self, name: str) -> str:
        """Return a secret's value or fail naming the environment variable to set."""
        value = getattr(self, name)
        if value is None or not value.get_secret_value():
            raise ConfigError(f"missing secret: set the environment variable {ENV_PREFIX}{name.upper()}")
        return str(value.get_secret_value())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


def settings_file() -> Path:
    """Where ``settings.toml`` is: ``$CARENOTIFY_SETTINGS_FILE``, else the working directory, else the repo."""
    explicit = os.environ.get(f"{ENV_PREFIX}SETTINGS_FILE")
    if explicit:
        return Path(explicit)
    cwd = Path.cwd() / "settings.toml"
    if cwd.is_file():
        return cwd
    return Path(__file__).resolve().parents[1] / "settings.toml"


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _has_password(value: str) -> bool:
    """``scheme://user:password@host...``: a credential inside a URL (database_url, redis_url, any URL)."""
    if "://" not in value or "@" not in value:
        return False
    try:
        return bool(urlsplit(value).password)
    except ValueError:
        return False


def _secrets_in(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, environment variable) for every secret found in any table of settings.toml: a secret's key, or a
    URL carrying a password. Never the value itself."""
    found: list[tuple[str, str]] = []

    def walk(node: dict[str, Any], path: list[str]) -> None:
        for key, value in node.items():
            here = [*path, str(key)]
            # The first part of a path is the table ([default], [production], ...), not part of the key.
            variable = ENV_PREFIX + "__".join(here[1:] if len(here) > 1 else here).upper()
            where = f"[{here[0]}] {'.'.join(here[1:])}" if len(here) > 1 else str(key)
            if isinstance(value, dict):
                walk(value, here)
            elif str(key).lower() in SECRET_FIELDS:
                found.append((where, variable))
            elif isinstance(value, str) and _has_password(value):
                found.append((f"{where} (a password in a URL)", variable))

    walk(data, [])
    return found


class _TomlSource(PydanticBaseSettingsSource):
    """``[default]`` overlaid by ``[<env>]`` from settings.toml; refuses secrets."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = settings_file()
        if not path.is_file():
            return {}
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        env = os.environ.get(f"{ENV_PREFIX}ENV") or data.get("default", {}).get("env", "embedded")
        merged = _deep_merge(data.get("default", {}), data.get(env, {}))
        merged["env"] = env
        # Every table, not only the active one: a secret committed under [staging] is committed all the same.
        leaked = _secrets_in(data)
        if leaked:
            raise ConfigError(
                f"{path}: secrets must come from the environment, not settings.toml: "
                + "; ".join(f"{where}: set {variable}" for where, variable in leaked)
            )
        return merged


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one readable :class:`ConfigError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = "__".join(str(part) for part in error["loc"])
            problems.append(
                f"{ENV_PREFIX}{key.upper()} (settings.toml key {'.'.join(map(str, error['loc']))}): {error['msg']}"
            )
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
