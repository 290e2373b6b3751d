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
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
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


KEY = "state-test-key"


@contextmanager
def server(model: Path, state: Path, workers: int = 1, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``movierec serve`` on a free port with its online state in ``state`` (``MOVIEREC_STATE_URL``
    in ``env`` overrides it); yields once every worker has started; killed at the end.

    The server's log is read all along (a full pipe would block it) and kept as the list
    ``proc.log_lines``.
    """
    port = free_port()
    proc = subprocess.Popen(
        [str(MOVIEREC), "serve", "--model", str(model), "--port", str(port), "--workers", str(workers)],
        cwd=REPO, env={**child_env(), "MOVIEREC_STATE_DIR": str(state), "MOVIEREC_API_KEY": KEY, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    lines: list[str] = []
    proc.log_lines = lines  # type: ignore[attr-defined]

    def drain() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace").rstrip())

    threading.Thread(target=drain, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError("server exited: " + "\n".join(lines[-40:]))
            started = sum("Application startup complete" in ln for ln in list(lines))
            try:
                if started >= workers and httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server not ready within 120 s: " + "\n".join(lines[-40:])
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@pytest.fixture(scope="session")
def data_dir(bundle_path: Path) -> Path:
    """The synthetic data set the session bundle was trained on."""
    return bundle_path.parent / "data"
