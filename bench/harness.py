"""What the benchmarks share: a scratch PostgreSQL database, real `carenotify worker` processes and the bare
dramatiq baseline pointed at a loopback sink, and the wait for the sink to have seen everything; and what they
measure besides speed: CPU (:mod:`bench.cpu`) and PostgreSQL transactions (``pg_stat_database``)."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis
from sqlalchemy.engine import make_url

from bench import cpu
from bench.sink import Sink
from worker.db import make_engine
from worker.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("CARENOTIFY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("CARENOTIFY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
#: The share of the machine other processes may use in a measured window before a benchmark warns.
OTHERS_WARNING = 0.10
#: How long worker processes get to boot and start consuming before a benchmark gives up on them.
BOOT_TIMEOUT = 60.0


def _admin_url() -> str:
    return make_url(PG).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new, migrated PostgreSQL database for one measurement; dropped afterwards."""
    base = make_url(PG)
    name = f"carenotify_bench_{uuid.uuid4().hex[:8]}"
    admin = _admin_url()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_name(pg_url: str) -> str:
    return str(make_url(pg_url).database)


def forget_namespace(namespace: str) -> None:
    """Remove the Redis keys a run left under ``namespace``."""
    client = redis.Redis.from_url(REDIS)
    for key in client.scan_iter(f"{namespace}*"):
        client.delete(key)
    client.close()


def redis_port() -> int:
    return urlsplit(REDIS).port or 6379


# --- worker processes -----------------------------------------------------------------------------------------


def consuming(namespace: str, since: float) -> int:
    """How many dramatiq broker processes polled ``namespace`` since ``since`` (time.time()): every Redis broker
    command (a consumer's fetch too) stamps its process in ``<namespace>:__heartbeats__``."""
    client = redis.Redis.from_url(REDIS)
    try:
        return int(client.zcount(f"{namespace}:__heartbeats__", int(since * 1000), "+inf"))
    finally:
        client.close()


