"""Fault injection with real processes on loopback, on the PRODUCTION settings.

Each scenario runs `carenotify worker` and `carenotify scheduler` processes (``python -m worker.cli``) with
``CARENOTIFY_ENV=production`` and only connection and provider facts overridden (database, Redis, namespace, the
in-app adapter pointed at a local sink, console elsewhere, log level): never a delivery, outbox or breaker timing.
It submits care-team notices to the in-app channel (one request each at the sink), injects one fault, and
measures:

- lost: notices that never reached the sink, or whose row is not terminal, when we stopped waiting;
- duplicates: requests the sink took beyond the first for one idempotency key;
- recovery seconds: from the fault (or from its end) to the last affected notice at the sink (see each scenario);
- broker messages per row: ``deliver``/``deliver_batch`` messages enqueued on the main queue (``deliveries``, not
  its delay queue), counted on Redis's MONITOR stream, per notification row.

    .venv/bin/python -m bench.faults                 # every scenario at the issue's scale, then a markdown table
    .venv/bin/python -m bench.faults --only kill_9   # one (see --list)
    .venv/bin/python -m bench.faults --max-wait 60   # cap how long a scenario waits for recovery

A scenario stops waiting as soon as every notice is at the sink and every row is terminal, or when its patience
runs out: then the stragglers count as lost and the recovery is reported as not reached. Process output (JSON logs
at WARNING) is kept in a temporary directory named in the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bench.harness import REDIS, scratch_database
from bench.sink import Sink

ROOT = Path(__file__).resolve().parents[1]
QUEUE = "deliveries"  # settings.toml queue_name (not overridden)
PROVIDERS = '{"inapp": ["inapp"], "push": ["console"], "sms": ["console"], "email": ["console"]}'
TERMINAL_STATES = ("sent", "delivered", "suppressed", "failed", "expired", "cancelled")


# --------------------------------------------------------------------------------------------------- figures


@dataclass
class Figures:
    """What one scenario measured. ``recovery_s`` is ``None`` when it does not apply or was not reached (then
    ``details["recovered"]`` is False); ``misses`` lists the goals not met (empty: every goal met)."""

    scenario: str
    fault: str
    rows: int
    lost: int
    duplicates: int
    recovery_s: float | None
    broker_msgs_per_row: float | None
    states: dict[str, int]
    goal: str
    misses: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"[{self.scenario}] {self.fault}",
            f"  rows {self.rows}, lost {self.lost}, duplicates {self.duplicates}, "
            f"recovery {_fmt_recovery(self)}, broker msgs/row {_fmt(self.broker_msgs_per_row, 3)}",
            f"  states {dict(sorted(self.states.items()))}",
        ]
        lines += [f"  {key}: {value}" for key, value in self.details.items()]
        lines.append(f"  goal: {self.goal}")
        lines.append("  goal met" if not self.misses else "  MISSED: " + "; ".join(self.misses))
        return "\n".join(lines)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_recovery(fig: Figures) -> str:
    if fig.recovery_s is not None:
        return f"{fig.recovery_s:.1f} s"
    if fig.details.get("recovered") is False:
        return f"not within {fig.details.get('waited_s', '?')} s"
    return "n/a"


def markdown_table(figures: list[Figures]) -> str:
    head = "| scenario | fault | rows | lost | duplicates | recovery s | broker msgs/row | goal | result |"
    rows = [head, "|" + "---|" * 9]
    for f in figures:
        result = "met" if not f.misses else "**missed**: " + "; ".join(f.misses)
        rows.append(
            f"| {f.scenario} | {f.fault} | {f.rows} | {f.lost} | {f.duplicates} | {_fmt_recovery(f)} | "
            f"{_fmt(f.broker_msgs_per_row, 3)} | {f.goal} | {result} |"
        )
    return "\n".join(rows)


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)]


# --------------------------------------------------------------------------------------------------- pieces


def production_env(pg_url: str, redis_url: str, namespace: str, sink_url: str) -> dict[str, str]:
    """The processes' environment: production settings, only connection and provider facts overridden.

    Every other ``CARENOTIFY_*`` variable of this process is dropped, so nothing tuned leaks in.
    """
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CARENOTIFY_")}
    env.update(
        {
            "CARENOTIFY_ENV": "production",
            "CARENOTIFY_DATABASE_URL": pg_url,
            "CARENOTIFY_REDIS_URL": redis_url,
            "CARENOTIFY_REDIS_NAMESPACE": namespace,
            "CARENOTIFY_PROVIDERS": PROVIDERS,
            "CARENOTIFY_PROVIDER__INAPP_URL": sink_url,
            "CARENOTIFY_INAPP_API_TOKEN": "fault-injection",
            "CARENOTIFY_CONSOLE_SINK": os.devnull,
            "CARENOTIFY_LOG_LEVEL": "WARNING",
        }
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a fixed port that keeps nothing on disk: a restart forgets everything."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        """Start and wait until it answers; returns the time.time() it did."""
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    return time.time()
                except redis.ConnectionError:
                    time.sleep(0.025)
        finally:
            client.close()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> float:
        """SIGKILL (no shutdown save); returns the time.time() it was gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return time.time()


