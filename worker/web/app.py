"""The FastAPI application: built around an :class:`App`, so tests and processes share one wiring."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from worker.bootstrap import App


def create_web_app(app: App) -> FastAPI:
    web = FastAPI(title="carenotify", version="0.1.0")
    web.state.app = app

    @web.get("/healthz", tags=["ops"])
    def healthz() -> JSONResponse:
        """Liveness and readiness: the database answers. Used by the process supervisor and load balancer."""
        try:
            with app.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    return web
