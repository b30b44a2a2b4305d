"""The ``carenotify`` command: processes (run, worker, scheduler, web) and operator tasks."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence

from worker.api_key_cli import add_api_key_commands
from worker.bootstrap import App, build_app
from worker.categories import Category
from worker.errors import CarenotifyError, NotFound
from worker.logs import configure_logging
from worker.migrate import upgrade
from worker.patient_cli import add_patient_commands
from worker.settings import Settings, load_settings
from worker.webhooks_cli import add_webhook_commands


def _app(settings: Settings) -> App:
    configure_logging(settings)
    return build_app(settings)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Worker, scheduler and web in one process: the embedded default."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from jobs.scheduler import add_jobs
    from worker.demo import seed_demo
    from worker.runtime import bind_http, http_server, start_http_thread, start_worker, stop_worker
    from worker.web.app import create_web_app

    # Listen first: a taken port stops here, before anything runs, with the reason (exit 2).
    sock = bind_http(args.host, args.port)
    port = sock.getsockname()[1]
    app = _app(settings)
    upgrade(app.engine)
    worker = start_worker(app)
    scheduler = add_jobs(BackgroundScheduler(timezone="UTC"), app)
    scheduler.start()
    server = http_server(create_web_app(app), log_level="warning")
    try:
        if args.demo:
            seed_demo(app)
        start_http_thread(server, sock)
    except BaseException:
        server.should_exit = True
        scheduler.shutdown(wait=False)
        stop_worker(app, worker)
        app.close()
        sock.close()
        raise
    print(f"carenotify running (env={settings.env}, broker={settings.broker}); http://{args.host}:{port}/healthz")
    if args.demo:
        from worker.demo import demo_console_key

        key = demo_console_key(app)
        print(f"operator console: http://{args.host}:{port}/console  (one-time demo key: {key})", flush=True)
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
    import signal

    from jobs.scheduler import run_blocking

    def _exit(signum: int, _frame: object) -> None:
        # SIGTERM (the supervisor's stop) ends the blocking scheduler like Ctrl-C does: cleanly, app closed.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)
    app = _app(settings)
    try:
        run_blocking(app)
    finally:
        app.close()
    return 0


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    from worker.runtime import bind_http, http_server
    from worker.web.app import create_web_app

    sock = bind_http(args.host, args.port)  # a taken port is one clear line and exit 2, not a uvicorn log
    app = _app(settings)
    print(f"carenotify web listening on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    try:
        http_server(create_web_app(app), log_level="info").run(sockets=[sock])
    finally:
        app.close()
        sock.close()
    return 0


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    app = _app(settings)
    try:
        upgrade(app.engine)
    finally:
        app.close()
    print("database schema is up to date")
    return 0


def cmd_db_purge(settings: Settings, args: argparse.Namespace) -> int:
    """Delete what is past its retention now (``--dry-run``: only count it), per table."""
    app = _app(settings)
    try:
        counts = app.retention_job.due() if args.dry_run else dict(app.retention_job.purge_all())
    finally:
        app.close()
    from worker.retention import TABLES

    print(
        json.dumps(
            {
                "dry_run": args.dry_run,
                "deleted" if not args.dry_run else "would_delete": {table: counts.get(table, 0) for table in TABLES},
            }
        )
    )
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
    from worker.notification_report import notification_report

    app = _app(settings)
    try:
        report = notification_report(app.engine, args.id)
    except NotFound:
        print(f"notification {args.id} not found", file=sys.stderr)
        return 1
    finally:
        app.close()
    print(json.dumps(report, indent=2))
    return 0


def cmd_dead_letters_list(settings: Settings, args: argparse.Namespace) -> int:
    """Messages the broker gave up on, oldest first, with the notification each was about."""
    from worker.dead_letters import list_dead_letters

    app = _app(settings)
    try:
        letters = list_dead_letters(app.broker, settings.queue_name)
    finally:
        app.close()
    for letter in letters:
        print(
            json.dumps(
                {
                    "message_id": letter.message_id,
                    "actor": letter.actor_name,
                    "notification_id": letter.notification_id,
                    "retries": letter.retries,
                    "dead_since": letter.dead_since.isoformat() if letter.dead_since else None,
                }
            )
        )
    if not letters:
        print("no dead letters", file=sys.stderr)
    return 0


def cmd_dead_letters_replay(settings: Settings, args: argparse.Namespace) -> int:
    """Queue dead letters again (their FAILED notifications go back to PENDING, written down)."""
    from worker.dead_letters import list_dead_letters, replay_dead_letter

    app = _app(settings)
    missing = 0
    try:
        ids = args.message_ids or (
            [letter.message_id for letter in list_dead_letters(app.broker, settings.queue_name)] if args.all else []
        )
        if not ids:
            print("name MESSAGE_ID(s) to replay, or --all", file=sys.stderr)
            return 2
        for message_id in ids:
            letter = replay_dead_letter(
                app.broker, app.engine, app.clock, app.enqueue, queue_name=settings.queue_name, message_id=message_id
            )
            if letter is None:
                missing += 1
                print(f"no dead letter {message_id}", file=sys.stderr)
            else:
                print(json.dumps({"replayed": message_id, "notification_id": letter.notification_id}))
    finally:
        app.close()
    return 1 if missing else 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Seed a few demo patients on this database and watch their notifications flow through a real worker."""
    from worker.demo import run_demo

    app = _app(settings)
    try:
        upgrade(app.engine)
        outcomes = run_demo(app)
    finally:
        app.close()
    for line in outcomes:
        print(line)
    return 0


