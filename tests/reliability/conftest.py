"""Reliability fixtures: one tiny trained bundle per session (the serving suite's recipe), the
environment for CLI subprocesses, and helpers to start, watch and SIGKILL them.

Subprocess tests are the only honest crash tests: an exception inside the test process runs
``finally`` blocks and ``__exit__`` handlers, a SIGKILL does not.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.serving.conftest import API_KEY, bundle_path, copy_bundle, free_port  # noqa: F401  (fixture re-export)

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
MOVIEREC = Path(sys.executable).parent / "movierec"

# the same tiny training recipe as the session bundle, for `movierec train` subprocesses
TINY_TRAIN = [
    "--set", "retrieval.epochs=2", "--set", "retrieval.dim=16", "--set", "retrieval.hidden=32",
    "--set", "content.dim=16", "--set", "trainer.progress=false", "--set", "ranking.epochs=1",
    "--set", "ranking.candidates=30",
]


def child_env() -> dict[str, str]:
    """One thread per child (the machine is shared) and no progress bars."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MOVIEREC_PROGRESS": "0", "PYTHONPATH": str(REPO)})
    return env


def start(args: list[str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a child in its own session so a kill reaches only it."""
    return subprocess.Popen(
        args, cwd=cwd or REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll ``cond`` every 5 ms until it holds (True), the child exits or time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        time.sleep(0.005)
    return False


def sigkill(proc: subprocess.Popen[bytes]) -> bool:
    """SIGKILL the child; True if it was still running (a real mid-write kill)."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return alive


@pytest.fixture(scope="session")
def data_dir(bundle_path: Path) -> Path:
    """The synthetic data set the session bundle was trained on."""
    return bundle_path.parent / "data"
