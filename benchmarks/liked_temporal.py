"""New users on the next-movies protocol: queries built from a few liked movies, old and new defaults.

    python benchmarks/liked_temporal.py --data ml100k:1 latest:1 [--liked 10]

For each ``DATA:SEED`` the temporal validation split of ``benchmarks/validation_quick.py
--protocol temporal`` is made (each user's latest 20% held out and never read; validation = the
latest 20% of the rest). Two bundles are trained on the fit part: the defaults and the old defaults
(``ranking.holdout=random retrieval.sequential=false``). Each validation user is then asked about as
a new user would be through ``POST /recommendations``: the liked list is that user's latest
``--liked`` fit ratings in time order (the last one the latest), and the top 10 of
``recommend_from_items`` (ranked, the liked movies excluded, the user's other fit ratings excluded
afterwards as the known-user protocol does) is scored by NDCG@10 on the validation part.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from validation_quick import PATHS, quiet  # noqa: E402
from movierec.core.config import load_config  # noqa: E402
from movierec.core.loaders import load_dataset  # noqa: E402
from movierec.core.metrics import topn_metrics  # noqa: E402
from movierec.pipeline import train as train_pipeline  # noqa: E402
from movierec.core.splits import temporal_per_user  # noqa: E402
from recommender import HybridRecommender  # noqa: E402

SETTINGS = {"defaults": [], "old defaults": ["ranking.holdout=random", "retrieval.sequential=false"]}


def liked_lists(fit, users: np.ndarray, n: int) -> list[np.ndarray]:
    """Each user's latest ``n`` fit ratings (item rows), oldest first (ties in row order)."""
    r = fit.ratings
    order = np.lexsort((np.arange(len(r)), r["timestamp"].to_numpy(), r["user_idx"].to_numpy()))
    u, items = r["user_idx"].to_numpy()[order], r["item_idx"].to_numpy()[order]
    ends = np.searchsorted(u, users, side="right")
    starts = np.searchsorted(u, users, side="left")
    return [items[max(s, e - n):e] for s, e in zip(starts, ends)]


def run(spec: str, n_liked: int) -> list[dict]:
    name, seed = spec.split(":")
    train, _test = temporal_per_user(load_dataset(PATHS[name]), fraction=0.2)  # the test part is never read
    fit, val = temporal_per_user(train, fraction=0.2)
    rel = val.to_csr().tocsr()
    seen = fit.to_csr().tocsr()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    liked = liked_lists(fit, users, n_liked)
    item_ids = fit.items["item_id"].to_numpy()
    rows = []
    for label, sets in SETTINGS.items():
        config = load_config(None, ["ranking.rating.enabled=false", f"seed={seed}", *sets])
        config.trainer.progress = False
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            train_pipeline(fit, f"{d}/b", config)
            wall = time.perf_counter() - t
            model = HybridRecommender.load(f"{d}/b")
            recs = np.full((len(users), 10), -1, dtype=np.int64)
            for row, (u, items) in enumerate(zip(users, liked)):
                got = model.recommend_from_items(item_ids[items].tolist(), k=10 + seen[u].nnz).item_idx
                got = got[~np.isin(got, seen[u].indices)][:10]  # the user's other fit ratings are not news
                recs[row, : len(got)] = got
        ndcg = topn_metrics(recs, rel[users], 10)["ndcg@10"]
        rows.append(dict(data=spec, setting=label, liked=n_liked, users=int(len(users)), ndcg10=round(ndcg, 4), train_wall=round(wall, 1)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["ml100k:1"], help="DATA:SEED, DATA one of " + ", ".join(PATHS))
    p.add_argument("--liked", type=int, default=10, help="liked movies per query: the user's latest fit ratings")
    a = p.parse_args(argv)
    quiet()
    for spec in a.data:
        run(spec, a.liked)


if __name__ == "__main__":  # the rating model's background process imports this module
    main()