@contextmanager
def private_redis(port: int, workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(port, workdir)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class Processes:
    """The processes one scenario starts; each logs to its own file. All are stopped on close: SIGTERM, then
    SIGKILL after ``grace`` seconds."""

    def __init__(self, env: dict[str, str], log_dir: Path, *, grace: float = 15.0) -> None:
        self.env = env
        self.log_dir = log_dir
        self.grace = grace
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", *args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def close(self) -> None:
        alive = [p for p in self.procs.values() if p.poll() is None]
        for proc in alive:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for proc in alive:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def errors_logged(self) -> dict[str, int]:
        """Lines at level error (or a traceback) per process log."""
        counts: dict[str, int] = {}
        for name in self.procs:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
            n = sum(1 for line in text.splitlines() if _is_error(line))
            if n:
                counts[name] = n
        return counts


def _is_error(line: str) -> bool:
    """A JSON log line at error level or above, a stdlib one (dramatiq's), or a traceback."""
    return (
        '"level": "error"' in line
        or '"level": "critical"' in line
        or line.startswith(("ERROR ", "CRITICAL ", "Traceback"))
    )


_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _unescape(token: str) -> str:
    return token.encode("latin-1", "backslashreplace").decode("unicode_escape")


@dataclass(frozen=True)
class Enqueued:
    at: float
    queue: str
    actor: str
    ids: tuple[int, ...]


class EnqueueCounter:
    """Every message enqueued under one namespace, read from Redis's MONITOR stream (``redis-cli monitor`` in a
    subprocess, written to a file and parsed at the end, so the counting costs this process nothing).

    A message is dramatiq's ``dispatch`` script run with command ``enqueue``; its queue is the script's third
    argument and its body (actor, args) the last. Counted once per Redis message id, so an EVALSHA repeated after
    ``NOSCRIPT`` (a fresh Redis has no scripts loaded) is one message.
    """

    def __init__(self, redis_url: str, namespace: str, path: Path) -> None:
        self.redis_url = redis_url
        self.namespace = namespace
        self.path = path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EnqueueCounter:
        # Only this namespace's commands are kept (a shared Redis carries other runs' traffic too), and "OK".
        script = 'redis-cli -u "$1" monitor | grep --line-buffered -F -e "$2" -e OK'
        with self.path.open("wb") as out:
            self._proc = subprocess.Popen(
                ["sh", "-c", script, "sh", self.redis_url, self.namespace],
                stdout=out,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # "OK" once MONITOR is on
            if self.path.stat().st_size > 0 or self._proc.poll() is not None:
                break
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def messages(self, queue: str = QUEUE) -> list[Enqueued]:
        seen: set[str] = set()
        found: list[Enqueued] = []
        with self.path.open("r", encoding="latin-1") as fh:
            for line in fh:
                if '"enqueue"' not in line or self.namespace not in line:
                    continue
                tokens = [_unescape(t) for t in _TOKEN.findall(line)]
                # EVALSHA sha 1 <namespace> enqueue <ts> <queue> <broker> <hb> <ttl> <maint> <unpack> <id> <body>
                if len(tokens) < 14 or tokens[0].upper() not in ("EVALSHA", "EVAL") or tokens[3] != self.namespace:
                    continue
                if tokens[4] != "enqueue" or tokens[6] != queue or tokens[-2] in seen:
                    continue
                seen.add(tokens[-2])
                try:
                    body = json.loads(tokens[-1])
                except ValueError:
                    continue
                args = body.get("args") or []
                actor = str(body.get("actor_name"))
                ids: tuple[int, ...] = ()
                if actor == "deliver" and args:
                    ids = (int(args[0]),)
                elif actor == "deliver_batch" and args:
                    ids = tuple(int(i) for i in args[0])
                found.append(Enqueued(float(line.split(" ", 1)[0]), queue, actor, ids))
        return found


class Observer:
    """A PostgreSQL connection of our own, for reading states and for terminating everybody else's."""

    def __init__(self, pg_url: str) -> None:
        libpq = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.conn = psycopg.connect(libpq, autocommit=True)
        self.has_claimed_by = bool(
            self.conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_name = 'notification' AND column_name = %s",
                ("claimed_by",),
            ).fetchone()
        )

    def close(self) -> None:
        self.conn.close()

    def states(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self.conn.execute("SELECT state, count(*) FROM notification GROUP BY 1")}

    def state_of(self) -> dict[int, str]:
        return {int(i): str(s) for i, s in self.conn.execute("SELECT id, state FROM notification")}

    def rows(self, ids: list[int]) -> list[tuple[int, str, int, str | None]]:
        return [
            (int(i), str(s), int(n), r)
            for i, s, n, r in self.conn.execute(
                "SELECT id, state, attempt_count, reason FROM notification WHERE id = ANY(%s) ORDER BY id", (ids,)
            )
        ]

    def finished_at(self, ids: list[int]) -> dict[int, float]:
        """time.time() each terminal row of ``ids`` was settled."""
        return {
            int(i): f.timestamp()
            for i, s, f in self.conn.execute(
                "SELECT id, state, finished_at FROM notification WHERE id = ANY(%s)", (ids,)
            )
            if s in TERMINAL_STATES and f is not None
        }

    def settled_after(self, ids: list[int], since: float) -> float | None:
        """Seconds from ``since`` until the last of ``ids`` was terminal (``finished_at``); None if one is not."""
        rows = self.conn.execute("SELECT state, finished_at FROM notification WHERE id = ANY(%s)", (ids,)).fetchall()
        if any(state not in TERMINAL_STATES or finished is None for state, finished in rows):
            return None
        return max((max(0.0, finished.timestamp() - since) for _, finished in rows), default=0.0)

    def count_in(self, ids: list[int], state: str) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM notification WHERE id = ANY(%s) AND state = %s", (ids, state)
        ).fetchone()
        return int(row[0]) if row else 0

    def open_count(self) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM notification WHERE state <> ALL(%s)", (list(TERMINAL_STATES),)
        ).fetchone()
        return int(row[0]) if row else 0

    def sending(self) -> list[tuple[int, str | None]]:
        """Rows in state 'sending' now, with their holder when the schema records one."""
        column = "claimed_by" if self.has_claimed_by else "NULL"
        return [
            (int(i), h) for i, h in self.conn.execute(f"SELECT id, {column} FROM notification WHERE state = 'sending'")
        ]

    def terminate_others(self) -> int:
        """``pg_terminate_backend`` on every other connection to this database; returns how many."""
        rows = self.conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        return sum(1 for (ok,) in rows if ok)


def held_by(holder: str | None, pid: int) -> bool:
    """Does ``claimed_by`` ("<hostname>:<pid>:<hex>") name process ``pid``?"""
    if not holder:
        return False
    parts = holder.rsplit(":", 2)
    return len(parts) == 3 and parts[1] == str(pid)


