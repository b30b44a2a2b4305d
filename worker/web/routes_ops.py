"""For the platform around the service: liveness (``/healthz``) and Prometheus (``/metrics``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from worker.web.deps import AppDep
from worker.web.metrics_collector import build_registry

router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz(app: AppDep) -> JSONResponse:
    """Liveness and readiness: the database answers. Used by the process supervisor and load balancer."""
    try:
        with app.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


@router.get("/metrics", response_class=Response)
def metrics(app: AppDep) -> Response:
    """Counts kept in the database (the scheduler's rollup for settled rows, a live count of the open ones), so
    every web process reports the same and a scrape costs the same at any table size
    (``worker.web.metrics_collector``)."""
    registry = app.extras.get("metrics_registry")
    if registry is None:
        registry = app.extras["metrics_registry"] = build_registry(app)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
