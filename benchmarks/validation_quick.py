"""Quick in-process validation: the pipeline against EASE on validation carved from training.

    python benchmarks/validation_quick.py --data ml100k:1 ml100k:2 latest:1 --tag NAME [--set k=v ...]

What the ranker's settings were chosen with (benchmarks/RESULTS.md): for each ``DATA:SEED`` the
P2 split ``holdout_per_user(ds, 0.2, seed)`` is made and its test part never read; a validation
split ``holdout_per_user(train, 0.2, seed + 1000)`` is carved from the training part, the
pipeline (``movierec.pipeline.train``, rating model off: P2 does not read it) trains on the rest,
and the ranked and two-tower orders are scored on the validation part by NDCG@10 with full
ranking, next to EASE with its best lambda of {100, 300, 500, 1000} on the same validation part
(a bar that favours EASE). One JSON line per split, then the mean and worst ranked / EASE ratio.
With ``--protocol temporal`` the splits hold out each user's latest 20% instead (P5, the
service's protocol: ``temporal_per_user(ds, fraction=0.2)`` and, carved from its training part,
``temporal_per_user(train, fraction=0.2)``); the split is the same for every seed, which then
seeds the training, and the pipeline keeps its default objective (``ranking.holdout=auto``).
``benchmarks/robust_quality.py`` is the CLI-driven protocol over every data set and seed; this is
the faster loop for comparing settings. ``--two-tower-only`` trains the two-tower stage alone and
reports its Recall@100 against EASE's (the retrieval target in RESULTS.md), its epochs, the
fit's and the refit's seconds, and an EASE fit's seconds on the same fit part in the same run
(best of 3; ``stage_per_ease`` is the stage's seconds over it: the time claim).

``--test`` scores the test part of the same split instead, once, with nothing chosen on it: the
pipeline trains with the same settings on the whole training part (the fit part and the
validation part together), EASE's lambda is the one that won on the validation part above and is
then fitted on the whole training part, and both are scored on the test part. Say in RESULTS.md
how many configurations saw it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from movierec.core.baselines import make_baseline  # noqa: E402
from movierec.core.config import load_config  # noqa: E402
from movierec.core.loaders import load_dataset  # noqa: E402
from movierec.core.metrics import topn_metrics  # noqa: E402
from movierec.pipeline import train as train_pipeline  # noqa: E402
from movierec.core.sources import rank_scores  # noqa: E402
from movierec.core.splits import holdout_per_user, temporal_per_user  # noqa: E402
from recommender import HybridRecommender  # noqa: E402
from retrieval.inputs import Histories  # noqa: E402
from retrieval.towers import encode_all_users  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PATHS = {"ml100k": DATA / "ml-100k", "latest": DATA / "ml-latest-small"}
CACHE = Path(os.environ.get("MOVIEREC_VALIDATION_CACHE", "/tmp/movierec-validation-cache"))
LAMBDAS = (100, 300, 500, 1000)


def _ease_scores(
    name: str, seed: int, fit, users: np.ndarray, rel, fraction: float = 1.0, protocol: str = "random",
    lambdas: tuple[int, ...] = LAMBDAS, split: str = "validation",
) -> dict[str, float]:
    tail = ("" if fraction == 1.0 else f"-f{fraction:g}") + ("" if protocol == "random" else f"-{protocol}")
    if split != "validation":  # only the lambdas asked for are scored on it
        tail += f"-{split}-" + "-".join(map(str, lambdas))
    path = CACHE / f"ease-r100-{name}-{seed}{tail}.json"
    if path.exists():
        return json.loads(path.read_text())
    out = {}
    for lam in lambdas:
        ids, _ = make_baseline("ease", lam=lam).fit(fit).recommend(users, 100, exclude=fit.to_csr().tocsr())
        out[str(lam)] = topn_metrics(ids[:, :10], rel[users], 10)["ndcg@10"]
        out[f"recall@100 {lam}"] = topn_metrics(ids, rel[users], 100)["recall@100"]
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def _validation(spec: str, sets: list[str], fraction: float = 1.0, protocol: str = "random", test: bool = False):
    """(fit part, scored matrix, scored users, EASE scores, EASE's best lambda, config);
    ``fraction`` < 1 keeps that share of each user's fit ratings (how a result moves with the
    amount of data, both models on the same smaller part). With ``test`` the fit part is the whole
    training part and the scored matrix the test part; EASE's lambda is still the validation one."""
    name, seed = spec.split(":")
    seed = int(seed)
    ds = load_dataset(PATHS[name])
    if protocol == "temporal":
        train, test_part = temporal_per_user(ds, fraction=0.2)  # the test part is read only with test=True
        fit, val = temporal_per_user(train, fraction=0.2)
        overrides = [f"seed={seed}"]
    else:
        train, test_part = holdout_per_user(ds, 0.2, seed)  # the test part is read only with test=True
        fit, val = holdout_per_user(train, 0.2, seed + 1000)
        overrides = ["ranking.holdout=random"]  # random hold-out splits (P2): the ranker trains for them
    if fraction < 1.0:
        fit, _ = holdout_per_user(fit, 1.0 - fraction, seed + 2000)
    rel = val.to_csr().tocsr()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    ease_seed = seed if protocol == "random" else 0  # the temporal split is the same for every seed
    ease = _ease_scores(name, ease_seed, fit, users, rel, fraction, protocol)
    lam = max(LAMBDAS, key=lambda x: ease[str(x)])
    if test:
        fit, rel = train, test_part.to_csr().tocsr()
        users = np.flatnonzero(np.diff(rel.indptr) > 0)
        ease = _ease_scores(name, ease_seed, fit, users, rel, fraction, protocol, lambdas=(lam,), split="test")
    # a --set of the same key wins over the protocol's
    config = load_config(None, ["ranking.rating.enabled=false", *overrides, *sets])
    config.trainer.progress = False
    return fit, rel, users, ease, lam, config


