"""Serving must not pull in Lightning or training code, even after loading a bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serving_loads_a_bundle_without_lightning(bundle_path: Path) -> None:
    code = f"""
import json, sys
from fastapi.testclient import TestClient
from serving.app import create_app
from serving.settings import Settings
with TestClient(create_app(Settings(model={str(bundle_path)!r}))) as c:
    assert c.get("/users/1/recommendations").status_code == 200
bad = [m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric")
       or m in ("retrieval.two_tower", "ranking.ranker", "movierec.pipeline")]
print(json.dumps(bad))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
