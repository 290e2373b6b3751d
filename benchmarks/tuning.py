"""Tuning run: ``movierec.tune`` on the P2 training side of ML-100K, then P2 before/after.

The search sees only the P2 train side (its own validation split is carved from it by
``movierec.tune``); the P2 test side is touched once per config, after the search, to compare
the default config ("before") with the tuned one ("after"), both trained with full epochs.

Run: ``.venv/bin/python benchmarks/tuning.py --trials 5 [--before BUNDLE]`` where ``--before``
reuses the default-config P2 bundle that ``benchmarks/diversity.py`` trains.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from movierec.core.config import Config  # noqa: E402
from movierec.core.data import Dataset  # noqa: E402
from movierec.core.loaders import load_dataset  # noqa: E402
from movierec.core.metrics import topn_metrics  # noqa: E402
from movierec.pipeline import train as train_pipeline  # noqa: E402
from movierec.core.splits import holdout_per_user  # noqa: E402
from movierec.tune import tune  # noqa: E402
from recommender import HybridRecommender  # noqa: E402

log = logging.getLogger("benchmarks.tuning")


def p2_metrics(bundle: Path, test: Dataset) -> dict[str, float]:
    """Recall@10, NDCG@10, Recall@50, coverage@10 of a bundle's ranked order on the P2 test side."""
    model = HybridRecommender.load(bundle)
    rel = test.to_csr().tocsr()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    ids, _ = model.recommend_batch(users, 50, rank=True)
    m10 = topn_metrics(ids, rel[users], 10, n_items=model.n_items)
    m50 = topn_metrics(ids, rel[users], 50, n_items=model.n_items)
    return {"recall@10": m10["recall@10"], "ndcg@10": m10["ndcg@10"], "recall@50": m50["recall@50"], "coverage@10": m10["coverage@10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/ml-100k"))
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/out/tuning"))
    parser.add_argument("--before", type=Path, default=None, help="default-config P2 bundle to reuse")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("MOVIEREC_PROGRESS", "0")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    ds = load_dataset(args.data)
    train, test = holdout_per_user(ds, 0.2, 42)
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    result = tune(train, args.trials, args.workdir / "best.yaml", show_progress=False, workdir=args.workdir)
    tune_secs = time.perf_counter() - t
    before = args.before
    if before is None or not (before / "manifest.json").is_file():
        base = Config()
        base.trainer.progress = False
        before = train_pipeline(train, args.workdir / "p2-default", base)
    after_cfg = result.best_config.model_copy(deep=True)
    after_cfg.trainer.progress = False
    after = train_pipeline(train, args.workdir / "p2-tuned", after_cfg)
    out = {
        "trials": result.trials,
        "best_params": result.best_params,
        "best_validation_ndcg@10": result.best_value,
        "tune_seconds": round(tune_secs, 1),
        "p2_before": p2_metrics(before, test),
        "p2_after": p2_metrics(after, test),
    }
    (args.workdir / "tuning.json").write_text(json.dumps(out, indent=1, default=str))
    sys.stdout.write(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
