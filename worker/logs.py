"""Structured logging. Log lines carry ids and outcomes only: never names, numbers, addresses or text."""

from __future__ import annotations

import logging
import sys

import structlog

from worker.settings import Settings


def _drop_all(_record: logging.LogRecord) -> bool:
    return False


def configure_logging(settings: Settings) -> None:
    """Called once by each process entry point (never at import)."""
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    # Two lines per job run (the relay runs every second) are noise, not news; and httpx logs request URLs,
    # which carry APNs device tokens. Their warnings and errors still show.
    for noisy in ("apscheduler.executors", "apscheduler.scheduler", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # uvicorn's access log writes each request's concrete path and query: patient refs, unsubscribe tokens.
    # Our servers are built with access_log=False and worker.web.access_log writes a route-template line
    # instead; this filter drops uvicorn's lines even if a server is started with it on (a filter survives
    # the dictConfig uvicorn applies at start-up, a level or ``disabled`` does not).
    access = logging.getLogger("uvicorn.access")
    if _drop_all not in access.filters:
        access.addFilter(_drop_all)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