def cmd_care_team_read(settings: Settings, args: argparse.Namespace) -> int:
    """She read a care-team message (as ``POST /v1/care-team-messages/{message_id}/read``)."""
    from worker.care_team import mark_read

    app = _app(settings)
    try:
        receipt = mark_read(app.engine, app.clock, idempotency_key=f"care_team_message:{args.message_id}")
    except NotFound:
        print(f"no care-team message notice has message_id {args.message_id}", file=sys.stderr)
        return 1
    finally:
        app.close()
    print(
        json.dumps(
            {
                "notification_id": receipt.notification_id,
                "read_at": receipt.read_at.isoformat(),
                "first": receipt.first,
                "escalation": receipt.escalation,
                "escalation_id": receipt.escalation_id,
            }
        )
    )
    return 0


def cmd_care_team_escalate(settings: Settings, args: argparse.Namespace) -> int:
    """One escalation scan now (the scheduler runs it every ``care_team.escalation_interval_seconds``)."""
    app = _app(settings)
    try:
        made = app.escalate_care_team()
    finally:
        app.close()
    print(json.dumps({"escalated": made}))
    return 0


def cmd_preference_link(settings: Settings, args: argparse.Namespace) -> int:
    """Print a patient's signed link to her preference page (what her emails and the SMS HELP answer carry)."""
    from worker.bootstrap import preference_links
    from worker.errors import ConfigError
    from worker.patients import patient_id_for
    from worker.settings import ENV_PREFIX

    app = _app(settings)
    try:
        links = preference_links(settings, app.clock)
        if links is None:
            raise ConfigError(f"missing secret: set the environment variable {ENV_PREFIX}SIGNING_KEY")
        url = links(patient_id_for(app.engine, args.patient_ref))
    finally:
        app.close()
    print(url)
    return 0


def cmd_activity(settings: Settings, args: argparse.Namespace) -> int:
    """A patient's notifications and consent-ledger rows, newest first, one page (``--cursor`` for the next)."""
    from worker.activity import page_as_json, patient_activity
    from worker.patients import patient_id_for

    app = _app(settings)
    try:
        page = patient_activity(
            app.engine, patient_id_for(app.engine, args.patient_ref), cursor=args.cursor, limit=args.limit
        )
    except NotFound:
        print("no patient with that ref", file=sys.stderr)
        return 1
    finally:
        app.close()
    print(json.dumps(page_as_json(page), indent=2))
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
    purge = db_sub.add_parser("purge", help="delete what is past its retention ([retention] settings), per table")
    purge.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    purge.set_defaults(func=cmd_db_purge)

    send = sub.add_parser("send", help="notify a patient (default: a care-team message notice)")
    send.add_argument("--patient-ref", required=True, help="the platform's patient reference")
    send.add_argument("--category", default=Category.CARE_TEAM_MESSAGE.value, choices=[c.value for c in Category])
    send.add_argument("--idempotency-key", default=None)
    send.set_defaults(func=cmd_send)

    status = sub.add_parser("status", help="a notification's state, history and provider attempts")
    status.add_argument("id", type=int)
    status.set_defaults(func=cmd_status)

    add_api_key_commands(sub)  # create --scopes, add-key, rotate, revoke [--key-id], set-scopes, list
    add_patient_commands(sub)  # patient pause REF --reason ... (--until ... | --indefinite), patient unpause REF
    add_webhook_commands(sub)  # add URL --events, list, disable, enable, remove, replay --since

    dead = sub.add_parser("dead-letters", help="messages the broker gave up on")
    dead_sub = dead.add_subparsers(dest="dead_letters_command", required=True)
    dead_sub.add_parser("list", help="one JSON line per dead letter").set_defaults(func=cmd_dead_letters_list)
    replay = dead_sub.add_parser("replay", help="queue dead letters again")
    replay.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.set_defaults(func=cmd_dead_letters_replay)

    care = sub.add_parser("care-team", help="care-team message notices: read receipts and follow-ups")
    care_sub = care.add_subparsers(dest="care_team_command", required=True)
    read = care_sub.add_parser("read", help="record that she read a message (stops folding and its follow-up)")
    read.add_argument("message_id", metavar="MESSAGE_ID")
    read.set_defaults(func=cmd_care_team_read)
    care_sub.add_parser("escalate", help="make the follow-ups that are due now").set_defaults(
        func=cmd_care_team_escalate
    )
    link = sub.add_parser("preference-link", help="print a patient's signed link to her preference page")
    link.add_argument("patient_ref", metavar="REF", help="the platform's patient reference")
    link.set_defaults(func=cmd_preference_link)

    sub.add_parser("demo", help="seed demo patients and show notifications flowing (embedded default)").set_defaults(
        func=cmd_demo
    )
    activity = sub.add_parser("activity", help="a patient's notifications and consent events, newest first")
    activity.add_argument("patient_ref")
    activity.add_argument("--cursor", default=None, help="next_cursor of the previous page")
    activity.add_argument("--limit", type=int, default=25, choices=range(1, 101), metavar="1-100")
    activity.set_defaults(func=cmd_activity)
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
