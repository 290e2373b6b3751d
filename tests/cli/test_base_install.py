"""The base install (no ``[train]`` extra) serves a bundle and writes candidates.

Each command runs in a child Python in which Lightning, scikit-learn, Optuna and matplotlib are
unimportable (tests/support/base_install/sitecustomize.py), and lists the modules it imported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import pandas as pd

from tests.serving.conftest import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
BLOCKER = ROOT / "tests" / "support" / "base_install"
TRAIN_EXTRA = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics", "sklearn", "optuna", "matplotlib")


def _env(out: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{BLOCKER}{os.pathsep}{ROOT}", "MOVIEREC_MODULES_OUT": str(out),
            "OMP_NUM_THREADS": "1", "MOVIEREC_PROGRESS": "0", "MOVIEREC_API_KEY": "k"}


def _imported(out: Path) -> set[str]:
    files = list(out.parent.glob(out.name + ".*"))
    assert files, "the child wrote no module list"
    return {m.split(".")[0] for f in files for m in f.read_text().split()}


@pytest.mark.parametrize("workers", ["auto", "2"])
def test_candidates_imports_nothing_from_the_train_extra(workers: str, bundle_path: Path, tmp_path: Path) -> None:
    """With the defaults and with forked workers: one file, without Lightning."""
    mods = tmp_path / "mods"
    r = subprocess.run([sys.executable, "-m", "movierec", "candidates", "--model", str(bundle_path), "--out", str(tmp_path / "c.parquet"), "--k", "5",
                        "--workers", workers, "--chunk-size", "64"],
                       env=_env(mods), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{'1 worker' if workers == 'auto' else '2 workers'})" in r.stdout, r.stdout
    assert len(pd.read_parquet(tmp_path / "c.parquet")) > 0
    imported = _imported(mods)
    assert "torch" in imported and "faiss" in imported  # the check sees real imports
    assert not imported & set(TRAIN_EXTRA), imported & set(TRAIN_EXTRA)


def test_serve_imports_nothing_from_the_train_extra(bundle_path: Path, tmp_path: Path) -> None:
    mods = tmp_path / "mods"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "movierec", "serve", "--model", str(bundle_path), "--port", str(port)],
                            env=_env(mods), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base)
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/users/1/recommendations", params={"k": 3}).status_code == 200
            assert http.get("/items/1/similar", params={"k": 3}).status_code == 200
            assert http.post("/recommendations", json={"liked_items": [1, 2]}).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)  # a clean shutdown runs the atexit hook that lists the modules
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    imported = _imported(mods)
    assert "fastapi" in imported and "uvicorn" in imported
    assert not imported & set(TRAIN_EXTRA), imported & set(TRAIN_EXTRA)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--data", "{data}", "--out", "{tmp}/model"],
        ["tune", "--data", "{data}", "--out", "{tmp}/best.yaml", "--trials", "1"],
        ["compare", "--train", "{data}/ratings.csv", "--items", "{data}/items.csv", "--test", "{data}/ratings.csv"],
        ["report", "--model", "{bundle}", "--out", "{tmp}/report.html"],
        ["demo", "--no-serve", "--out", "{tmp}/demo"],
    ],
    ids=lambda a: " ".join(a[:1] + [x for x in a if x == "--workers"]),
)
def test_a_command_that_needs_the_train_extra_says_so_in_one_line(args: list[str], bundle_path: Path, tmp_path: Path) -> None:
    """On a base install, a training command exits 2 with one line naming the extra, before any
    work: nothing is written where it was pointed."""
    from movierec.core.synthetic import SynthSpec, write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, SynthSpec(n_users=30, n_items=20, n_ratings=300, seed=0))
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.format(data=data, tmp=tmp_path, bundle=bundle_path) for a in args]
    r = subprocess.run([sys.executable, "-m", "movierec", *argv], env=_env(tmp_path / "mods"),
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "[train] extra" in lines[0] and "pip install 'movierec[train]'" in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("mods.")) == before
