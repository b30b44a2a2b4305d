"""Marketing campaigns: create, launch (now or at a time), fan out in chunks, cancel, report.

Fan-out is set-based: per chunk of patients, one SQL query applies the audience filter and every marketing
rule (consent from the ledger, where a patient's marketing on/off switch is kept; the frequency cap;
reachability; an erased patient has no row), one
``INSERT ... SELECT`` creates the notifications, and the new ids go to the broker in ``deliver_batch``
messages, not one message per recipient. Each chunk is one transaction that also advances the campaign's
cursor, so a crashed fan-out resumes where it stopped and never creates a recipient's row twice.

Everything is checked again at send time by :mod:`worker.delivery.policy` (a patient may opt out after fan-out).
Per-recipient quiet hours are applied here already: a recipient outside the marketing window gets a row
that waits (``not_before``) for her local 08:00, and one whose window opens only after the campaign ends
gets none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import (
    JSON,
    ColumnElement,
    String,
    and_,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from integrations.base import Outcome
from worker.caps import capped, recent_counts_of
from worker.care_pause import paused_now
from worker.categories import Category, Channel
from worker.clock import Clock
from worker.db import UTCDateTime, session_scope
from worker.errors import InvalidInput, NotFound
from worker.models import DeliveryAttempt, Device, Notification, NotificationEvent, Patient
from worker.models_campaigns import Campaign, CampaignState
from worker.models_consent import ConsentEvent
from worker.outbox import OPEN_STATES, mark_enqueued
from worker.quiet_hours import MARKETING_WINDOW, next_allowed_instant
from worker.settings import CampaignSettings
from worker.states import State
from worker.templates import MARKETING_TEMPLATES

log = structlog.get_logger(__name__)

#: Puts notification ids on the broker in batches.
EnqueueMany = Callable[[Sequence[int]], None]

#: Why an audience member got no notification at fan-out, in the order the rules are applied.
EXCLUSION_REASONS = ("care_pause", "frequency_cap", "unreachable", "no_consent", "outside_window", "window_closed")


class Audience(BaseModel):
    """Who a campaign is for, by attributes that say nothing about health. Empty means every patient.

    Each given list narrows the audience (a patient must match all of them); the lists are OR-ed within.
    """

    model_config = ConfigDict(extra="forbid")

    locales: list[Literal["en", "es"]] | None = Field(default=None, min_length=1)
    us_states: list[str] | None = Field(default=None, min_length=1, max_length=60)
    time_zones: list[str] | None = Field(default=None, min_length=1, max_length=100)
    joined_after: AwareDatetime | None = None
    joined_before: AwareDatetime | None = None

    @field_validator("us_states")
    @classmethod
    def _states(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if any(len(s) != 2 or not s.isascii() or not s.isalpha() for s in value):
            raise ValueError("US states are two-letter codes, e.g. NY")
        return sorted({s.upper() for s in value})

    @field_validator("time_zones")
    @classmethod
    def _zones(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for index, zone in enumerate(value):
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                # Named by position, never echoed: a refusal does not repeat what was sent.
                raise ValueError(f"entry {index} is not a known IANA time zone name") from None
        return sorted(set(value))

    def conditions(self) -> list[ColumnElement[bool]]:
        """The filter as SQL on ``patient``."""
        out: list[ColumnElement[bool]] = []
        if self.locales:
            out.append(col(Patient.locale).in_(self.locales))
        if self.us_states:
            out.append(func.upper(col(Patient.us_state)).in_(self.us_states))
        if self.time_zones:
            out.append(col(Patient.time_zone).in_(self.time_zones))
        if self.joined_after:
            out.append(col(Patient.created_at) >= self.joined_after)
        if self.joined_before:
            out.append(col(Patient.created_at) < self.joined_before)
        return out


def parse_audience(raw: dict[str, Any] | None) -> Audience:
    """Validate a stored or submitted filter; the error names the field (``audience.<key>``)."""
    try:
        return Audience.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"audience.{where}" if where else "audience", str(first["msg"])) from None


def _check_channels(channels: Sequence[str]) -> list[str]:
    if not channels:
        raise InvalidInput("channels", "name at least one channel")
    out: list[str] = []
    for name in channels:
        try:
            channel = Channel(name).value
        except ValueError:
            raise InvalidInput("channels", f"unknown channel (known: {', '.join(Channel)})") from None
        if channel not in out:
            out.append(channel)
    return out


def create_campaign(
    engine: Engine,
    clock: Clock,
    *,
    name: str,
    template: str,
    channels: Sequence[str],
    audience: dict[str, Any] | None = None,
    created_by: str,
) -> int:
    """Store a draft campaign; nothing is sent until it is launched."""
    name = name.strip()
    if not 1 <= len(name) <= 120:
        raise InvalidInput("name", "must be 1 to 120 characters")
    if template not in MARKETING_TEMPLATES:
        raise InvalidInput("template", f"unknown template (known: {', '.join(sorted(MARKETING_TEMPLATES))})")
    checked_channels = _check_channels(channels)
    filter_ = parse_audience(audience)
    now = clock.now()
    with session_scope(engine) as session:
        campaign = Campaign(
            name=name,
            template=template,
            channels=checked_channels,
            audience=filter_.model_dump(mode="json", exclude_none=True),
            created_by=created_by[:64],
            created_at=now,
            updated_at=now,
        )
        session.add(campaign)
        session.flush()
        assert campaign.id is not None
        campaign_id = campaign.id
    log.info("campaign.created", campaign_id=campaign_id, channels=checked_channels)
    return campaign_id


def launch_campaign(
    engine: Engine,
    clock: Clock,
    settings: CampaignSettings,
    campaign_id: int,
    *,
    launch_at: datetime | None = None,
    ends_at: datetime | None = None,
) -> Campaign:
    """Schedule the fan-out for ``launch_at`` (default: now); the send window closes at ``ends_at``.

    Until its fan-out starts, launching again moves it; launching "now" again without times changes nothing, so a
    retried request is safe. A campaign fanning out, launched or cancelled cannot be launched.
    """
    now = clock.now()
    for field_name, value in (("launch_at", launch_at), ("ends_at", ends_at)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(field_name, "must include a UTC offset")
    start = launch_at or now
    if start < now - timedelta(minutes=5):
        raise InvalidInput("launch_at", "is in the past")
    end = ends_at or start + timedelta(hours=settings.default_window_hours)
    if end <= start:
        raise InvalidInput("ends_at", "must be after launch_at")
    if end - start > timedelta(hours=settings.max_window_hours):
        raise InvalidInput("ends_at", f"the send window may be at most {settings.max_window_hours} hours")
    with session_scope(engine) as session:
        campaign = _locked(session, campaign_id, skip_locked=False)
        state = CampaignState(campaign.state)
        if state is CampaignState.SCHEDULED and launch_at is None and ends_at is None:
            session.expunge(campaign)
            return campaign  # launched already; launching "now" again changes nothing
        if state is not CampaignState.DRAFT and state is not CampaignState.SCHEDULED:
            raise InvalidInput("state", f"a campaign that is {state} cannot be launched")
        campaign.state = CampaignState.SCHEDULED
        campaign.launch_at = start
        campaign.ends_at = end
        campaign.updated_at = now
        session.add(campaign)
        session.flush()
        session.expunge(campaign)
    log.info("campaign.scheduled", campaign_id=campaign_id, launch_at=start.isoformat(), ends_at=end.isoformat())
    return campaign


def cancel_campaign(engine: Engine, clock: Clock, campaign_id: int) -> int:
    """Stop the campaign: no more fan-out, and every notification not yet sent is cancelled. Returns how many.

    A send already in flight finishes (its worker claimed it before the cancel); everything else is settled
    here in one transaction, with one event per notification.
    """
    now = clock.now()
    with session_scope(engine) as session:
        campaign = _locked(session, campaign_id, skip_locked=False)
        if campaign.state == CampaignState.CANCELLED:
            return 0
        campaign.state = CampaignState.CANCELLED
        campaign.cancelled_at = now
        campaign.updated_at = now
        session.add(campaign)
        open_rows = and_(col(Notification.campaign_id) == campaign_id, col(Notification.state).in_(OPEN_STATES))
        if session.get_bind().dialect.name == "postgresql":
            # Lock the rows first, so a worker's compare-and-set claim and this cancel cannot interleave.
            session.execute(select(col(Notification.id)).where(open_rows).with_for_update())
        session.execute(
            insert(NotificationEvent).from_select(
                ["notification_id", "from_state", "to_state", "reason", "at"],
                select(
                    col(Notification.id),
                    col(Notification.state),
                    literal(State.CANCELLED.value, String),
                    literal("campaign cancelled", String),
                    literal(now, UTCDateTime),
                ).where(open_rows),
            )
        )
        result = session.execute(
            update(Notification)
            .where(open_rows)
            .values(state=State.CANCELLED, reason="campaign cancelled", updated_at=now, finished_at=now)
            .execution_options(synchronize_session=False)
        )
        cancelled = int(result.rowcount)  # type: ignore[attr-defined]
    log.info("campaign.cancelled", campaign_id=campaign_id, notifications=cancelled)
    return cancelled


def _locked(session: Session, campaign_id: int, *, skip_locked: bool) -> Campaign:
    query = select(Campaign).where(col(Campaign.id) == campaign_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=skip_locked)
    campaign = session.scalars(query).first()
    if campaign is None:
        if skip_locked and session.get(Campaign, campaign_id) is not None:
            raise _Busy
        raise NotFound(f"campaign {campaign_id} does not exist")
    return campaign


class _Busy(Exception):
    """Another process holds the campaign's row (it is fanning it out)."""


