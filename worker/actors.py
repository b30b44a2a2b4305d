"""Thin dramatiq actors: decode the message, call a service, turn its report into broker behaviour.

Declared against an explicit broker by the bootstrap (no global broker, nothing at import time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dramatiq
import structlog

from worker.delivery import DeliveryDeps, deliver, deliver_many
from worker.outbox import give_up
from worker.states import State

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Actors:
    deliver: dramatiq.Actor[[int], None]
    deliver_batch: dramatiq.Actor[[list[int]], None]
    give_up: dramatiq.Actor[[dict[str, Any], dict[str, Any]], None]


def declare_actors(broker: dramatiq.Broker, deps: DeliveryDeps, *, queue_name: str) -> Actors:
    """Register the actors on ``broker``; their retry policy comes from the delivery settings."""
    cfg = deps.settings

    def _give_up(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
        """Retries exhausted on unexpected errors: write the final failure (the one place that does)."""
        args = message.get("args") or []
        if args:
            give_up(deps.engine, deps.clock, int(args[0]), retries=int(retry_info.get("retries", 0)))

    give_up_actor = dramatiq.actor(broker=broker, actor_name="give_up", queue_name=queue_name, max_retries=3)(_give_up)

    def _deliver(notification_id: int) -> None:
        report = deliver(deps, notification_id)
        if report.retry_in is not None:
            # The provider (or our backoff) said "later": wait in the broker, not in this thread.
            raise dramatiq.Retry(delay=int(report.retry_in * 1000))

    deliver_actor = dramatiq.actor(
        broker=broker,
        actor_name="deliver",
        queue_name=queue_name,
        # The database counts attempts, expiry and settles the row; the broker's cap is only a backstop for
        # crashes, so a deliberate Retry (provider said "later", circuit open) never counts against it.
        retry_when=lambda retries, exc: isinstance(exc, dramatiq.Retry) or retries < cfg.max_attempts + 3,
        min_backoff=int(cfg.min_backoff_seconds * 1000),
        max_backoff=int(cfg.max_backoff_seconds * 1000),
        time_limit=cfg.time_limit_seconds * 1000,
        on_retry_exhausted="give_up",
    )(_deliver)

    def _deliver_batch(notification_ids: list[int]) -> None:
        """Deliver a chunk (campaign fan-out, relayed rows) in one broker message.

        A notification that must wait gets its own ``deliver`` message with the delay, so one slow target
        never holds up the rest. A provider rate limit pauses the whole remainder instead: pushing on would
        only meet the same limit. An unexpected error on one row is that row's retry, not the batch's.
        """
        reports = deliver_many(deps, notification_ids)
        for index, report in enumerate(reports):
            if report.error is not None:
                log.error(
                    "deliver_batch.row_failed",
                    notification_id=report.notification_id,
                    error=type(report.error).__name__,
                )
            if report.retry_in is None:
                continue
            delay = int(report.retry_in * 1000)
            if report.throttled:
                # Every row after this one was decided but, rate limited, may be waiting too: re-run them together.
                rest = [r.notification_id for r in reports[index:] if r.state is State.RETRYING]
                batch_actor.send_with_options(args=(rest,), delay=delay)
                log.info("deliver_batch.throttled", remaining=len(rest), delay_ms=delay)
                return
            deliver_actor.send_with_options(args=(report.notification_id,), delay=delay)

    batch_actor = dramatiq.actor(
        broker=broker,
        actor_name="deliver_batch",
        queue_name=queue_name,
        # Rows are settled by ``deliver``; a batch that keeps crashing is left to the relay, which re-queues
        # every row whose broker message is gone.
        max_retries=3,
        min_backoff=int(cfg.min_backoff_seconds * 1000),
        max_backoff=int(cfg.max_backoff_seconds * 1000),
        time_limit=cfg.time_limit_seconds * 1000 * 10,
    )(_deliver_batch)
    return Actors(deliver=deliver_actor, deliver_batch=batch_actor, give_up=give_up_actor)
