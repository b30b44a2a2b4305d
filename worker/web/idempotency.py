"""Idempotency-Key on every authenticated POST: a retried request gets the first answer, not a second effect.

Semantics (as Stripe's API): the first request with a key is recorded as in progress, runs, and its 2xx answer
is stored under (client, key). The same key again with the same method, path and body replays that answer
(header ``Idempotent-Replayed: true``); with a different request it is refused (422); while the first is still
running, 409. A request that failed (4xx/5xx) changed nothing, so its key is released for a corrected retry.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime

import anyio.to_thread
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.bootstrap import App
from worker.db import session_scope
from worker.models_api import IdempotencyRecord
from worker.web.auth import authenticate
from worker.web.errors import error_response

HEADER = "Idempotency-Key"
#: Printable ASCII without spaces, as a UUID or any token a client would generate.
KEY_PATTERN = r"^[!-~]{1,200}$"
#: Only JSON answers this small are stored; every API answer is far smaller.
_MAX_STORED = 64 * 1024


def request_fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    """SHA-256 of the request; JSON bodies are canonicalised so key order and spacing do not matter."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Begun:
    record_id: int | None = None  # set when this request owns the key
    replay: tuple[int, str] | None = None  # (status, body) already answered
    conflict: str | None = None  # "mismatch" | "in_progress"


def _begin(engine: Engine, now: datetime, client_id: int, key: str, method: str, path: str, fp: str) -> _Begun:
    try:
        with session_scope(engine) as session:
            record = IdempotencyRecord(
                client_id=client_id, key=key, method=method, path=path[:500], request_sha256=fp, created_at=now
            )
            session.add(record)
            session.flush()
            return _Begun(record_id=record.id)
    except IntegrityError:
        pass
    with session_scope(engine) as session:
        existing = session.scalars(
            select(IdempotencyRecord).where(
                col(IdempotencyRecord.client_id) == client_id, col(IdempotencyRecord.key) == key
            )
        ).first()
    if existing is None:  # released between our insert and our read: the caller may simply retry
        return _Begun(conflict="in_progress")
    if existing.request_sha256 != fp:
        return _Begun(conflict="mismatch")
    if existing.status_code is None or existing.response_body is None:
        return _Begun(conflict="in_progress")
    return _Begun(replay=(existing.status_code, existing.response_body))


def _finish(engine: Engine, record_id: int, status: int, body: bytes | None) -> None:
    """Store a 2xx answer, or release the key when the request changed nothing."""
    with session_scope(engine) as session:
        if body is not None and 200 <= status < 300:
            record = session.get(IdempotencyRecord, record_id)
            if record is not None:
                record.status_code = status
                record.response_body = body.decode()
                session.add(record)
        else:
            session.execute(delete(IdempotencyRecord).where(col(IdempotencyRecord.id) == record_id))


class IdempotencyMiddleware:
    """Pure ASGI middleware (reads the body once and hands it on unchanged) for POSTs under ``/v1/``."""

    def __init__(self, asgi: ASGIApp, app: App) -> None:
        self.asgi = asgi
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.asgi(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = headers.get(HEADER)
        if key is None:
            await self.asgi(scope, receive, send)
            return
        if re.match(KEY_PATTERN, key) is None:
            response = error_response(
                422, "invalid_input", HEADER, f"{HEADER}: must be 1 to 200 printable ASCII characters, no spaces"
            )
            await response(scope, receive, send)
            return
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        engine = self.app.engine
        caller = await anyio.to_thread.run_sync(authenticate, engine, token) if scheme.lower() == "bearer" else None
        if caller is None:  # the route answers 401; nothing to remember
            await self.asgi(scope, receive, send)
            return

        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        fp = request_fingerprint(scope["method"], scope["path"], scope.get("query_string", b""), body)
        begun = await anyio.to_thread.run_sync(
            _begin, engine, self.app.clock.now(), caller.id, key, scope["method"], scope["path"], fp
        )
        if begun.replay is not None:
            status, stored = begun.replay
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(stored.encode())).encode()),
                        (b"idempotent-replayed", b"true"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": stored.encode()})
            return
        if begun.conflict == "mismatch":
            response = error_response(
                422, "idempotency_key_reused", HEADER, f"{HEADER}: already used with a different request"
            )
            await response(scope, receive, send)
            return
        if begun.conflict is not None or begun.record_id is None:
            response = error_response(
                409, "idempotency_key_in_use", HEADER, f"{HEADER}: a request with this key is still in progress"
            )
            await response(scope, receive, send)
            return

        record_id = begun.record_id
        delivered = False

        async def replay_body() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 500
        captured: list[bytes] = []
        size = 0

        async def capture(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= _MAX_STORED:
                    captured.append(chunk)
            await send(message)

        try:
            await self.asgi(scope, replay_body, capture)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_finish, engine, record_id, 500, None)
            raise
        answer = b"".join(captured) if size <= _MAX_STORED else None
        await anyio.to_thread.run_sync(_finish, engine, record_id, status, answer)
