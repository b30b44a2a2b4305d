"""The benchmarks' producer: triggers sent from a process of their own, as an API service process would.

- ``carenotify``: creates N patients first (set-based, one ``INSERT ... SELECT``), then submits one care-team
  notice to each through ``app.submit(...)`` with the arguments the API's ``POST /v1/care-team-messages`` passes
  (category, the route's idempotency key shape, ``context={"message_ref": ...}``, here ``channels=["inapp"]``);
  ``--lookup`` also resolves each patient's reference first, as the route does (``patient_id_for``).
- ``bare``: sends N ``bench.bare_actor.post`` messages (the baseline).

Both: ``--threads`` sending threads (default one; an API process serves requests from a thread pool), message
``i`` on thread ``i % threads``; ``--rate`` paces the sends (per second, evenly spaced, message ``i`` not before
``i / rate`` seconds after the start), else as fast as they go. The process prints ``ready`` once set up
(imports, patients, a pooled connection per thread), waits for a line on its standard input, then sends; it writes
each trigger's wall time (``time.time()`` just before the call) per sink key, ``key<TAB>time`` a line, to
``--out``, and prints one JSON line: ``{"sent", "errors", "started", "ended", "cpu_seconds"}`` (``cpu_seconds``:
its own user + system time while sending).

The bench side: :class:`Producer`.

    .venv/bin/python -m bench.producer carenotify --db URL --namespace NS --n 2000 --out FILE [--rate 50] [--lookup]
                                          [--threads 1]
    .venv/bin/python -m bench.producer bare --namespace NS --n 2000 --out FILE [--rate 50]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The caller id in the API's idempotency key shape (``api:<caller>:care_team_message:<message_id>``).
CALLER = 1


def notice_key(prefix: str, i: int) -> str:
    """The idempotency key the API gives the ``i``-th care-team message."""
    return f"api:{CALLER}:care_team_message:{prefix}{i}"


# --- the producer process ---------------------------------------------------------------------------------------


def _carenotify(args: argparse.Namespace) -> tuple[Callable[[int], str], Callable[[], None]]:
    """Set up (patients, app); returns the send of message ``i`` (returning its sink key) and the clean-up."""
    import structlog
    from sqlalchemy import text

    from bench.harness import REDIS
    from worker.bootstrap import build_app
    from worker.categories import Category, Channel
    from worker.clock import SystemClock
    from worker.patients import patient_id_for
    from worker.settings import load_settings

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    settings = load_settings(
        database_url=args.db,
        broker="redis",
        redis_url=REDIS,
        redis_namespace=args.namespace,
        providers={"inapp": ["console"]},
        log_level="WARNING",
    )
    app = build_app(settings, clock=SystemClock())
    with app.engine.begin() as conn:
        rows = conn.execute(
            text(
                "INSERT INTO patient (external_ref, time_zone, locale, created_at, updated_at) "
                "SELECT :prefix || g, 'UTC', 'en', now(), now() FROM generate_series(0, :n - 1) g "
                "RETURNING id, external_ref"
            ),
            {"prefix": args.prefix, "n": args.n},
        ).all()
    patients = {ref: int(pid) for pid, ref in rows}
    # Close the set-up connection (its backend then reports its transactions), open a fresh one for the sends.
    app.engine.dispose()
    for conn in [app.engine.connect() for _ in range(args.threads)]:
        conn.close()
    app.broker.client.ping()  # type: ignore[attr-defined]
    channels = [Channel.INAPP]

    def send(i: int) -> str:
        ref = f"{args.prefix}{i}"
        patient_id = patient_id_for(app.engine, ref) if args.lookup else patients[ref]
        key = notice_key(args.prefix, i)
        app.submit(
            patient_id=patient_id,
            category=Category.CARE_TEAM_MESSAGE,
            idempotency_key=key,
            channels=channels,
            context={"message_ref": ref},
        )
        return f"{key}:inapp"  # what the in-app adapter sends (and the sink counts): one target, "inapp"

    return send, app.close


def _bare(args: argparse.Namespace) -> tuple[Callable[[int], str], Callable[[], None]]:
    from bench import bare_actor

    bare_actor.broker.client.ping()

    def send(i: int) -> str:
        key = f"{args.prefix}{i}"
        bare_actor.post.send(key)
        return key

    return send, bare_actor.broker.close


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("mode", choices=["carenotify", "bare"])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--db", help="carenotify: the database URL")
    parser.add_argument("--prefix", default="bench-")
    parser.add_argument("--rate", type=float, default=None, help="sends per second (default: as fast as it goes)")
    parser.add_argument("--lookup", action="store_true", help="carenotify: resolve the patient ref per message")
    parser.add_argument(
        "--threads", type=int, default=1, help="sending threads (an API process serves requests from a thread pool)"
    )
    args = parser.parse_args()
    send, close = _carenotify(args) if args.mode == "carenotify" else _bare(args)

    print("ready", flush=True)
    sys.stdin.readline()
    triggers: list[tuple[str, float]] = []
    errors: list[int] = []
    cpu0 = os.times()
    started = time.time()

    def run(first: int) -> None:
        """Messages ``first``, ``first + threads``, ...: each at its turn when paced."""
        for i in range(first, args.n, args.threads):
            if args.rate:
                wait = started + i / args.rate - time.time()
                if wait > 0:
                    time.sleep(wait)
            at = time.time()
            try:
                key = send(i)
            except Exception as exc:  # counted and shown; the bench waits for what was sent
                errors.append(i)
                if len(errors) <= 3:
                    print(f"producer: message {i}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            triggers.append((key, at))  # list.append is atomic under the GIL

    if args.threads == 1:
        run(0)
    else:
        workers = [threading.Thread(target=run, args=(t,)) for t in range(args.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    ended = time.time()
    cpu1 = os.times()
    Path(args.out).write_text("".join(f"{key}\t{at!r}\n" for key, at in triggers))
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    result = {"sent": len(triggers), "errors": len(errors), "started": started, "ended": ended, "cpu_seconds": used}
    print(json.dumps(result), flush=True)
    # Stay, connections open, until told to go: the bench reads every process's CPU (PostgreSQL backends
    # included) before they end, and an ended backend's time is no longer its own.
    sys.stdin.readline()
    close()


# --- the bench side ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Produced:
    """What a producer process did."""

    sent: int
    errors: int
    started: float
    ended: float
    cpu_seconds: float
    #: sink key -> trigger time (time.time())
    triggers: dict[str, float]

    @property
    def rate(self) -> float:
        return self.sent / (self.ended - self.started) if self.ended > self.started else float("nan")


class Producer:
    """A producer process (``python -m bench.producer``): :meth:`go` starts the sends, :meth:`result` waits for
    the last, :meth:`finish` lets it end. Started by :func:`producer`, which has it set up before returning and
    finishes it on the way out."""

    def __init__(self, proc: subprocess.Popen[str], out: Path) -> None:
        self.proc = proc
        self._out = out

    @property
    def pid(self) -> int:
        return self.proc.pid

    def go(self) -> float:
        assert self.proc.stdin is not None
        at = time.time()
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return at

    def result(self) -> Produced:
        """Wait until every message is sent; the process stays (connections open) until :meth:`finish`."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"producer exited with {self.proc.wait()} and no result")
        data: dict[str, Any] = json.loads(line)
        triggers: dict[str, float] = {}
        for row in self._out.read_text().splitlines():
            key, at = row.split("\t")
            triggers[key] = float(at)
        return Produced(
            sent=int(data["sent"]),
            errors=int(data["errors"]),
            started=float(data["started"]),
            ended=float(data["ended"]),
            cpu_seconds=float(data["cpu_seconds"]),
            triggers=triggers,
        )

    def finish(self, timeout: float = 60) -> None:
        """Let it close its connections and end."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("bye\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=timeout)


@contextmanager
def producer(
    mode: str,
    *,
    n: int,
    namespace: str,
    db: str | None = None,
    prefix: str = "bench-",
    rate: float | None = None,
    lookup: bool = False,
    threads: int = 1,
    env: dict[str, str] | None = None,
    ready_timeout: float = 300,
) -> Iterator[Producer]:
    """Start a producer process and wait until it is set up (``ready``); killed on the way out if still running."""
    import tempfile

    from bench.harness import ROOT

    with tempfile.TemporaryDirectory(prefix="carenotify-producer-") as tmp:
        out = Path(tmp) / "triggers.tsv"
        command = [sys.executable, "-m", "bench.producer", mode, "--n", str(n), "--namespace", namespace]
        command += ["--out", str(out), "--prefix", prefix]
        if db is not None:
            command += ["--db", db]
        if rate is not None:
            command += ["--rate", repr(rate)]
        if lookup:
            command.append("--lookup")
        command += ["--threads", str(threads)]
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + ready_timeout
            line = proc.stdout.readline()  # "ready" (blocks while it sets up)
            if line.strip() != "ready" or time.monotonic() > deadline:
                raise RuntimeError(f"producer did not get ready: {line!r} (exit {proc.poll()})")
            client = Producer(proc, out)
            yield client
            client.finish()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
