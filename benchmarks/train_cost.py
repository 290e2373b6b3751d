"""What `movierec train` costs, as a ratio to an EASE fit on the same data in the same run.

    python benchmarks/train_cost.py --data ../shared/data/ml-100k [--rounds 3] [--code DIR ...]

The reference is the one the training-cost target is stated in: EASE on the whole data set, a
float32 item-item Gram matrix plus lambda*I inverted with ``np.linalg.inv``, then the scores and
the top 10 for every user, best of 5. Each round times the reference, then ``movierec train``
(every default, ``MOVIEREC_PROGRESS=0``) once per ``--code`` checkout (default: this one) in a
subprocess of its own, so rounds interleave the checkouts and the reference under the same load.
Prints one row per run (wall, CPU of the command and its children, ratio to that round's
reference, the stages' seconds from the bundle's manifest) and the median ratio per checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def ease_reference(data: Path, lam: float = 500.0, repeats: int = 5) -> float:
    """Seconds of the best of ``repeats`` EASE fits with scores and top 10 for every user."""
    from movierec.core.loaders import load_dataset

    x = load_dataset(data).to_csr()
    x.data[:] = 1.0
    x = x.astype(np.float32)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        g = np.asarray((x.T @ x).todense(), dtype=np.float32)
        g[np.diag_indices_from(g)] += lam
        p = np.linalg.inv(g)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        scores = np.asarray(x @ b)
        scores[x.nonzero()] = -np.inf
        np.argpartition(-scores, 10, axis=1)[:, :10]
        best = min(best, time.perf_counter() - t)
    return best


def train_once(code: Path, data: Path, python: str) -> tuple[float, float, dict[str, float]]:
    """Wall and CPU seconds (the command and its children) of one default ``movierec train``, and
    the stages' seconds its manifest records."""
    env = {**os.environ, "MOVIEREC_PROGRESS": "0", "PYTHONPATH": str(code)}
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([python, "-m", "movierec", "train", "--data", str(data), "--out", f"{tmp}/B"],
                       cwd=code, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stages = json.loads((Path(tmp) / "B" / "manifest.json").read_text()).get("timings", {})
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--code", type=Path, nargs="+", default=[ROOT], help="checkouts to train with (interleaved)")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    ratios: dict[str, list[float]] = {str(c): [] for c in args.code}
    print(f"{'round':>5} {'code':<28} {'EASE s':>8} {'train wall s':>13} {'CPU s':>8} {'wall / EASE':>12}  load")
    for r in range(1, args.rounds + 1):
        ref = ease_reference(args.data)
        for code in args.code:
            wall, cpu, stages = train_once(code, args.data.resolve(), args.python)  # it runs in the checkout
            ratios[str(code)].append(wall / ref)
            load = "/".join(f"{v:.1f}" for v in os.getloadavg())
            print(f"{r:>5} {str(code)[-28:]:<28} {ref:>8.3f} {wall:>13.1f} {cpu:>8.1f} {wall / ref:>11.1f}x  {load}  {stages}", flush=True)
    for code, rs in ratios.items():
        print(f"median wall / EASE, {code}: {statistics.median(rs):.1f}x over {len(rs)} rounds")


if __name__ == "__main__":
    main()
