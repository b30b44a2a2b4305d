"""Delivering a batch (campaign fan-out, relayed rows): one claim and one read for all of it, the rows sent
concurrently, what a bulk-capable provider can take sent in one call, and one settle for the lot.

The same rules decide each row as :func:`worker.delivery.send.deliver` does, and every provider answer is
written down as soon as it comes (so a crash repeats at most the sends in flight).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import structlog

from integrations.base import NOT_SENT, BulkProvider, OutboundMessage, Outcome, SendResult, supports_bulk
from worker.categories import Channel
from worker.db import retry_transient
from worker.delivery.claims import NOT_CLAIMABLE, claim_many
from worker.delivery.policy import Decision
from worker.delivery.send import (
    RATE_LIMITED,
    Answer,
    AnswerNotRecorded,
    DeliveryDeps,
    Report,
    Settle,
    _ChannelResult,
    _claim_and_read_many,
    _conclude,
    _decide_claimed,
    _deliver_claimed,
    _Facts,
    _judge,
    _load_facts,
    _not_due,
    _on_postgresql,
    _plan_channel,
    _release_after_error,
    _Settlement,
    _Target,
    _write_settlements,
    record_answers,
)
from worker.models import Notification
from worker.outbox import id_of
from worker.states import State

log = structlog.get_logger(__name__)


def deliver_many(deps: DeliveryDeps, notification_ids: Sequence[int]) -> list[Report]:
    """:func:`deliver` for a batch: one claim and one read of the facts for all of it, bulk calls where a
    provider takes them, the other rows concurrently (see :func:`_deliver_rows`), one settle.

    The same rules decide each row. A row whose patient already has a row earlier in the batch is decided on
    facts read after that one was sent, so a frequency cap counts it. An unexpected error on one row hands that
    row back for a retry (its report carries the error) and the batch goes on.
    """
    leases = deps.leases
    facts: dict[int, _Facts] = {}
    if _on_postgresql(deps):
        claimed_rows, later = _claim_and_read_many(deps, notification_ids)
        rows = [row for row, _ in claimed_rows]
        facts = {id_of(row): row_facts for row, row_facts in claimed_rows}
    else:
        rows, later = retry_transient(
            partial(claim_many, deps.engine, deps.clock, notification_ids, lease=leases.lease, holder=leases.holder),
            seconds=deps.settings.record_retry_seconds,
        )
    claimed = [id_of(row) for row in rows]
    reports = {nid: Report(nid, None, NOT_CLAIMABLE) for nid in notification_ids}
    reports.update({nid: _not_due(deps, nid, not_due) for nid, not_due in later.items()})
    leases.hold(claimed)
    try:
        if not facts:
            try:
                facts = _load_facts(deps, rows)
            except Exception as exc:  # e.g. the database went away: hand every row back, let the broker retry
                for row in rows:
                    _release_after_error(deps, id_of(row), exc)
                raise
        settle = _BatchSettle(deps)
        try:
            _deliver_rows(deps, rows, facts, settle, reports)
        finally:
            settle.flush()
    finally:
        leases.release(claimed)
    return [reports[nid] for nid in notification_ids]


def _deliver_rows(
    deps: DeliveryDeps, rows: list[Notification], facts: dict[int, _Facts], settle: Settle, reports: dict[int, Report]
) -> None:
    """Decide and send each claimed row of a batch, writing its report into ``reports``.

    Different patients' rows go concurrently (``delivery.send_concurrency`` at once, on PostgreSQL), so a slow
    provider costs a batch one call's time, not fifty; one patient's rows go in turn, and a later one is decided
    on facts read after the earlier was sent, so a frequency cap counts it.
    """
    by_patient: dict[int, list[Notification]] = defaultdict(list)
    for row in rows:
        by_patient[row.patient_id].append(row)
    # First whatever one bulk call per provider can carry; a patient's later rows then read fresh facts.
    done = _deliver_in_bulk(deps, [group[0] for group in by_patient.values()], facts, settle, reports)
    throttled: list[Report] = []
    lock = threading.Lock()

    def run(patient_rows: list[Notification]) -> None:
        for index, row in enumerate(patient_rows):
            if id_of(row) in done:
                continue
            nid = id_of(row)
            with lock:
                stop = throttled[0] if throttled else None
            if stop is not None:
                # A provider's rate limit is reached: the rest would only meet it too. Hand them back unsent.
                reports[nid] = settle(
                    nid,
                    State.RETRYING,
                    "waiting for the provider's rate limit",
                    not_before=deps.clock.now() + timedelta(seconds=stop.retry_in or 1.0),
                    retry_in=stop.retry_in,
                    uncount=True,
                    throttled=True,
                )
                continue
            report = _deliver_one_of_batch(deps, row, facts[nid] if index == 0 else None, settle)
            reports[nid] = report
            if report.throttled:
                with lock:
                    throttled.append(report)

    width = min(deps.settings.send_concurrency, len(by_patient)) if _on_postgresql(deps) else 1
    if width <= 1:
        for patient_rows in by_patient.values():
            run(patient_rows)
        return
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="send") as pool:
        for future in [pool.submit(run, patient_rows) for patient_rows in by_patient.values()]:
            future.result()


def _deliver_one_of_batch(deps: DeliveryDeps, row: Notification, facts: _Facts | None, settle: Settle) -> Report:
    """One row of a batch; an unexpected error is that row's retry, not the batch's."""
    nid = id_of(row)
    try:
        own = facts if facts is not None else _load_facts(deps, [row])[nid]
        return _deliver_claimed(deps, row, own, settle)
    except AnswerNotRecorded as exc:
        # Held until its answer is written; then the relay finds it and the accepted target is not resent.
        return Report(nid, State.SENDING, "provider answer waiting to be recorded", error=exc)
    except Exception as exc:
        return _handed_back(deps, nid, exc)


class _BatchSettle:
    """Collects a batch's outcomes and writes them at the end in one statement (one transaction elsewhere).

    Safe because every provider call is recorded as it happens: if the process dies before :meth:`flush`, the
    rows stay SENDING, their lease runs out, and the next claim finds the accepted attempts and sends nothing
    twice. Thread-safe: a batch's rows are sent concurrently.
    """

    def __init__(self, deps: DeliveryDeps) -> None:
        self._deps = deps
        self._pending: list[_Settlement] = []
        self._lock = threading.Lock()

    def __call__(self, notification_id: int, state: State, reason: str | None, **options: Any) -> Report:
        settlement = _Settlement(notification_id, state, reason, **options)
        with self._lock:
            self._pending.append(settlement)
        return settlement.report()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            done = _write_settlements(self._deps, pending)
            for settlement in pending:
                if settlement.notification_id not in done:
                    log.warning("notification.claim_lost", notification_id=settlement.notification_id)


@dataclass
class _BulkRow:
    row: Notification
    decision: Decision
    outcomes: list[_ChannelResult]
    sends: list[tuple[_ChannelResult, _Target, OutboundMessage]] = field(default_factory=list)


def _deliver_in_bulk(
    deps: DeliveryDeps, rows: list[Notification], facts: dict[int, _Facts], settle: Settle, reports: dict[int, Report]
) -> set[int]:
    """Send in one call per provider what bulk-capable providers can take; returns the rows finished here.

    A row qualifies when every channel it goes on has a bulk-capable first provider that is not paused, and it
    is not a fallback chain (push, then SMS only if push fails: that needs the first answer before the second
    send). Each answer is written down at once, then each row is concluded as
    :func:`worker.delivery.send.deliver` would conclude it. A row not taken here goes the one-by-one way.
    """
    finished: set[int] = set()
    bulk: list[_BulkRow] = []
    for row in rows:
        nid = id_of(row)
        own = facts[nid]
        channels = _bulk_channels(deps, own)
        if not channels:
            continue
        try:
            decided = _decide_claimed(deps, row, own, settle)
        except Exception as exc:
            reports[nid] = _handed_back(deps, nid, exc)
            finished.add(nid)
            continue
        if isinstance(decided, Report):  # settled without a send (stale, suppressed, deferred, expired)
            reports[nid] = decided
            finished.add(nid)
            continue
        if (decided.fallback and len(decided.channels) > 1) or not set(decided.channels) <= channels:
            continue  # decided again, one by one (the decision is pure and cheap)
        assert own.patient is not None
        entry = _BulkRow(row, decided, [])
        for channel in decided.channels:
            out, planned = _plan_channel(deps, row, own.patient, own.devices, channel, own.accepted_before)
            entry.outcomes.append(out)
            entry.sends.extend((out, target, message) for target, message in planned)
        bulk.append(entry)
    by_provider: dict[str, list[tuple[_BulkRow, _ChannelResult, _Target, OutboundMessage]]] = defaultdict(list)
    for entry in bulk:
        for out, target, message in entry.sends:
            by_provider[deps.providers[out.channel][0].name].append((entry, out, target, message))
    parked: set[int] = set()
    for sends in by_provider.values():
        provider = deps.providers[sends[0][1].channel][0]
        assert supports_bulk(provider)
        parked |= _bulk_call(deps, provider, sends)
    for entry in bulk:
        nid = id_of(entry.row)
        finished.add(nid)
        if nid in parked:
            reports[nid] = Report(nid, State.SENDING, "provider answer waiting to be recorded")
            continue
        try:
            reports[nid] = _conclude(deps, entry.row, entry.outcomes, entry.decision.notes, settle)
        except Exception as exc:
            reports[nid] = _handed_back(deps, nid, exc)
    return finished


def _handed_back(deps: DeliveryDeps, nid: int, exc: Exception) -> Report:
    """An unexpected error on one row: that row's retry, not the batch's."""
    _release_after_error(deps, nid, exc)
    return Report(
        nid,
        State.RETRYING,
        f"internal error ({type(exc).__name__})",
        retry_in=deps.settings.min_backoff_seconds,
        error=exc,
    )


def _bulk_channels(deps: DeliveryDeps, facts: _Facts) -> set[Channel]:
    """The channels whose first provider can take sends in bulk now (none for an erased patient)."""
    if facts.patient is None:
        return set()
    usable: set[Channel] = set()
    for channel, providers in deps.providers.items():
        first = providers[0] if providers else None
        if first is None or not supports_bulk(first):
            continue
        if deps.breakers is not None and deps.breakers.reopens_in(first.name) > 0:
            continue
        usable.add(channel)
    return usable


def _bulk_call(
    deps: DeliveryDeps,
    provider: BulkProvider,
    sends: list[tuple[_BulkRow, _ChannelResult, _Target, OutboundMessage]],
) -> set[int]:
    """One provider's share of the batch: tokens reserved at once, one ``send_many``, every answer recorded.
    Returns the rows whose answer had to be parked (see :class:`worker.delivery.claims.Leases`)."""
    started = deps.clock.now()
    granted = len(sends)
    wait = 0.0
    if deps.rate_limits is not None:
        grant = deps.rate_limits.reserve(provider.name, len(sends))
        granted, wait = grant.granted, grant.wait
    going, held = sends[:granted], sends[granted:]
    results: list[SendResult] = []
    elapsed_ms = 0
    if going:
        t0 = time.perf_counter()
        try:
            results = provider.send_many(messages=[message for _, _, _, message in going])
        finally:
            elapsed_ms = int((time.perf_counter() - t0) * 1000)
        if deps.breakers is not None:
            _judge(deps.breakers, provider.name, _verdict(results))
    results += [SendResult(outcome=Outcome.RETRY, error_code=RATE_LIMITED, retry_after=max(wait, 0.05)) for _ in held]
    answers: list[tuple[_BulkRow, _ChannelResult, Answer]] = []
    for (entry, out, target, _message), result in zip(going + held, results, strict=True):
        name = provider.name if result.error_code not in (RATE_LIMITED, NOT_SENT) else "-"
        answers.append((entry, out, Answer(entry.row, out.channel, name, target, result, started, elapsed_ms)))
    try:
        record_answers(deps, [answer for _, _, answer in answers])
    except AnswerNotRecorded:
        # Held until written; then the relay finds them, and nothing accepted is sent again.
        return {id_of(entry.row) for entry, _, _ in answers}
    for _entry, out, answer in answers:
        out.add(answer.provider, answer.result)
    return set()


def _verdict(results: Sequence[SendResult]) -> SendResult:
    """What one bulk call says about the provider: it works if it accepted anything; else its refusal."""
    for result in results:
        if result.outcome is Outcome.ACCEPTED:
            return result
    answered = [r for r in results if r.error_code != NOT_SENT]
    return answered[0] if answered else SendResult(outcome=Outcome.ACCEPTED)