# --- the audience query --------------------------------------------------------------------------------------


def _latest_consent(channel: Channel, category: Category | None) -> ColumnElement[Any]:
    """The newest ledger entry for (patient, channel, category): NULL when the patient never said anything."""
    scope = col(ConsentEvent.category) == category.value if category else col(ConsentEvent.category).is_(None)
    return (
        select(col(ConsentEvent.granted))
        .where(col(ConsentEvent.patient_id) == col(Patient.id), col(ConsentEvent.channel) == channel.value, scope)
        .order_by(col(ConsentEvent.id).desc())
        .limit(1)
        .scalar_subquery()
    )


def _consents(channel: Channel) -> ColumnElement[bool]:
    """Mirror of :func:`worker.delivery.policy.consent_blocked` for marketing: no channel-wide revocation, and the
    channel's marketing consent (SMS opt-in needs a grant; push and email are open unless revoked)."""
    channel_wide = _latest_consent(channel, None).is_not(False)
    marketing = _latest_consent(channel, Category.MARKETING)
    granted = marketing.is_(True) if channel is Channel.SMS else marketing.is_not(False)
    return and_(channel_wide, granted)


def _reachable(channel: Channel) -> ColumnElement[bool]:
    if channel is Channel.PUSH:
        return exists().where(col(Device.patient_id) == col(Patient.id), col(Device.live).is_(True))
    if channel is Channel.SMS:
        return col(Patient.phone_e164).is_not(None)
    if channel is Channel.EMAIL:
        return col(Patient.email).is_not(None)
    return true()


