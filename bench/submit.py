"""Submit alone: how many triggers per second the API's service function (``app.submit``: the outbox row and its
creation event in one statement, then the ``deliver`` message on Redis) takes from one producer process, no worker
running, against the bare baseline: the same producer process sending ``bench.bare_actor.post`` messages (Redis
only). Same machine, same run. The issue's goal: >= 2,000 submits/s. One run per ``--producer-threads`` count
(default 1 and 8: one request at a time, and an API process's thread pool serving several at once).

Also, with ``--lookup`` (on by default; ``--no-lookup`` to skip), ``app.submit`` preceded by the patient lookup
the ``POST /v1/care-team-messages`` route does (``patient_id_for``). Each run prints CPU ms per submit (the whole
machine, and PostgreSQL, Redis and the producer from /proc) and PostgreSQL transactions per submit
(``pg_stat_database``); then round trips per submit (and per lookup), counted on the wire in this process
(``bench.roundtrips``) after a warm-up, as a pooled connection of a long-running service sees them.

    .venv/bin/python -m bench.submit [--n 5000] [--producer-threads 1 8] [--no-lookup]
"""

from __future__ import annotations

import argparse
import logging
import os
import uuid
from dataclasses import dataclass

import structlog
from sqlalchemy import text

from bench import cpu
from bench.harness import (
    REDIS,
    CpuAccount,
    RoundTripCounts,
    account,
    flush_stamps,
    forget_namespace,
    quiet_machine,
    scratch_database,
    transactions,
)
from bench.producer import Produced, notice_key, producer
from bench.roundtrips import counting_round_trips
from worker.bootstrap import build_app
from worker.categories import Category, Channel
from worker.clock import SystemClock
from worker.patients import patient_id_for
from worker.settings import load_settings

GOAL = 2000.0


@dataclass
class Run:
    name: str
    produced: Produced
    cpu: CpuAccount
    transactions: int | None

    def report(self) -> None:
        p = self.produced
        print(
            f"{self.name:>24}: {p.sent} in {p.ended - p.started:6.2f} s = {p.rate:8,.0f}/s"
            + (f" ({p.errors} errors)" if p.errors else "")
        )
        for line in self.cpu.lines(" " * 26):
            print(line)
        if self.transactions is not None:
            print(f"{'':>26}PostgreSQL: {self.transactions / max(p.sent, 1):.2f} transactions per submit")


def run(
    name: str, mode: str, n: int, namespace: str, pg_url: str | None, *, prefix: str, lookup: bool, threads: int
) -> Run:
    env = {"BENCH_REDIS_URL": REDIS, "BENCH_NAMESPACE": namespace, "BENCH_SINK_URL": "http://127.0.0.1:9/unused"}
    with producer(
        mode, n=n, namespace=namespace, db=pg_url, prefix=prefix, lookup=lookup, threads=threads, env=env
    ) as prod:
        before_tx = transactions(pg_url) if pg_url else None
        before = cpu.Snapshot.take()
        prod.go()
        produced = prod.result()
        usage = cpu.Usage(before, cpu.Snapshot.take())
    used = transactions(pg_url) - before_tx if pg_url and before_tx is not None else None
    return Run(name, produced, account(usage, n, pg_url=pg_url, workers={}, producer=prod.pid), used)


