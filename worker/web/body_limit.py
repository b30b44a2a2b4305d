"""Request bodies are limited before they are read: the outermost middleware, so nothing (idempotency, auth,
JSON parsing, a webhook's signature check) ever holds more than the limit in memory.

A declared ``Content-Length`` over the limit is refused at once, without reading a byte of the body or running
the app. A chunked body (no length) is counted as the app pulls it, and refused the moment it passes the limit;
the rest is never read (the server then closes the connection). Both answer 413 with the API's error shape.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.web.errors import error_response


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a body passes its limit.

    An HTTPException, so FastAPI's body parsing lets it through (it turns any other error into a 400) and the
    app's handler answers it inside the app; raised outside the routes (the idempotency middleware buffers the
    body before routing), :class:`BodyLimitMiddleware` answers it.
    """

    def __init__(self, limit: int) -> None:
        # The unread rest of the body is still on the wire: the connection cannot be reused.
        super().__init__(status_code=413, detail=f"larger than {limit} bytes", headers={"Connection": "close"})


def too_large_response(limit: int) -> JSONResponse:
    response = error_response(413, "too_large", "body", f"body: larger than {limit} bytes")
    response.headers["Connection"] = "close"
    return response


class BodyLimitMiddleware:
    """Pure ASGI middleware: ``limit_for(path)`` bytes at most per request body."""

    def __init__(self, asgi: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.asgi = asgi
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.asgi(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                response = error_response(400, "invalid_input", "Content-Length", "Content-Length: not a number")
                await response(scope, receive, send)
                return
            if int(declared) > limit:
                await too_large_response(limit)(scope, receive, send)
                return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.asgi(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
            await too_large_response(limit)(scope, receive, send)
