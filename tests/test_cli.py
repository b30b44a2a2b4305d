"""The ``carenotify`` command, run as a real process on the embedded default."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import REDIS_URL
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


def test_api_key_create_prints_a_key_that_the_api_accepts(tmp_path: Path, make_app) -> None:  # type: ignore[no-untyped-def]
    created = _run(["api-key", "create", "care-platform", "--scopes", "patients"], tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("cn_") and "cannot be shown again" in created.stderr
    again = _run(["api-key", "create", "care-platform", "--scopes", "patients"], tmp_path)
    assert again.returncode == 2 and "name: an API client with that name exists" in again.stderr

    app = make_app(database_url=f"sqlite:///{tmp_path / 'cli.db'}")
    with TestClient(create_web_app(app)) as client:
        body = {"external_ref": "pt-1", "time_zone": "UTC"}
        assert client.post("/v1/patients", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert _run(["api-key", "revoke", "care-platform"], tmp_path).returncode == 0
        assert client.post("/v1/patients", json=body, headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert _run(["api-key", "revoke", "care-platform"], tmp_path).returncode == 1


def test_demo_shows_notifications_flowing(tmp_path: Path) -> None:
    result = _run(["demo"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    assert "demo-patient-1: care_team_message -> sent via push" in lines[0]
    assert "demo-patient-2: care_team_message -> sent via sms" in lines[1]
    assert "demo-patient-3: account_notice -> sent via email" in lines[2]
    assert "demo-patient-4: care_team_message -> suppressed via - (muted by patient" in lines[3]
    sent = [json.loads(line) for line in (tmp_path / "sink.jsonl").read_text().splitlines()]
    assert sorted(m["channel"] for m in sent) == ["email", "push", "sms"]
    assert all("555" not in m["body"] and "patient3" not in m["body"] for m in sent)
    # Run again: the patients are reused, new notifications flow.
    assert _run(["demo"], tmp_path).returncode == 0
    assert len((tmp_path / "sink.jsonl").read_text().splitlines()) == 6


def _spawn(args: list[str], tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    full_env = {
        **os.environ,
        "CARENOTIFY_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "CARENOTIFY_CONSOLE_SINK": str(tmp_path / "sink.jsonl"),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for another process to get somewhere (not timing logic: the test cannot go on before it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(process: subprocess.Popen[str], *, exit_codes: tuple[int, ...] = (0,)) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in exit_codes, stderr
    return stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_web_serves_the_api_over_http_and_stops_on_sigterm(tmp_path: Path) -> None:
    assert _run(["db", "upgrade"], tmp_path).returncode == 0
    key = _run(["api-key", "create", "care-platform", "--scopes", "notify,patients,read"], tmp_path).stdout.strip()
    port = _free_port()
    web = _spawn(["web", "--host", "127.0.0.1", "--port", str(port)], tmp_path)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        _wait_for(up, "carenotify web to answer /healthz")
        auth = {"Authorization": f"Bearer {key}"}
        patient = httpx.post(f"{base}/v1/patients", json={"external_ref": "pt-1", "time_zone": "UTC"}, headers=auth)
        assert patient.status_code == 200
        assert "carenotify_queue_depth" in httpx.get(f"{base}/metrics").text
    finally:
        # uvicorn shuts down gracefully, then re-raises the signal so the supervisor sees why it ended.
        stderr = _stop(web, exit_codes=(0, -signal.SIGTERM))
    assert "Application shutdown complete" in stderr


@pytest.mark.redis
def test_send_worker_and_scheduler_processes_on_redis(tmp_path: Path, redis_namespace: str) -> None:
    env = {
        "CARENOTIFY_BROKER": "redis",
        "CARENOTIFY_REDIS_URL": REDIS_URL,
        "CARENOTIFY_REDIS_NAMESPACE": redis_namespace,
    }
    assert _run(["db", "upgrade"], tmp_path, **env).returncode == 0
    from worker.bootstrap import build_app
    from worker.patients import upsert_patient
    from worker.settings import load_settings

    setup = build_app(load_settings(database_url=f"sqlite:///{tmp_path / 'cli.db'}", broker="memory"))
    patient_id = upsert_patient(setup.engine, setup.clock, external_ref="pt-1", time_zone="UTC", phone="+12125550123")
    # Committed while "the broker was down" (queued on a throwaway in-memory broker): only the relay can save it.
    lost = setup.submit(patient_id=patient_id, category="care_team_message", idempotency_key="lost-1").notification_id
    setup.close()
    sink = tmp_path / "sink.jsonl"

    def sent_ids() -> set[int]:
        return (
            {json.loads(line)["notification_id"] for line in sink.read_text().splitlines()} if sink.exists() else set()
        )

    worker = _spawn(["worker", "--threads", "1"], tmp_path, **env)
    scheduler = _spawn(
        ["scheduler"],
        tmp_path,
        CARENOTIFY_OUTBOX__RELAY_INTERVAL_SECONDS="0.5",
        CARENOTIFY_OUTBOX__REQUEUE_AFTER_SECONDS="0.5",
        **env,
    )
    try:
        sent = _run(["send", "--patient-ref", "pt-1", "--idempotency-key", "msg-1"], tmp_path, **env)
        assert sent.returncode == 0, sent.stderr
        fresh = json.loads(sent.stdout)["notification_id"]
        _wait_for(lambda: {fresh, lost} <= sent_ids(), "the worker to send both notifications")
    finally:
        stopped = [_stop(scheduler), _stop(worker)] if scheduler.poll() is None and worker.poll() is None else []
        for process in (scheduler, worker):
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert len(stopped) == 2, "a process died early"
    status = json.loads(_run(["status", str(lost)], tmp_path).stdout)
    assert status["state"] == "sent" and status["provider_calls"][0]["channel"] == "sms"


@pytest.mark.redis
def test_dead_letters_list_and_replay(tmp_path: Path, make_app, redis_namespace: str) -> None:  # type: ignore[no-untyped-def]
    import dramatiq

    from integrations.fake import ScriptedProvider
    from tests.conftest import create_patient, fake_providers
    from worker.broker import queue_depths
    from worker.categories import Channel
    from worker.dead_letters import list_dead_letters
    from worker.outbox import submit

    class Exploding(ScriptedProvider):
        def send(self, *, message):  # type: ignore[no-untyped-def]
            raise RuntimeError("bug")

    env = {
        "CARENOTIFY_BROKER": "redis",
        "CARENOTIFY_REDIS_URL": REDIS_URL,
        "CARENOTIFY_REDIS_NAMESPACE": redis_namespace,
    }
    app = make_app(
        providers=fake_providers(push=Exploding(name="push", channel=Channel.PUSH)),
        database_url=f"sqlite:///{tmp_path / 'cli.db'}",
        broker="redis",
        redis_url=REDIS_URL,
        broker_namespace=redis_namespace,
    )
    nid = submit(
        app.engine,
        app.clock,
        lambda _: None,  # queued by hand below
        patient_id=create_patient(app),
        category="care_team_message",
        idempotency_key="dl",
        channels=[Channel.PUSH],
    ).notification_id
    # Already retried to the cap: the next crash puts it among the dead letters.
    app.broker.enqueue(app.actors.deliver.message(nid).copy(options={"retries": 99}))
    worker = dramatiq.Worker(app.broker, worker_threads=1)
    worker.start()
    try:
        _wait_for(lambda: bool(list_dead_letters(app.broker, "deliveries")), "a dead letter")
    finally:
        worker.stop()

    listed = _run(["dead-letters", "list"], tmp_path, **env)
    assert listed.returncode == 0, listed.stderr
    [letter] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert letter["notification_id"] == nid and letter["actor"] == "deliver" and letter["dead_since"]

    assert _run(["dead-letters", "replay", "no-such-id"], tmp_path, **env).returncode == 1
    replayed = _run(["dead-letters", "replay", letter["message_id"]], tmp_path, **env)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == {"replayed": letter["message_id"], "notification_id": nid}
    assert list_dead_letters(app.broker, "deliveries") == []
    assert queue_depths(app.broker)["deliveries"] == 1  # queued again for a (fixed) worker
    empty = _run(["dead-letters", "list"], tmp_path, **env)
    assert empty.stdout == "" and "no dead letters" in empty.stderr


@pytest.mark.parametrize("command", ["run", "web"])
def test_a_taken_port_is_a_clear_error_not_a_process_without_http(tmp_path: Path, command: str) -> None:
    # Before, `run` printed "running" and went on without HTTP (uvicorn's bind failure ended only its thread).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        once = ["--once"] if command == "run" else []  # were it to start, `run --once` would exit by itself
        result = _run([command, "--host", "127.0.0.1", "--port", str(port), *once], tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert "running" not in result.stdout and "Traceback" not in result.stderr