def round_trips(pg_url: str, namespace: str, k: int = 20) -> tuple[RoundTripCounts, RoundTripCounts]:
    """Round trips per ``app.submit`` (with the background stamping of its rows, flushed after the last) and per
    ``patient_id_for``, after a warm-up (psycopg prepares a statement on a connection's 6th use of it: one extra
    round trip, once per connection)."""
    settings = load_settings(database_url=pg_url, broker="redis", redis_url=REDIS, redis_namespace=namespace)
    app = build_app(settings, clock=SystemClock())
    warm = 8
    try:
        with app.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO patient (external_ref, time_zone, locale, created_at, updated_at) "
                    "SELECT 'probe-' || g, 'UTC', 'en', now(), now() FROM generate_series(0, :n - 1) g"
                ),
                {"n": k + warm},
            )

        def submit(i: int, patient_id: int) -> None:
            app.submit(
                patient_id=patient_id,
                category=Category.CARE_TEAM_MESSAGE,
                idempotency_key=notice_key("probe-", i),
                channels=[Channel.INAPP],
                context={"message_ref": f"probe-{i}"},
            )

        with counting_round_trips(app.engine) as trips:
            for i in range(warm):
                submit(i, patient_id_for(app.engine, f"probe-{i}"))
            flush_stamps(app)
            lookups, submits = [], []
            trips.since_mark()
            for i in range(warm, warm + k):
                patient_id = patient_id_for(app.engine, f"probe-{i}")
                lookups.append(trips.since_mark())
                submit(i, patient_id)
                submits.append(trips.since_mark())
            flush_stamps(app)
            submits[-1] += trips.since_mark()
        return RoundTripCounts(submits), RoundTripCounts(lookups)
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument(
        "--producer-threads",
        type=int,
        nargs="+",
        default=[1, 8],
        help="sending threads in the producer process, one run each (an API process serves from a thread pool)",
    )
    parser.add_argument("--lookup", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--wait-quiet", type=float, default=120.0, help="seconds to wait for other load to drop below 25%% first"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    share = quiet_machine(timeout=args.wait_quiet)
    print(f"one producer process; {os.cpu_count()} cores, {share:.0%} busy before the run (others' load)")
    results: list[tuple[int, Run, Run, Run | None]] = []
    try:
        with scratch_database() as pg_url:
            for threads in args.producer_threads:
                print(f"producer threads: {threads}")
                tag = f"t{threads}"
                base = run(
                    "bare actor .send",
                    "bare",
                    args.n,
                    f"{namespace}-b{tag}",
                    None,
                    prefix=f"bare-{tag}-",
                    lookup=False,
                    threads=threads,
                )
                base.report()
                ours = run(
                    "app.submit",
                    "carenotify",
                    args.n,
                    f"{namespace}-c{tag}",
                    pg_url,
                    prefix=f"s-{tag}-",
                    lookup=False,
                    threads=threads,
                )
                ours.report()
                routed = None
                if args.lookup:
                    routed = run(
                        "lookup + app.submit",
                        "carenotify",
                        args.n,
                        f"{namespace}-l{tag}",
                        pg_url,
                        prefix=f"l-{tag}-",
                        lookup=True,
                        threads=threads,
                    )
                    routed.report()
                ratio = ours.produced.rate / base.produced.rate
                verdict = "meets" if ours.produced.rate >= GOAL else "misses"
                print(f"ratio app.submit / bare send = {ratio:.2f}; {verdict} the goal of {GOAL:,.0f}/s")
                results.append((threads, base, ours, routed))
            per_submit, per_lookup = round_trips(pg_url, f"{namespace}-probe")
            print(
                f"round trips (counted on the wire, warm connection): per submit {per_submit}; per lookup {per_lookup}"
            )
            parts = []
            for threads, base, ours, routed in results:
                extra = f", {routed.produced.rate:,.0f}/s with the route's patient lookup" if routed else ""
                parts.append(
                    f"{threads} thread{'s' if threads > 1 else ''}: app.submit {ours.produced.rate:,.0f}/s vs bare "
                    f"send {base.produced.rate:,.0f}/s = **{ours.produced.rate / base.produced.rate:.2f}x**{extra}"
                    f" (CPU {ours.cpu.machine_ms():.2f} vs {base.cpu.machine_ms():.2f} ms/submit)"
                )
            tx = results[0][2].transactions or 0
            print(
                f"SUMMARY | submit alone, {args.n} care-team notices from one producer process (no workers; Redis "
                f"broker) | {'; '.join(parts)}; goal >= {GOAL:,.0f}/s; {tx / args.n:.2f} PG transactions and "
                f"{per_submit.median:g} round trip per submit | `.venv/bin/python -m bench.submit --n {args.n}` |"
            )
    finally:
        forget_namespace(namespace)


if __name__ == "__main__":
    main()