class Producer:
    """Stands in for the API: creates notifications with ``app.submit`` (outbox row, then a broker message),
    care-team notices on the in-app channel only, spread over a few patients. A submit that meets a database
    error is repeated with the same idempotency key, as a client would."""

    def __init__(self, pg_url: str, redis_url: str, namespace: str, *, patients: int = 10) -> None:
        from worker.bootstrap import build_app
        from worker.clock import SystemClock
        from worker.patients import upsert_patient
        from worker.settings import load_settings

        settings = load_settings(
            database_url=pg_url,
            broker="redis",
            redis_url=redis_url,
            redis_namespace=namespace,
            providers={"inapp": ["console"]},
            log_level="WARNING",
        )
        self.app = build_app(settings, clock=SystemClock())
        self.prefix = f"fault-{uuid.uuid4().hex[:8]}"
        self.patients = [
            upsert_patient(self.app.engine, self.app.clock, external_ref=f"{self.prefix}-pt{i}", time_zone="UTC")
            for i in range(patients)
        ]
        self.keys: dict[int, str] = {}  # notification id -> the idempotency key the sink sees
        self.submitted_at: dict[int, float] = {}
        self.errors: list[str] = []
        self.retried = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.app.close()

    def submit(self, index: int, *, not_before: datetime | None = None) -> int:
        from worker.categories import Category, Channel

        key = f"{self.prefix}-{index}"
        for attempt in range(50):
            try:
                nid = self.app.submit(
                    patient_id=self.patients[index % len(self.patients)],
                    category=Category.CARE_TEAM_MESSAGE,
                    channels=[Channel.INAPP],
                    idempotency_key=key,
                    not_before=not_before,
                ).notification_id
                break
            except DBAPIError:
                if attempt == 49:
                    raise
                self.retried += 1
                time.sleep(0.1)
        self.keys[nid] = f"{key}:inapp"
        self.submitted_at[nid] = time.time()
        return nid

    def submit_all(self, count: int) -> list[int]:
        return [self.submit(i) for i in range(count)]

    def start(self, count: int, rate: float) -> None:
        """Submit ``count`` notices at ``rate`` per second from a thread."""

        def run() -> None:
            started = time.monotonic()
            try:
                for i in range(count):
                    wait = started + i / rate - time.monotonic()
                    if wait > 0 and self._stop.wait(wait):
                        return
                    self.submit(i)
            except Exception as exc:  # reported in the figures; the scenario goes on with what was submitted
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])

        self._thread = threading.Thread(target=run, name="producer", daemon=True)
        self._thread.start()

    @property
    def finished(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def wait_submitted(self, count: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while len(self.keys) < count and not self.finished and time.monotonic() < deadline:
            time.sleep(0.01)

    def join(self, timeout: float = 600) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class Run:
    """One scenario's world: database, namespace, sink, processes, observer, enqueue counter and producer."""

    def __init__(
        self, name: str, pg_url: str, redis_url: str, namespace: str, sink: Sink, log_dir: Path, grace: float
    ) -> None:
        self.name = name
        self.pg_url = pg_url
        self.redis_url = redis_url
        self.namespace = namespace
        self.sink = sink
        self.log_dir = log_dir
        self.procs = Processes(production_env(pg_url, redis_url, namespace, sink.url), log_dir, grace=grace)
        self.observer = Observer(pg_url)
        try:
            self.producer = Producer(pg_url, redis_url, namespace)
        except BaseException:
            self.observer.close()
            raise
        self.counter: EnqueueCounter | None = None
        self.started = time.time()

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def count_enqueues(self, redis_url: str | None = None, tag: str = "") -> EnqueueCounter:
        self.counter = EnqueueCounter(
            redis_url or self.redis_url, self.namespace, self.log_dir / f"monitor{tag}.txt"
        ).start()
        return self.counter

    def heartbeats(self) -> dict[str, float]:
        client = self.redis()
        try:
            return {
                str(m): float(s) for m, s in client.zrange(f"{self.namespace}:__heartbeats__", 0, -1, withscores=True)
            }
        finally:
            client.close()

    def start_scheduler(self, name: str = "scheduler") -> subprocess.Popen[bytes]:
        return self.procs.spawn(name, "scheduler")

    def start_workers(self, names: list[str], threads: int, timeout: float = 60) -> list[str]:
        """Start workers together; wait until each has fetched from Redis (its broker id heartbeats). Returns the
        broker ids that appeared (one per worker when nothing else touched Redis meanwhile)."""
        before = set(self.heartbeats())
        for name in names:
            self.procs.spawn(name, "worker", "--threads", str(threads))
        deadline = time.monotonic() + timeout
        new: set[str] = set()
        while time.monotonic() < deadline:
            new = set(self.heartbeats()) - before
            if len(new) >= len(names):
                break
            for name in names:
                if self.procs.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited at start; see {self.log_dir / (name + '.log')}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"workers {names} did not start within {timeout} s; see {self.log_dir}")
        return sorted(new)

    def wait_done(self, deadline: float, *, poll: float = 0.25) -> bool:
        """Until every submitted notice is at the sink and every row terminal (True), or ``deadline`` (False)."""
        while True:
            if self.producer.finished:
                keys = list(self.producer.keys.values())
                if all(k in self.sink.arrivals for k in keys) and self.observer.open_count() == 0:
                    return True
            if time.time() >= deadline:
                return False
            time.sleep(poll)

    def outcome(self) -> tuple[dict[str, int], int, int, dict[str, Any]]:
        """(states, lost, duplicates, details) over the notices this run submitted."""
        states = self.observer.states()
        state_of = self.observer.state_of()
        keys = self.producer.keys
        not_arrived = {nid for nid, key in keys.items() if key not in self.sink.arrivals}
        not_terminal = {nid for nid in keys if state_of.get(nid) not in TERMINAL_STATES}
        duplicates = sum(self.sink.received[k] - 1 for k in keys.values() if self.sink.received[k] > 1)
        details: dict[str, Any] = {}
        if not_arrived:
            details["never arrived"] = len(not_arrived)
        if not_terminal:
            details["not terminal"] = len(not_terminal)
        if not_arrived | not_terminal:
            details["stragglers (id, state, attempts, reason)"] = self.observer.rows(
                sorted(not_arrived | not_terminal)[:4]
            )
        if duplicates:
            details["duplicated keys"] = sum(1 for k in keys.values() if self.sink.received[k] > 1)
        if self.producer.errors:
            details["producer errors"] = self.producer.errors[:3]
        return states, len(not_arrived | not_terminal), duplicates, details

    def msgs_per_row(self, rows: int, *, since: float | None = None) -> tuple[float | None, dict[str, Any]]:
        if self.counter is None or rows <= 0:
            return None, {}
        self.counter.stop()
        messages = [m for m in self.counter.messages() if since is None or m.at >= since]
        by_actor = Counter(m.actor for m in messages)
        copies = Counter(i for m in messages for i in m.ids)
        return len(messages) / rows, {
            "messages enqueued on the main queue": dict(by_actor),
            "row ids carried per row": round(sum(copies.values()) / rows, 3),
            "rows queued more than once": sum(1 for n in copies.values() if n > 1),
        }

    def finish(self, details: dict[str, Any]) -> None:
        errors = self.procs.errors_logged()
        if errors:
            details["errors logged"] = errors
        details["logs"] = str(self.log_dir)


@contextmanager
def run_context(
    name: str,
    *,
    pg_url: str | None = None,
    namespace: str | None = None,
    redis_url: str = REDIS,
    sink_delay: float = 0.0,
    grace: float = 15.0,
) -> Iterator[Run]:
    """Set up one scenario's world; tear everything down (processes first) whatever happens."""
    log_dir = Path(tempfile.mkdtemp(prefix=f"carenotify-faults-{name}-"))
    namespace = namespace or f"carenotify-faults-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        stack.enter_context(_quiet_structlog())  # the producer logs every submit at INFO
        url = pg_url or stack.enter_context(scratch_database())
        stack.callback(_forget_namespace, redis_url, namespace)
        sink = stack.enter_context(Sink(delay=sink_delay))
        run = Run(name, url, redis_url, namespace, sink, log_dir, grace)
        stack.callback(run.observer.close)
        stack.callback(run.producer.close)
        stack.callback(lambda: run.counter.stop() if run.counter else None)
        stack.callback(run.procs.close)
        yield run


@contextmanager
def _quiet_structlog() -> Iterator[None]:
    """structlog at WARNING in this process while a scenario runs; the caller's configuration afterwards."""
    import structlog

    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        yield
    finally:
        structlog.configure(**saved)


def _forget_namespace(redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{namespace}*"))
        if keys:
            client.delete(*keys)
    except redis.ConnectionError:
        pass  # a private server already gone
    finally:
        client.close()


def _victim_messages(run: Run, broker_id: str | None) -> tuple[dict[int, float], int]:
    """Rows named by the messages ``broker_id`` had fetched and not acknowledged (its ``__acks__`` sets), each
    with the time it is due (a delayed message's eta); and how many such messages."""
    if broker_id is None:
        return {}, 0
    client = run.redis()
    try:
        due: dict[int, float] = {}
        count = 0
        for queue in (QUEUE, f"{QUEUE}.DQ"):
            message_ids = sorted(client.smembers(f"{run.namespace}:__acks__.{broker_id}.{queue}"))
            count += len(message_ids)
            bodies = client.hmget(f"{run.namespace}:{queue}.msgs", message_ids) if message_ids else []
            for body in bodies:
                if body is None:
                    continue
                eta = float((json.loads(body).get("options") or {}).get("eta", 0)) / 1000
                for nid in _ids(body):
                    due[nid] = max(due.get(nid, 0.0), eta)
        return due, count
    finally:
        client.close()


def _acks_owners(run: Run) -> set[str]:
    client = run.redis()
    try:
        prefix = f"{run.namespace}:__acks__."
        return {key[len(prefix) :].split(".", 1)[0] for key in client.scan_iter(f"{prefix}*")}
    finally:
        client.close()


def _wait_holding(run: Run, broker_id: str | None, timeout: float = 5.0) -> str:
    """Until ``broker_id`` is mid-send: a message it fetched and has not acknowledged names a row in 'sending'
    (only the fetcher processes a message, so that row is its own). Settles for a fetched message after
    ``timeout``. Returns what it waited for ("mid-send", "fetched", "idle")."""
    if broker_id is None:
        return "idle"
    client = run.redis()
    found = "idle"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message_ids = list(client.smembers(f"{run.namespace}:__acks__.{broker_id}.{QUEUE}"))
            if message_ids:
                found = "fetched"
                ids = [nid for body in client.hmget(f"{run.namespace}:{QUEUE}.msgs", message_ids) for nid in _ids(body)]
                if ids and run.observer.count_in(ids, "sending"):
                    return "mid-send"
            time.sleep(0.002)
        return found
    finally:
        client.close()


def _ids(body: str | None) -> list[int]:
    """The notification ids a ``deliver`` / ``deliver_batch`` message body names."""
    if body is None:
        return []
    message = json.loads(body)
    args = message.get("args") or []
    if not args:
        return []
    return [int(i) for i in args[0]] if message.get("actor_name") == "deliver_batch" else [int(args[0])]


def _only(ids: list[str]) -> str | None:
    return ids[0] if len(ids) == 1 else None


def _orphan_recovery(run: Run, due: dict[int, float]) -> tuple[float | None, list[int]]:
    """When each orphan was taken care of, after the time it was due (the fault, or a delayed message's eta):
    its first accepted request at the sink from then on (a resend), or its row turning terminal (settled without
    one, e.g. its send was recorded before the fault), whichever came first. A send that reached the sink before
    the fault does not count: the row is still open. Returns the max over orphans, at least 0, and the orphans
    not taken care of when we stopped waiting (then the max is ``None``)."""
    keys = run.producer.keys
    finished = run.observer.finished_at(list(due))
    first_after: dict[str, float] = {}
    for call in list(run.sink.calls):
        if call.status < 300:
            for nid, t in due.items():
                if keys.get(nid) == call.key and call.at >= t and call.key not in first_after:
                    first_after[call.key] = call.at
    lags: list[float] = []
    missing: list[int] = []
    for nid, t in due.items():
        candidates = [x for x in (first_after.get(keys.get(nid, "")), finished.get(nid)) if x is not None]
        if not candidates or nid not in finished:  # never taken care of, or its row is still open
            missing.append(nid)
        else:
            lags.append(max(0.0, min(candidates) - t))
    if missing:
        return None, missing
    return max(lags, default=0.0), []


# --------------------------------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class KillScale:
    notifications: int = 2000
    rate_per_s: float = 40.0
    threads: int = 8
    kill_at: float = 0.4  # share of the notices submitted when the victim is killed
    provider_latency_s: float = 0.05
    patience_s: float = 420.0  # after the kill (production claim lease 300 s + relay interval)
    linger_s: float = 3.0


def kill_9(scale: KillScale = KillScale(), *, pg_url: str | None = None, namespace: str | None = None) -> Figures:
    """kill -9 of an 8-thread worker while notices arrive at a steady pace below capacity; a second worker and
    the scheduler survive. Orphans, identified from outside right after the kill: the rows 'sending' held by the
    victim (``claimed_by`` names its pid; every 'sending' row when the schema has no holder column) and the rows
    of the messages it had fetched and not acknowledged (its dramatiq ``__acks__`` sets in Redis). Recovery: the
    last orphan taken care of after the kill (see :func:`_orphan_recovery`)."""
    with run_context("kill_9", pg_url=pg_url, namespace=namespace, sink_delay=scale.provider_latency_s) as run:
        run.count_enqueues()
        run.start_scheduler()
        victim_broker = _only(run.start_workers(["victim"], scale.threads))
        run.start_workers(["survivor"], scale.threads)
        victim = run.procs.procs["victim"]
        run.producer.start(scale.notifications, scale.rate_per_s)
        run.producer.wait_submitted(int(scale.notifications * scale.kill_at))
        holding = _wait_holding(run, victim_broker)  # kill it mid-send, not in an idle instant

        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = time.time()
        sending = run.observer.sending()
        owners = _acks_owners(run)
        beats = run.heartbeats()
        if run.observer.has_claimed_by:
            held = {nid for nid, holder in sending if held_by(holder, victim.pid)}
        else:
            held = {nid for nid, _ in sending}
        fetched, fetched_messages = _victim_messages(run, victim_broker)
        time.sleep(2.0)
        later = run.heartbeats()
        silent = {b for b in beats if later.get(b) == beats[b]}
        if victim_broker is None and len(silent & owners) == 1:  # fall back on the heartbeat that stopped
            victim_broker = next(iter(silent & owners))
            fetched, fetched_messages = _victim_messages(run, victim_broker)

        recovered = run.wait_done(killed_at + scale.patience_s)
        run.producer.join()
        time.sleep(scale.linger_s)

        keys = run.producer.keys
        due = {nid: max(killed_at, fetched.get(nid, 0.0)) for nid in (held | set(fetched)) & set(keys)}
        recovery, missing = _orphan_recovery(run, due)
        states, lost, duplicates, details = run.outcome()
        per_row, msg_details = run.msgs_per_row(len(keys))
        details = {
            "victim at the kill": holding,
            "orphans": len(due),
            "orphan rows 'sending' held by the victim": len(held),
            "holder column": "claimed_by" if run.observer.has_claimed_by else "absent (every 'sending' row counted)",
            "orphan rows of its unacknowledged messages": len(fetched),
            "its unacknowledged messages": fetched_messages,
            "victim heartbeat stopped": victim_broker in silent if victim_broker else "victim broker id unknown",
            "orphans not taken care of": len(missing),
            "orphan rows terminal after s": _fmt(run.observer.settled_after(sorted(due), killed_at)).replace(
                "n/a", "not all terminal"
            ),
            "orphans at the sink before the kill": sum(
                1 for nid in due if run.sink.arrivals.get(keys[nid], math.inf) < killed_at
            ),
            "sends in flight bound (threads)": scale.threads,
            "recovered": recovered and not missing,
            "waited_s": round(time.time() - killed_at, 1),
            **details,
            **msg_details,
        }
        run.finish(details)
    misses = []
    if recovery is None:
        misses.append(f"{len(missing)} of {len(due)} orphans not taken care of {details['waited_s']} s after the kill")
    elif recovery > 10:
        misses.append(f"orphans taken care of {recovery:.1f} s after the kill (goal <= 10)")
    if lost:
        misses.append(f"{lost} lost")
    if duplicates > scale.threads:
        misses.append(f"{duplicates} duplicates > {scale.threads} sends in flight")
    return Figures(
        "kill_9",
        f"kill -9 of a {scale.threads}-thread worker mid-run ({scale.rate_per_s:g}/s)",
        len(keys),
        lost,
        duplicates,
        recovery,
        per_row,
        states,
        f"orphans at the provider <= 10 s after the kill; 0 lost; duplicates <= {scale.threads}",
        misses,
        details,
    )


@dataclass(frozen=True)
class SigtermScale:
    notifications: int = 2000
    rate_per_s: float = 40.0
    threads: int = 8
    stop_at: float = 0.4
    provider_latency_s: float = 0.05
    patience_s: float = 120.0
    linger_s: float = 3.0


def sigterm(
    scale: SigtermScale = SigtermScale(), *, pg_url: str | None = None, namespace: str | None = None
) -> Figures:
    """SIGTERM to a worker mid-run (a deploy): its sends in flight finish and are settled by it, what it had
    fetched goes back on the queue, it exits 0; nothing is lost or sent twice. Recovery: the last of the rows it
    held (in flight or fetched) taken care of after the signal (see :func:`_orphan_recovery`). Without a
    ``claimed_by`` column every row 'sending' at the signal counts as in flight: the survivor's have long been
    settled when the stopped worker exits."""
    with run_context("sigterm", pg_url=pg_url, namespace=namespace, sink_delay=scale.provider_latency_s) as run:
        run.count_enqueues()
        run.start_scheduler()
        victim_broker = _only(run.start_workers(["stopped"], scale.threads))
        run.start_workers(["survivor"], scale.threads)
        victim = run.procs.procs["stopped"]
        run.producer.start(scale.notifications, scale.rate_per_s)
        run.producer.wait_submitted(int(scale.notifications * scale.stop_at))
        holding = _wait_holding(run, victim_broker)

        fetched, fetched_messages = _victim_messages(run, victim_broker)
        sending = run.observer.sending()
        victim.send_signal(signal.SIGTERM)
        signalled_at = time.time()
        try:
            exit_code: int | None = victim.wait(timeout=60)
        except subprocess.TimeoutExpired:
            exit_code = None
        exited_after = time.time() - signalled_at
        state_of = run.observer.state_of()
        if run.observer.has_claimed_by:
            held = {nid for nid, holder in sending if held_by(holder, victim.pid)}
        else:
            held = {nid for nid, _ in sending}
        unsettled = sorted(nid for nid in held if state_of.get(nid) == "sending")
        left_unacked, _ = _victim_messages(run, victim_broker)

        recovered = run.wait_done(signalled_at + scale.patience_s)
        run.producer.join()
        time.sleep(scale.linger_s)

        keys = run.producer.keys
        due = {nid: max(signalled_at, fetched.get(nid, 0.0)) for nid in (held | set(fetched)) & set(keys)}
        recovery, missing = _orphan_recovery(run, due)
        states, lost, duplicates, details = run.outcome()
        per_row, msg_details = run.msgs_per_row(len(keys))
        holder_note = "" if run.observer.has_claimed_by else " (no holder column: every 'sending' row)"
        details = {
            "stopped worker at the signal": holding,
            "exit code": exit_code,
            "exited after s": round(exited_after, 1),
            f"rows in flight at the signal{holder_note}": len(held),
            "in flight at the signal, still 'sending' after it exited": len(unsettled),
            "its unacknowledged messages at the signal": fetched_messages,
            "left unacknowledged after it exited": len(left_unacked),
            "recovered": recovered and not missing,
            "waited_s": round(time.time() - signalled_at, 1),
            **details,
            **msg_details,
        }
        run.finish(details)
    misses = []
    if exit_code != 0:
        misses.append(f"exit code {exit_code}")
    if unsettled:
        misses.append(f"{len(unsettled)} in-flight rows left 'sending'")
    if lost:
        misses.append(f"{lost} lost")
    if duplicates:
        misses.append(f"{duplicates} duplicates")
    return Figures(
        "sigterm",
        f"SIGTERM to a {scale.threads}-thread worker mid-run",
        len(keys),
        lost,
        duplicates,
        recovery,
        per_row,
        states,
        "exits 0 with its sends finished; 0 lost; 0 duplicates",
        misses,
        details,
    )


@dataclass(frozen=True)
class SlowScale:
    notifications: int = 32
    workers: int = 2
    threads: int = 8
    provider_delay_s: float = 10.0
    patience_s: float = 300.0  # from the submit
    linger_s: float = 3.0


def slow_provider(
    scale: SlowScale = SlowScale(), *, pg_url: str | None = None, namespace: str | None = None
) -> Figures:
    """A healthy but slow provider: every call is answered (201) after ``provider_delay_s``. Nothing fails, so
    nothing should be sent twice."""
    with run_context(
        "slow_provider", pg_url=pg_url, namespace=namespace, sink_delay=scale.provider_delay_s, grace=30
    ) as run:
        run.count_enqueues()
        run.start_scheduler()
        run.start_workers([f"worker-{i}" for i in range(scale.workers)], scale.threads)
        started = time.time()
        run.producer.submit_all(scale.notifications)
        recovered = run.wait_done(started + scale.patience_s)
        finished = time.time() - started
        time.sleep(scale.linger_s)
        keys = run.producer.keys
        states, lost, duplicates, details = run.outcome()
        per_row, msg_details = run.msgs_per_row(len(keys))
        ours = set(keys.values())
        calls = [c for c in run.sink.calls if c.key in ours]
        details = {
            "provider delay s": scale.provider_delay_s,
            "calls at the sink": len(calls),
            "all sent after s" if recovered else "waited_s": round(finished, 1),
            "recovered": recovered,
            **details,
            **msg_details,
        }
        run.finish(details)
    misses = []
    if duplicates:
        misses.append(f"{duplicates} extra sends")
    if lost or states.get("sent", 0) != len(keys):
        misses.append(f"{lost} not sent")
    return Figures(
        "slow_provider",
        f"healthy provider answering after {scale.provider_delay_s:g} s",
        len(keys),
        lost,
        duplicates,
        None,
        per_row,
        states,
        "0 extra sends; all sent",
        misses,
        details,
    )


@dataclass(frozen=True)
class RelayScale:
    rows: int = 600
    spread_s: float = 60.0
    schedulers: int = 2
    workers: int = 2
    threads: int = 8
    lead_s: float | None = None  # first not_before this long after creation starts (default: from the row count)
    patience_s: float = 60.0  # after the last not_before
    linger_s: float = 2.0


def relay_race(scale: RelayScale = RelayScale(), *, pg_url: str | None = None, namespace: str | None = None) -> Figures:
    """Two scheduler processes at once; rows created ahead with ``not_before`` spread over ``spread_s``, workers
    running. Each row's lag: its first arrival at the sink minus its not_before. Recovery column: the max lag."""
    with run_context("relay_race", pg_url=pg_url, namespace=namespace) as run:
        run.count_enqueues()
        for i in range(scale.schedulers):
            run.start_scheduler(f"scheduler-{i + 1}")
        run.start_workers([f"worker-{i}" for i in range(scale.workers)], scale.threads)
        lead = scale.lead_s if scale.lead_s is not None else 3.0 + scale.rows * 0.015
        first_due = time.time() + lead
        due: dict[str, float] = {}
        late = 0
        for i in range(scale.rows):
            at = first_due + i * scale.spread_s / scale.rows
            late += time.time() >= at
            nid = run.producer.submit(i, not_before=datetime.fromtimestamp(at, UTC))
            due[run.producer.keys[nid]] = at
        last_due = max(due.values())
        recovered = run.wait_done(last_due + scale.patience_s)
        time.sleep(scale.linger_s)
        lags = [run.sink.arrivals[k] - t for k, t in due.items() if k in run.sink.arrivals]
        held_back = sum(1 for k in due if k not in run.sink.arrivals)
        max_lag = max(lags) if lags and not held_back else None
        p99 = _p99(lags)
        states, lost, duplicates, details = run.outcome()
        per_row, msg_details = run.msgs_per_row(len(due))
        details = {
            "schedulers": scale.schedulers,
            "max lag s": _fmt(max(lags) if lags else None, 2),
            "p99 lag s": _fmt(p99, 2),
            "median lag s": _fmt(sorted(lags)[len(lags) // 2] if lags else None, 2),
            "held back (never arrived)": held_back,
            "created after their not_before": late,
            "recovered": recovered,
            "waited_s": round(time.time() - first_due, 1),
            **details,
            **msg_details,
        }
        run.finish(details)
    misses = []
    if max_lag is None or max_lag > 5:
        misses.append(f"max lag {_fmt(max(lags) if lags else None)} s, p99 {_fmt(p99)} s (goal <= 5)")
    if held_back:
        misses.append(f"{held_back} held back")
    if duplicates:
        misses.append(f"{duplicates} duplicates")
    return Figures(
        "relay_race",
        f"{scale.schedulers} schedulers; {scale.rows} rows due over {scale.spread_s:g} s",
        len(due),
        lost,
        duplicates,
        max_lag,
        per_row,
        states,
        "every row at the provider <= 5 s after its not_before; none held back",
        misses,
        details,
    )


@dataclass(frozen=True)
class RedisScale:
    queued: int = 1000
    workers: int = 2
    threads: int = 8
    slow_provider_s: float = 2.0  # the provider's pace while the queue builds up (fast again at the restart)
    down_s: float = 2.0
    patience_s: float = 1000.0  # after Redis is back (production requeue_after 900 s + relay interval)
    linger_s: float = 3.0


def redis_restart(scale: RedisScale = RedisScale(), *, pg_url: str | None = None) -> Figures:
    """A private Redis (nothing on disk) is killed with ~``queued`` messages waiting and started again on the
    same port; workers and scheduler keep running. Recovery: from Redis answering again to the last notice at
    the sink. Broker messages per row: main-queue messages enqueued on the NEW Redis per row still to send."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise RuntimeError("needs the redis-server and redis-cli binaries")
    workdir = Path(tempfile.mkdtemp(prefix="carenotify-faults-redis-"))
    with ExitStack() as stack:
        server = stack.enter_context(private_redis(free_port(), workdir))
        run = stack.enter_context(
            run_context("redis_restart", pg_url=pg_url, redis_url=server.url, sink_delay=scale.slow_provider_s)
        )
        run.start_scheduler()
        run.start_workers([f"worker-{i}" for i in range(scale.workers)], scale.threads)
        run.producer.submit_all(scale.queued)
        client = run.redis()
        queue_length = int(client.llen(f"{run.namespace}:{QUEUE}"))
        client.close()
        sent_before = len(run.sink.arrivals)
        down_at = server.kill()
        run.sink.delay = 0.0
        time.sleep(scale.down_s)
        to_send = run.observer.open_count()
        up_at = server.start()
        run.count_enqueues(server.url, tag="-after-restart")
        recovered = run.wait_done(up_at + scale.patience_s)
        time.sleep(scale.linger_s)
        keys = run.producer.keys
        ours = set(keys.values())
        after = [t for k, t in run.sink.arrivals.items() if k in ours and t >= down_at]
        states, lost, duplicates, details = run.outcome()
        recovery = max(0.0, max(after) - up_at) if after and not lost else None
        counter = run.counter
        assert counter is not None
        counter.stop()
        messages = counter.messages()
        per_row = len(messages) / to_send if to_send else None
        copies = Counter(i for m in messages for i in m.ids)
        details = {
            "queue length at the kill": queue_length,
            "at the sink before the kill": sent_before,
            "rows still to send at the restart": to_send,
            "messages on the new Redis main queue": dict(Counter(m.actor for m in messages)),
            "row ids carried per row to send": round(sum(copies.values()) / to_send, 3) if to_send else None,
            "recovered": recovered,
            "waited_s": round(time.time() - up_at, 1),
            **details,
        }
        run.finish(details)
    shutil.rmtree(workdir, ignore_errors=True)
    misses = []
    if recovery is None or recovery > 30:
        misses.append(f"all sent {_fmt(recovery)} s after Redis is back (goal <= 30)")
    if per_row is None or per_row > 1.1:
        misses.append(f"{_fmt(per_row, 3)} broker messages per row (goal <= 1.1)")
    if lost:
        misses.append(f"{lost} lost")
    return Figures(
        "redis_restart",
        f"Redis restarted (nothing on disk) with {queue_length} messages queued",
        len(keys),
        lost,
        duplicates,
        recovery,
        per_row,
        states,
        "all sent <= 30 s after Redis is back; broker messages per row <= 1.1",
        misses,
        details,
    )


@dataclass(frozen=True)
class StormScale:
    notifications: int = 300
    workers: int = 2
    threads: int = 8
    storm_s: float = 20.0
    statuses: tuple[int, ...] = (503, 429)
    retry_after: str = "2"
    patience_s: float = 300.0  # after the provider recovers
    linger_s: float = 3.0


def provider_storm(
    scale: StormScale = StormScale(), *, pg_url: str | None = None, namespace: str | None = None
) -> Figures:
    """The provider answers 503 and 429 (in turn) with ``Retry-After: 2`` for ``storm_s``, then is healthy.
    Recovery: from the provider's recovery to the last notice's first arrival."""
    with run_context("provider_storm", pg_url=pg_url, namespace=namespace) as run:
        run.count_enqueues()
        run.start_scheduler()
        run.start_workers([f"worker-{i}" for i in range(scale.workers)], scale.threads)
        run.sink.fail_for(scale.storm_s, statuses=scale.statuses, retry_after=scale.retry_after)
        run.producer.submit_all(scale.notifications)
        recovered_at = run.sink.recovered_at or time.time()
        done = run.wait_done(recovered_at + scale.patience_s)
        time.sleep(scale.linger_s)
        keys = run.producer.keys
        states, lost, duplicates, details = run.outcome()
        arrived = [run.sink.arrivals[k] for k in keys.values() if k in run.sink.arrivals]
        recovery = max(0.0, max(arrived) - recovered_at) if arrived and not lost else None
        per_row, msg_details = run.msgs_per_row(len(keys))
        details = {
            "refused": dict(run.sink.refused_by_status),
            "sent during the storm": sum(1 for t in arrived if t < recovered_at),
            "recovered": done,
            "waited_s": round(time.time() - recovered_at, 1),
            **details,
            **msg_details,
        }
        run.finish(details)
    misses = []
    if recovery is None or recovery > 5:
        misses.append(f"all sent {_fmt(recovery)} s after the provider recovered (goal <= 5)")
    if duplicates or lost or states.get("sent", 0) != len(keys):
        misses.append(f"not exactly once: {duplicates} duplicates, {lost} lost, states {states}")
    return Figures(
        "provider_storm",
        f"provider answers {'/'.join(map(str, scale.statuses))} (Retry-After: {scale.retry_after}) "
        f"for {scale.storm_s:g} s",
        len(keys),
        lost,
        duplicates,
        recovery,
        per_row,
        states,
        "all sent <= 5 s after the provider recovers; each exactly once",
        misses,
        details,
    )


@dataclass(frozen=True)
class PgScale:
    notifications: int = 2000
    rate_per_s: float = 40.0
    workers: int = 2
    threads: int = 8
    terminations: int = 5
    patience_s: float = 420.0  # after the last termination (production claim lease 300 s + relay interval)
    linger_s: float = 3.0


def pg_terminate(scale: PgScale = PgScale(), *, pg_url: str | None = None, namespace: str | None = None) -> Figures:
    """``pg_terminate_backend`` on every connection to the database but our observer's, ``terminations`` times,
    evenly while notices arrive at a steady pace (the producer's connections too: it repeats a submit that failed,
    same idempotency key). Recovery: from the last termination to the last notice's first arrival."""
    with run_context("pg_terminate", pg_url=pg_url, namespace=namespace) as run:
        run.count_enqueues()
        run.start_scheduler()
        run.start_workers([f"worker-{i}" for i in range(scale.workers)], scale.threads)
        started = time.time()
        run.producer.start(scale.notifications, scale.rate_per_s)
        span = scale.notifications / scale.rate_per_s
        terminated: list[int] = []
        last = started
        for k in range(scale.terminations):
            time.sleep(max(0.0, started + (k + 1) * span / (scale.terminations + 1) - time.time()))
            terminated.append(run.observer.terminate_others())
            last = time.time()
        run.producer.join()
        done = run.wait_done(last + scale.patience_s)
        time.sleep(scale.linger_s)
        keys = run.producer.keys
        states, lost, duplicates, details = run.outcome()
        arrived = [run.sink.arrivals[k] for k in keys.values() if k in run.sink.arrivals]
        recovery = max(0.0, max(arrived) - last) if arrived and not lost else None
        per_row, msg_details = run.msgs_per_row(len(keys))
        details = {
            "backends terminated each time": terminated,
            "producer submits repeated after a database error": run.producer.retried,
            "recovered": done,
            "waited_s": round(time.time() - last, 1),
            **details,
            **msg_details,
        }
        run.finish(details)
    misses = []
    if duplicates:
        misses.append(f"{duplicates} duplicates")
    if lost:
        misses.append(f"{lost} lost / not terminal")
    return Figures(
        "pg_terminate",
        f"pg_terminate_backend on every worker connection x{scale.terminations}",
        len(keys),
        lost,
        duplicates,
        recovery,
        per_row,
        states,
        "0 duplicates; 0 lost; all terminal",
        misses,
        details,
    )


SCENARIOS: dict[str, Callable[..., Figures]] = {
    "kill_9": kill_9,
    "slow_provider": slow_provider,
    "relay_race": relay_race,
    "redis_restart": redis_restart,
    "provider_storm": provider_storm,
    "pg_terminate": pg_terminate,
    "sigterm": sigterm,
}
ISSUE_SCALES: dict[str, Any] = {
    "kill_9": KillScale(),
    "slow_provider": SlowScale(),
    "relay_race": RelayScale(),
    "redis_restart": RedisScale(),
    "provider_storm": StormScale(),
    "pg_terminate": PgScale(),
    "sigterm": SigtermScale(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run this scenario (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and their issue scale")
    parser.add_argument("--max-wait", type=float, help="cap every scenario's patience (seconds)")
    args = parser.parse_args()
    if args.list:
        for name, scale in ISSUE_SCALES.items():
            print(f"{name}: {scale}")
        return
    results: list[Figures] = []
    for name in args.only or list(SCENARIOS):
        scale = ISSUE_SCALES[name]
        if args.max_wait is not None:
            scale = replace(scale, patience_s=min(scale.patience_s, args.max_wait))
        print(f"--- {name}: {scale}", flush=True)
        started = time.monotonic()
        try:
            figures = SCENARIOS[name](scale)
        except Exception as exc:  # one scenario's crash must not hide the others' figures
            print(f"{name} crashed: {type(exc).__name__}: {exc}", flush=True)
            continue
        figures.details["scenario took s"] = round(time.monotonic() - started, 1)
        print(figures.summary(), flush=True)
        results.append(figures)
    print()
    print(markdown_table(results))


if __name__ == "__main__":
    main()