def run_two_tower(spec: str, sets: list[str], tag: str, fraction: float = 1.0, protocol: str = "random", test: bool = False) -> dict:
    """The two-tower stage alone, trained and queried as the pipeline does at these sizes (on the
    ranker's earlier part, then the refit on the whole fit part, the cold map, full histories):
    its Recall@100 against EASE's, in about a third of a whole training."""
    from content import ContentModel
    from movierec.pipeline import _place_cold, resolve_sequential
    from ranking.lists import split_for_ranker
    from retrieval.two_tower import fit_two_tower, refit_two_tower

    fit, rel, users, ease, lam, config = _validation(spec, sets, fraction, protocol, test)
    config, _ = resolve_sequential(fit, config)  # as the pipeline does: retrieval.sequential=auto follows the ranker's hold-out
    t = time.perf_counter()
    content = ContentModel.fit(fit.items, config.content, seed=config.seed)
    past, _ = split_for_ranker(fit, config.ranking, seed=config.seed)
    tt = fit_two_tower(past, content.vectors, config.retrieval, config.trainer, seed=config.seed)
    if config.retrieval.refit_epochs:
        tt = refit_two_tower(tt, fit, content.vectors, config.retrieval, config.trainer, seed=config.seed)
    item_vectors, _ = _place_cold(tt, content.sparse, config)
    histories = Histories.from_ratings(fit.ratings, fit.n_users)
    user_vectors = encode_all_users(
        tt.user_tower, histories, tt.items.content, tt.user_features, fit.n_items, config.retrieval.history_len
    )
    top, _ = rank_scores(user_vectors[users] @ item_vectors.T, 100, users, exclude=fit.to_csr().tocsr())
    recall = topn_metrics(top, rel[users], 100)["recall@100"]
    wall = time.perf_counter() - t
    ease_fit = _ease_fit_seconds(fit, lam)
    stage = tt.metrics["train_seconds"] + tt.metrics.get("refit_seconds", 0.0)
    return dict(
        tag=tag, data=spec, split="test" if test else "validation", tt_recall100=round(recall, 4), ratio=round(recall / ease[f"recall@100 {lam}"], 4),
        tt_ndcg10=round(topn_metrics(top, rel[users], 10)["ndcg@10"], 4), epochs=tt.metrics.get("epochs"),
        fit_s=tt.metrics["train_seconds"], refit_s=tt.metrics.get("refit_seconds", 0.0), ease_fit_s=round(ease_fit, 3),
        stage_per_ease=round(stage / ease_fit, 1), wall=round(wall, 1),
    )


