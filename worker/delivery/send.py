"""Delivering one notification: claim, decide at send time, render, call providers, record, settle.

The database transaction is closed before any provider call. Each provider call is one
:class:`DeliveryAttempt`. A retry skips targets a provider already accepted, so it never sends twice what
was taken. Whatever happens, the row ends in a terminal state with a reason, or waits (RETRYING /
DEFERRED) with a ``not_before`` that the relay watches.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dt_time
from functools import partial
from typing import Any

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from integrations.base import NOT_SENT, OutboundMessage, Outcome, Provider, SendResult
from worker import appointments, campaigns, care_pause, surveys
from worker.caps import Counts, recent_counts_of
from worker.categories import Category, Channel
from worker.clock import Clock
from worker.consent import ConsentState, consent_of, record_consent
from worker.db import is_transient, retry_transient, session_scope
from worker.delivery import pg
from worker.delivery.circuit import CircuitBreakers
from worker.delivery.claims import NOT_CLAIMABLE, Leases, NotDue, claim
from worker.delivery.policy import Decision, decide
from worker.delivery.ratelimit import ProviderRateLimits
from worker.models import DeliveryAttempt, Device, Notification, Patient, Preference
from worker.models_consent import ConsentSource
from worker.outbox import id_of, transition
from worker.settings import DeliverySettings
from worker.states import State
from worker.templates import render

log = structlog.get_logger(__name__)

#: A config error is fixed by a person, not by waiting a few seconds.
CONFIG_ERROR_MIN_DELAY = 300.0
RATE_LIMITED = "rate_limited"
#: Error codes of a wait that called no provider.
PAUSED = frozenset({"circuit_open", RATE_LIMITED, NOT_SENT})
NO_LONGER_HELD = "no longer held: erased while sending, or claimed again after this worker's lease lapsed"
#: The table every provider call is written to (Core inserts: no ORM object on the hot path).
ATTEMPTS = DeliveryAttempt.metadata.tables["delivery_attempt"]
#: The shortest wait for a paused provider, so a row never spins.
MIN_PAUSE = 0.5


@dataclass
class DeliveryDeps:
    """What delivering needs; built once in the bootstrap."""

    engine: Engine
    clock: Clock
    providers: Mapping[Channel, Sequence[Provider]]
    settings: DeliverySettings
    #: This process's claims and their heartbeat.
    leases: Leases
    rng: random.Random = field(default_factory=random.Random)
    breakers: CircuitBreakers | None = None
    #: The local window for what can wait (settings.scheduling); ``None`` disables quiet hours.
    quiet_window: tuple[dt_time, dt_time] | None = (dt_time(8, 0), dt_time(21, 0))
    rate_limits: ProviderRateLimits | None = None
    #: patient id -> signed unsubscribe URL; ``None`` when no signing key is configured.
    unsubscribe_url: Callable[[int], str] | None = None
    #: patient id -> signed link to her preference page (every email footer, the SMS HELP answer); ``None`` when no
    #: signing key is configured.
    preference_url: Callable[[int], str] | None = None


@dataclass(frozen=True)
class Report:
    """What one run of :func:`deliver` did. ``retry_in`` (seconds) asks the actor to run again later."""

    notification_id: int
    state: State | None
    reason: str | None
    retry_in: float | None = None
    #: Only a provider rate limit held it back: a batch should pause, not push on into the same limit.
    throttled: bool = False
    #: An unexpected error (the row was handed back for a retry); :func:`deliver` raises it instead.
    error: Exception | None = None


class AnswerNotRecorded(Exception):
    """A provider answered but the database would not take the answer: it is parked with the heartbeat and the
    row stays held until it is written, so the send is never repeated."""


@dataclass(frozen=True)
class _Target:
    key: str  # what DeliveryAttempt.target stores: "device:<id>" or the channel name
    address: str
    platform: str | None = None
    device_id: int | None = None


@dataclass
class _ChannelResult:
    channel: Channel
    accepted: int = 0
    already: int = 0
    results: list[tuple[str, SendResult]] = field(default_factory=list)

    def add(self, provider: str, result: SendResult) -> None:
        """One provider answer for one of this channel's targets."""
        self.results.append((provider, result))
        if result.outcome is Outcome.ACCEPTED:
            self.accepted += 1

    def reached(self) -> bool:
        return self.accepted + self.already > 0

    def waiting(self) -> list[SendResult]:
        return [r for _, r in self.results if r.outcome in (Outcome.RETRY, Outcome.CONFIG_ERROR)]


