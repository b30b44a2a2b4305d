"""Campaign fan-out: recipients/s for a marketing campaign to N patients (default 20,000; the issue's scale is
100,000 via ``--recipients``) through the full path (the scheduler's set-based fan-out in PostgreSQL, here in the
bench process; ``deliver_batch`` messages on Redis; `carenotify worker` processes deciding every recipient at send
time; a provider adapter) to a local sink, against a bare dramatiq actor that only POSTs the same number of
recipients, in the same chunks, to the same kind of sink. Same machine, same run, the same processes x threads (the
baseline's processes are ``dramatiq.Worker`` s set up as carenotify's) and the same sink latency on both sides.

- ``--channel push``: every patient has a live device; the in-app adapter stands in for push (no push adapter
  speaks to the sink yet), so the campaign goes on the ``inapp`` channel, one POST per recipient; the baseline
  POSTs one in-app body per recipient (``bare_actor.post_batch``).
- ``--channel email``: every patient has an email address; the SendGrid adapter on the sink's ``/v3/mail/send``
  (with signed unsubscribe links, as marketing needs); the baseline sends one SendGrid single send per recipient
  (``bare_actor.post_emails``).
- ``--sink-latency-ms``: the sink answers every request after that delay (a provider's latency).

Each side prints CPU ms per recipient (the whole machine from /proc/stat, split into PostgreSQL, Redis, the worker
processes and the bench process, which runs the fan-out and the sink) and, for carenotify, PostgreSQL transactions
per recipient (``pg_stat_database``). Then round trips, counted on the wire in this process (``bench.roundtrips``):
the fan-out and one ``deliver_many`` batch of a 50-recipient campaign on the same database.

    .venv/bin/python -m bench.fanout [--recipients 20000] [--channel push|email] [--sink-latency-ms 0]
                                     [--threads 4] [--processes 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import func, select, text
from sqlmodel import col

from bench import cpu
from bench.harness import (
    REDIS,
    CpuAccount,
    account,
    bare_env,
    bare_worker_processes,
    carenotify_workers,
    forget_namespace,
    provider_env,
    quiet_machine,
    scratch_database,
    transactions,
    wait_for,
)
from bench.roundtrips import counting_round_trips
from bench.sink import Sink
from worker.bootstrap import App, build_app
from worker.campaigns import create_campaign, launch_campaign, launch_due
from worker.clock import SystemClock
from worker.db import make_engine, session_scope
from worker.models import Notification
from worker.quiet_hours import MARKETING_WINDOW, next_allowed_instant
from worker.settings import load_settings
from worker.states import State

CHUNK = 50  # recipients per broker message, ours (delivery.batch_size) and the baseline's
STALL_SECONDS = 120.0
SIGNING_KEY = "bench-signing-key-0123456789abcdef"
PROBE = 50  # recipients of the round-trip probe campaign (one deliver_batch)
PROBE_STATE = "WY"
OPEN = {"pending", "sending", "retrying", "deferred"}  # the probe's patients, told apart by the audience filter
ZONES = [
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "Pacific/Honolulu",
    "Europe/London",
    "Asia/Tokyo",
    "Australia/Sydney",
]


def daytime_zone() -> str:
    """A zone where it is now inside the marketing window for the next hour, so nobody is held for the morning."""
    now = datetime.now(UTC)
    for name in ZONES:
        zone = ZoneInfo(name)
        local = now.astimezone(zone)
        if next_allowed_instant(now, zone, *MARKETING_WINDOW) == now and local.hour < MARKETING_WINDOW[1].hour - 1:
            return name
    raise SystemExit("no zone in daytime right now; add one to ZONES")


def campaign_channel(channel: str) -> str:
    """The campaign's channel: push goes on ``inapp`` (the in-app adapter standing in for push)."""
    return "email" if channel == "email" else "inapp"