def _exclusion(channels: Sequence[Channel], now: datetime) -> ColumnElement[Any]:
    """Per patient: NULL if at least one channel may carry the campaign, else the first rule that failed."""
    reachable = [_reachable(c) for c in channels]
    usable = [and_(ok, _consents(c)) for ok, c in zip(reachable, channels, strict=True)]
    return case(
        (paused_now(col(Patient.id), now), "care_pause"),  # her care is paused: no marketing at all
        (~or_(*reachable), "unreachable"),
        (~or_(*usable), "no_consent"),  # reachable, but not on a channel she agreed to
        else_=None,
    )


# --- fan-out -------------------------------------------------------------------------------------------------


@dataclass
class FanOut:
    """What one call of :func:`fan_out` did."""

    campaign_id: int
    chunks: int = 0
    examined: int = 0
    #: Notifications created; ``queued`` of them went to the broker now, the rest wait for local daytime.
    created: int = 0
    queued: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    finished: bool = False


def fan_out(
    engine: Engine,
    clock: Clock,
    enqueue_many: EnqueueMany,
    campaign_id: int,
    *,
    chunk_size: int,
    max_chunks: int | None = None,
) -> FanOut:
    """Create the campaign's notifications chunk by chunk and queue them; stops when done or cancelled.

    Safe to run from several schedulers at once: each chunk locks the campaign row (``SKIP LOCKED`` on
    PostgreSQL, so a second process moves on) and re-reads the cursor under the lock.
    """
    progress = FanOut(campaign_id)
    while max_chunks is None or progress.chunks < max_chunks:
        try:
            step = _fan_out_chunk(engine, clock, campaign_id, chunk_size)
        except _Busy:
            break
        if step is None:
            progress.finished = True
            break
        ids, created, examined, excluded = step
        progress.chunks += 1
        progress.examined += examined
        progress.created += created
        progress.queued += len(ids)
        progress.excluded.update(excluded)
        _enqueue(engine, clock, enqueue_many, ids)
    if progress.chunks:
        log.info(
            "campaign.fanned_out",
            campaign_id=campaign_id,
            chunks=progress.chunks,
            examined=progress.examined,
            created=progress.created,
            queued=progress.queued,
            finished=progress.finished,
        )
    return progress


