"""A local HTTP sink standing in for a provider (loopback only): counts what it receives per idempotency key,
and can answer 503/429 for a while or slow down, to inject faults. Used by the fault tests and the benchmarks."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink:
    def __init__(self, *, delay: float = 0.0) -> None:
        self.received: Counter[str] = Counter()
        self.arrivals: dict[str, float] = {}
        self.refused = 0
        self.delay = delay
        self.fail_until = 0.0  # time.monotonic() before which every request is refused
        self.fail_status = 503
        self.fail_plan: list[int] = []  # statuses for the next requests, one each, before answering normally
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body in one segment, sent at once: otherwise Nagle's algorithm and the client's delayed
            # ACK stall every keep-alive answer by ~40 ms and the sink, not the system under test, sets the pace.
            disable_nagle_algorithm = True
            wbufsize = 64 * 1024

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if sink.delay:
                    time.sleep(sink.delay)
                with sink._lock:
                    planned = sink.fail_plan.pop(0) if sink.fail_plan else None
                    if planned is None and time.monotonic() < sink.fail_until:
                        planned = sink.fail_status
                    if planned is not None:
                        sink.refused += 1
                if planned is not None:
                    self._answer(planned, {"error": "injected"}, {"Retry-After": "0"})
                    return
                key = json.loads(body).get("idempotency_key", "?")
                with sink._lock:
                    sink.received[key] += 1
                    sink.arrivals.setdefault(key, time.time())
                self._answer(201, {"id": key}, {})

            def _answer(self, status: int, payload: dict[str, str], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/notices"

    def __enter__(self) -> Sink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_for(self, seconds: float, status: int = 503) -> None:
        self.fail_status = status
        self.fail_until = time.monotonic() + seconds