def add_patients(pg_url: str, n: int, zone: str, *, prefix: str, us_state: str | None = None) -> None:
    """``n`` patients, set-based: each with an email address and one live Android device."""
    engine = make_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patient (external_ref, time_zone, locale, email, us_state, created_at, updated_at) "
                "SELECT :prefix || g, :zone, 'en', :prefix || g || '@example.org', :state, now(), now() "
                "FROM generate_series(1, :n) g"
            ),
            {"n": n, "zone": zone, "prefix": prefix, "state": us_state},
        )
        conn.execute(
            text(
                "INSERT INTO device (patient_id, platform, token, live, created_at, last_seen_at) "
                "SELECT id, 'android', 'tok-' || id, true, now(), now() FROM patient "
                "WHERE external_ref LIKE :prefix || '%'"
            ),
            {"prefix": prefix},
        )
    engine.dispose()


def scheduler_settings(pg_url: str, namespace: str, sink: Sink | None, channel: str) -> Any:
    """This process's app: the scheduler's fan-out (and, with a ``sink``, delivery for the round-trip probe)."""
    overrides: dict[str, Any] = {
        "database_url": pg_url,
        "broker": "redis",
        "redis_url": REDIS,
        "redis_namespace": namespace,
        "log_level": "WARNING",
        "delivery": {"batch_size": CHUNK},
        "providers": {campaign_channel(channel): ["console"]},
    }
    if sink is not None and channel == "email":
        overrides["providers"] = {"email": ["sendgrid"]}
        overrides["provider"] = {
            "sendgrid_base_url": sink.base_url,
            "sendgrid_from_email": "care@partum.example",
            "sendgrid_unsubscribe_group_id": 1,
            "rate_limits_per_second": {"sendgrid": 0},
        }
        overrides["sendgrid_api_key"] = "bench"
        overrides["signing_key"] = SIGNING_KEY
    elif sink is not None:
        overrides["providers"] = {"inapp": ["inapp"]}
        overrides["provider"] = {"inapp_url": sink.url, "rate_limits_per_second": {"inapp": 0}}
        overrides["inapp_api_token"] = "bench"
    return load_settings(**overrides)


@dataclass
class Side:
    name: str
    n: int
    arrivals: int
    elapsed: float
    duplicates: int
    requests: dict[str, int]
    cpu: CpuAccount
    transactions: int | None = None

    @property
    def rate(self) -> float:
        return self.arrivals / self.elapsed if self.elapsed > 0 else float("nan")

    def report(self) -> None:
        shapes = ", ".join(f"{count} {shape}" for shape, count in sorted(self.requests.items()))
        print(
            f"{self.name:>10}: {self.arrivals}/{self.n} recipients in {self.elapsed:6.1f} s = {self.rate:7.1f} "
            f"recipients/s; {self.duplicates} duplicates; requests: {shapes}"
        )
        for line in self.cpu.lines(" " * 12):
            print(line)
        if self.transactions is not None:
            print(f"{'':>12}PostgreSQL: {self.transactions / self.n:.2f} transactions per recipient")


