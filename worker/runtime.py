"""Process runtimes: the dramatiq worker, the HTTP listener, and ``run`` (worker + scheduler + web in one process)."""

from __future__ import annotations

import signal
import socket
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

import dramatiq
import structlog

from worker.bootstrap import App
from worker.errors import CarenotifyError

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp

log = structlog.get_logger(__name__)

#: How long ``run`` waits for its web thread to be listening before it gives up.
WEB_START_TIMEOUT_SECONDS = 30.0


class StartupError(CarenotifyError):
    """A process could not start (e.g. its port is taken); the message says what to change."""


def bind_http(host: str, port: int) -> socket.socket:
    """Listen on ``host:port`` now, before anything else starts, so a taken port is a clear error at start.

    uvicorn binding on its own reports a taken port in a log line and ends its thread (``run``), leaving a
    process that says it is running without HTTP.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise StartupError(f"cannot listen on {host}:{port}: unknown host ({exc}); check --host") from None
    sock = socket.socket(family, kind, proto)
    try:
        # A previous run's connections in TIME_WAIT must not block a restart; a live listener still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another process using the port? (--port)"
        ) from None
    return sock


def http_server(web: ASGIApp, *, log_level: str) -> uvicorn.Server:
    import uvicorn

    # uvicorn's access log writes concrete paths (patient refs, unsubscribe tokens): off. Our AccessLogMiddleware
    # (worker.web.access_log) logs the route template instead.
    return uvicorn.Server(uvicorn.Config(web, log_level=log_level, access_log=False))


def start_http_thread(server: uvicorn.Server, sock: socket.socket) -> threading.Thread:
    """Serve on an already listening socket in a thread; returns once it accepts requests, or raises."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="web", daemon=True)
    thread.start()
    deadline = time.monotonic() + WEB_START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive():  # uvicorn ends its thread (SystemExit) when its startup fails
            raise StartupError("the web server did not start (see its log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise StartupError(f"the web server did not start within {WEB_START_TIMEOUT_SECONDS:.0f} s")
        thread.join(0.05)
    return thread


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
