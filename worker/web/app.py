"""The FastAPI application: built around an :class:`App`, so tests and processes share one wiring."""

from __future__ import annotations

from fastapi import FastAPI

from worker.bootstrap import App
from worker.web import (
    routes_activity,
    routes_campaigns,
    routes_care_pause,
    routes_care_team,
    routes_notifications,
    routes_ops,
    routes_outbound,
    routes_patients,
    routes_preferences,
    routes_scheduling,
    routes_unsubscribe,
    routes_webhooks,
)
from worker.web.access_log import AccessLogMiddleware
from worker.web.body_limit import BodyLimitMiddleware
from worker.web.console import install_console
from worker.web.docs import install_docs
from worker.web.errors import install_error_handlers
from worker.web.idempotency import IdempotencyMiddleware
from worker.web.preference_page.routes import router as preference_page_router

#: Provider callbacks get their own (larger) body limit: SendGrid batches events.
WEBHOOK_PREFIX = "/webhooks/"


def create_web_app(app: App) -> FastAPI:
    """The HTTP ingress: care-team and platform API (``/v1``), patient links, provider webhooks, ops."""
    web = FastAPI(
        title="carenotify",
        version="0.1.0",
        description="Notifies postpartum-care patients outside the secure app. No message content, ever.",
        # Served by install_docs from a package instead of FastAPI's CDN links (blank offline).
        docs_url=None,
        redoc_url=None,
    )
    web.state.app = app
    install_error_handlers(web)
    install_docs(web)
    web.add_middleware(IdempotencyMiddleware, app=app)
    limits = app.settings.web

    def limit_for(path: str) -> int:
        return limits.max_webhook_body_bytes if path.startswith(WEBHOOK_PREFIX) else limits.max_body_bytes

    # Added last, so it is the outermost of ours: no middleware or route reads a body before it is limited.
    web.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    # Outside even that (it reads no body): one access line per request, with the route template, never the path.
    web.add_middleware(AccessLogMiddleware)
    for router in (
        routes_ops.router,
        routes_patients.router,
        routes_preferences.router,
        routes_notifications.router,
        routes_scheduling.router,
        routes_campaigns.router,
        routes_unsubscribe.router,
        routes_webhooks.router,
        routes_care_team.router,
        preference_page_router,
        routes_activity.router,
        routes_care_pause.router,
        routes_outbound.router,
    ):
        web.include_router(router)
    install_console(web)  # the operators' pages at /console (sessions, not API keys)
    return web