def deliver(deps: DeliveryDeps, notification_id: int) -> Report:
    """Run the send-time path for one notification. Safe to call any number of times for the same id."""
    leases = deps.leases
    if _on_postgresql(deps):
        got = _claim_and_read(deps, notification_id)
        if not isinstance(got, tuple):
            return got
        row, facts = got
    else:
        claimed = claim(deps.engine, deps.clock, notification_id, lease=leases.lease, holder=leases.holder)
        if isinstance(claimed, NotDue):
            return _not_due(deps, notification_id, claimed)
        if claimed is None:
            return Report(notification_id, None, NOT_CLAIMABLE)
        row, facts = claimed, None
    leases.hold([notification_id])
    # On PostgreSQL the last answer rides on the settle: one statement, one round trip and one commit less.
    answers = Answers(deps, with_settle=_on_postgresql(deps))
    try:
        if facts is None:
            facts = _load_facts(deps, [row])[id_of(row)]
        return _deliver_claimed(deps, row, facts, partial(_settle, deps, answers=answers), answers)
    except AnswerNotRecorded:
        raise
    except Exception as exc:
        answers.write_held()  # what a provider took is written down before the row is handed back
        _release_after_error(deps, notification_id, exc)
        raise
    finally:
        leases.release([notification_id])


def _on_postgresql(deps: DeliveryDeps) -> bool:
    return deps.engine.dialect.name == "postgresql"


def _claim_and_read(deps: DeliveryDeps, notification_id: int) -> tuple[Notification, _Facts] | Report:
    """PostgreSQL: the claim, its event and every send-time fact in one statement (:mod:`worker.delivery.pg`)."""
    claimed, later = _claim_and_read_many(deps, [notification_id])
    if claimed:
        return claimed[0]
    if notification_id in later:
        return _not_due(deps, notification_id, later[notification_id])
    return Report(notification_id, None, NOT_CLAIMABLE)


def _claim_and_read_many(
    deps: DeliveryDeps, notification_ids: Sequence[int]
) -> tuple[list[tuple[Notification, _Facts]], dict[int, NotDue]]:
    now = deps.clock.now()
    leases = deps.leases
    claimed, later = retry_transient(
        partial(pg.claim_and_read, deps.engine, notification_ids, now=now, lease=leases.lease, holder=leases.holder),
        seconds=deps.settings.record_retry_seconds,
    )
    rows = [
        (
            got.row,
            _Facts(
                patient=got.patient,
                devices=got.devices,
                preferences=got.preferences,
                accepted_before=got.accepted_before,
                consent=got.consent,
                counts=pg.counts(got, now),
                stale=got.stale,
                pause=got.pause,
                survey_on_pause=got.survey_on_pause,
            ),
        )
        for got in claimed
    ]
    return rows, {nid: NotDue(at) for nid, at in later.items()}


def _not_due(deps: DeliveryDeps, notification_id: int, not_due: NotDue) -> Report:
    """An early message (a retry's broker delay ran ahead of the row's clock): come back when it is due."""
    wait = max(0.05, (not_due.at - deps.clock.now()).total_seconds())
    return Report(notification_id, None, "not due yet", retry_in=wait)


@dataclass(frozen=True)
class _Facts:
    """What the send-time decision reads, as of just before the send."""

    patient: Patient | None
    devices: list[Device]
    preferences: list[Preference]
    accepted_before: set[str]
    consent: ConsentState
    counts: Counts
    stale: tuple[str, str] | None
    #: Her latest care-pause ledger entry, and (a survey notice) what its survey does while she is paused.
    pause: care_pause.Pause | None = None
    survey_on_pause: str | None = None


