"""``carenotify patient ...``: operator commands about one patient, named by her ``external_ref``.

The group is open to more commands (``add_patient_commands`` returns its subparsers); it does not claim the bare
``carenotify patient REF`` form. A change made here is written to the consent ledger as ``operator:<name>``
(``--by``, default the operating-system user running the command).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from worker.bootstrap import App, build_app
from worker.care_pause import PauseView, lift_pause, parse_until, set_pause
from worker.db import session_scope
from worker.logs import configure_logging
from worker.models import Patient
from worker.models_consent import ConsentSource, PauseReason
from worker.patients import patient_id_for
from worker.settings import Settings


def _app(settings: Settings) -> App:
    configure_logging(settings)
    return build_app(settings)


def _actor(args: argparse.Namespace) -> str:
    return f"operator:{args.by or getpass.getuser()}"


def _shown(view: PauseView | None, changed: bool) -> dict[str, Any]:
    if view is None:
        return {"paused": False, "changed": changed}
    return {
        "paused": True,
        "reason": view.reason.value,
        "until": view.until.isoformat() if view.until else None,
        "hold_appointment_reminders": view.hold_appointment_reminders,
        "since": view.since.isoformat(),
        "by": view.by,
        "changed": changed,
    }


def cmd_pause(settings: Settings, args: argparse.Namespace) -> int:
    """Pause (or change the pause of) a patient's non-essential notices."""
    app = _app(settings)
    try:
        patient_id = patient_id_for(app.engine, args.ref)
        with session_scope(app.engine) as session:
            patient = session.get(Patient, patient_id)
            zone = patient.time_zone if patient is not None else "UTC"
        until = None if args.indefinite else parse_until(args.until, zone, app.clock.now())
        view, changed = set_pause(
            app.engine,
            app.clock,
            patient_id=patient_id,
            reason=PauseReason(args.reason),
            until=until,
            hold_appointment_reminders=args.hold_appointment_reminders,
            source=ConsentSource.OPERATOR,
            actor=_actor(args),
        )
    finally:
        app.close()
    sys.stdout.write(json.dumps(_shown(view, changed)) + "\n")
    return 0


def cmd_unpause(settings: Settings, args: argparse.Namespace) -> int:
    """Lift a patient's pause; what it held is checked again at once."""
    app = _app(settings)
    try:
        lifted = lift_pause(
            app.engine,
            app.clock,
            patient_id=patient_id_for(app.engine, args.ref),
            source=ConsentSource.OPERATOR,
            actor=_actor(args),
        )
    finally:
        app.close()
    sys.stdout.write(json.dumps(_shown(None, lifted)) + "\n")
    if not lifted:
        sys.stderr.write("no care pause was in force\n")
    return 0


def add_patient_commands(sub: Any) -> Any:
    """Register ``carenotify patient pause|unpause``; returns the group's subparsers for further commands."""
    patient = sub.add_parser("patient", help="operator commands about one patient (by her external_ref)")
    commands = patient.add_subparsers(dest="patient_command", required=True)

    pause = commands.add_parser(
        "pause",
        help="pause everything but care-team messages and account notices",
        description="Marketing and campaigns leave her out, survey notices wait or are cancelled (per survey), "
        "appointment reminders go unless --hold-appointment-reminders.",
    )
    pause.add_argument("ref", metavar="REF", help="the patient's external_ref")
    pause.add_argument("--reason", required=True, choices=[r.value for r in PauseReason])
    end = pause.add_mutually_exclusive_group(required=True)
    end.add_argument(
        "--until", help="a date (2026-12-01: the start of that day in her time zone) or an instant with an offset"
    )
    end.add_argument("--indefinite", action="store_true", help="until lifted with `patient unpause`")
    pause.add_argument("--hold-appointment-reminders", action="store_true", help="hold appointment reminders too")
    pause.add_argument("--by", default=None, help="who is doing this (default: your login name)")
    pause.set_defaults(func=cmd_pause)

    unpause = commands.add_parser("unpause", help="lift a patient's care pause")
    unpause.add_argument("ref", metavar="REF", help="the patient's external_ref")
    unpause.add_argument("--by", default=None, help="who is doing this (default: your login name)")
    unpause.set_defaults(func=cmd_unpause)
    return commands