def _fan_out_chunk(
    engine: Engine, clock: Clock, campaign_id: int, chunk_size: int
) -> tuple[list[int], int, int, Counter[str]] | None:
    """One transaction: the next ``chunk_size`` patients by id. ``None`` when there is nothing left to do.

    Returns the ids to queue now (rows held for the recipient's daytime are queued by the relay later), how
    many rows were created, how many audience members were examined, and the exclusions by reason.
    """
    now = clock.now()
    with session_scope(engine) as session:
        if engine.dialect.name == "postgresql":
            # Plan each chunk's queries for its own values: a generic plan cached while the tables were small
            # can keep choosing scans that stop fitting as the campaign's own rows pile up.
            session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        campaign = _locked(session, campaign_id, skip_locked=True)
        state = CampaignState(campaign.state)
        if state not in (CampaignState.SCHEDULED, CampaignState.FANNING_OUT):
            return None
        assert campaign.launch_at is not None and campaign.ends_at is not None
        if campaign.launch_at > now:
            return None
        if state is CampaignState.SCHEDULED:
            campaign.state = CampaignState.FANNING_OUT
            campaign.fanout_started_at = now
        upper = session.scalar(
            select(func.max(col(Patient.id))).where(
                col(Patient.id).in_(
                    select(col(Patient.id))
                    .where(col(Patient.id) > campaign.fanout_cursor)
                    .order_by(col(Patient.id))
                    .limit(chunk_size)
                    .scalar_subquery()
                )
            )
        )
        audience = parse_audience(campaign.audience).conditions()
        if upper is not None and campaign.ends_at <= now:
            # The window closed before fan-out reached everyone (e.g. the scheduler was down): say how many.
            missed = session.scalar(select(func.count()).where(col(Patient.id) > campaign.fanout_cursor, *audience))
            campaign.audience_size += int(missed or 0)
            campaign.excluded = dict(Counter(campaign.excluded) + Counter({"window_closed": int(missed or 0)}))
            upper = None
        if upper is None:
            campaign.state = CampaignState.LAUNCHED
            campaign.fanout_finished_at = now
            campaign.updated_at = now
            session.add(campaign)
            return None

        channels = [Channel(c) for c in campaign.channels]
        members = session.execute(
            select(col(Patient.id), col(Patient.time_zone), _exclusion(channels, now)).where(
                col(Patient.id) > campaign.fanout_cursor,
                col(Patient.id) <= upper,
                *audience,
            )
        ).all()

        # The send-time count (worker/caps.py), by index lookups over these members' own history.
        counts = recent_counts_of(session, [patient_id for patient_id, _, _ in members], now, exclude=[])
        capped_ids = {pid for pid, count in counts.items() if capped(Category.MARKETING, count)[0]}
        excluded: Counter[str] = Counter()
        by_start: dict[datetime | None, list[int]] = {}
        opens_in_zone: dict[str, datetime] = {}
        for patient_id, zone, rule in members:
            reason = "frequency_cap" if patient_id in capped_ids and rule != "care_pause" else rule
            if reason is not None:
                excluded[reason] += 1
                continue
            if zone not in opens_in_zone:
                opens_in_zone[zone] = next_allowed_instant(now, _zone(zone), *MARKETING_WINDOW)
            opens = opens_in_zone[zone]
            if opens >= campaign.ends_at:
                excluded["outside_window"] += 1
                continue
            by_start.setdefault(opens if opens > now else None, []).append(patient_id)

        created: list[int] = []
        queue_now: list[int] = []
        for not_before, patient_ids in by_start.items():
            ids = _insert_rows(session, campaign, patient_ids, not_before, now)
            created.extend(ids)
            if not_before is None:
                queue_now.extend(ids)
        if created:
            session.execute(
                insert(NotificationEvent).from_select(
                    ["notification_id", "from_state", "to_state", "reason", "at"],
                    select(
                        col(Notification.id),
                        literal(None, String),
                        literal(State.PENDING.value, String),
                        literal(f"created by campaign {campaign_id}", String),
                        literal(now, UTCDateTime),
                    ).where(col(Notification.id).in_(created)),
                )
            )
        campaign.fanout_cursor = int(upper)
        campaign.audience_size += len(members)
        campaign.queued += len(created)
        campaign.excluded = dict(Counter(campaign.excluded) + excluded)
        campaign.updated_at = now
        session.add(campaign)
    return queue_now, len(created), len(members), excluded


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")  # patients.py validates zones on the way in; never crash a fan-out on one row