def _load_facts(deps: DeliveryDeps, rows: Sequence[Notification]) -> dict[int, _Facts]:
    """The facts for many notifications in a fixed number of queries, whatever the batch size."""
    now = deps.clock.now()
    ids = [id_of(row) for row in rows]
    patient_ids = sorted({row.patient_id for row in rows})
    devices: dict[int, list[Device]] = defaultdict(list)
    preferences: dict[int, list[Preference]] = defaultdict(list)
    accepted: dict[int, set[str]] = defaultdict(set)
    with session_scope(deps.engine) as session:
        patients = {p.id: p for p in session.scalars(select(Patient).where(col(Patient.id).in_(patient_ids)))}
        for device in session.scalars(select(Device).where(col(Device.patient_id).in_(patient_ids))):
            devices[device.patient_id].append(device)
        for preference in session.scalars(select(Preference).where(col(Preference.patient_id).in_(patient_ids))):
            preferences[preference.patient_id].append(preference)
        for notification_id, target in session.execute(
            select(col(DeliveryAttempt.notification_id), col(DeliveryAttempt.target)).where(
                col(DeliveryAttempt.notification_id).in_(ids),
                col(DeliveryAttempt.outcome) == Outcome.ACCEPTED.value,
            )
        ):
            accepted[notification_id].add(target)
        consent = consent_of(session, patient_ids)
        counts = recent_counts_of(session, patient_ids, now, exclude=ids)
        stale = {
            id_of(row): (
                appointments.stale_reason(session, row.context, now)
                or surveys.stale_reason(session, row.context)
                or campaigns.stale_reason(session, row.campaign_id)
            )
            for row in rows
        }
        pauses = care_pause.latest_pauses(session, patient_ids)
        on_pause = {id_of(row): surveys.on_care_pause(session, row.context) for row in rows}
        session.expunge_all()
    return {
        id_of(row): _Facts(
            patient=patients.get(row.patient_id),
            devices=devices[row.patient_id],
            preferences=preferences[row.patient_id],
            accepted_before=accepted[id_of(row)],
            consent=consent[row.patient_id],
            counts=counts[row.patient_id],
            stale=stale[id_of(row)],
            pause=pauses.get(row.patient_id),
            survey_on_pause=on_pause[id_of(row)],
        )
        for row in rows
    }


def _deliver_claimed(
    deps: DeliveryDeps, row: Notification, facts: _Facts, settle: Settle, answers: Answers | None = None
) -> Report:
    """Decide, send and settle a claimed row; ``answers`` writes its provider answers (by default each at once)."""
    decided = _decide_claimed(deps, row, facts, settle)
    if isinstance(decided, Report):
        return decided
    assert facts.patient is not None
    answers = answers if answers is not None else Answers(deps)
    outcomes: list[_ChannelResult] = []
    for channel in decided.channels:
        result = _send_channel(deps, row, facts.patient, facts.devices, channel, facts.accepted_before, answers)
        outcomes.append(result)
        if decided.fallback and (result.reached() or result.waiting()):
            break
    return _conclude(deps, row, outcomes, decided.notes, settle)


def _decide_claimed(deps: DeliveryDeps, row: Notification, facts: _Facts, settle: Settle) -> Report | Decision:
    """The send-time decision; a row that is not to be sent now is settled here and its report returned."""
    assert row.id is not None
    patient = facts.patient
    if patient is None:  # erased between the claim and now
        return Report(row.id, None, "patient erased")
    if facts.stale is not None:
        kind, why = facts.stale
        return settle(row.id, State.CANCELLED if kind == "cancelled" else State.EXPIRED, why)
    decision = decide(
        notification=row,
        patient=patient,
        preferences=facts.preferences,
        devices=facts.devices,
        now=deps.clock.now(),
        consent=facts.consent,
        quiet_window=deps.quiet_window,
        counts=facts.counts,
        pause=facts.pause,
        survey_on_pause=facts.survey_on_pause,
    )
    if decision.expire:
        return settle(row.id, State.EXPIRED, decision.expire)
    if decision.suppress:
        return settle(row.id, State.SUPPRESSED, decision.suppress)
    if decision.cancel:
        return settle(row.id, State.CANCELLED, decision.cancel)
    if decision.defer_until is not None:
        return settle(
            row.id, State.DEFERRED, decision.defer_reason, not_before=decision.defer_until, uncount=decision.uncount
        )
    return decision


