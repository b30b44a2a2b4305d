"""CPU per care-team delivery, measured steadily: one thread in this process calls ``worker.delivery.deliver`` on
N submitted notices, one after another (the in-app adapter posting to a sink in a process of its own), and reports
this thread's CPU (the worker-side Python, ``time.thread_time``) and the CPU of the PostgreSQL backends serving
this database (from /proc), per delivery, with the round trips counted on the wire.

Nothing here contends for a core with itself, so the figures move little when other work loads the machine (a
loaded machine still stretches every CPU millisecond somewhat: compare figures taken in the same run). What
:mod:`bench.throughput` adds on top of these is dramatiq's own work per message (which the bare actor pays too),
the producer and the sink.

    .venv/bin/python -m bench.hotpath [--n 1000] [--profile FILE.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import structlog
from sqlalchemy import text

from bench import cpu
from bench.harness import REDIS, database_name, flush_stamps, forget_namespace, scratch_database
from bench.producer import notice_key
from bench.roundtrips import counting_round_trips
from worker.bootstrap import App, build_app
from worker.categories import Category, Channel
from worker.clock import SystemClock
from worker.delivery import deliver
from worker.settings import load_settings
from worker.states import State


@dataclass(frozen=True)
class Figures:
    n: int
    python_ms: float
    postgres_ms: float
    wall_ms: float
    round_trips: float

    def line(self, label: str) -> str:
        return (
            f"{label}: {self.n} deliveries; CPU per delivery: worker Python {self.python_ms:.2f} ms + PostgreSQL "
            f"{self.postgres_ms:.2f} ms = {self.python_ms + self.postgres_ms:.2f} ms; {self.round_trips:.2f} round "
            f"trips; wall {self.wall_ms:.2f} ms"
        )


def backends_of(database: str) -> Callable[[cpu.Proc], bool]:
    """Only the backends connected to ``database``, not the server's shared background processes (WAL writer,
    checkpointer: other sessions' databases keep those busy too)."""

    def member(proc: cpu.Proc) -> bool:
        if not proc.args.startswith("postgres:"):
            return False
        title = proc.args.removeprefix("postgres:").split()
        return database in title and any("(" in part or part == "[local]" for part in title)

    return member


@contextmanager
def sink_process() -> Iterator[str]:
    """A sink in its own process (its CPU is not this thread's); yields its URL."""
    code = (
        "import sys\n"
        "from bench.sink import Sink\n"
        "with Sink() as s:\n"
        "    print(s.url, flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def _app(pg_url: str, namespace: str, sink_url: str) -> App:
    settings = load_settings(
        database_url=pg_url,
        broker="redis",
        redis_url=REDIS,
        redis_namespace=namespace,
        providers={"inapp": ["inapp"]},
        provider={"inapp_url": sink_url, "rate_limits_per_second": {"inapp": 0}},
        inapp_api_token="bench",
        log_level="WARNING",
    )
    return build_app(settings, clock=SystemClock())


def _submitted(app: App, n: int, prefix: str) -> list[int]:
    with app.engine.begin() as conn:
        patients = list(
            conn.execute(
                text(
                    "INSERT INTO patient (external_ref, time_zone, locale, created_at, updated_at) "
                    "SELECT :prefix || g, 'UTC', 'en', now(), now() FROM generate_series(1, :n) g RETURNING id"
                ),
                {"n": n, "prefix": prefix},
            ).scalars()
        )
    ids = [
        app.submit(
            patient_id=patient,
            category=Category.CARE_TEAM_MESSAGE,
            idempotency_key=notice_key(prefix, i),
            channels=[Channel.INAPP],
            context={"message_ref": f"{prefix}{i}"},
        ).notification_id
        for i, patient in enumerate(patients)
    ]
    flush_stamps(app)
    return ids


def measure(app: App, ids: list[int], database: str, profile: cProfile.Profile | None, *, warm: str) -> Figures:
    member = backends_of(database)
    with counting_round_trips(app.engine) as trips:
        for nid in _submitted(app, 20, warm):  # warm: connections open, statements prepared
            deliver(app.deps, nid)
        trips.since_mark()
        before, t0, w0 = cpu.Snapshot.take(), time.thread_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        states = [deliver(app.deps, nid).state for nid in ids]
        if profile is not None:
            profile.disable()
        python, wall = time.thread_time() - t0, time.perf_counter() - w0
        used = cpu.Usage(before, cpu.Snapshot.take())
        count = trips.since_mark()
    if any(state is not State.SENT for state in states):
        raise SystemExit(f"not every notice was sent: {sorted({str(s) for s in states})}")
    pg = used.group(member, reaped=False)
    n = len(ids)
    return Figures(n, python * 1000 / n, pg * 1000 / n, wall * 1000 / n, count / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (the best is reported too)")
    parser.add_argument("--profile", help="write a cProfile of the last round's deliveries to this file")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    namespace = f"bench-hot-{uuid.uuid4().hex[:8]}"
    print(f"{os.cpu_count()} cores; one delivering thread; sink in its own process")
    try:
        with scratch_database() as pg_url, sink_process() as sink_url:
            app = _app(pg_url, namespace, sink_url)
            try:
                results = []
                for r in range(args.rounds):
                    ids = _submitted(app, args.n, f"r{r}-")
                    last = r == args.rounds - 1
                    profile = cProfile.Profile() if (last and args.profile) else None
                    figures = measure(app, ids, database_name(pg_url), profile, warm=f"w{r}-")
                    print(figures.line(f"round {r + 1}"))
                    results.append(figures)
                    if profile is not None:
                        profile.dump_stats(args.profile)
                best = min(results, key=lambda f: f.python_ms + f.postgres_ms)
                print(
                    f"SUMMARY | best of {len(results)}: worker Python {best.python_ms:.2f} ms + PostgreSQL "
                    f"{best.postgres_ms:.2f} ms per delivery, {best.round_trips:.2f} round trips | "
                    f"`.venv/bin/python -m bench.hotpath --n {args.n}` |"
                )
            finally:
                app.close()
    finally:
        forget_namespace(namespace)


if __name__ == "__main__":
    main()
