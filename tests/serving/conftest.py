"""Serving fixtures: one tiny trained bundle per test session, and apps built over it.

The bundle is trained once (a few seconds) from a small synthetic data set; tests that change
the model (adding movies, reloading) build their own app so the shared one stays as trained.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings

API_KEY = "test-admin-key-123"


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle from ``movierec.pipeline.train`` on 200 users x 150 movies."""
    from movierec.core.config import load_config
    from movierec.core.loaders import load_dataset
    from movierec.pipeline import train
    from movierec.core.synthetic import SynthSpec, write_synthetic

    root = tmp_path_factory.mktemp("serving-bundle")
    write_synthetic(root / "data", SynthSpec(n_users=200, n_items=150, n_ratings=6000, seed=1))
    ds = load_dataset(root / "data")
    cfg = load_config(
        None,
        {
            "retrieval.epochs": 2,
            "retrieval.dim": 16,
            "retrieval.hidden": 32,
            "content.dim": 16,
            "trainer.progress": False,
            "ranking.epochs": 1,
            "ranking.candidates": 30,
        },
    )
    return train(ds, root / "model", cfg)


def copy_bundle(src: Path, dst: Path, version: str | None = None) -> Path:
    """A copy of a bundle, optionally relabelled with another model version (the manifest itself
    is not checksummed, so the copy still verifies)."""
    shutil.copytree(src, dst)
    if version is not None:
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["model_version"] = version
        (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.fixture(scope="module")
def client(bundle_path: Path) -> Iterator[TestClient]:
    """Read-only client over the shared bundle (lifespan runs: entered as a context manager)."""
    with TestClient(create_app(Settings(model=bundle_path))) as c:
        yield c


@pytest.fixture
def admin_client(bundle_path: Path) -> Iterator[TestClient]:
    """A client whose app has an admin key and its own copy of the model (safe to modify)."""
    with TestClient(create_app(Settings(model=bundle_path, api_key=API_KEY))) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen, base: str, timeout: float = 90.0) -> None:
    """Poll ``base``/ready until a started server answers 200; fail with its stderr if it exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"server exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}"
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"server not ready within {timeout:.0f} s"
        time.sleep(0.3)


@pytest.fixture
def three_bundles(tmp_path: Path, bundle_path: Path) -> Path:
    """A serving directory with bundles v1 < v2 < v3 (by manifest time)."""
    root = tmp_path / "bundles"
    root.mkdir()
    for n in (1, 2, 3):
        copy_bundle(bundle_path, root / f"b{n}", version=f"v{n}")
        time.sleep(0.01)
    return root
