"""How ``movierec serve`` starts uvicorn: workers get time to import before their liveness ping
counts, and each worker computes with one thread."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import serving.launcher as launcher
from serving.settings import Settings


def test_workers_get_a_minute_to_answer_the_supervisors_ping(monkeypatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(os, "environ", dict(os.environ))  # serve() exports settings for the workers
    monkeypatch.setattr(launcher, "limit_threads", lambda n: calls.append({"threads": n}))
    monkeypatch.setattr(launcher, "limit_malloc_arenas", lambda: None)
    import uvicorn

    def fake_run(app: object, timeout_worker_healthcheck: int = 5, **kwargs: Any) -> None:  # uvicorn >= 0.30's signature
        calls.append({**kwargs, "timeout_worker_healthcheck": timeout_worker_healthcheck})

    monkeypatch.setattr(uvicorn, "run", fake_run)
    launcher.serve(Settings(model=tmp_path / "model"), workers=2)
    assert calls[0] == {"threads": 1}
    assert calls[1]["workers"] == 2 and calls[1]["timeout_worker_healthcheck"] == launcher.WORKER_HEALTHCHECK_S >= 30
    assert os.environ["MOVIEREC_MODEL"] == str(tmp_path / "model")
