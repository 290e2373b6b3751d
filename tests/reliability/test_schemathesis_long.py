"""The long Schemathesis run: at least ``MOVIEREC_SCHEMATHESIS_REQUESTS`` (e.g. 1000) requests
generated from the app's OpenAPI schema, spread over every operation, none answered with a 5xx.

The default test run keeps the ~200-request version in ``tests/serving/test_schemathesis.py``;
this one takes minutes, so it runs only when the variable is set::

    MOVIEREC_SCHEMATHESIS_REQUESTS=1200 .venv/bin/python -m pytest tests/reliability/test_schemathesis_long.py

Unlike the short run it also sends the admin key on every request, so generated bodies reach
the handlers of ``POST /items`` and the admin routes instead of stopping at 401.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from serving.app import create_app
from serving.settings import Settings
from tests.reliability.conftest import API_KEY

log = logging.getLogger(__name__)
TOTAL = int(os.environ.get("MOVIEREC_SCHEMATHESIS_REQUESTS", "0"))


@pytest.mark.skipif(TOTAL <= 0, reason="set MOVIEREC_SCHEMATHESIS_REQUESTS (e.g. 1200) for the long run")
def test_thousand_generated_requests_never_get_a_server_error(bundle_path: Path, tmp_path: Path) -> None:
    import shutil

    model = shutil.copytree(bundle_path, tmp_path / "model")  # reload/rollback routes may touch it
    app = create_app(Settings(model=model, api_key=API_KEY))
    with TestClient(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        # operations without parameters (/health, /ready, /metrics) yield one example, hence the margin
        per_operation = math.ceil(1.3 * TOTAL / len(operations))
        statuses: Counter[str] = Counter()
        errors: list[str] = []
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=per_operation,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                headers = {**(case.headers or {}), "X-API-Key": API_KEY}
                response = case.call(headers=headers)
                statuses[f"{case.method} {case.path} {response.status_code}"] += 1
                if response.status_code >= 500:
                    errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")

            check()
        total = sum(statuses.values())
        log.info("schemathesis: %d requests over %d operations\n%s", total, len(operations), "\n".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
        assert not errors, "\n".join(errors[:20])
        assert total >= TOTAL, f"only {total} requests were generated"
