"""Property-based fuzzing of the whole API against its own OpenAPI schema (schemathesis + hypothesis).

Valid and invalid requests alike must never produce a 5xx; every refusal is JSON naming the field at fault.
Bounded and deterministic: a few examples per operation, derandomised.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.conftest import create_patient
from tests.web.conftest import Api
from worker.web.app import create_web_app


def _operations(api: Api) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_web_app(api.app))
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_api_never_fails_and_refusals_name_the_field(api: Api, mode: GenerationMode) -> None:
    create_patient(api.app, ref="pt-fuzz")
    operations = _operations(api)
    assert len(operations) >= 5
    seen: set[int] = set()
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not list(operation.iter_parameters()) and not operation.body:
            continue  # nothing to get wrong in e.g. GET /healthz

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=15, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case: Any) -> None:
            response = case.call(headers={**(case.headers or {}), **api.auth})
            seen.add(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            if 400 <= response.status_code < 500:
                body = response.json()
                assert isinstance(body.get("field"), str) and body["field"], body
                assert body.get("message") and body.get("error"), body

        check()
    # Each mode really reached the app: valid input is accepted somewhere, invalid input refused.
    assert any(code < 300 for code in seen) if mode is GenerationMode.POSITIVE else 422 in seen, seen


def test_the_schema_documents_auth_errors_and_the_idempotency_header(api: Api) -> None:
    with TestClient(create_web_app(api.app)) as client:
        spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/care-team-messages"]["post"]
    assert {p["name"] for p in post["parameters"]} == {"Idempotency-Key"}
    assert post["security"] == [{"HTTPBearer": []}]
    assert set(post["responses"]) >= {"202", "401", "404", "422"}
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error", "field", "message"]
