"""Request bodies are limited before they are read: nothing (idempotency, auth, JSON parsing, a webhook's
signature check) ever holds more than the limit, and a refusal is the API's 413 JSON."""

from __future__ import annotations

import json
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import pytest
import uvicorn
from fastapi import FastAPI

from tests.web.conftest import Api, assert_refused
from worker.web.app import create_web_app

#: What an attacker would send: 200 MB, here produced lazily so the test itself holds none of it.
HUGE = 200 * 1024 * 1024
CHUNK = 16 * 1024


@dataclass
class Streamed:
    """The answer to a streamed body, and how much of the body the app pulled."""

    status: int = 0
    body: dict[str, object] = field(default_factory=dict)
    consumed: int = 0


def _post_streamed(web: FastAPI, path: str, headers: dict[str, str], total: int = HUGE) -> Streamed:
    """POST ``total`` bytes in chunks through the whole ASGI app (every middleware, routing, handlers), counting
    what it reads: the body is produced only when the app asks for it, as a client uploading it would."""
    result = Streamed()
    answer: list[bytes] = []

    async def receive() -> dict[str, object]:
        if result.consumed >= total:
            await anyio.sleep_forever()
        result.consumed += CHUNK
        return {"type": "http.request", "body": b"7" * CHUNK, "more_body": result.consumed < total}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            result.status = int(message["status"])  # type: ignore[call-overload]
        elif message["type"] == "http.response.body":
            answer.append(message.get("body", b""))  # type: ignore[arg-type]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }

    async def main() -> None:
        with anyio.fail_after(60):
            await web(scope, receive, send)  # type: ignore[arg-type]

    anyio.run(main)
    result.body = json.loads(b"".join(answer))
    return result


def _assert_413(result: Streamed, limit: int) -> None:
    assert result.status == 413, result
    assert result.body["error"] == "too_large" and result.body["field"] == "body", result.body
    assert result.consumed <= limit + CHUNK, f"read {result.consumed} bytes of a body limited to {limit}"


@pytest.mark.parametrize(
    ("path", "authenticated", "headers"),
    [
        ("/webhooks/sendgrid/events", False, {"Content-Type": "application/json"}),
        ("/webhooks/twilio/status", False, {"Content-Type": "application/x-www-form-urlencoded"}),
        ("/webhooks/twilio/sms", False, {"Content-Type": "application/x-www-form-urlencoded"}),
        ("/v1/patients", False, {"Content-Type": "application/json"}),  # parsed before authentication
        ("/v1/patients", True, {"Content-Type": "application/json", "Idempotency-Key": "k-1"}),  # buffered first
        ("/v1/care-team-messages", True, {"Content-Type": "application/json"}),
    ],
    ids=["sendgrid", "twilio-status", "twilio-sms", "patients-anonymous", "idempotency-key", "authenticated"],
)
def test_a_chunked_body_is_never_read_past_the_limit(
    api: Api, path: str, authenticated: bool, headers: dict[str, str]
) -> None:
    limits = api.app.settings.web
    limit = limits.max_webhook_body_bytes if path.startswith("/webhooks/") else limits.max_body_bytes
    sent = {**headers, **(api.auth if authenticated else {})}
    _assert_413(_post_streamed(api.client.app, path, sent), limit)  # type: ignore[arg-type]


def test_a_declared_length_over_the_limit_is_refused_before_reading_a_byte(api: Api) -> None:
    for path in ("/webhooks/sendgrid/events", "/v1/patients"):
        result = _post_streamed(api.client.app, path, {"Content-Length": str(HUGE)})  # type: ignore[arg-type]
        _assert_413(result, 0)
        assert result.consumed == 0


def test_limits_are_settings_and_bodies_within_them_pass(make_app) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from worker.web.auth import create_api_key

    app = make_app(web={"max_body_bytes": 2048, "max_webhook_body_bytes": 4096})
    auth = {"Authorization": f"Bearer {create_api_key(app.engine, app.clock, 'care-platform')}"}
    with TestClient(create_web_app(app)) as client:
        padded = {"external_ref": "pt-1", "time_zone": "UTC", "locale": "en"}
        small = json.dumps(padded).encode() + b" " * 1500  # 1.5 KB: within 2 KB
        assert client.post(
            "/v1/patients", content=small, headers={**auth, "Content-Type": "application/json"}
        ).is_success
        large = json.dumps(padded).encode() + b" " * 2500
        refused = client.post("/v1/patients", content=large, headers={**auth, "Content-Type": "application/json"})
        body = assert_refused(refused, 413, "body")
        assert body == {"error": "too_large", "field": "body", "message": "body: larger than 2048 bytes"}
        # Webhooks have their own: 3 KB passes the limit (and is then refused for what it is, not its size).
        webhook = client.post("/webhooks/sendgrid/events", content=b"[" + b" " * 3000 + b"]")
        assert webhook.status_code == 503  # not configured in this app: the body's size was not the problem
        assert_refused(client.post("/webhooks/sendgrid/events", content=b" " * 5000), 413, "body")


@pytest.fixture
def served(api: Api) -> Iterator[tuple[str, int]]:
    """The app behind a real uvicorn on a loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_web_app(api.app), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        thread.join(0.02)
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _response(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_over_http_a_huge_declared_body_is_answered_without_sending_it(served: tuple[str, int]) -> None:
    # The client announces 200 MB and sends none of it: the 413 comes back at once, and the connection closes.
    with socket.create_connection(served, timeout=10) as conn:
        conn.sendall(
            b"POST /webhooks/sendgrid/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(HUGE).encode() + b"\r\n\r\n"
        )
        answer = _response(conn)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b'"error":"too_large"' in answer and b"connection: close" in answer.lower()
        assert conn.recv(1) == b""  # closed: the unread body is never taken in


def test_over_http_a_chunked_upload_is_cut_off_at_the_limit(served: tuple[str, int]) -> None:
    # Chunked (no length): the server answers once the limit is passed and stops reading; the client sees the
    # 413 long before it could send 200 MB (what it got rid of is the limit plus the sockets' buffers).
    piece = memoryview(b"%x\r\n" % CHUNK + b"7" * CHUNK + b"\r\n")
    sent = 0
    answer = b""
    with socket.create_connection(served, timeout=10) as conn:
        conn.sendall(b"POST /v1/patients HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.setblocking(False)
        while sent < HUGE:
            readable, writable, _ = select.select([conn], [conn], [], 10)
            if readable or not writable:
                break  # the answer (or the close) has come, or nothing moves any more
            try:
                sent += conn.send(piece[sent % len(piece) :])
            except (BrokenPipeError, ConnectionResetError):
                break
        conn.setblocking(True)
        answer = _response(conn)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert sent < 32 * 1024 * 1024, f"the server took {sent} bytes of a body limited to 64 KiB"
