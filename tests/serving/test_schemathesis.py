"""Property-based requests generated from the app's own OpenAPI schema: no 500, and answers
that conform to the declared status codes, content types and response schemas."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import API_KEY

EXAMPLES_PER_OPERATION = 20  # ~ 200 requests over the 10 operations; the long run: test_schemathesis_long.py


def test_generated_requests_never_get_a_server_error(bundle_path: Path) -> None:
    app = create_app(Settings(model=bundle_path, api_key=API_KEY))
    with TestClient(app):  # lifespan entered: the bundle is loaded for the ASGI calls below
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 9
        calls: list[str] = []
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                response = case.call()
                calls.append(f"{case.method} {case.path} -> {response.status_code}")
                assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"
                # every other check runs; "schema-valid data must be accepted" cannot hold for rules a
                # static schema cannot state (genre vocabulary of the bundle, year_min <= year_max)
                case.validate_response(response, excluded_checks=[positive_data_acceptance])

            check()
        assert len(calls) >= 5 * len(operations)