def _insert_rows(
    session: Session, campaign: Campaign, patient_ids: list[int], not_before: datetime | None, now: datetime
) -> list[int]:
    """``INSERT ... SELECT`` the recipients' rows; the idempotency key makes a second insert impossible."""
    assert campaign.id is not None
    key = literal(f"campaign:{campaign.id}:", String) + cast(col(Patient.id), String)
    source = select(
        col(Patient.id),
        literal(Category.MARKETING.value, String),
        literal(list(campaign.channels), JSON),
        literal({"campaign_id": campaign.id, "template": campaign.template}, JSON),
        key,
        literal(State.PENDING.value, String),
        literal(not_before, UTCDateTime),
        literal(campaign.ends_at, UTCDateTime),
        literal(0),
        literal(now, UTCDateTime),
        literal(now, UTCDateTime),
        literal(campaign.id),
    ).where(col(Patient.id).in_(patient_ids))
    statement = (
        insert(Notification)
        .from_select(
            [
                "patient_id",
                "category",
                "channels",
                "context",
                "idempotency_key",
                "state",
                "not_before",
                "expires_at",
                "attempt_count",
                "created_at",
                "updated_at",
                "campaign_id",
            ],
            source,
        )
        .returning(col(Notification.id))
    )
    return [i for i in session.scalars(statement) if i is not None]


def _enqueue(engine: Engine, clock: Clock, enqueue_many: EnqueueMany, ids: list[int]) -> None:
    """Outbox order: the rows are committed; queue them, then stamp them (a crash in between: the relay)."""
    if not ids:
        return
    enqueue_many(ids)
    mark_enqueued(engine, ids, clock.now())