def _targets(channel: Channel, patient: Patient, devices: Sequence[Device]) -> list[_Target]:
    if channel is Channel.PUSH:
        return [_Target(f"device:{d.id}", d.token, d.platform, d.id) for d in devices if d.live]
    if channel is Channel.SMS and patient.phone_e164:
        return [_Target("sms", patient.phone_e164)]
    if channel is Channel.EMAIL and patient.email:
        return [_Target("email", patient.email)]
    if channel is Channel.INAPP:
        return [_Target("inapp", patient.external_ref)]
    return []


def _send_channel(
    deps: DeliveryDeps,
    row: Notification,
    patient: Patient,
    devices: Sequence[Device],
    channel: Channel,
    accepted_before: set[str],
    answers: Answers,
) -> _ChannelResult:
    out, planned = _plan_channel(deps, row, patient, devices, channel, accepted_before)
    providers = deps.providers.get(channel) or ()
    for target, message in planned:
        out.add(*_send_with_failover(deps, row, channel, providers, target, message, answers))
    return out


def _plan_channel(
    deps: DeliveryDeps,
    row: Notification,
    patient: Patient,
    devices: Sequence[Device],
    channel: Channel,
    accepted_before: set[str],
) -> tuple[_ChannelResult, list[tuple[_Target, OutboundMessage]]]:
    """The messages one channel needs (one per target no provider accepted yet), rendered PHI-free; or, in the
    result, why the channel cannot be used at all."""
    out = _ChannelResult(channel)
    if not deps.providers.get(channel):
        out.results.append(("-", SendResult(outcome=Outcome.FAILED, detail=f"no provider configured for {channel}")))
        return out, []
    data = {"notification_id": str(row.id), "category": str(row.category)}
    unsubscribe: str | None = None
    if row.category == Category.MARKETING and channel is Channel.EMAIL:
        if deps.unsubscribe_url is None:
            out.results.append(
                ("-", SendResult(outcome=Outcome.CONFIG_ERROR, detail="marketing email needs CARENOTIFY_SIGNING_KEY"))
            )
            return out, []
        unsubscribe = data["unsubscribe_url"] = deps.unsubscribe_url(row.patient_id)
    preferences = _preference_link(deps, row, channel)
    if preferences is not None and channel is Channel.EMAIL:
        data["preferences_url"] = preferences  # a bulk email substitutes it per recipient (integrations/sendgrid.py)
    text = render(
        Category(row.category),
        channel,
        patient.locale,
        unsubscribe_url=unsubscribe,
        sms_reply=str(row.context.get("sms_reply") or "") or None,
        template=str(row.context.get("template") or "") or None,
        preference_url=preferences,
    )
    planned: list[tuple[_Target, OutboundMessage]] = []
    for target in _targets(channel, patient, devices):
        if target.key in accepted_before:
            out.already += 1
            continue
        message = OutboundMessage(
            notification_id=row.id or 0,
            idempotency_key=f"{row.idempotency_key}:{target.key}",
            channel=channel,
            category=str(row.category),
            address=target.address,
            platform=target.platform,
            title=text.title,
            body=text.body,
            data=data,
            promotional=row.category == Category.MARKETING,
        )
        planned.append((target, message))
    return out, planned


def _preference_link(deps: DeliveryDeps, row: Notification, channel: Channel) -> str | None:
    """Her preference-page link, where a text carries one: every email, and the SMS answer to HELP."""
    if deps.preference_url is None:
        return None
    if channel is Channel.EMAIL or (channel is Channel.SMS and row.context.get("sms_reply") == "help"):
        return deps.preference_url(row.patient_id)
    return None


