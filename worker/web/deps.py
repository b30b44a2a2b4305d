"""Shared route dependencies: the :class:`App` a request runs against, and the documented Idempotency-Key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from worker.bootstrap import App
from worker.web.idempotency import KEY_PATTERN


def get_app(request: Request) -> App:
    app: App = request.app.state.app
    return app


AppDep = Annotated[App, Depends(get_app)]


def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=KEY_PATTERN,
            description="Retry-safe: the same key and body replays the first answer; another body is refused.",
        ),
    ] = None,
) -> str | None:
    """Documents the header on every POST; :class:`IdempotencyMiddleware` does the work before the route."""
    return key


IdempotencyKey = Depends(idempotency_key)
