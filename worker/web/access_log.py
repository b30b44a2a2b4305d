"""One structured access line per request, naming the route template, never the concrete path or query.

uvicorn's own access log writes ``GET /v1/patients/pt-123/preferences?...`` and
``POST /v1/unsubscribe/<signed token>``: a patient reference or a working unsubscribe link in every log line. It
is switched off (``access_log=False`` where the server is built, and :func:`worker.logs.configure_logging` drops
its records in any case); this middleware writes the line instead, with ``/v1/patients/{external_ref}/...``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

import structlog
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("carenotify.access")

#: A request no route matched (a 404): its path is what the caller typed, so it is not logged either.
UNMATCHED = "<unmatched>"


def flat_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, with included routers opened up (FastAPI wraps each ``include_router`` in an object that holds
    the router; ours are included without an extra prefix, so each route's ``path`` is its full template)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from flat_routes(inner.routes)
        else:
            yield route


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route that serves ``scope`` (``/v1/notifications/{notification_id}``)."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    # Not routed (answered by a middleware, e.g. an Idempotency-Key replay): find the route it would reach.
    partial: str | None = None
    for candidate in routes:
        template = getattr(candidate, "path", None)
        if not isinstance(template, str):
            continue
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return template
        if match is Match.PARTIAL and partial is None:
            partial = template  # the path exists, the method does not (405)
    return partial or UNMATCHED


class AccessLogMiddleware:
    """Pure ASGI middleware: method, route template, status and duration; nothing the caller sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: list[BaseRoute] | None = None

    def _all_routes(self, scope: Scope) -> list[BaseRoute]:
        if self._routes is None:  # the app's routes are fixed once it serves
            router = getattr(scope.get("app"), "router", None)
            self._routes = list(flat_routes(getattr(router, "routes", [])))
        return self._routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            log.info(
                "http.request",
                method=scope["method"],
                route=route_template(scope, self._all_routes(scope)),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
