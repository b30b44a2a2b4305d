"""The ``carenotify`` command, run as a real process on the embedded default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from worker.web.app import create_web_app

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "CARENOTIFY_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "CARENOTIFY_CONSOLE_SINK": str(tmp_path / "sink.jsonl"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_run_demo_once_delivers_a_phi_free_push(tmp_path: Path) -> None:
    result = _run(["run", "--demo", "--once", "--port", "0"], tmp_path)
    assert result.returncode == 0, result.stderr
    [line] = (tmp_path / "sink.jsonl").read_text().splitlines()
    sent = json.loads(line)
    assert sent["channel"] == "push" and sent["body"] == "You have a new message from your care team."

    status = _run(["status", str(sent["notification_id"])], tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["state"] == "sent"
    assert [h["to"] for h in report["history"]] == ["pending", "sending", "sent"]
    assert report["provider_calls"][0]["provider"] == "console"


def test_db_upgrade_send_and_status(tmp_path: Path) -> None:
    assert _run(["db", "upgrade"], tmp_path).returncode == 0
    unknown = _run(["send", "--patient-ref", "nobody"], tmp_path)
    assert unknown.returncode == 2 and "no patient with that external_ref" in unknown.stderr
    missing = _run(["status", "42"], tmp_path)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_config_error_is_one_readable_line(tmp_path: Path) -> None:
    result = _run(["db", "upgrade"], tmp_path, CARENOTIFY_WORKER_THREADS="lots")
    assert result.returncode == 2
    assert "CARENOTIFY_WORKER_THREADS" in result.stderr and "Traceback" not in result.stderr


def test_healthz_reports_database(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    with TestClient(create_web_app(app)) as client:
        response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok", "database": "ok"}
