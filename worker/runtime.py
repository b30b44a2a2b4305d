"""Process runtimes: the dramatiq worker, and ``run`` (worker + scheduler + web in one process)."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import dramatiq
import structlog

from worker.bootstrap import App

log = structlog.get_logger(__name__)


def start_worker(app: App, *, threads: int | None = None) -> dramatiq.Worker:
    """Start consuming in this process.

    ``process_boot`` is what dramatiq's own CLI emits in each worker process; an in-process worker must emit
    it itself or middleware that sets up on boot never runs.
    """
    app.broker.emit_after("process_boot")
    app.deps.leases.start()  # before the first claim: every claim this process makes is kept alive
    worker = dramatiq.Worker(app.broker, worker_threads=threads or app.settings.worker_threads, worker_timeout=250)
    worker.start()
    log.info("worker.start", broker=type(app.broker).__name__, threads=threads or app.settings.worker_threads)
    return worker


def stop_worker(app: App, worker: dramatiq.Worker) -> None:
    worker.stop(timeout=30_000)
    app.deps.leases.stop()
    log.info("worker.stop")


def wait_for_signal() -> None:
    """Block the main thread until SIGINT or SIGTERM."""
    stop = threading.Event()

    def _handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    while not stop.wait(1.0):
        pass
