"""``carenotify api-key ...``: API clients, their scopes and their keys (registered by :mod:`worker.cli`).

A key is printed once, on standard output alone (so ``KEY=$(carenotify api-key create ...)`` captures it), and
stored only as a digest. Rotation without downtime: ``add-key`` (deploy the new key), then ``revoke --key-id``
of the old one; after a leak, ``rotate`` (a new key, every other one refused at once).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from worker.bootstrap import App, build_app
from worker.logs import configure_logging
from worker.migrate import upgrade
from worker.settings import Settings
from worker.web.auth import (
    Scope,
    add_api_key,
    create_api_key,
    list_api_clients,
    parse_scopes,
    revoke_api_key,
    rotate_api_key,
    set_api_scopes,
)

_SCOPES_HELP = (
    f"comma-separated, from: {', '.join(Scope)} (e.g. notify,patients,read). "
    "console (the operators' web console) and webhooks (outbound-webhook endpoints) are never implied"
)


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")


def _app(settings: Settings, *, migrate: bool = False) -> App:
    configure_logging(settings)
    app = build_app(settings)
    if migrate:
        upgrade(app.engine)
    return app


def _no_client(name: str) -> int:
    _err(f"no live API client named {name!r}")
    return 1


def _print_key(name: str, key: str, what: str) -> None:
    _out(key)
    _err(f"{what} for {name!r}: store it now, it cannot be shown again.")


def cmd_create(settings: Settings, args: argparse.Namespace) -> int:
    """Register an API client with its scopes and print its first key."""
    scopes = parse_scopes(args.scopes)  # refused before anything is written
    app = _app(settings, migrate=True)
    try:
        key = create_api_key(app.engine, app.clock, args.name, scopes=scopes)
    finally:
        app.close()
    _print_key(args.name, key, f"API key (scopes: {', '.join(sorted(scopes))})")
    return 0


def cmd_add_key(settings: Settings, args: argparse.Namespace) -> int:
    """A further key for a client; its other keys keep working (deploy it, then revoke the old one)."""
    app = _app(settings, migrate=True)
    try:
        key = add_api_key(app.engine, app.clock, args.name)
    finally:
        app.close()
    if key is None:
        return _no_client(args.name)
    _print_key(args.name, key, "Additional API key")
    return 0


def cmd_rotate(settings: Settings, args: argparse.Namespace) -> int:
    """A new key for a client, and every other key of it refused from now on (e.g. after a leak)."""
    app = _app(settings, migrate=True)
    try:
        key = rotate_api_key(app.engine, app.clock, args.name)
    finally:
        app.close()
    if key is None:
        return _no_client(args.name)
    _print_key(args.name, key, "New API key (every other key of this client is revoked)")
    return 0


def cmd_revoke(settings: Settings, args: argparse.Namespace) -> int:
    """Stop accepting one key of a client (``--key-id``), or the client and all its keys."""
    app = _app(settings)
    try:
        revoked = revoke_api_key(app.engine, app.clock, args.name, key_id=args.key_id)
    finally:
        app.close()
    if not revoked:
        if args.key_id:
            _err(f"no live key {args.key_id!r} of a live API client named {args.name!r}")
            return 1
        return _no_client(args.name)
    _out(f"revoked key {args.key_id} of {args.name}" if args.key_id else f"revoked {args.name}")
    return 0


def cmd_set_scopes(settings: Settings, args: argparse.Namespace) -> int:
    """Replace a client's scopes (its keys keep working, with the new scopes from the next request)."""
    scopes = parse_scopes(args.scopes)
    app = _app(settings)
    try:
        granted = set_api_scopes(app.engine, args.name, scopes)
    finally:
        app.close()
    if granted is None:
        return _no_client(args.name)
    _out(f"{args.name}: {', '.join(sorted(granted))}")
    return 0


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    """One JSON line per client: scopes and key ids (never a key)."""
    app = _app(settings)
    try:
        clients = list_api_clients(app.engine)
    finally:
        app.close()
    for client in clients:
        _out(json.dumps(client))
    return 0


def add_api_key_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``api-key`` and its sub-commands on the ``carenotify`` parser."""
    api_key = sub.add_parser("api-key", help="API clients of the HTTP API: scopes and keys")
    commands = api_key.add_subparsers(dest="api_key_command", required=True)

    def command(name: str, func: Callable[[Settings, argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_)
        parser.set_defaults(func=func)
        return parser

    create = command("create", cmd_create, "create a client with its scopes and print its key (once)")
    create.add_argument("name", help="the client's name, e.g. care-platform")
    create.add_argument("--scopes", required=True, help=_SCOPES_HELP)
    command("add-key", cmd_add_key, "print a further key for a client; its other keys keep working").add_argument(
        "name"
    )
    command("rotate", cmd_rotate, "print a new key for a client and revoke all its others").add_argument("name")
    revoke = command("revoke", cmd_revoke, "stop accepting a client (all its keys), or one key with --key-id")
    revoke.add_argument("name")
    revoke.add_argument("--key-id", default=None, help="the public id of one key (cn_<key-id>_...), see `list`")
    set_scopes = command("set-scopes", cmd_set_scopes, "replace a client's scopes")
    set_scopes.add_argument("name")
    set_scopes.add_argument("--scopes", required=True, help=_SCOPES_HELP)
    command("list", cmd_list, "every client, its scopes and key ids, one JSON line each")