def _send_with_failover(
    deps: DeliveryDeps,
    row: Notification,
    channel: Channel,
    providers: Sequence[Provider],
    target: _Target,
    message: OutboundMessage,
    answers: Answers,
) -> tuple[str, SendResult]:
    """Try the channel's providers in order; move to the next on a transient failure or an open circuit."""
    candidates = [p for p in providers if _supports(p, target.platform)]
    breakers = deps.breakers
    last: tuple[str, SendResult] | None = None
    for provider in candidates:
        if breakers is not None and not breakers.allow(provider.name):
            continue
        settled = False  # every call let through gets a verdict, or frees the trial slot (see finally)
        try:
            started = deps.clock.now()
            grant = deps.rate_limits.reserve(provider.name, 1) if deps.rate_limits is not None else None
            if grant is not None and grant.granted < 1:
                result = SendResult(outcome=Outcome.RETRY, error_code=RATE_LIMITED, retry_after=max(grant.wait, 0.05))
                answers.add(Answer(row, channel, provider.name, target, result, started, 0))
                last = (provider.name, result)
                continue
            answers.write_held()  # every answer known so far is written before the next call goes out
            t0 = time.perf_counter()
            result = provider.send(message=message)
            elapsed_ms = int((time.perf_counter() - t0) * 1000)
            if breakers is not None:
                _judge(breakers, provider.name, result)
                settled = True
            answers.add(Answer(row, channel, provider.name, target, result, started, elapsed_ms))
            last = (provider.name, result)
            if result.outcome in (Outcome.RETRY, Outcome.CONFIG_ERROR):
                continue
            return last
        finally:
            if breakers is not None and not settled:
                breakers.abandon(provider.name)
    if last is not None:
        return last
    if not candidates:
        return "-", SendResult(
            outcome=Outcome.FAILED, detail=f"no {channel} provider serves platform {target.platform}"
        )
    # Wait for the first provider to be tried again, rather than burn attempts while every one is paused.
    wait = min((breakers.reopens_in(p.name) for p in candidates), default=0.0) if breakers else 0.0
    paused = SendResult(
        outcome=Outcome.RETRY,
        error_code="circuit_open",
        detail=f"every {channel} provider is paused",
        retry_after=max(wait, MIN_PAUSE),
    )
    answers.add(Answer(row, channel, "-", target, paused, deps.clock.now(), 0))
    return "-", paused


def _hinted(result: SendResult) -> bool:
    """The provider said how long to wait (Retry-After, X-RateLimit-Reset)."""
    return result.retry_after is not None and result.retry_after > 0


def _judge(breakers: CircuitBreakers, provider: str, result: SendResult) -> None:
    """A wait the provider asked for pauses it for exactly that long; other transient answers count as failures."""
    if result.outcome is Outcome.RETRY and _hinted(result):
        breakers.pause(provider, result.retry_after or 0.0)
    elif result.outcome in (Outcome.RETRY, Outcome.CONFIG_ERROR):
        breakers.failure(provider)
    else:
        breakers.success(provider)


def _supports(provider: Provider, platform: str | None) -> bool:
    platforms: frozenset[str] | None = getattr(provider, "platforms", None)
    return platform is None or platforms is None or platform in platforms


def _record_attempt(deps: DeliveryDeps, answer: Answer) -> None:
    """Write one provider call down (and what it tells: an opt-out, a dead token) before anything else happens.

    A lost connection is retried for ``record_retry_seconds``; after that the write is parked with the heartbeat
    and :class:`AnswerNotRecorded` stops this row, which stays held until the write lands. Never sent twice.
    """
    write = partial(_write_attempt, deps, answer)
    _durably(deps, [id_of(answer.row)], write, lambda _: write)
    _log_attempt(answer)


def _log_attempt(answer: Answer) -> None:
    log.info(
        "delivery.attempt",
        notification_id=answer.row.id,
        channel=str(answer.channel),
        provider=answer.provider,
        target=answer.target.key,
        outcome=answer.result.outcome.value,
        error_code=answer.result.error_code,
        duration_ms=answer.ms,
    )


def _durably(
    deps: DeliveryDeps, ids: Sequence[int], write: Callable[[], None], one: Callable[[int], Callable[[], None]]
) -> None:
    """Write provider answers down, retrying a lost connection for ``record_retry_seconds``; after that each
    row's own write (``one(id)``) is parked with the heartbeat and :class:`AnswerNotRecorded` stops those rows,
    which stay held until their answers are written: never sent twice."""
    try:
        retry_transient(write, seconds=deps.settings.record_retry_seconds)
    except Exception as exc:
        if not is_transient(exc):
            raise
        for notification_id in ids:
            deps.leases.park(notification_id, one(notification_id))
        raise AnswerNotRecorded(f"{len(ids)} provider answer(s) parked until the database is back") from exc


