"""The FastAPI application: built around an :class:`App`, so tests and processes share one wiring."""

from __future__ import annotations

from fastapi import FastAPI

from worker.bootstrap import App
from worker.web import (
    routes_campaigns,
    routes_notifications,
    routes_ops,
    routes_patients,
    routes_preferences,
    routes_scheduling,
    routes_unsubscribe,
    routes_webhooks,
)
from worker.web.errors import install_error_handlers
from worker.web.idempotency import IdempotencyMiddleware


def create_web_app(app: App) -> FastAPI:
    """The HTTP ingress: care-team and platform API (``/v1``), patient links, provider webhooks, ops."""
    web = FastAPI(
        title="carenotify",
        version="0.1.0",
        description="Notifies postpartum-care patients outside the secure app. No message content, ever.",
    )
    web.state.app = app
    install_error_handlers(web)
    web.add_middleware(IdempotencyMiddleware, app=app)
    for router in (
        routes_ops.router,
        routes_patients.router,
        routes_preferences.router,
        routes_notifications.router,
        routes_scheduling.router,
        routes_campaigns.router,
        routes_unsubscribe.router,
        routes_webhooks.router,
    ):
        web.include_router(router)
    return web
