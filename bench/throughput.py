"""Throughput and trigger-to-sink latency: N care-team notices, one per broker message, through the full path
(the API's ``app.submit`` in a producer process of its own, PostgreSQL outbox, Redis broker, `carenotify worker`
processes, send-time policy, the in-app HTTP adapter) to a local sink, against a bare dramatiq actor that only
POSTs to the same kind of sink (``bench.bare_actor``: the same processes x threads, each process a
``dramatiq.Worker`` with carenotify's 250 ms idle poll cap), its messages sent by the same kind of producer process.
Same machine, same run.

Two phases per side:

1. capacity: the producer sends N as fast as it can; msg/s = N / (last arrival - first trigger).
2. latency at half load: the producer paced to 50% of the carenotify capacity just measured, for ``--seconds``
   (the same offered load for the bare actor): p50/p99 trigger-to-sink latency. The issue's goal: p99 <= 250 ms.

Each phase prints CPU ms per notice (the whole machine from /proc/stat, split into PostgreSQL, Redis, the worker
processes, the producer and the sink from /proc/<pid>/stat) and, for carenotify, PostgreSQL transactions per notice
(``pg_stat_database`` of the scratch database, producer and workers together). Then round trips per submit and
per delivery, counted on the wire in this process (``bench.roundtrips``) around a few ``app.submit`` and
``worker.delivery.deliver`` calls on the same database, the in-app adapter pointed at a sink.

The sink runs in this process, which does nothing else during a window (it polls the sink's count every 50 ms):
its CPU is reported as ``sink``.

    .venv/bin/python -m bench.throughput [--n 2000] [--threads 4] [--processes 2] [--seconds 20] [--rounds 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
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
    bare_env,
    bare_worker_processes,
    carenotify_workers,
    flush_stamps,
    forget_namespace,
    percentile,
    quiet_machine,
    scratch_database,
    transactions,
    wait_for,
)
from bench.producer import Produced, Producer, notice_key, producer
from bench.roundtrips import counting_round_trips
from bench.sink import Sink
from worker.bootstrap import build_app
from worker.categories import Category, Channel
from worker.clock import SystemClock
from worker.delivery import deliver
from worker.settings import load_settings
from worker.states import State

#: Longest wait without a new arrival before a phase is reported as stuck.
STALL_SECONDS = 60.0
GOAL_P99_MS = 250.0


@dataclass
class Phase:
    name: str
    n: int
    produced: Produced
    arrivals: dict[str, float]
    duplicates: int
    cpu: CpuAccount
    #: PostgreSQL transactions in the window (carenotify only).
    transactions: int | None = None

    @property
    def latencies(self) -> list[float]:
        return sorted(self.arrivals[k] - t for k, t in self.produced.triggers.items() if k in self.arrivals)

    @property
    def delivered(self) -> int:
        return sum(1 for k in self.produced.triggers if k in self.arrivals)

    @property
    def elapsed(self) -> float:
        return max(self.arrivals.values(), default=self.produced.started) - self.produced.started

    @property
    def rate(self) -> float:
        return self.delivered / self.elapsed if self.elapsed > 0 else float("nan")

    def p(self, q: float) -> float:
        """Latency percentile, ms."""
        return percentile(self.latencies, q) * 1000

    def report(self) -> None:
        lat = self.latencies
        median = statistics.median(lat) * 1000 if lat else float("nan")
        print(
            f"{self.name:>22}: {self.delivered}/{self.n} in {self.elapsed:6.2f} s = {self.rate:7.1f} msg/s "
            f"(producer sent {self.produced.rate:,.0f}/s); latency p50 {median:,.0f} ms, p99 {self.p(0.99):,.0f} ms, "
            f"max {self.p(1.0):,.0f} ms; {self.duplicates} duplicates"
            + (f", {self.produced.errors} producer errors" if self.produced.errors else "")
        )
        for line in self.cpu.lines(" " * 24):
            print(line)
        if self.transactions is not None:
            print(
                f"{'':>24}PostgreSQL: {self.transactions / self.n:.2f} transactions per notice "
                f"({self.transactions} in pg_stat_database, producer and workers)"
            )


def _window(name: str, sink: Sink, n: int, prod: Producer) -> tuple[cpu.Usage, Produced]:
    """Go, and wait for the sink to have all ``n``: the machine's and every process's CPU over that window."""
    before = cpu.Snapshot.take()
    prod.go()
    if not wait_for(sink, n, timeout=1800, stall=STALL_SECONDS):
        print(f"{name}: only {len(sink.arrivals)} of {n} reached the sink (stalled {STALL_SECONDS:.0f} s)")
    after = cpu.Snapshot.take()
    return cpu.Usage(before, after), prod.result()


def carenotify_phase(
    name: str, args: argparse.Namespace, pg_url: str, namespace: str, n: int, *, prefix: str, rate: float | None
) -> Phase:
    with (
        Sink() as sink,
        carenotify_workers(pg_url, namespace, sink, threads=args.threads, processes=args.processes) as procs,
    ):
        with producer("carenotify", n=n, namespace=namespace, db=pg_url, prefix=prefix, rate=rate) as prod:
            before = transactions(pg_url)
            workers = {"workers": {p.pid for p in procs}}
            usage, produced = _window(name, sink, n, prod)
        arrivals, duplicates = dict(sink.arrivals), sink.duplicates()
    used = transactions(pg_url) - before  # the workers' connections are closed: every count is in
    account_ = account(usage, n, pg_url=pg_url, workers=workers, producer=prod.pid)
    return Phase(name, n, produced, arrivals, duplicates, account_, used)


def bare_phase(
    name: str, args: argparse.Namespace, namespace: str, n: int, *, prefix: str, rate: float | None
) -> Phase:
    with (
        Sink() as sink,
        bare_worker_processes(namespace, sink, threads=args.threads, processes=args.processes) as procs,
    ):
        pids = {p.pid for p in procs}
        env = bare_env(namespace, sink)
        with producer("bare", n=n, namespace=namespace, prefix=prefix, rate=rate, env=env) as prod:
            workers = {"workers": pids}
            usage, produced = _window(name, sink, n, prod)
        arrivals, duplicates = dict(sink.arrivals), sink.duplicates()
    account_ = account(usage, n, pg_url=None, workers=workers, producer=prod.pid)
    return Phase(name, n, produced, arrivals, duplicates, account_)


def round_trips(pg_url: str, namespace: str, k: int = 20) -> tuple[RoundTripCounts, RoundTripCounts]:
    """PostgreSQL round trips per ``app.submit`` and per ``deliver`` (the in-app adapter to a sink), counted on the
    wire over ``k`` care-team notices in this process (no worker running: the broker messages are left unread),
    after a warm-up on the same connections, as a long-running process sees them (psycopg prepares a statement on
    a connection's 6th use of it: one extra round trip, once per connection and statement). Background writes
    (the submit's queued-stamp, flushed every 200 ms for every row since) land on whichever call is running: the
    median is the call's own path, the mean includes them."""
    warm = 8
    with Sink() as sink:
        settings = load_settings(
            database_url=pg_url,
            broker="redis",
            redis_url=REDIS,
            redis_namespace=namespace,
            providers={"inapp": ["inapp"]},
            provider={"inapp_url": sink.url, "rate_limits_per_second": {"inapp": 0}},
            inapp_api_token="bench",
            log_level="WARNING",
        )
        app = build_app(settings, clock=SystemClock())
        try:
            with app.engine.begin() as conn:
                patients = list(
                    conn.execute(
                        text(
                            "INSERT INTO patient (external_ref, time_zone, locale, created_at, updated_at) "
                            "SELECT 'probe-' || g, 'UTC', 'en', now(), now() FROM generate_series(1, :n) g "
                            "RETURNING id"
                        ),
                        {"n": k + warm},
                    ).scalars()
                )

            def submit(i: int) -> int:
                return app.submit(
                    patient_id=patients[i],
                    category=Category.CARE_TEAM_MESSAGE,
                    idempotency_key=notice_key("probe-", i),
                    channels=[Channel.INAPP],
                    context={"message_ref": f"probe-{i}"},
                ).notification_id

            with counting_round_trips(app.engine) as trips:
                for i in range(warm):
                    deliver(app.deps, submit(i))
                flush_stamps(app)
                trips.since_mark()
                ids, submits = [], []
                for i in range(warm, warm + k):
                    ids.append(submit(i))
                    submits.append(trips.since_mark())
                flush_stamps(app)  # what the background stamping of those rows costs, counted with the submits
                submits[-1] += trips.since_mark()
                states, deliveries = [], []
                for nid in ids:
                    states.append(deliver(app.deps, nid).state)
                    deliveries.append(trips.since_mark())
            if any(state is not State.SENT for state in states):
                print(f"round trips: not every probe was sent: {states}")
            return RoundTripCounts(submits), RoundTripCounts(deliveries)
        finally:
            app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the half-load latency phase")
    parser.add_argument("--load", type=float, default=0.5, help="the latency phase's share of the capacity")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="capacity pairs (carenotify, then bare) to run back to back; the median ratio is reported (this "
        "machine's speed drifts by tens of percent within minutes: one pair can land on either side of it)",
    )
    parser.add_argument(
        "--wait-quiet", type=float, default=120.0, help="seconds to wait for other load to drop below 25%% first"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    share = quiet_machine(timeout=args.wait_quiet)
    print(
        f"{args.processes} processes x {args.threads} threads each side; sink in the bench process; "
        f"{os.cpu_count()} cores, {share:.0%} busy before the run (other sessions' load)"
    )
    try:
        with scratch_database() as pg_url:
            pairs: list[tuple[Phase, Phase]] = []
            for r in range(1, args.rounds + 1):
                ours = carenotify_phase(
                    "carenotify capacity", args, pg_url, f"{namespace}-c1r{r}", args.n, prefix=f"cap{r}-", rate=None
                )
                ours.report()
                base = bare_phase("bare capacity", args, f"{namespace}-b1r{r}", args.n, prefix=f"bare{r}-", rate=None)
                base.report()
                print(f"round {r}: ratio carenotify / bare actor throughput = {ours.rate / base.rate:.2f}")
                pairs.append((ours, base))
            ours, base = sorted(pairs, key=lambda pair: pair[0].rate / pair[1].rate)[len(pairs) // 2]  # the median
            ratio = ours.rate / base.rate
            ratios = ", ".join(f"{o.rate / b.rate:.2f}" for o, b in pairs)
            print(
                f"ratio carenotify / bare actor throughput = {ratio:.2f}"
                + (f" (median of {ratios})" if args.rounds > 1 else "")
            )

            rate = ours.rate * args.load
            paced_n = max(50, round(rate * args.seconds))
            print(f"latency at {args.load:.0%} of carenotify's capacity: {rate:.1f} msg/s for ~{args.seconds:.0f} s")
            ours_paced = carenotify_phase(
                "carenotify paced", args, pg_url, f"{namespace}-c2", paced_n, prefix="paced-", rate=rate
            )
            ours_paced.report()
            base_paced = bare_phase("bare paced", args, f"{namespace}-b2", paced_n, prefix="bare-paced-", rate=rate)
            base_paced.report()
            p99 = ours_paced.p(0.99)
            verdict = "meets" if p99 <= GOAL_P99_MS else "misses"
            print(
                f"p99 at {args.load:.0%} load: carenotify {p99:,.0f} ms ({verdict} the {GOAL_P99_MS:.0f} ms goal) "
                f"vs bare {base_paced.p(0.99):,.0f} ms"
            )

            per_submit, per_delivery = round_trips(pg_url, f"{namespace}-probe")
            print(
                f"round trips (counted on the wire, in-process, warm connections): per submit {per_submit}; "
                f"per delivery {per_delivery}"
            )
            tx = (ours.transactions or 0) / ours.n
            print(
                f"SUMMARY | throughput, {args.n} care-team notices one per message, trigger (own producer process) "
                f"to sink, {args.processes}x{args.threads} | carenotify {ours.rate:,.1f} msg/s vs bare "
                f"{base.rate:,.1f} msg/s: **{ratio:.2f}x**"
                + (f" (median of {args.rounds} pairs: {ratios})" if args.rounds > 1 else "")
                + f"; CPU {ours.cpu.machine_ms():.1f} vs "
                f"{base.cpu.machine_ms():.1f} ms/notice (machine; CPU-bound ceilings {ours.cpu.ceiling():,.0f} vs "
                f"{base.cpu.ceiling():,.0f}/s); {tx:.1f} PG transactions/notice, round trips "
                f"{per_submit.median:g} submit + {per_delivery.median:g} delivery; at {args.load:.0%} load "
                f"({rate:,.0f} msg/s) p99 {p99:,.0f} ms vs bare {base_paced.p(0.99):,.0f} ms (goal <= "
                f"{GOAL_P99_MS:.0f} ms) | `.venv/bin/python -m bench.throughput --n {args.n}"
                + (f" --rounds {args.rounds}" if args.rounds > 1 else "")
                + "` |"
            )
    finally:
        forget_namespace(namespace)


if __name__ == "__main__":
    main()
