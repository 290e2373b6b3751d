"""Shared fixtures: real MovieLens paths (skipped when ../shared/data is absent) and small
generated data sets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("MOVIEREC_PROGRESS", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for tests/cli_helpers.py

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    path = SHARED_DATA / "ml-100k"
    if not (path / "u.data").is_file():
        pytest.skip("../shared/data/ml-100k not present")
    return path


@pytest.fixture(scope="session")
def ml_latest_small_path() -> Path:
    path = SHARED_DATA / "ml-latest-small"
    if not (path / "ratings.csv").is_file():
        pytest.skip("../shared/data/ml-latest-small not present")
    return path


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep run-time state (the live-feedback log) out of the user's home during tests."""
    monkeypatch.setenv("MOVIEREC_STATE_DIR", str(tmp_path_factory.mktemp("state")))
