"""A local HTTP sink standing in for a provider (loopback only): counts what it receives per idempotency key,
and can answer 503/429 for a while or slow down, to inject faults. Used by the fault tests and the benchmarks.

A request is counted (``received``, ``arrivals``) when it arrives, before ``delay``: a provider that took a
request has it, even if its answer comes too late for the caller. Refusals are decided at arrival too: a
status from ``fail_plan`` (one per request), else, inside a :meth:`fail_for` window, the window's statuses in
turn. Every refusal carries ``Retry-After: <retry_after>`` (no header when ``retry_after`` is ``None``).

Three request shapes, told apart by their JSON, counted per recipient (``received``, ``arrivals`` and ``calls``
hold one entry per recipient, whatever the shape; ``requests`` counts requests per shape):

- ``single`` (the in-app endpoint): ``{"idempotency_key": ...}``, keyed by it; answered 201 ``{"id": key}``.
- ``sendgrid`` (``POST /v3/mail/send``, one recipient or a bulk of personalizations): each personalization keyed
  by its ``custom_args.notification_id`` (else the top-level one); answered 202, empty body, ``X-Message-Id``.
  Point the SendGrid adapter's ``base_url`` at :attr:`Sink.base_url`.
- ``inapp_batch`` (``POST <url>/batch``): ``{"messages": [{"idempotency_key": ...}, ...]}``, each keyed by its
  key; answered 200 ``{"results": [{"idempotency_key": key, "status": 201, "id": key}, ...]}``.

A refusal (``fail_plan``, ``fail_for``) refuses the whole request: every recipient in it, one refusal counted.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SINGLE = "single"
SENDGRID = "sendgrid"
INAPP_BATCH = "inapp_batch"


def recipients(body: bytes) -> tuple[str, list[str]]:
    """A request's shape and the key of each recipient it carries ("?" where it names none)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return SINGLE, ["?"]
    if not isinstance(payload, dict):
        return SINGLE, ["?"]
    personalizations = payload.get("personalizations")
    if isinstance(personalizations, list):
        shared = _notification_id(payload, "?")
        return SENDGRID, [_notification_id(p, shared) for p in personalizations]
    messages = payload.get("messages")
    if isinstance(messages, list):
        return INAPP_BATCH, [str(m.get("idempotency_key", "?")) if isinstance(m, dict) else "?" for m in messages]
    return SINGLE, [str(payload.get("idempotency_key", "?"))]


def _notification_id(part: object, default: str) -> str:
    args = part.get("custom_args") if isinstance(part, dict) else None
    value = args.get("notification_id") if isinstance(args, dict) else None
    return default if value is None else str(value)


@dataclass(frozen=True)
class Call:
    """One request as the sink saw it: wall-clock arrival, idempotency key, the status it was answered."""

    at: float
    key: str
    status: int


class Sink:
    def __init__(self, *, delay: float = 0.0, retry_after: str | None = "0") -> None:
        self.received: Counter[str] = Counter()  # accepted requests per idempotency key
        self.arrivals: dict[str, float] = {}  # time.time() of each key's first accepted request
        self.calls: list[Call] = []  # every request, accepted or refused, in arrival order
        self.refused = 0
        self.refused_by_status: Counter[int] = Counter()
        self.requests: Counter[str] = Counter()  # requests per shape (single, sendgrid, inapp_batch), refused too
        self.delay = delay  # seconds before answering (every request)
        self.retry_after = retry_after  # the Retry-After header value on refusals
        self.fail_until = 0.0  # time.monotonic() before which every request is refused
        self.fail_status = 503
        self.fail_plan: list[int] = []  # statuses for the next requests, one each, before answering normally
        self.recovered_at: float | None = None  # time.time() when the last fail_for window ends
        self._fail_cycle: Iterator[int] = itertools.cycle([503])
        self._lock = threading.Lock()
        self._message_ids = itertools.count(1)
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body in one segment, sent at once: otherwise Nagle's algorithm and the client's delayed
            # ACK stall every keep-alive answer by ~40 ms and the sink, not the system under test, sets the pace.
            disable_nagle_algorithm = True
            wbufsize = 64 * 1024

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                shape, keys = recipients(body)
                taken = 202 if shape == SENDGRID else 201  # per recipient (a batch item's own status)
                now = time.time()
                with sink._lock:
                    sink.requests[shape] += 1
                    planned = sink.fail_plan.pop(0) if sink.fail_plan else None
                    if planned is None and time.monotonic() < sink.fail_until:
                        planned = next(sink._fail_cycle)
                    if planned is not None:
                        sink.refused += 1
                        sink.refused_by_status[planned] += 1
                    for key in keys:
                        if planned is None:
                            sink.received[key] += 1
                            sink.arrivals.setdefault(key, now)
                        sink.calls.append(Call(now, key, planned or taken))
                    retry_after = sink.retry_after
                    message_id = f"sink-{next(sink._message_ids)}"
                if sink.delay:
                    time.sleep(sink.delay)
                if planned is not None:
                    headers = {"Retry-After": retry_after} if retry_after is not None else {}
                    refusal: object = {"error": "injected"}
                    if shape == SENDGRID:  # SendGrid's error shape
                        refusal = {"errors": [{"message": "injected", "field": None, "help": None}]}
                    self._answer(planned, refusal, headers)
                elif shape == SENDGRID:
                    self._answer(202, None, {"X-Message-Id": message_id})
                elif shape == INAPP_BATCH:
                    results = [{"idempotency_key": key, "status": 201, "id": key} for key in keys]
                    self._answer(200, {"results": results}, {})
                else:
                    self._answer(201, {"id": keys[0]}, {})

            def _answer(self, status: int, payload: object, headers: dict[str, str]) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the caller gave up waiting (slow provider)
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/notices"

    @property
    def base_url(self) -> str:
        """``http://host:port``: the SendGrid adapter's ``base_url`` (it posts to ``/v3/mail/send``)."""
        return self.url.removesuffix("/notices")

    def __enter__(self) -> Sink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_for(
        self,
        seconds: float,
        status: int = 503,
        *,
        statuses: Sequence[int] | None = None,
        retry_after: str | None = None,
    ) -> None:
        """Refuse every request for ``seconds``: with ``status``, or with ``statuses`` in turn (e.g. 503, 429).

        ``retry_after`` (when given) replaces the Retry-After header value sent with each refusal.
        """
        with self._lock:
            self.fail_status = status
            self._fail_cycle = itertools.cycle(list(statuses) if statuses else [status])
            if retry_after is not None:
                self.retry_after = retry_after
            self.fail_until = time.monotonic() + seconds
            self.recovered_at = time.time() + seconds

    def duplicates(self) -> int:
        """Accepted requests beyond the first, over every key."""
        with self._lock:
            return sum(n - 1 for n in self.received.values() if n > 1)