def _ease_fit_seconds(fit, lam: int, repeats: int = 3, budget: float = 5.0) -> float:
    """Best of ``repeats`` EASE fits on ``fit`` (the time reference measured in the same run);
    one fit when it alone takes over ``budget`` seconds (thousands of movies)."""
    times: list[float] = []
    while len(times) < repeats and not (times and times[0] > budget):
        t = time.perf_counter()
        make_baseline("ease", lam=lam).fit(fit)
        times.append(time.perf_counter() - t)
    return min(times)


def run(spec: str, sets: list[str], tag: str, fraction: float = 1.0, protocol: str = "random", test: bool = False) -> dict:
    fit, rel, users, ease, lam, config = _validation(spec, sets, fraction, protocol, test)
    with tempfile.TemporaryDirectory() as d:
        t, c = time.perf_counter(), time.process_time()
        train_pipeline(fit, f"{d}/b", config)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        model = HybridRecommender.load(f"{d}/b")
        meta = json.loads(Path(f"{d}/b/manifest.json").read_text())
        scores = {}
        for rank in (True, False):
            ids, _ = model.recommend_batch(users, 10, rank=rank)
            scores[rank] = topn_metrics(ids, rel[users], 10)["ndcg@10"]
        ids, _ = model.recommend_batch(users, 100, rank=False)
        recall = topn_metrics(ids, rel[users], 100)["recall@100"]
    ranker = meta["metrics"].get("ranker", {})
    return dict(
        tag=tag, data=spec, split="test" if test else "validation", ranked=round(scores[True], 4), retrieval=round(scores[False], 4),
        ease=round(ease[str(lam)], 4), lam=lam, ratio=round(scores[True] / ease[str(lam)], 4),
        tt_recall100=round(recall, 4), ease_recall100=round(ease[f"recall@100 {lam}"], 4),
        tt_recall100_ratio=round(recall / ease[f"recall@100 {lam}"], 4), wall=round(wall, 1), cpu=round(cpu, 1), timings=meta.get("timings"),
        alpha=ranker.get("alpha"), pool_ndcg=[ranker.get(k) for k in ("val_ndcg@10_base", "val_ndcg@10_nets", "val_ndcg@10_pool")],
    )


def quiet() -> None:
    """A benchmark process: no progress bars, warnings or Lightning chatter, one torch thread."""
    os.environ.setdefault("MOVIEREC_PROGRESS", "0")
    warnings.filterwarnings("ignore")
    for n in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(n).setLevel(logging.ERROR)
    torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["ml100k:1"], help="DATA:SEED, DATA one of " + ", ".join(PATHS))
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    p.add_argument("--tag", default="run")
    p.add_argument("--fraction", type=float, default=1.0, help="keep this share of each user's fit ratings (0 < f <= 1)")
    p.add_argument("--two-tower-only", action="store_true", help="train the two-tower stage alone; ratio = its Recall@100 / EASE's")
    p.add_argument("--protocol", choices=("random", "temporal"), default="random",
                   help="random: a random 20%% per user held out (P2); temporal: each user's latest 20%% (P5)")
    p.add_argument("--test", action="store_true",
                   help="score the test part (train on the whole training part, EASE's lambda from validation); touches test")
    a = p.parse_args(argv)
    if a.test and a.fraction < 1.0:
        p.error("--test trains on the whole training part: --fraction does not apply")
    quiet()
    rows = []
    for spec in a.data:
        rows.append((run_two_tower if a.two_tower_only else run)(spec, a.set, a.tag, a.fraction, a.protocol, a.test))
        print(json.dumps(rows[-1]), flush=True)
    ratios = [r["ratio"] for r in rows]
    print(json.dumps(dict(tag=a.tag, protocol=a.protocol, split="test" if a.test else "validation", set=a.set, mean_ratio=round(float(np.mean(ratios)), 4), min_ratio=round(float(np.min(ratios)), 4))))


if __name__ == "__main__":  # the rating model's background process imports this module
    main()
