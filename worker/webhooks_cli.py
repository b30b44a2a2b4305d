"""``carenotify webhooks ...``: register endpoints, see their health, disable, enable, remove, replay.

``add`` prints the endpoint's signing secret once, alone on standard output (``SECRET=$(carenotify webhooks add
...)``); its id and what to do with the secret go to standard error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from datetime import datetime, timedelta

from worker.bootstrap import App, build_app
from worker.errors import InvalidInput
from worker.logs import configure_logging
from worker.migrate import upgrade
from worker.outbound.dispatch import replay
from worker.outbound.endpoints import add_endpoint, list_endpoints, remove_endpoint, set_enabled
from worker.outbound.events import EventType
from worker.settings import Settings

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(raw: str, now: datetime) -> datetime:
    """``2026-03-01T00:00:00Z`` (with an offset) or a span back from now: ``90m``, ``6h``, ``3d``."""
    match = _RELATIVE.match(raw.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        since = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput("since", "must be an ISO 8601 instant with an offset, or a span like 90m, 6h, 3d") from None
    if since.tzinfo is None:
        raise InvalidInput("since", "must include a UTC offset (e.g. 2026-03-01T00:00:00Z)")
    return since


def _app(settings: Settings) -> App:
    configure_logging(settings)
    app = build_app(settings)
    upgrade(app.engine)
    return app


def _with_app(settings: Settings, work: Callable[[App], int]) -> int:
    app = _app(settings)
    try:
        return work(app)
    finally:
        app.close()


def cmd_add(settings: Settings, args: argparse.Namespace) -> int:
    def work(app: App) -> int:
        view, secret = add_endpoint(
            app.engine, app.clock, url=args.url, events=args.events, ordered=args.ordered, description=args.description
        )
        sys.stdout.write(secret + "\n")
        sys.stderr.write(
            f"webhook endpoint {view.id} ({', '.join(view.events)}): this is its signing secret; "
            "store it now, it cannot be shown again.\n"
        )
        return 0

    return _with_app(settings, work)


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    def work(app: App) -> int:
        for view in list_endpoints(app.engine):
            sys.stdout.write(json.dumps(view.as_json()) + "\n")
        return 0

    return _with_app(settings, work)


def _toggle(enabled: bool) -> Callable[[Settings, argparse.Namespace], int]:
    def cmd(settings: Settings, args: argparse.Namespace) -> int:
        def work(app: App) -> int:
            view = set_enabled(app.engine, app.clock, args.id, enabled=enabled)
            sys.stdout.write(f"webhook endpoint {view.id} {'enabled' if enabled else 'disabled'}\n")
            return 0

        return _with_app(settings, work)

    return cmd


def cmd_remove(settings: Settings, args: argparse.Namespace) -> int:
    def work(app: App) -> int:
        remove_endpoint(app.engine, args.id)
        sys.stdout.write(f"webhook endpoint {args.id} removed\n")
        return 0

    return _with_app(settings, work)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    def work(app: App) -> int:
        since = parse_since(args.since, app.clock.now())
        queued = replay(app.engine, app.clock, since=since, endpoint_id=args.endpoint)
        sys.stdout.write(f"{queued} deliveries queued again (events since {since.isoformat()}, same webhook-id)\n")
        return 0

    return _with_app(settings, work)


def add_webhook_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``webhooks`` and its sub-commands on the ``carenotify`` parser."""
    hooks = sub.add_parser("webhooks", help="outbound webhooks to the platform: endpoints, health, replay")
    commands = hooks.add_subparsers(dest="webhooks_command", required=True)
    add = commands.add_parser("add", help="register an endpoint; prints its signing secret (once)")
    add.add_argument("url")
    add.add_argument(
        "--events", required=True, help=f"comma-separated, from: {', '.join(EventType)}; or * for every type"
    )
    add.add_argument("--ordered", action="store_true", help="deliver one patient's events in order")
    add.add_argument("--description", default=None)
    add.set_defaults(func=cmd_add)
    commands.add_parser("list", help="every endpoint and its health, one JSON line each").set_defaults(func=cmd_list)
    for name, func, text in (
        ("disable", _toggle(False), "stop sending to an endpoint (what is pending waits)"),
        ("enable", _toggle(True), "send to it again (pending deliveries resume; replay sends what was missed)"),
        ("remove", cmd_remove, "delete an endpoint and its deliveries"),
    ):
        parser = commands.add_parser(name, help=text)
        parser.add_argument("id", type=int)
        parser.set_defaults(func=func)
    again = commands.add_parser("replay", help="send again every event since a time (same webhook-id)")
    again.add_argument("--since", required=True, help="ISO 8601 with offset (2026-03-01T00:00:00Z) or 90m, 6h, 3d")
    again.add_argument("--endpoint", type=int, default=None, help="only this endpoint (default: every enabled one)")
    again.set_defaults(func=cmd_replay)
