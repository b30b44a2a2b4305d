"""The API on the production database: concurrent duplicates never do the work twice."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from tests.conftest import create_patient
from worker.db import session_scope
from worker.models import Notification, Patient
from worker.web.app import create_web_app
from worker.web.auth import create_api_key

pytestmark = pytest.mark.postgres


def _together(call: Callable[[], Response], times: int = 8) -> list[Response]:
    with ThreadPoolExecutor(max_workers=times) as pool:
        return list(pool.map(lambda _: call(), range(times)))


def _count(engine, model: type) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_concurrent_duplicates_on_postgres(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url=pg_url)
    auth = {"Authorization": f"Bearer {create_api_key(app.engine, app.clock, 'care-platform')}"}
    create_patient(app, ref="pt-1")
    with TestClient(create_web_app(app)) as client:
        body = {"patient_ref": "pt-1", "message_id": "m-1"}
        keyed = _together(
            lambda: client.post("/v1/care-team-messages", json=body, headers={**auth, "Idempotency-Key": "k-1"})
        )
        assert {r.status_code for r in keyed} <= {202, 409}, [r.text for r in keyed]
        assert {r.text for r in keyed if r.status_code == 202} == {'{"notification_id":1,"created":true}'}
        assert all(r.json()["field"] == "Idempotency-Key" for r in keyed if r.status_code == 409)

        patient = {"external_ref": "pt-new", "time_zone": "UTC"}
        unkeyed = _together(lambda: client.post("/v1/patients", json=patient, headers=auth))
        # Without a key a lost race is a 409 naming a retry, never a 500 and never a second row.
        assert {r.status_code for r in unkeyed} <= {200, 409}, [r.text for r in unkeyed]
        assert 200 in {r.status_code for r in unkeyed}
    assert _count(app.engine, Notification) == 1
    assert _count(app.engine, Patient) == 2
