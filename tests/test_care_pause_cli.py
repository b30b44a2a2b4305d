"""``carenotify patient pause|unpause`` as a real process on the embedded default: the ledger names the operator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select
from sqlmodel import col

from worker.clock import SystemClock
from worker.db import make_engine, session_scope
from worker.migrate import upgrade
from worker.models_consent import CarePauseEvent
from worker.patients import upsert_patient

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], db: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CARENOTIFY_DATABASE_URL": f"sqlite:///{db}"}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )


def test_pause_and_unpause_from_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    upsert_patient(engine, SystemClock(), external_ref="pt-123", time_zone="America/Chicago")

    paused = _run(
        ["patient", "pause", "pt-123", "--reason", "nicu_stay", "--until", "2099-12-01", "--by", "rn-ava"], db
    )
    assert paused.returncode == 0, paused.stderr
    shown = json.loads(paused.stdout)
    assert shown["paused"] and shown["until"] == "2099-12-01T06:00:00+00:00" and shown["by"] == "operator:rn-ava"
    assert "nicu_stay" not in paused.stderr, "the reason code is never logged"

    needs_end = _run(["patient", "pause", "pt-123", "--reason", "nicu_stay"], db)
    assert needs_end.returncode == 2 and "--until" in needs_end.stderr
    free_text = _run(["patient", "pause", "pt-123", "--reason", "sad", "--indefinite"], db)
    assert free_text.returncode == 2 and "invalid choice" in free_text.stderr
    past = _run(["patient", "pause", "pt-123", "--reason", "nicu_stay", "--until", "2001-01-01"], db)
    assert past.returncode == 2 and "until: must be in the future" in past.stderr
    nobody = _run(["patient", "unpause", "nobody"], db)
    assert nobody.returncode == 2 and "no patient with that external_ref" in nobody.stderr

    lifted = _run(["patient", "unpause", "pt-123", "--by", "rn-ava"], db)
    assert lifted.returncode == 0, lifted.stderr
    assert json.loads(lifted.stdout) == {"paused": False, "changed": True}
    with session_scope(engine) as session:
        entries = [
            (e.paused, e.reason_code, e.source, e.actor)
            for e in session.scalars(select(CarePauseEvent).order_by(col(CarePauseEvent.id)))
        ]
    engine.dispose()
    assert entries == [(True, "nicu_stay", "operator", "operator:rn-ava"), (False, None, "operator", "operator:rn-ava")]