def launch_due(engine: Engine, clock: Clock, enqueue_many: EnqueueMany, settings: CampaignSettings) -> list[FanOut]:
    """The scheduler's job: fan out every campaign whose launch time has come."""
    with session_scope(engine) as session:
        due = list(
            session.scalars(
                select(col(Campaign.id))
                .where(
                    col(Campaign.state).in_([CampaignState.SCHEDULED, CampaignState.FANNING_OUT]),
                    col(Campaign.launch_at) <= clock.now(),
                )
                .order_by(col(Campaign.id))
            )
        )
    return [fan_out(engine, clock, enqueue_many, cid, chunk_size=settings.chunk_size) for cid in due if cid is not None]


# --- send time and reporting ---------------------------------------------------------------------------------


def stale_reason(session: Session, campaign_id: int | None) -> tuple[str, str] | None:
    """At send time: a cancelled campaign's notification is cancelled, not sent."""
    if campaign_id is None:
        return None
    campaign = session.get(Campaign, campaign_id)  # the session's identity map serves a batch's other rows
    return stale_for(campaign.state if campaign is not None else None)


def stale_for(state: str | None) -> tuple[str, str] | None:
    """:func:`stale_reason` on the campaign's state as read."""
    if state == CampaignState.CANCELLED:
        return "cancelled", "campaign cancelled"
    return None


@dataclass(frozen=True)
class CampaignStats:
    campaign_id: int
    name: str
    template: str
    channels: list[str]
    audience: dict[str, Any]
    state: str
    launch_at: datetime | None
    ends_at: datetime | None
    fanout_started_at: datetime | None
    fanout_finished_at: datetime | None
    audience_size: int
    queued: int
    excluded: dict[str, int]
    #: Notifications by state (pending, deferred, sending, sent, delivered, suppressed, expired, ...).
    by_state: dict[str, int]
    #: Recipients a provider accepted the campaign for, per channel.
    accepted_by_channel: dict[str, int]
    #: The commonest reasons for suppressed, expired and failed notifications.
    top_reasons: dict[str, int]


def campaign_stats(engine: Engine, campaign_id: int) -> CampaignStats:
    """One campaign's figures, from the campaign row and its notifications (index ``ix_notification_campaign``)."""
    with session_scope(engine) as session:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            raise NotFound(f"campaign {campaign_id} does not exist")
        mine = col(Notification.campaign_id) == campaign_id
        by_state = {
            str(state): int(count)
            for state, count in session.execute(
                select(col(Notification.state), func.count()).where(mine).group_by(col(Notification.state))
            )
        }
        accepted = {
            str(channel): int(count)
            for channel, count in session.execute(
                select(col(DeliveryAttempt.channel), func.count(func.distinct(col(DeliveryAttempt.notification_id))))
                .join(Notification, col(Notification.id) == col(DeliveryAttempt.notification_id))
                .where(mine, col(DeliveryAttempt.outcome) == Outcome.ACCEPTED.value)
                .group_by(col(DeliveryAttempt.channel))
            )
        }
        reasons = {
            str(reason): int(count)
            for reason, count in session.execute(
                select(col(Notification.reason), func.count().label("n"))
                .where(mine, col(Notification.state).in_([State.SUPPRESSED, State.EXPIRED, State.FAILED]))
                .group_by(col(Notification.reason))
                .order_by(func.count().desc())
                .limit(10)
            )
        }
        assert campaign.id is not None
        return CampaignStats(
            campaign_id=campaign.id,
            name=campaign.name,
            template=campaign.template,
            channels=list(campaign.channels),
            audience=dict(campaign.audience),
            state=str(campaign.state),
            launch_at=campaign.launch_at,
            ends_at=campaign.ends_at,
            fanout_started_at=campaign.fanout_started_at,
            fanout_finished_at=campaign.fanout_finished_at,
            audience_size=campaign.audience_size,
            queued=campaign.queued,
            excluded=dict(campaign.excluded),
            by_state=by_state,
            accepted_by_channel=accepted,
            top_reasons=reasons,
        )
