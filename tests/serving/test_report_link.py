"""The page links the model report when one exists beside or inside the served bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings


def test_report_is_served_when_present_and_404_otherwise(bundle_path: Path, tmp_path: Path) -> None:
    served = tmp_path / "model"
    shutil.copytree(bundle_path, served)
    with TestClient(create_app(Settings(model=served))) as client:
        missing = client.get("/report")
        assert missing.status_code == 404 and "movierec report" in missing.json()["detail"]
        (tmp_path / "report.html").write_text("<html><body>report of the model</body></html>")
        found = client.get("/report")
        assert found.status_code == 200 and "report of the model" in found.text
        assert 'href="/report"' in client.get("/").text