def record_answers(deps: DeliveryDeps, answers: Sequence[Answer]) -> None:
    """Write many provider answers at once (a bulk call's): one insert, plus what an answer tells (an opt-out,
    a dead token) row by row. Raises :class:`AnswerNotRecorded` as :func:`_record_attempt` does."""
    plain = [a for a in answers if a.result.outcome not in (Outcome.OPTED_OUT, Outcome.TOKEN_DEAD)]
    telling = [a for a in answers if a.result.outcome in (Outcome.OPTED_OUT, Outcome.TOKEN_DEAD)]

    def write_plain(subset: Sequence[Answer]) -> Callable[[], None]:
        def write() -> None:
            if not subset:
                return
            values = [a.values() for a in subset]
            if _on_postgresql(deps):
                pg.record(deps.engine, values)  # one statement, one round trip
                return
            with session_scope(deps.engine) as session:
                session.execute(insert(ATTEMPTS), values)

        return write

    def one(notification_id: int) -> Callable[[], None]:
        return write_plain([a for a in plain if a.row.id == notification_id])

    _durably(deps, sorted({a.row.id or 0 for a in plain}), write_plain(plain), one)
    for answer in telling:
        _record_attempt(deps, answer)


#: Answers that tell something besides the call's outcome (an opt-out, a dead token): written on their own.
_TELLING = frozenset({Outcome.OPTED_OUT, Outcome.TOKEN_DEAD})


class Answers:
    """Writes one delivery's provider answers down, each before the next provider call goes out, so a crash loses
    at most the send in flight. With ``with_settle`` (PostgreSQL, one notification) the last answer is held for the
    settle, which writes it in the same statement (:data:`worker.delivery.pg.RECORD_AND_SETTLE_ONE`): it is known
    either way before the row is settled, and costs no round trip of its own. One delivery, one thread."""

    def __init__(self, deps: DeliveryDeps, *, with_settle: bool = False) -> None:
        self._deps = deps
        self._with_settle = with_settle
        self._held: Answer | None = None

    def add(self, answer: Answer) -> None:
        self.write_held()
        if self._with_settle and answer.result.outcome not in _TELLING:
            self._held = answer
            return
        _record_attempt(self._deps, answer)

    def write_held(self) -> None:
        """Write the held answer now (a provider call is about to go out, or the delivery ends without a settle)."""
        held, self._held = self._held, None
        if held is not None:
            _record_attempt(self._deps, held)

    def take(self) -> Answer | None:
        """The held answer, for the settle to write."""
        held, self._held = self._held, None
        return held


@dataclass(frozen=True)
class Answer:
    """One provider call's answer, to be written down."""

    row: Notification
    channel: Channel
    provider: str
    target: _Target
    result: SendResult
    started: datetime
    ms: int

    def values(self) -> dict[str, Any]:
        return {
            "notification_id": self.row.id or 0,
            "channel": self.channel.value,
            "provider": self.provider,
            "target": self.target.key,
            "device_id": self.target.device_id,
            "outcome": self.result.outcome.value,
            "provider_ref": self.result.provider_ref,
            "error_code": self.result.error_code,
            "detail": (self.result.detail or "")[:500] or None,
            "started_at": self.started,
            "duration_ms": self.ms,
        }


def _write_attempt(deps: DeliveryDeps, answer: Answer) -> None:
    row, channel, provider, target, result = answer.row, answer.channel, answer.provider, answer.target, answer.result
    values = answer.values()
    if _on_postgresql(deps) and result.outcome not in (Outcome.OPTED_OUT, Outcome.TOKEN_DEAD):
        pg.record(deps.engine, [values])  # one round trip
        return
    with session_scope(deps.engine) as session:
        session.execute(insert(ATTEMPTS), values)
        if result.outcome is Outcome.OPTED_OUT:
            # Twilio 21610: the number replied STOP, so no more texts at all; an email report stops marketing.
            record_consent(
                session,
                patient_id=row.patient_id,
                channel=channel,
                category=None if channel is Channel.SMS else Category.MARKETING,
                granted=False,
                source=ConsentSource.PROVIDER_REPORT,
                actor=provider,
                at=deps.clock.now(),
                detail=f"{provider} {result.error_code or 'opted out'}",
            )
        if result.outcome is Outcome.TOKEN_DEAD and target.device_id is not None:
            session.execute(
                update(Device)
                .where(col(Device.id) == target.device_id)
                .values(
                    live=False,
                    dead_at=deps.clock.now(),
                    dead_reason=(result.error_code or "token dead")[:200],
                )
            )