@contextmanager
def _processes(
    commands: list[list[str]], env: dict[str, str], *, namespace: str | None = None, consumers: int = 0
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``commands``; ready when ``consumers`` processes poll ``namespace`` (else after 3 s); SIGTERM at the end.

    Their standard error goes to a temporary file, shown if they fail to start.
    """
    logs = tempfile.TemporaryDirectory(prefix="carenotify-bench-")
    started = time.time()
    procs = []
    for i, cmd in enumerate(commands):
        with open(Path(logs.name) / f"{i}.log", "wb") as err:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err))
    try:
        if namespace is None or consumers <= 0:
            time.sleep(3)  # let them boot
        else:
            deadline = time.monotonic() + BOOT_TIMEOUT
            while consuming(namespace, started) < consumers:
                if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                    tails = "\n".join((Path(logs.name) / f"{i}.log").read_text()[-2000:] for i in range(len(procs)))
                    raise RuntimeError(f"workers did not start consuming {namespace!r}:\n{tails}")
                time.sleep(0.1)
            time.sleep(0.3)  # every consumer thread of each process polling, not only the first
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        logs.cleanup()


def provider_env(sink: Sink, channel: str = "inapp") -> dict[str, str]:
    """Worker settings pointing one channel's adapter at ``sink``, with no rate limit of ours in the way.

    ``inapp`` (also the stand-in for push: no push adapter speaks to the sink) or ``email`` (the SendGrid adapter
    on the sink's ``/v3/mail/send``, marketing unsubscribe links signed, an unsubscribe group like the baseline's).
    """
    if channel == "email":
        return {
            "CARENOTIFY_PROVIDERS": '{"email": ["sendgrid"]}',
            "CARENOTIFY_PROVIDER__SENDGRID_BASE_URL": sink.base_url,
            "CARENOTIFY_PROVIDER__SENDGRID_FROM_EMAIL": "care@partum.example",
            "CARENOTIFY_PROVIDER__SENDGRID_UNSUBSCRIBE_GROUP_ID": "1",
            "CARENOTIFY_PROVIDER__RATE_LIMITS_PER_SECOND": '{"sendgrid": 0}',
            "CARENOTIFY_SENDGRID_API_KEY": "bench",
            "CARENOTIFY_SIGNING_KEY": "bench-signing-key-0123456789abcdef",
        }
    return {
        "CARENOTIFY_PROVIDERS": '{"inapp": ["inapp"]}',
        "CARENOTIFY_PROVIDER__INAPP_URL": sink.url,
        "CARENOTIFY_PROVIDER__RATE_LIMITS_PER_SECOND": '{"inapp": 0}',
        "CARENOTIFY_INAPP_API_TOKEN": "bench",
    }


@contextmanager
def carenotify_workers(
    pg_url: str,
    namespace: str,
    sink: Sink,
    *,
    threads: int,
    processes: int = 2,
    extra_env: dict[str, str] | None = None,
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``processes`` `carenotify worker` processes on Redis and ``pg_url``, sending in-app notices to ``sink``
    (``extra_env`` overrides, e.g. :func:`provider_env` for email). Yields once every one is consuming."""
    env = {
        **os.environ,
        "CARENOTIFY_DATABASE_URL": pg_url,
        "CARENOTIFY_BROKER": "redis",
        "CARENOTIFY_REDIS_URL": REDIS,
        "CARENOTIFY_REDIS_NAMESPACE": namespace,
        **provider_env(sink),
        "CARENOTIFY_LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "worker.cli", "worker", "--threads", str(threads)]
    with _processes([command] * processes, env, namespace=namespace, consumers=processes) as procs:
        yield procs


def bare_env(namespace: str, sink: Sink) -> dict[str, str]:
    """What :mod:`bench.bare_actor` reads at import."""
    return {"BENCH_REDIS_URL": REDIS, "BENCH_NAMESPACE": namespace, "BENCH_SINK_URL": sink.url}


@contextmanager
def bare_worker_processes(
    namespace: str, sink: Sink, *, threads: int, processes: int = 2, cli: bool = False
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The baseline's worker processes, once every one consumes: ``processes`` x ``python -m bench.bare_actor``,
    each a ``dramatiq.Worker`` set up as `carenotify worker` sets up its own (threads, 250 ms idle poll cap); or,
    with ``cli``, the dramatiq CLI (its main process, whose children are the workers; 1,000 ms idle poll cap)."""
    env = {**os.environ, **bare_env(namespace, sink)}
    if cli:
        command = [
            *(sys.executable, "-m", "dramatiq", "bench.bare_actor"),
            *("--processes", str(processes), "--threads", str(threads)),
        ]
        commands = [command]
    else:
        commands = [[sys.executable, "-m", "bench.bare_actor", "--threads", str(threads)]] * processes
    with _processes(commands, env, namespace=namespace, consumers=processes) as procs:
        yield procs


@contextmanager
def bare_workers(namespace: str, sink: Sink, *, threads: int, processes: int = 2) -> Iterator[ModuleType]:
    """The baseline: ``bench.bare_actor`` in dramatiq processes; yields the module to send its messages."""
    os.environ.update(bare_env(namespace, sink))  # the module sets up its broker from these at import
    from bench import bare_actor

    with bare_worker_processes(namespace, sink, threads=threads, processes=processes, cli=True):
        yield bare_actor


def wait_for(sink: Sink, n: int, timeout: float = 1800, *, stall: float | None = None) -> bool:
    """Until the sink has seen ``n`` distinct keys (or the timeout, or ``stall`` seconds without a new one)."""
    deadline = time.monotonic() + timeout
    seen, moved = 0, time.monotonic()
    while len(sink.arrivals) < n and time.monotonic() < deadline:
        time.sleep(0.05)
        if len(sink.arrivals) != seen:
            seen, moved = len(sink.arrivals), time.monotonic()
        elif stall is not None and time.monotonic() - moved > stall:
            break
    return len(sink.arrivals) >= n


# --- measuring ------------------------------------------------------------------------------------------------


def transactions(pg_url: str, *, settle: float = 5.0) -> int:
    """``xact_commit + xact_rollback`` of ``pg_url``'s database in ``pg_stat_database``, read from the admin
    database (so the reading is not counted). Backends report their counts when they end, or at most every second
    while busy (PostgreSQL 15): close the connections first, and this waits until two readings agree."""
    name = database_name(pg_url)
    last, deadline = -1, time.monotonic() + settle
    while True:
        with psycopg.connect(_admin_url(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (name,)
            ).fetchone()
        value = int(row[0]) if row else 0
        if value == last or time.monotonic() > deadline:
            return value
        last = value
        time.sleep(0.3)


@dataclass
class CpuAccount:
    """Where the CPU went over one measured window, for ``n`` items (notices, recipients, submits)."""

    usage: cpu.Usage
    n: int
    #: Named groups of our processes: CPU seconds each.
    groups: dict[str, float] = field(default_factory=dict)
    #: Per process, CPU seconds (workers, producer).
    processes: dict[str, float] = field(default_factory=dict)

    def machine_ms(self) -> float:
        return cpu.ms(self.usage.machine_seconds(), self.n)

    def ours_ms(self) -> float:
        return cpu.ms(sum(self.groups.values()), self.n)

    def others_share(self) -> float:
        """The share of the machine (every core, the whole window) that none of our processes used."""
        capacity = self.usage.wall * (os.cpu_count() or 1)
        other = self.usage.machine_seconds() - sum(self.groups.values())
        return max(0.0, other / capacity) if capacity else 0.0

    def ceiling(self) -> float:
        """Items per second if our processes had every core to themselves: cores / (our CPU per item). Less
        sensitive to other sessions' load than the measured rate, a cross-check of it."""
        ours = self.ours_ms()
        return (os.cpu_count() or 1) * 1000 / ours if ours else float("nan")

    def lines(self, indent: str = "            ") -> list[str]:
        machine = self.usage.machine_seconds()
        other = machine - sum(self.groups.values())
        parts = ", ".join(f"{name} {cpu.ms(s, self.n):.2f}" for name, s in self.groups.items())
        out = [
            f"{indent}CPU ms per item: machine {self.machine_ms():.2f} ({self.usage.machine_share():.0%} of "
            f"{os.cpu_count()} cores busy over {self.usage.wall:.1f} s) = {parts}, "
            f"not ours/unaccounted {cpu.ms(other, self.n):.2f}; ours {self.ours_ms():.2f} ms = a CPU-bound ceiling "
            f"of {self.ceiling():,.0f}/s on {os.cpu_count()} cores"
        ]
        if self.processes:
            per = ", ".join(f"{name} {cpu.ms(s, self.n):.2f}" for name, s in self.processes.items())
            out.append(f"{indent}  per process: {per}")
        if self.others_share() > OTHERS_WARNING:
            out.append(
                f"{indent}WARNING: other processes used {self.others_share():.0%} of the machine in this window: "
                f"the measured rate and latency are skewed; run again on a quiet machine"
            )
        return out


def account(
    usage: cpu.Usage,
    n: int,
    *,
    pg_url: str | None,
    workers: dict[str, set[int]],
    producer: int | None = None,
    bench_label: str = "sink",
) -> CpuAccount:
    """Split ``usage`` into PostgreSQL (``pg_url``'s backends and the server's background processes), Redis, the
    worker processes (``workers``: label -> pids, each pid also listed alone), the producer process (its pid) and
    this process (the sink)."""
    groups: dict[str, float] = {}
    if pg_url is not None:
        groups["postgres"] = usage.group(cpu.postgres_of(database_name(pg_url)), reaped=False)
    groups["redis"] = usage.group(cpu.redis_on(redis_port()))
    per_process: dict[str, float] = {}
    for label, pids in workers.items():
        groups[label] = usage.of_pids(pids)
        for pid, seconds in usage.per_pid(pids).items():
            per_process[f"{label}[{pid}]"] = seconds
    if producer is not None:
        groups["producer"] = per_process[f"producer[{producer}]"] = usage.of_pids([producer])
    groups[bench_label] = usage.of_pids([os.getpid()])
    return CpuAccount(usage, n, groups, per_process)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (``q`` in 0..1)."""
    if not values:
        return float("nan")
    rank = max(1, min(len(values), int(-(-q * len(values) // 1))))
    return values[rank - 1]


def quiet_machine(threshold: float = 0.25, timeout: float = 120.0, sample: float = 2.0) -> float:
    """Wait (up to ``timeout``) until the machine's busy share over ``sample`` seconds is below ``threshold``: other
    sessions' work on the same cores skews every figure. Returns the last share seen (printed by the benchmarks)."""
    deadline = time.monotonic() + timeout
    while True:
        before = cpu.Snapshot.take()
        time.sleep(sample)
        share = cpu.Usage(before, cpu.Snapshot.take()).machine_share()
        if share < threshold or time.monotonic() > deadline:
            return share


@dataclass(frozen=True)
class RoundTripCounts:
    """PostgreSQL round trips of each of several calls (``bench.roundtrips``): the median is a call's own path;
    the mean also carries the background writes that landed while they ran."""

    per_call: list[int]

    @property
    def median(self) -> float:
        return float(statistics.median(self.per_call)) if self.per_call else float("nan")

    @property
    def mean(self) -> float:
        return sum(self.per_call) / len(self.per_call) if self.per_call else float("nan")

    def __str__(self) -> str:
        return f"{self.median:g} (median; mean {self.mean:.2f} over {len(self.per_call)} calls)"


def flush_stamps(app: Any) -> None:
    """Write now what the app stamps in the background (submitted rows marked queued), if it does."""
    stamps = getattr(app, "stamps", None)
    if stamps is not None:
        stamps.flush()
