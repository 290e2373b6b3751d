"""Progress bars are for a person at a terminal: a log file gets one summary line per stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from movierec.core.synthetic import SynthSpec, write_synthetic

REPO = Path(__file__).resolve().parents[2]
TINY = ["--set", "retrieval.epochs=2", "--set", "retrieval.dim=16", "--set", "retrieval.hidden=32", "--set", "content.dim=16",
        "--set", "ranking.epochs=1", "--set", "ranking.candidates=30", "--set", "ranking.rating.enabled=false"]


@pytest.mark.parametrize("progress", [None, "1"], ids=["to-a-file", "forced"])
def test_training_into_a_log_file_prints_no_bars_unless_asked(tmp_path: Path, progress: str | None) -> None:
    write_synthetic(tmp_path / "data", SynthSpec(n_users=120, n_items=90, n_ratings=3000, seed=5))
    env = {k: v for k, v in os.environ.items() if k != "MOVIEREC_PROGRESS"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, **({"MOVIEREC_PROGRESS": progress} if progress else {}))
    with open(tmp_path / "train.log", "w") as log:  # stdout and stderr both go to a file, as under nohup or systemd
        r = subprocess.run([sys.executable, "-m", "movierec", "train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "m"), *TINY],
                           env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600)
    text = (tmp_path / "train.log").read_text()
    assert r.returncode == 0, text
    bars = [line for line in text.splitlines() if "it/s" in line or "s/it" in line]
    if progress is None:
        assert bars == [], bars[:3]
        # one summary line for each stage
        for stage in ("movierec.pipeline: content: ", "two-tower: val recall", "ranking.ranker: ranker: ", "bundle written to"):
            assert sum(stage in line for line in text.splitlines()) == 1, (stage, text)
    else:
        assert bars, text  # the check sees bars when there are some
