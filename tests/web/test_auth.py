"""API keys: required, stored only as a digest, revocable one by one, rotatable; scopes enforced on every route."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlmodel import col

from tests.conftest import PG_URL, create_patient
from tests.web.conftest import Api, assert_refused
from worker.db import make_engine, session_scope
from worker.migrate import upgrade
from worker.models import Notification, Patient
from worker.models_api import ApiClient, ApiKey
from worker.web.access_log import flat_routes
from worker.web.app import create_web_app
from worker.web.auth import (
    API_SCOPES,
    Scope,
    add_api_key,
    authenticate,
    create_api_key,
    list_api_clients,
    revoke_api_key,
    rotate_api_key,
    set_api_scopes,
)

PATIENT = {"external_ref": "pt-1", "time_zone": "America/Chicago"}
ROOT = Path(__file__).resolve().parents[2]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_missing_and_wrong_keys_are_refused_and_change_nothing(api: Api) -> None:
    missing = api.client.post("/v1/patients", json=PATIENT)
    assert_refused(missing, 401, "Authorization")
    assert missing.headers["www-authenticate"] == "Bearer"
    forged = api.key[:-4] + ("AAAA" if not api.key.endswith("AAAA") else "BBBB")
    assert_refused(api.client.post("/v1/patients", json=PATIENT, headers=_bearer(forged)), 401, "Authorization")
    assert_refused(
        api.client.get("/v1/notifications/1", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, "Authorization"
    )
    ok = api.client.post("/v1/patients", json=PATIENT, headers=api.auth)
    assert ok.status_code == 200 and ok.json()["patient_id"] == 1  # the refused ones wrote no row


def test_key_is_stored_as_a_digest_only(api: Api) -> None:
    with session_scope(api.app.engine) as session:
        [client] = session.scalars(select(ApiClient)).all()
        [key] = session.scalars(select(ApiKey)).all()
    assert client.name == "care-platform" and key.client_id == client.id
    assert api.key not in (key.key_sha256, key.key_id) and len(key.key_sha256) == 64
    assert api.key.split("_")[1] == key.key_id


def test_revoked_client_stops_working(api: Api) -> None:
    other = create_api_key(api.app.engine, api.app.clock, "tool")
    second = add_api_key(api.app.engine, api.app.clock, "tool")
    assert second is not None and authenticate(api.app.engine, other) is not None
    assert revoke_api_key(api.app.engine, api.app.clock, "tool") is True
    assert revoke_api_key(api.app.engine, api.app.clock, "tool") is False
    assert authenticate(api.app.engine, other) is None and authenticate(api.app.engine, second) is None
    assert_refused(api.client.post("/v1/patients", json=PATIENT, headers=_bearer(other)), 401, "Authorization")
    assert add_api_key(api.app.engine, api.app.clock, "tool") is None, "a revoked client gets no new key"
    assert api.client.post("/v1/patients", json=PATIENT, headers=api.auth).status_code == 200


#: Every /v1 route, what it needs, and a request that would pass validation. The route table of the app is
#: checked against this list, so a new route without a scope decision fails here.
ROUTES: list[tuple[str, str, str, dict[str, object] | None, frozenset[Scope]]] = [
    ("POST", "/v1/patients", "/v1/patients", PATIENT, frozenset({Scope.PATIENTS})),
    (
        "POST",
        "/v1/patients/{external_ref}/devices",
        "/v1/patients/pt-1/devices",
        {"platform": "ios", "token": "tok-123"},
        frozenset({Scope.PATIENTS}),
    ),
    (
        "POST",
        "/v1/patients/{external_ref}/erase",
        "/v1/patients/pt-erase/erase",
        {"reason": "patient_request"},
        frozenset({Scope.ERASE}),
    ),
    (
        "GET",
        "/v1/patients/{external_ref}/preferences",
        "/v1/patients/pt-1/preferences",
        None,
        frozenset({Scope.PREFERENCES, Scope.READ}),
    ),
    (
        "POST",
        "/v1/patients/{external_ref}/preferences",
        "/v1/patients/pt-1/preferences",
        {"changes": [{"category": "marketing", "channel": "push", "enabled": False}]},
        frozenset({Scope.PREFERENCES}),
    ),
    (
        "POST",
        "/v1/care-team-messages",
        "/v1/care-team-messages",
        {"patient_ref": "pt-1", "message_id": "m-1"},
        frozenset({Scope.NOTIFY}),
    ),
    (
        "GET",
        "/v1/notifications/{notification_id}",
        "/v1/notifications/1",
        None,
        frozenset({Scope.READ}),
    ),
    (
        "POST",
        "/v1/appointments",
        "/v1/appointments",
        {"appointment_ref": "ap-1", "patient_ref": "pt-1", "starts_at": "2026-03-10T15:30:00-05:00"},
        frozenset({Scope.NOTIFY}),
    ),
    (
        "POST",
        "/v1/appointments/{appointment_ref}/reschedule",
        "/v1/appointments/ap-1/reschedule",
        {"starts_at": "2026-03-11T15:30:00-05:00"},
        frozenset({Scope.NOTIFY}),
    ),
    (
        "POST",
        "/v1/appointments/{appointment_ref}/cancel",
        "/v1/appointments/ap-1/cancel",
        None,
        frozenset({Scope.NOTIFY}),
    ),
    (
        "POST",
        "/v1/surveys",
        "/v1/surveys",
        {"assignment_ref": "sv-1", "patient_ref": "pt-1", "survey_key": "postpartum-2w"},
        frozenset({Scope.NOTIFY}),
    ),
    ("POST", "/v1/surveys/{assignment_ref}/complete", "/v1/surveys/sv-1/complete", None, frozenset({Scope.NOTIFY})),
    (
        "POST",
        "/v1/care-team-messages/{message_id}/read",
        "/v1/care-team-messages/m-1/read",
        None,
        frozenset({Scope.NOTIFY}),
    ),
    (
        "POST",
        "/v1/campaigns",
        "/v1/campaigns",
        {"name": "Spring", "template": "news", "channels": ["push"]},
        frozenset({Scope.CAMPAIGNS}),
    ),
    ("POST", "/v1/campaigns/{campaign_id}/launch", "/v1/campaigns/1/launch", {}, frozenset({Scope.CAMPAIGNS})),
    ("POST", "/v1/campaigns/{campaign_id}/cancel", "/v1/campaigns/1/cancel", None, frozenset({Scope.CAMPAIGNS})),
    ("GET", "/v1/campaigns/{campaign_id}", "/v1/campaigns/1", None, frozenset({Scope.CAMPAIGNS, Scope.READ})),
    (
        "GET",
        "/v1/patients/{external_ref}/activity",
        "/v1/patients/pt-1/activity",
        None,
        frozenset({Scope.READ}),
    ),
    (
        "POST",
        "/v1/patients/{external_ref}/pause",
        "/v1/patients/pt-1/pause",
        {"reason": "patient_request", "until": None},
        frozenset({Scope.PREFERENCES}),
    ),
    ("DELETE", "/v1/patients/{external_ref}/pause", "/v1/patients/pt-1/pause", None, frozenset({Scope.PREFERENCES})),
    (
        "GET",
        "/v1/patients/{external_ref}/pause",
        "/v1/patients/pt-1/pause",
        None,
        frozenset({Scope.PREFERENCES, Scope.READ}),
    ),
    (
        "PUT",
        "/v1/appointment-types/{appointment_type}",
        "/v1/appointment-types/postpartum-visit",
        {"confirm_by_reply": True},
        frozenset({Scope.NOTIFY}),
    ),
    ("GET", "/v1/appointment-types", "/v1/appointment-types", None, frozenset({Scope.NOTIFY})),
    (
        "POST",
        "/v1/webhook-endpoints",
        "/v1/webhook-endpoints",
        {"url": "https://platform.example.org/hooks", "events": ["*"]},
        frozenset({Scope.WEBHOOKS}),
    ),
    ("GET", "/v1/webhook-endpoints", "/v1/webhook-endpoints", None, frozenset({Scope.WEBHOOKS})),
    ("GET", "/v1/webhook-endpoints/{endpoint_id}", "/v1/webhook-endpoints/1", None, frozenset({Scope.WEBHOOKS})),
    (
        "POST",
        "/v1/webhook-endpoints/{endpoint_id}/disable",
        "/v1/webhook-endpoints/1/disable",
        None,
        frozenset({Scope.WEBHOOKS}),
    ),
    (
        "POST",
        "/v1/webhook-endpoints/{endpoint_id}/enable",
        "/v1/webhook-endpoints/1/enable",
        None,
        frozenset({Scope.WEBHOOKS}),
    ),
    ("DELETE", "/v1/webhook-endpoints/{endpoint_id}", "/v1/webhook-endpoints/1", None, frozenset({Scope.WEBHOOKS})),
    (
        "POST",
        "/v1/webhook-endpoints/replay",
        "/v1/webhook-endpoints/replay",
        {"since": "2026-03-01T00:00:00Z"},
        frozenset({Scope.WEBHOOKS}),
    ),
]


def test_every_api_route_has_a_scope_decision(api: Api) -> None:
    served = {
        (method, route.path)
        for route in flat_routes(create_web_app(api.app).routes)
        if isinstance(route, APIRoute) and route.path.startswith("/v1/") and "unsubscribe" not in route.path
        for method in route.methods
    }
    assert len(served) > 10, "the app's routes were found"
    assert served == {(method, template) for method, template, *_ in ROUTES}


@pytest.mark.parametrize(
    ("method", "template", "path", "body", "accepted"), ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES]
)
def test_a_key_without_the_routes_scope_gets_403_naming_it_and_changes_nothing(
    api: Api, method: str, template: str, path: str, body: dict[str, object] | None, accepted: frozenset[Scope]
) -> None:
    create_patient(api.app, ref="pt-1", devices=())
    create_patient(api.app, ref="pt-erase", devices=())
    others = API_SCOPES - set(accepted)
    lacking = create_api_key(api.app.engine, api.app.clock, "lacking", scopes=others | {Scope.CONSOLE})
    refused = api.client.request(method, path, json=body, headers={**_bearer(lacking), "Idempotency-Key": "k-1"})
    message = str(assert_refused(refused, 403, "Authorization")["message"])
    assert all(f"'{scope}'" in message for scope in accepted)
    with session_scope(api.app.engine) as session:
        assert session.scalars(select(Notification)).all() == [], "nothing was triggered"
        assert {p.external_ref for p in session.scalars(select(Patient))} == {"pt-1", "pt-erase"}
    for scope in accepted:
        holder = create_api_key(api.app.engine, api.app.clock, f"only-{scope}", scopes=[scope])
        allowed = api.client.request(method, path, json=body, headers={**_bearer(holder), "Idempotency-Key": "k-1"})
        assert allowed.status_code != 403, allowed.text  # 2xx, or 404/409 for lack of data: not a scope refusal


def test_console_scope_opens_no_api_route(api: Api) -> None:
    console = create_api_key(api.app.engine, api.app.clock, "console", scopes=[Scope.CONSOLE])
    for method, _template, path, body, _accepted in ROUTES:
        assert api.client.request(method, path, json=body, headers=_bearer(console)).status_code == 403


def test_a_client_holds_several_keys_and_rotates_without_becoming_another_client(api: Api) -> None:
    engine, clock = api.app.engine, api.app.clock
    first = create_api_key(engine, clock, "platform", scopes="patients,notify")
    second = add_api_key(engine, clock, "platform")
    assert second is not None and second != first
    caller_1, caller_2 = authenticate(engine, first), authenticate(engine, second)
    assert caller_1 is not None and caller_2 is not None
    assert caller_1.id == caller_2.id and caller_1.scopes == caller_2.scopes == {Scope.PATIENTS, Scope.NOTIFY}
    # Same client: an Idempotency-Key used with the old key replays with the new one.
    headers = {"Idempotency-Key": "upsert-pt-9"}
    body = {"external_ref": "pt-9", "time_zone": "UTC"}
    answer = api.client.post("/v1/patients", json=body, headers={**_bearer(first), **headers})
    replay = api.client.post("/v1/patients", json=body, headers={**_bearer(second), **headers})
    assert answer.status_code == replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    # Revoke the old key alone: the new one keeps working.
    assert revoke_api_key(engine, clock, "platform", key_id=first.split("_")[1]) is True
    assert revoke_api_key(engine, clock, "platform", key_id=first.split("_")[1]) is False
    assert revoke_api_key(engine, clock, "care-platform", key_id=second.split("_")[1]) is False, "not its key"
    assert_refused(api.client.post("/v1/patients", json=body, headers=_bearer(first)), 401, "Authorization")
    assert api.client.post("/v1/patients", json=body, headers=_bearer(second)).status_code == 200
    # After a leak: rotate refuses every other key at once.
    third = add_api_key(engine, clock, "platform")
    rotated = rotate_api_key(engine, clock, "platform")
    assert third is not None and rotated is not None
    assert authenticate(engine, second) is None and authenticate(engine, third) is None
    rotated_caller = authenticate(engine, rotated)
    assert rotated_caller is not None and rotated_caller.id == caller_1.id
    [listed] = [c for c in list_api_clients(engine) if c["name"] == "platform"]
    assert listed["scopes"] == ["notify", "patients"] and len(listed["keys"]) == 4
    assert [k["revoked_at"] is None for k in listed["keys"]] == [False, False, False, True]
    assert all(key not in str(listed) for key in (first, second, third, rotated))
    # Scopes are the client's: narrowing them applies to its live key from the next request.
    assert set_api_scopes(engine, "platform", "read") == {Scope.READ}
    assert_refused(api.client.post("/v1/patients", json=body, headers=_bearer(rotated)), 403, "Authorization")


def test_unknown_or_missing_scopes_are_refused_naming_the_field(api: Api) -> None:
    from worker.errors import InvalidInput

    for scopes in ("", "notify,admin", " , "):
        with pytest.raises(InvalidInput, match="^scopes: "):
            create_api_key(api.app.engine, api.app.clock, "x", scopes=scopes)
    with session_scope(api.app.engine) as session:
        assert [c.name for c in session.scalars(select(ApiClient))] == ["care-platform"]


def test_cli_creates_a_client_with_scopes_in_a_real_process(tmp_path: Path, make_app) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "cli.db"
    env = {**os.environ, "CARENOTIFY_DATABASE_URL": f"sqlite:///{db}"}
    created = subprocess.run(
        [sys.executable, "-m", "worker.cli", "api-key", "create", "care-platform", "--scopes", "notify,read"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()  # the key alone on standard output: KEY=$(carenotify api-key create ...)
    assert key.startswith("cn_") and "\n" not in key and "notify, read" in created.stderr
    caller = authenticate(make_app(database_url=f"sqlite:///{db}").engine, key)
    assert caller is not None and caller.scopes == {Scope.NOTIFY, Scope.READ}


def test_cli_scopes_keys_rotation_and_revocation(tmp_path: Path, make_app, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from worker import api_key_cli
    from worker.cli import main

    monkeypatch.setenv("CARENOTIFY_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setattr(api_key_cli, "configure_logging", lambda _settings: None)  # leave pytest's logging alone

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["api-key", *args])
        out, err = capsys.readouterr()
        return code, out.strip(), err

    with pytest.raises(SystemExit) as missing:
        main(["api-key", "create", "care-platform"])
    assert missing.value.code == 2 and "--scopes" in capsys.readouterr().err
    code, _, err = run("create", "care-platform", "--scopes", "notify,root")
    assert code == 2 and "scopes: unknown scope" in err and "notify, patients" in err
    code, first, _ = run("create", "care-platform", "--scopes", "notify,read")
    assert code == 0 and first.startswith("cn_")
    code, second, _ = run("add-key", "care-platform")
    assert code == 0 and second.startswith("cn_") and second != first
    engine = make_app(database_url=f"sqlite:///{tmp_path / 'cli.db'}").engine
    callers = [authenticate(engine, key) for key in (first, second)]
    assert all(c is not None and c.scopes == {Scope.NOTIFY, Scope.READ} for c in callers)
    assert run("revoke", "care-platform", "--key-id", first.split("_")[1])[0] == 0
    assert authenticate(engine, first) is None and authenticate(engine, second) is not None
    assert run("revoke", "care-platform", "--key-id", first.split("_")[1])[0] == 1
    code, rotated, _ = run("rotate", "care-platform")
    assert code == 0 and authenticate(engine, second) is None and authenticate(engine, rotated) is not None
    assert run("set-scopes", "care-platform", "--scopes", "patients") == (0, "care-platform: patients", "")
    code, listing, _ = run("list")
    assert code == 0 and '"scopes": ["patients"]' in listing and rotated not in listing and first not in listing
    assert run("revoke", "care-platform")[0] == 0
    assert authenticate(engine, rotated) is None
    assert run("add-key", "care-platform")[0] == 1 and run("rotate", "nobody")[0] == 1


# -- upgrade: keys made before scopes keep working with every API scope -------------------------------------------


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    base = make_url(PG_URL)
    name = f"carenotify_auth_{uuid.uuid4().hex[:10]}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield base.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


LEGACY_KEY = "cn_0123456789ab_" + "x" * 43


def _seed_before_scopes(engine: sa.Engine) -> None:
    """A database at 0035 (before scopes) as the old code left it: a live and a revoked client, two patients,
    care-team notices keyed per client (msg-1 sent twice by two clients, the old scheme's duplicate)."""
    upgrade(engine, "0035")
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    at = now if engine.dialect.name == "postgresql" else now.replace(tzinfo=None)
    meta = sa.MetaData()
    client, patient, notification = (
        sa.Table(name, meta, autoload_with=engine) for name in ("api_client", "patient", "notification")
    )
    digest = hashlib.sha256(LEGACY_KEY.encode()).hexdigest()
    rows = [
        (1, "api:1:care_team_message:msg-1"),
        (1, "api:2:care_team_message:msg-1"),
        (2, "api:1:care_team_message:msg:with:colons"),
        (1, "appt:7:v1:24h"),
    ]
    with engine.begin() as conn:
        conn.execute(
            client.insert().values(id=1, name="legacy", key_id="0123456789ab", key_sha256=digest, created_at=at)
        )
        conn.execute(
            client.insert().values(
                id=2, name="gone", key_id="ba9876543210", key_sha256="0" * 64, created_at=at, revoked_at=at
            )
        )
        for pid in (1, 2):
            conn.execute(
                patient.insert().values(
                    id=pid, external_ref=f"pt-{pid}", time_zone="UTC", locale="en", created_at=at, updated_at=at
                )
            )
        for pid, idempotency_key in rows:
            conn.execute(
                notification.insert().values(
                    patient_id=pid,
                    category="care_team_message" if "care" in idempotency_key else "appointment_reminder",
                    context={},
                    idempotency_key=idempotency_key,
                    state="sent",
                    attempt_count=1,
                    created_at=at,
                    updated_at=at,
                )
            )


def _upgrade_keeps_old_keys(url: str) -> None:
    engine = make_engine(url)
    try:
        _seed_before_scopes(engine)
        upgrade(engine)
        caller = authenticate(engine, LEGACY_KEY)
        assert caller is not None and caller.name == "legacy" and caller.scopes == API_SCOPES
        assert Scope.CONSOLE not in caller.scopes, "console is never implied"
        with session_scope(engine) as session:
            keys = sorted(n.idempotency_key for n in session.scalars(select(Notification)))
            gone = session.scalars(select(ApiClient).where(col(ApiClient.name) == "gone")).one()
        assert keys == sorted(
            [
                "care_team_message:msg-1",  # the first notice of msg-1 answers a retry from now on
                "api:2:care_team_message:msg-1",  # the old duplicate keeps its key
                "care_team_message:msg:with:colons",
                "appt:7:v1:24h",
            ]
        )
        assert gone.revoked_at is not None and gone.scopes.split(",") == sorted(s.value for s in API_SCOPES)
    finally:
        engine.dispose()


def test_upgrade_keeps_existing_keys_working_on_sqlite(tmp_path: Path) -> None:
    _upgrade_keeps_old_keys(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.postgres
def test_upgrade_keeps_existing_keys_working_on_postgres(fresh_pg_url: str) -> None:
    _upgrade_keeps_old_keys(fresh_pg_url)


def test_a_retry_after_the_upgrade_does_not_notify_twice(make_app) -> None:  # type: ignore[no-untyped-def]
    """A care-team message notified before the upgrade and retried after it: no second notice."""
    app = make_app(migrate=False)
    _seed_before_scopes(app.engine)
    upgrade(app.engine)
    with TestClient(create_web_app(app)) as client:
        retry = client.post(
            "/v1/care-team-messages", json={"patient_ref": "pt-1", "message_id": "msg-1"}, headers=_bearer(LEGACY_KEY)
        )
    assert retry.status_code == 202 and retry.json()["created"] is False
