"""The ``carenotify`` command: processes (run, worker, scheduler, web) and operator tasks."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlmodel import col

from worker.bootstrap import App, build_app
from worker.categories import Category
from worker.db import session_scope
from worker.errors import CarenotifyError
from worker.logs import configure_logging
from worker.migrate import upgrade
from worker.models import DeliveryAttempt, Notification, NotificationEvent
from worker.settings import Settings, load_settings


def _app(settings: Settings) -> App:
    configure_logging(settings)
    return build_app(settings)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Worker, scheduler and web in one process: the embedded default."""
    import uvicorn
    from apscheduler.schedulers.background import BackgroundScheduler

    from jobs.scheduler import add_jobs
    from worker.demo import seed_demo
    from worker.runtime import start_worker, stop_worker
    from worker.web.app import create_web_app

    app = _app(settings)
    upgrade(app.engine)
    worker = start_worker(app)
    scheduler = add_jobs(BackgroundScheduler(timezone="UTC"), app)
    scheduler.start()
    if args.demo:
        seed_demo(app)
    server = uvicorn.Server(uvicorn.Config(create_web_app(app), host=args.host, port=args.port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="web", daemon=True)
    thread.start()
    print(f"carenotify running (env={settings.env}, broker={settings.broker}); http://{args.host}:{args.port}/healthz")
    try:
        if args.once:
            app.broker.join(settings.queue_name, timeout=30_000)
            worker.join()
        else:
            from worker.runtime import wait_for_signal

            wait_for_signal()
    finally:
        server.should_exit = True
        scheduler.shutdown(wait=False)
        stop_worker(app, worker)
        app.close()
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from worker.runtime import start_worker, stop_worker, wait_for_signal

    app = _app(settings)
    worker = start_worker(app, threads=args.threads)
    try:
        wait_for_signal()
    finally:
        stop_worker(app, worker)
        app.close()
    return 0


def cmd_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.scheduler import run_blocking

    app = _app(settings)
    try:
        run_blocking(app)
    finally:
        app.close()
    return 0


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from worker.web.app import create_web_app

    app = _app(settings)
    try:
        uvicorn.run(create_web_app(app), host=args.host, port=args.port, log_level="info")
    finally:
        app.close()
    return 0


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    app = _app(settings)
    try:
        upgrade(app.engine)
    finally:
        app.close()
    print("database schema is up to date")
    return 0


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    """Trigger a care-team message notice for a patient (the text never carries the message itself)."""
    from worker.patients import patient_id_for

    app = _app(settings)
    try:
        result = app.submit(
            patient_id=patient_id_for(app.engine, args.patient_ref),
            category=Category(args.category),
            idempotency_key=args.idempotency_key or f"cli:{uuid.uuid4()}",
        )
    finally:
        app.close()
    print(json.dumps({"notification_id": result.notification_id, "created": result.created}))
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    """Why a notification went, was held back, or failed: its state, history and provider attempts."""
    app = _app(settings)
    try:
        with session_scope(app.engine) as session:
            row = session.get(Notification, args.id)
            if row is None:
                print(f"notification {args.id} not found", file=sys.stderr)
                return 1
            events = session.scalars(
                select(NotificationEvent)
                .where(col(NotificationEvent.notification_id) == args.id)
                .order_by(col(NotificationEvent.id))
            ).all()
            attempts = session.scalars(
                select(DeliveryAttempt)
                .where(col(DeliveryAttempt.notification_id) == args.id)
                .order_by(col(DeliveryAttempt.id))
            ).all()
            out = {
                "id": row.id,
                "category": row.category,
                "state": row.state,
                "reason": row.reason,
                "attempts": row.attempt_count,
                "created_at": row.created_at.isoformat(),
                "history": [
                    {"at": e.at.isoformat(), "from": e.from_state, "to": e.to_state, "reason": e.reason} for e in events
                ],
                "provider_calls": [
                    {
                        "at": a.started_at.isoformat(),
                        "channel": a.channel,
                        "provider": a.provider,
                        "target": a.target,
                        "outcome": a.outcome,
                        "error_code": a.error_code,
                        "provider_ref": a.provider_ref,
                        "detail": a.detail,
                    }
                    for a in attempts
                ],
            }
    finally:
        app.close()
    print(json.dumps(out, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carenotify", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="worker + scheduler + web in one process (the embedded default)")
    run.add_argument("--demo", action="store_true", help="seed a demo patient and send a care-team message notice")
    run.add_argument("--once", action="store_true", help="exit when the queue is empty (for demos and smoke tests)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.set_defaults(func=cmd_run)

    worker = sub.add_parser("worker", help="dramatiq worker process")
    worker.add_argument("--threads", type=int, default=None)
    worker.set_defaults(func=cmd_worker)

    sub.add_parser("scheduler", help="APScheduler process (outbox relay, due reminders)").set_defaults(
        func=cmd_scheduler
    )

    web = sub.add_parser("web", help="HTTP ingress process")
    web.add_argument("--host", default="0.0.0.0")
    web.add_argument("--port", type=int, default=8000)
    web.set_defaults(func=cmd_web)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply all migrations").set_defaults(func=cmd_db)

    send = sub.add_parser("send", help="notify a patient (default: a care-team message notice)")
    send.add_argument("--patient-ref", required=True, help="the platform's patient reference")
    send.add_argument("--category", default=Category.CARE_TEAM_MESSAGE.value, choices=[c.value for c in Category])
    send.add_argument("--idempotency-key", default=None)
    send.set_defaults(func=cmd_send)

    status = sub.add_parser("status", help="a notification's state, history and provider attempts")
    status.add_argument("id", type=int)
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        return int(args.func(settings, args))
    except CarenotifyError as exc:
        print(f"carenotify: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
