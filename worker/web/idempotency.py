"""Idempotency-Key on every authenticated POST: a retried request gets the first answer, not a second effect.

Semantics (as Stripe's API): the first request with a key is recorded as in progress, runs, and its 2xx answer
is stored under (client, key). The same key again with the same method, path and body replays that answer
(header ``Idempotent-Replayed: true``); with a different request it is refused (422); while the first is still
running, 409. A request that failed (4xx/5xx) changed nothing, so its key is released for a corrected retry.

Keys live ``web.idempotency_key_hours`` (24 h): after that the key is new again, whatever it answered (the
scheduler's ``retention`` job deletes the rows). A key still in progress after
``web.idempotency_in_progress_seconds`` belongs to a request that died mid-way (a killed process, a lost
connection to the database): the same request again takes it over instead of getting 409 for ever. Taking over
replaces the row (a new id), so the old request, should it still be alive after all, can neither store its
answer nor release the key it no longer holds.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio.to_thread
from sqlalchemy import delete, select, update
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
    except (ValueError, UnicodeDecodeError, RecursionError):  # not JSON, or nested too deeply to parse: as sent
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class Owner:
    """The row a request holds its key by. Ids alone are not enough: SQLite hands a deleted last id out again."""

    record_id: int
    created_at: datetime


@dataclass(frozen=True)
class _Begun:
    owner: Owner | None = None  # set when this request owns the key
    replay: tuple[int, str] | None = None  # (status, body) already answered
    conflict: str | None = None  # "mismatch" | "in_progress"


@dataclass(frozen=True)
class KeyLifetimes:
    """How long a key replays its answer, and how long it may stay in progress before it is taken over."""

    key: timedelta
    in_progress: timedelta


def _claim(engine: Engine, record: IdempotencyRecord, replacing: Owner | None = None) -> _Begun:
    """Insert the record (after deleting ``replacing``, in the same transaction); in progress if another won."""
    try:
        with session_scope(engine) as session:
            if replacing is not None:
                gone = session.execute(
                    delete(IdempotencyRecord).where(
                        col(IdempotencyRecord.id) == replacing.record_id,
                        col(IdempotencyRecord.created_at) == replacing.created_at,
                    )
                )
                if getattr(gone, "rowcount", 0) != 1:  # another request replaced it first: it owns the key now
                    return _Begun(conflict="in_progress")
            session.add(record)
            session.flush()
            assert record.id is not None
            return _Begun(owner=Owner(record.id, record.created_at))
    except IntegrityError:
        return _Begun(conflict="in_progress")


def _begin(
    engine: Engine,
    now: datetime,
    lifetimes: KeyLifetimes,
    client_id: int,
    key: str,
    method: str,
    path: str,
    fp: str,
) -> _Begun:
    def fresh() -> IdempotencyRecord:
        return IdempotencyRecord(
            client_id=client_id, key=key, method=method, path=path[:500], request_sha256=fp, created_at=now
        )

    begun = _claim(engine, fresh())
    if begun.owner is not None:
        return begun
    with session_scope(engine) as session:
        existing = session.scalars(
            select(IdempotencyRecord).where(
                col(IdempotencyRecord.client_id) == client_id, col(IdempotencyRecord.key) == key
            )
        ).first()
        if existing is not None:
            session.expunge(existing)
    if existing is None:  # released between our insert and our read: the caller may simply retry
        return _Begun(conflict="in_progress")
    assert existing.id is not None
    holder = Owner(existing.id, existing.created_at)
    if existing.created_at <= now - lifetimes.key:  # expired (not yet cleaned up): the key is new again
        return _claim(engine, fresh(), replacing=holder)
    if existing.request_sha256 != fp:
        return _Begun(conflict="mismatch")
    if existing.status_code is not None and existing.response_body is not None:
        return _Begun(replay=(existing.status_code, existing.response_body))
    if existing.created_at <= now - lifetimes.in_progress:  # its request died mid-way: take the key over
        return _claim(engine, fresh(), replacing=holder)
    return _Begun(conflict="in_progress")


def _finish(engine: Engine, owner: Owner, status: int, body: bytes | None) -> None:
    """Store a 2xx answer, or release the key when the request changed nothing; only while the request still
    owns the key (a request taken over finds another row: its ``created_at`` is the newcomer's)."""
    mine = (col(IdempotencyRecord.id) == owner.record_id, col(IdempotencyRecord.created_at) == owner.created_at)
    with session_scope(engine) as session:
        if body is not None and 200 <= status < 300:
            session.execute(
                update(IdempotencyRecord)
                .where(*mine, col(IdempotencyRecord.status_code).is_(None))
                .values(status_code=status, response_body=body.decode())
            )
        else:
            session.execute(delete(IdempotencyRecord).where(*mine))


class IdempotencyMiddleware:
    """Pure ASGI middleware for POSTs under ``/v1/``: reads the body once (already size-limited by
    :class:`~worker.web.body_limit.BodyLimitMiddleware`, which runs first) and hands it on unchanged."""

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
        web = self.app.settings.web
        lifetimes = KeyLifetimes(
            key=timedelta(hours=web.idempotency_key_hours),
            in_progress=timedelta(seconds=web.idempotency_in_progress_seconds),
        )
        begun = await anyio.to_thread.run_sync(
            _begin, engine, self.app.clock.now(), lifetimes, caller.id, key, scope["method"], scope["path"], fp
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
        if begun.conflict is not None or begun.owner is None:
            response = error_response(
                409, "idempotency_key_in_use", HEADER, f"{HEADER}: a request with this key is still in progress"
            )
            await response(scope, receive, send)
            return

        owner = begun.owner
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
                await anyio.to_thread.run_sync(_finish, engine, owner, 500, None)
            raise
        answer = b"".join(captured) if size <= _MAX_STORED else None
        await anyio.to_thread.run_sync(_finish, engine, owner, status, answer)