def _conclude(
    deps: DeliveryDeps, row: Notification, outcomes: list[_ChannelResult], notes: tuple[str, ...], settle: Settle
) -> Report:
    """Settle the row: retry while any target is still waiting, else sent if anything got through."""
    assert row.id is not None
    reached = [o for o in outcomes if o.reached()]
    waiting = [r for o in outcomes for r in o.waiting()]
    problems = [
        _describe(o.channel, name, r) for o in outcomes for name, r in o.results if r.outcome is not Outcome.ACCEPTED
    ]
    # No provider took a call (every circuit open, or our own rate limit said "not this second"): that wait is
    # not an attempt. The notification's expiry bounds it instead.
    paused_only = bool(waiting) and all(r.error_code in PAUSED for r in waiting) and not reached
    if waiting and (paused_only or row.attempt_count < deps.settings.max_attempts):
        delay = _retry_delay(deps, row.attempt_count, waiting)
        return settle(
            row.id,
            State.RETRYING,
            f"attempt {row.attempt_count} of {deps.settings.max_attempts}: {'; '.join(problems[-3:])}",
            not_before=deps.clock.now() + timedelta(seconds=delay),
            retry_in=delay,
            uncount=paused_only,
            throttled=paused_only and any(r.error_code == RATE_LIMITED for r in waiting),
        )
    if reached:
        parts = [f"{o.channel} ({_plural(o.accepted + o.already, 'target')})" for o in reached]
        reason = "accepted: " + ", ".join(parts)
        if problems:
            reason += "; not reached: " + "; ".join(problems[-3:])
        if notes:
            reason += "; " + "; ".join(notes)
        return settle(row.id, State.SENT, reason)
    if waiting:
        last = "; ".join(problems[-3:])
        return settle(row.id, State.FAILED, f"gave up after {row.attempt_count} attempts; last: {last}")
    if problems:
        return settle(row.id, State.FAILED, "; ".join(problems))
    return settle(row.id, State.FAILED, "no reachable contact point: " + ("; ".join(notes) or "no channel"))


def _describe(channel: Channel, provider: str, result: SendResult) -> str:
    code = f" {result.error_code}" if result.error_code else ""
    detail = f" ({result.detail})" if result.detail else ""
    return f"{channel}/{provider}: {result.outcome}{code}{detail}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _retry_delay(deps: DeliveryDeps, attempt: int, waiting: list[SendResult]) -> float:
    """When every wait was named by the provider (or a paused circuit), exactly that, plus a jitter of up to 10%
    (at most a second) so the waiting rows do not all come back in the same millisecond; else exponential backoff
    with jitter."""
    cfg = deps.settings
    asked = max((r.retry_after or 0.0) for r in waiting)
    if any(r.outcome is Outcome.CONFIG_ERROR for r in waiting):
        asked = max(asked, CONFIG_ERROR_MIN_DELAY)
    if all(_hinted(r) for r in waiting):
        return asked + deps.rng.uniform(0.0, min(1.0, asked * 0.1))
    base = min(cfg.max_backoff_seconds, cfg.min_backoff_seconds * 2 ** max(0, attempt - 1))
    return float(max(base * deps.rng.uniform(0.5, 1.0), asked))


@dataclass(frozen=True)
class _Settlement:
    notification_id: int
    state: State
    reason: str | None
    not_before: datetime | None = None
    retry_in: float | None = None
    uncount: bool = False
    throttled: bool = False

    def report(self) -> Report:
        return Report(self.notification_id, self.state, self.reason, self.retry_in, self.throttled)


#: Writes a row's outcome: at once (one notification) or at the end of a batch (:class:`_BatchSettle`).
Settle = Callable[..., Report]


def _settle(
    deps: DeliveryDeps,
    notification_id: int,
    state: State,
    reason: str | None,
    *,
    not_before: datetime | None = None,
    retry_in: float | None = None,
    uncount: bool = False,
    throttled: bool = False,
    answers: Answers | None = None,
) -> Report:
    settlement = _Settlement(notification_id, state, reason, not_before, retry_in, uncount, throttled)
    answer = answers.take() if answers is not None else None
    if not _write_settlements(deps, [settlement], answer=answer):
        log.warning("notification.claim_lost", notification_id=notification_id)
        return Report(notification_id, None, NO_LONGER_HELD)
    return settlement.report()