def full_path(args: argparse.Namespace, pg_url: str, namespace: str) -> Side:
    n, channel = args.recipients, args.channel
    with Sink(delay=args.sink_latency_ms / 1000) as sink:
        env = {**provider_env(sink, campaign_channel(channel)), "CARENOTIFY_DELIVERY__BATCH_SIZE": str(CHUNK)}
        with carenotify_workers(
            pg_url, namespace, sink, threads=args.threads, processes=args.processes, extra_env=env
        ) as procs:
            app = build_app(scheduler_settings(pg_url, namespace, None, channel), clock=SystemClock())
            try:
                cid = create_campaign(
                    app.engine,
                    app.clock,
                    name="bench",
                    template="news",
                    channels=[campaign_channel(channel)],
                    created_by="bench",
                )
                app.engine.dispose()  # its backend ends and reports its transactions before the window
                tx_before = transactions(pg_url)
                before = cpu.Snapshot.take()
                started = time.time()
                launch_campaign(app.engine, app.clock, app.settings.campaigns, cid)
                created = app.launch_campaigns()  # the scheduler's job: fan-out, chunk by chunk, queued as it goes
                fanned = time.time() - started
                print(
                    f"{'fan-out':>10}: {created} notifications created and queued in {fanned:.1f} s "
                    f"= {created / fanned:,.0f} recipients/s (set-based SQL, {app.settings.campaigns.chunk_size} "
                    f"per chunk, while delivery ran)"
                )
                if not wait_for(sink, n, stall=STALL_SECONDS):
                    print(f"carenotify: only {len(sink.arrivals)} of {n} reached the sink (stalled)")
                usage = cpu.Usage(before, cpu.Snapshot.take())
                states = _settled_states(app)
            finally:
                app.close()
        elapsed = max(sink.arrivals.values(), default=started) - started
        side = Side(
            "carenotify",
            n,
            len(sink.arrivals),
            elapsed,
            sink.duplicates(),
            dict(sink.requests),
            account(usage, n, pg_url=pg_url, workers={"workers": {p.pid for p in procs}}, bench_label="fan-out+sink"),
        )
    side.transactions = transactions(pg_url) - tx_before
    side.report()
    print(f"{'':>12}notification states: {states}")
    return side


