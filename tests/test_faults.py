"""Fault injection with real processes on loopback, on the PRODUCTION settings (``CARENOTIFY_ENV=production``, only
connection and provider facts overridden): the scenarios of ``bench/faults.py`` at a small scale, each asserting
its goal. ``python -m bench.faults`` runs the same scenarios at the issue's scale and prints the figures.

Every test prints its figures (lost, duplicates, recovery seconds, broker messages per row, and the details).
"""

from __future__ import annotations

import shutil

import pytest

from bench.faults import (
    Figures,
    KillScale,
    PgScale,
    RedisScale,
    RelayScale,
    SigtermScale,
    SlowScale,
    StormScale,
    kill_9,
    pg_terminate,
    provider_storm,
    redis_restart,
    relay_race,
    sigterm,
    slow_provider,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
THREADS = 8  # production worker_threads: the sends one killed worker can have in flight


def _report(figures: Figures) -> None:
    print("\n" + figures.summary())


def test_kill_9_a_worker_mid_run(pg_url: str, redis_namespace: str) -> None:
    """kill -9 of an 8-thread worker while notices arrive at 40/s; the other worker and the scheduler live on."""
    scale = KillScale(notifications=300, rate_per_s=40, threads=THREADS, patience_s=20, linger_s=2)
    figures = kill_9(scale, pg_url=pg_url, namespace=redis_namespace)
    _report(figures)
    assert figures.recovery_s is not None and figures.recovery_s <= 10, "every orphan at the provider <= 10 s"
    assert figures.lost == 0
    assert figures.duplicates <= THREADS, "at most the sends in flight at the kill"


def test_sigterm_a_worker_mid_run(pg_url: str, redis_namespace: str) -> None:
    """A deploy: SIGTERM to a worker mid-run. Its sends in flight finish, it exits 0, nothing is lost or doubled."""
    scale = SigtermScale(notifications=300, rate_per_s=40, threads=THREADS, patience_s=20, linger_s=2)
    figures = sigterm(scale, pg_url=pg_url, namespace=redis_namespace)
    _report(figures)
    assert figures.details["exit code"] == 0
    assert figures.details["in flight at the signal, still 'sending' after it exited"] == 0, "it settled its sends"
    assert figures.lost == 0
    assert figures.duplicates == 0


def test_healthy_slow_provider_gets_each_notice_once(pg_url: str, redis_namespace: str) -> None:
    """Every call answered 201 after 10 s: nothing failed, so nothing is sent twice."""
    scale = SlowScale(notifications=16, provider_delay_s=10, patience_s=32, linger_s=1)
    figures = slow_provider(scale, pg_url=pg_url, namespace=redis_namespace)
    _report(figures)
    assert figures.duplicates == 0, "no extra sends"
    assert figures.lost == 0 and figures.states == {"sent": scale.notifications}


def test_two_schedulers_relay_every_due_row_on_time(pg_url: str, redis_namespace: str) -> None:
    """Two scheduler processes; 200 rows due over 20 s: each at the provider <= 5 s after its not_before."""
    scale = RelayScale(rows=200, spread_s=20, schedulers=2, patience_s=20, linger_s=1)
    figures = relay_race(scale, pg_url=pg_url, namespace=redis_namespace)
    _report(figures)
    assert figures.details["held back (never arrived)"] == 0, "none held back"
    assert figures.recovery_s is not None and figures.recovery_s <= 5, "max lag after not_before <= 5 s"
    assert figures.duplicates == 0


@pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None, reason="needs redis-server, redis-cli"
)
def test_redis_restart_with_a_queue_loses_nothing(pg_url: str) -> None:
    """A private Redis (nothing on disk) restarted with ~400 messages queued; workers and scheduler stay up."""
    scale = RedisScale(queued=400, slow_provider_s=2, down_s=1, patience_s=30, linger_s=1)
    figures = redis_restart(scale, pg_url=pg_url)
    _report(figures)
    assert figures.details["queue length at the kill"] >= scale.queued // 2, "Redis died with a queue"
    assert figures.recovery_s is not None and figures.recovery_s <= 30, "all sent <= 30 s after Redis is back"
    assert figures.lost == 0
    assert figures.broker_msgs_per_row is not None and figures.broker_msgs_per_row <= 1.1


def test_provider_503_and_429_with_retry_after_then_healthy(pg_url: str, redis_namespace: str) -> None:
    """503 and 429 with Retry-After: 2 for 12 s, then healthy: all sent <= 5 s after, each exactly once."""
    scale = StormScale(notifications=100, storm_s=12, statuses=(503, 429), retry_after="2", patience_s=20, linger_s=1)
    figures = provider_storm(scale, pg_url=pg_url, namespace=redis_namespace)
    _report(figures)
    assert figures.recovery_s is not None and figures.recovery_s <= 5, "all sent <= 5 s after the provider recovers"
    assert figures.lost == 0 and figures.states == {"sent": scale.notifications}
    assert figures.duplicates == 0, "each exactly once"


def test_database_connections_terminated_five_times(pg_url: str, redis_namespace: str) -> None:
    """pg_terminate_backend on every connection to the database, 5 times while 400 notices go out."""
    scale = PgScale(notifications=400, rate_per_s=50, terminations=5, patience_s=40, linger_s=1)
    figures = pg_terminate(scale, pg_url=pg_url, namespace=redis_namespace)
    _report(figures)
    assert figures.duplicates == 0
    assert figures.lost == 0, "every notice at the provider and every row terminal"
