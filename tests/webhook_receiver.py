"""A real HTTP receiver on a free port, in a thread, that verifies every request with the ``standardwebhooks``
library (as the platform would) and records what it accepted. Its behaviour can be changed while it runs: answer a
status, answer late, or be down (nothing listening on its port)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    webhook_id: str
    type: str
    data: dict[str, Any]
    body: str
    status: int


@dataclass
class Receiver:
    """``status`` answers every request (or ``answer(request_number) -> status``, or ``answer_data(event data) ->
    status`` when the answer depends on which event it is); ``delay`` seconds before it."""

    secret: str | None = None
    status: int = 200
    answer: Callable[[int], int] | None = None
    answer_data: Callable[[dict[str, Any]], int] | None = None
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    requests: int = 0
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    arrivals: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def accepted(self) -> list[Received]:
        return [r for r in self.received if 200 <= r.status < 300]

    def ids(self) -> list[str]:
        return [r.webhook_id for r in self.accepted()]

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
                with receiver._lock:
                    receiver.requests += 1
                    number = receiver.requests
                if receiver.delay:
                    time.sleep(receiver.delay)  # a slow receiver; the sender's timeout decides, not a backoff
                assert receiver.secret is not None
                try:
                    payload = Webhook(receiver.secret).verify(body, dict(self.headers.items()))
                except WebhookVerificationError as exc:
                    receiver.refused.append(str(exc))
                    self.send_response(400)
                    self.end_headers()
                    return
                if receiver.answer_data:
                    status = receiver.answer_data(payload["data"])
                else:
                    status = receiver.answer(number) if receiver.answer else receiver.status
                with receiver._lock:
                    receiver.received.append(
                        Received(self.headers["webhook-id"], payload["type"], payload["data"], body, status)
                    )
                    receiver.arrivals.append(time.time())
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Down: nothing listens on the port (a connection is refused) until :meth:`start` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_receiver(**kwargs: Any) -> Iterator[Receiver]:
    receiver = Receiver(**kwargs)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def envelope(body: str) -> dict[str, Any]:
    return dict(json.loads(body))