def _settled_states(app: App, timeout: float = 30.0) -> dict[str, int]:
    """Notifications per state once none is still open (the last batches settle after their sends), or after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(app.engine) as session:
            rows = session.execute(select(col(Notification.state), func.count()).group_by(col(Notification.state)))
            states = {str(state): int(count) for state, count in rows}
        if not set(states) & OPEN or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def bare(args: argparse.Namespace, namespace: str) -> Side:
    n = args.recipients
    with Sink(delay=args.sink_latency_ms / 1000) as sink:
        os.environ.update(bare_env(namespace, sink))  # bench.bare_actor sets up its broker from these at import
        from bench import bare_actor

        with bare_worker_processes(namespace, sink, threads=args.threads, processes=args.processes) as procs:
            pids = {p.pid for p in procs}
            actor = bare_actor.post_emails if args.channel == "email" else bare_actor.post_batch
            keys = [f"bare-{i}" for i in range(n)]
            before = cpu.Snapshot.take()
            started = time.time()
            for start in range(0, n, CHUNK):
                actor.send(keys[start : start + CHUNK])
            if not wait_for(sink, n, stall=STALL_SECONDS):
                print(f"baseline: only {len(sink.arrivals)} of {n} reached the sink (stalled)")
            usage = cpu.Usage(before, cpu.Snapshot.take())
        elapsed = max(sink.arrivals.values(), default=started) - started
        side = Side(
            "baseline",
            n,
            len(sink.arrivals),
            elapsed,
            sink.duplicates(),
            dict(sink.requests),
            account(usage, n, pg_url=None, workers={"workers": pids}, bench_label="sink"),
        )
    side.report()
    return side


def round_trips(args: argparse.Namespace, pg_url: str, namespace: str, zone: str) -> tuple[float, float, int]:
    """Round trips per fan-out chunk (the launch and the scheduler's scan included) and per recipient of one
    ``deliver_many`` batch, for a campaign to :data:`PROBE` new patients (an audience of their own), counted on the
    wire in this process; and how many chunks the fan-out took (it walks every patient by id, ``chunk_size`` at a
    time, whatever the audience)."""
    from worker.delivery import deliver_many

    add_patients(pg_url, PROBE, zone, prefix="probe-", us_state=PROBE_STATE)
    with Sink() as sink:
        app = build_app(scheduler_settings(pg_url, namespace, sink, args.channel), clock=SystemClock())
        try:
            cid = create_campaign(
                app.engine,
                app.clock,
                name="probe",
                template="news",
                channels=[campaign_channel(args.channel)],
                audience={"us_states": [PROBE_STATE]},
                created_by="bench",
            )
            with counting_round_trips(app.engine) as trips:
                trips.since_mark()
                launch_campaign(app.engine, app.clock, app.settings.campaigns, cid)
                done = launch_due(app.engine, app.clock, app.enqueue_many, app.settings.campaigns)  # the scheduler's
                fan_out = trips.since_mark()
                created, chunks = sum(p.created for p in done), sum(p.chunks for p in done)
                with session_scope(app.engine) as session:
                    ids = [
                        int(i)
                        for i in session.scalars(
                            select(col(Notification.id))
                            .where(col(Notification.campaign_id) == cid)
                            .order_by(col(Notification.id))
                        )
                    ]
                trips.since_mark()
                reports = deliver_many(app.deps, ids)
                delivery = trips.since_mark()
            sent = sum(1 for r in reports if r.state is State.SENT)
            if created != PROBE or sent != len(ids):
                print(f"round trips: probe created {created}, sent {sent} of {len(ids)} (expected {PROBE})")
            return fan_out / max(chunks, 1), delivery / max(len(ids), 1), chunks
        finally:
            app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--channel", choices=["push", "email"], default="push")
    parser.add_argument("--sink-latency-ms", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--wait-quiet", type=float, default=120.0, help="seconds to wait for other load to drop below 25%% first"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    stand_in = " (the in-app adapter standing in for push)" if args.channel == "push" else " (SendGrid adapter)"
    share = quiet_machine(timeout=args.wait_quiet)
    print(
        f"{args.recipients:,} recipients, {args.channel}{stand_in}, sink latency {args.sink_latency_ms:g} ms; "
        f"{args.processes} processes x {args.threads} threads each side; {os.cpu_count()} cores, {share:.0%} busy "
        f"before the run (others' load)"
    )
    try:
        with scratch_database() as pg_url:
            zone = daytime_zone()
            add_patients(pg_url, args.recipients, zone, prefix="bench-")
            ours = full_path(args, pg_url, f"{namespace}-c")
            baseline = bare(args, f"{namespace}-b")
            ratio = ours.rate / baseline.rate
            print(f"ratio carenotify / bare actor recipients/s = {ratio:.2f}")
            fan_out, delivery, chunks = round_trips(args, pg_url, f"{namespace}-probe", zone)
            print(
                f"round trips (counted on the wire, in-process, a {PROBE}-recipient campaign): fan-out "
                f"{fan_out:.1f} per chunk ({chunks} chunks: the fan-out walks all {args.recipients + PROBE:,} "
                f"patients by id, whatever the audience), delivery {delivery:.2f} per recipient (one deliver_many "
                f"batch of {PROBE})"
            )
            tx = (ours.transactions or 0) / ours.n
            print(
                f"SUMMARY | campaign fan-out, {args.recipients:,} recipients, {args.channel}{stand_in}, sink latency "
                f"{args.sink_latency_ms:g} ms, {args.processes}x{args.threads} | carenotify {ours.rate:,.1f} "
                f"recipients/s vs bare {baseline.rate:,.1f}/s: **{ratio:.2f}x**; CPU {ours.cpu.machine_ms():.2f} vs "
                f"{baseline.cpu.machine_ms():.2f} ms/recipient (machine; CPU-bound ceilings "
                f"{ours.cpu.ceiling():,.0f} vs {baseline.cpu.ceiling():,.0f}/s); {tx:.2f} PG transactions/recipient, "
                f"round trips {delivery:.2f} per recipient delivered + {fan_out:.0f} per fan-out chunk; "
                f"{ours.duplicates} duplicates "
                f"| `.venv/bin/python -m bench.fanout --recipients {args.recipients} --channel {args.channel} "
                f"--sink-latency-ms {args.sink_latency_ms:g}` |"
            )
    finally:
        forget_namespace(namespace)


if __name__ == "__main__":
    main()