def _write_settlements(
    deps: DeliveryDeps, settlements: Sequence[_Settlement], *, answer: Answer | None = None
) -> set[int]:
    """Settle rows this worker still holds, in one statement on PostgreSQL or one transaction elsewhere; returns
    the ids settled. A row it no longer holds is left alone (see :func:`_apply`).

    ``answer`` (one settlement's last provider answer) is written by the same statement on PostgreSQL. If the
    database will not take it, the answer is parked like any other (:func:`_durably`) and
    :class:`AnswerNotRecorded` stops the row, which stays held: never sent twice."""
    holder = deps.leases.holder
    if answer is not None and not _on_postgresql(deps):
        _record_attempt(deps, answer)
        answer = None

    def write() -> set[int]:
        now = deps.clock.now()
        if _on_postgresql(deps):
            return pg.settle(
                deps.engine,
                [pg.Settlement(s.notification_id, s.state, s.reason, s.not_before, s.uncount) for s in settlements],
                now=now,
                holder=holder,
                answer=answer.values() if answer is not None else None,
            )
        done: set[int] = set()
        with session_scope(deps.engine) as session:
            ids = [s.notification_id for s in settlements]
            rows = {r.id: r for r in session.scalars(select(Notification).where(col(Notification.id).in_(ids)))}
            for settlement in settlements:
                row = rows.get(settlement.notification_id)
                if row is not None and _apply(session, row, settlement, now, holder):
                    done.add(settlement.notification_id)
        return done

    try:
        done = retry_transient(write, seconds=deps.settings.record_retry_seconds)
    except Exception as exc:
        if answer is None:
            raise
        if is_transient(exc):  # retried long enough: park the answer; the row stays held until it is written
            deps.leases.park(id_of(answer.row), partial(_write_attempt, deps, answer))
            raise AnswerNotRecorded("a provider answer parked until the database is back") from exc
        _record_attempt(deps, answer)  # the settle failed for another reason: the answer still goes down first
        raise
    if answer is not None:
        _log_attempt(answer)
    for settlement in settlements:
        if settlement.notification_id in done:
            log.info("notification.settled", notification_id=settlement.notification_id, state=str(settlement.state))
    return done


def _apply(session: Session, row: Notification, settlement: _Settlement, now: datetime, holder: str) -> bool:
    """Settle a row this worker still holds; False if it no longer does (already settled by this very write,
    whose commit answer was lost, or re-claimed after this worker's lease lapsed): it is someone else's now."""
    if row.state != State.SENDING or row.claimed_by != holder:
        return False
    state = settlement.state
    transition(session, row, state, reason=settlement.reason, now=now)
    if state in (State.RETRYING, State.DEFERRED):
        row.not_before = settlement.not_before
        row.lease_until = None
        row.claimed_by = None
        # A retry's broker message becomes visible at not_before; a deferral has none (the relay queues it).
        row.enqueued_at = settlement.not_before if state is State.RETRYING else None
        if settlement.uncount:
            row.attempt_count = max(0, row.attempt_count - 1)
    return True


def _release_after_error(deps: DeliveryDeps, notification_id: int, exc: Exception) -> None:
    """An unexpected error after the claim: hand the row back for a retry rather than leave it SENDING."""
    now = deps.clock.now()
    delay = deps.settings.min_backoff_seconds
    try:
        with session_scope(deps.engine) as session:
            row = session.get(Notification, notification_id)
            if row is None or row.state != State.SENDING or row.claimed_by != deps.leases.holder:
                return
            reason = f"internal error ({type(exc).__name__}); will retry"
            if row.attempt_count >= deps.settings.max_attempts:
                transition(
                    session,
                    row,
                    State.FAILED,
                    reason=f"internal error ({type(exc).__name__}) on the last attempt",
                    now=now,
                )
                return
            transition(session, row, State.RETRYING, reason=reason, now=now)
            row.not_before = now + timedelta(seconds=delay)
            row.enqueued_at = row.not_before
            row.lease_until = None
            row.claimed_by = None
    except Exception:  # the database itself may be what failed; the lease will run out and the relay recovers
        log.exception("delivery.release_failed", notification_id=notification_id)
