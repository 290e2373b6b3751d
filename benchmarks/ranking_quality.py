"""Ranking quality: P2 top-N, P1 rating head RMSE, P3 cold items, ablations.

    python benchmarks/ranking_quality.py --data ../shared/data/ml-100k --validate   # choose settings
    python benchmarks/ranking_quality.py --data ../shared/data/ml-100k --p2 --p1 --p3

``--validate`` works on a validation split carved from the P2 training side only
(``validation_split(train, 0.2, seed=0)``) and compares the ranker's holdout protocol (random vs
temporal) and a few settings; the test split is never used to choose anything. ``--p2`` trains
the full pipeline (``movierec.pipeline.train``) on the P2 training side and reports most-popular,
EASE, retrieval order and ranked order, plus ablations (ranker re-trained without content
features / without collaborative features, on the same two-tower model). ``--p1`` trains on each
official fold u1..u5 and reports the bundle's P1 RMSE (its dedicated rating model) and the
ranker's rating head. ``--p3`` ranks among cold items only.

Results go to ``benchmarks/out/ranking_quality.json``; the tables are printed as markdown.
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
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from movierec.core.baselines import make_baseline  # noqa: E402
from movierec.core.config import Config  # noqa: E402
from movierec.core.data import Dataset  # noqa: E402
from movierec.core.loaders import load_dataset  # noqa: E402
from movierec.core.metrics import evaluate_topn, mae, rmse, topn_metrics, top_k  # noqa: E402
from movierec.pipeline import tower_trainer, train as train_pipeline  # noqa: E402
from movierec.core.splits import cold_items, holdout_per_user, ml100k_fold, validation_split  # noqa: E402
from recommender import HybridRecommender  # noqa: E402
from ranking.ranker import refit_ranker  # noqa: E402

KS = (10, 50)
EASE_LAMBDA = 300.0


def _quiet() -> None:
    os.environ.setdefault("MOVIEREC_PROGRESS", "0")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero", "faiss.loader"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _config(overrides: dict[str, Any] | None = None) -> Config:
    c = Config()
    c.trainer.progress = False
    for key, value in (overrides or {}).items():
        section, field = key.split(".")
        setattr(getattr(c, section), field, value)
    return c


def fit_bundle(train: Dataset, config: Config, workdir: Path, name: str) -> tuple[HybridRecommender, float]:
    t = time.perf_counter()
    path = train_pipeline(train, workdir / name, config)
    secs = time.perf_counter() - t
    return HybridRecommender.load(path), secs


def ordered_metrics(model: HybridRecommender, test: Dataset, rank: bool) -> dict[str, float]:
    """P2 full ranking by the bundle's own order (items rated in train excluded by the model)."""
    rel = test.to_csr().tocsr()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    ids, _ = model.recommend_batch(users, max(KS), rank=rank)
    out: dict[str, float] = {}
    for k in KS:
        m = topn_metrics(ids, rel[users], k, n_items=model.n_items)
        out.update({f"recall@{k}": m[f"recall@{k}"], f"ndcg@{k}": m[f"ndcg@{k}"], f"coverage@{k}": m[f"coverage@{k}"]})
    return out


def baseline_metrics(train: Dataset, test: Dataset) -> dict[str, dict[str, float]]:
    out = {}
    for name, params in (("popular", {}), ("ease", {"lam": EASE_LAMBDA})):
        m = make_baseline(name, **params).fit(train)
        res = evaluate_topn(m.score_users, train, test, ks=KS)
        out[name] = {k: v for k, v in res.items() if k.split("@")[0] in ("recall", "ndcg", "coverage")}
    return out


def _row(name: str, m: dict[str, float]) -> str:
    return f"| {name} | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | {m['recall@50']:.4f} | {m.get('coverage@10', float('nan')):.3f} |"


def _fold_towers(model: HybridRecommender, config: Config) -> Any:
    """The per-fold two-tower trainer a re-fitted ranker needs when ``ranking.folds`` > 1."""
    if config.ranking.folds <= 1:
        return None
    retr = model.retrieval
    return tower_trainer(np.asarray(retr.item_content[: retr.n_model_items]), config)


def run_validate(ds: Dataset, workdir: Path) -> dict[str, Any]:
    """Choose the holdout protocol and a few settings on a split of the P2 training side."""
    train, _ = holdout_per_user(ds, 0.2, 42)
    fit, val = validation_split(train, 0.2, seed=0)
    out: dict[str, Any] = {"baselines": baseline_metrics(fit, val)}
    for holdout in ("random", "temporal"):
        cfg = _config({"ranking.holdout": holdout})
        model, secs = fit_bundle(fit, cfg, workdir, f"val-{holdout}")
        res = {"retrieval": ordered_metrics(model, val, rank=False), "ranked": ordered_metrics(model, val, rank=True), "train_seconds": secs}
        print(f"  val holdout={holdout}: retrieval {res['retrieval']['ndcg@10']:.4f} ranked {res['ranked']['ndcg@10']:.4f} ({secs:.0f}s)", flush=True)
        variants: dict[str, dict[str, Any]] = {
            "emb_dim=0": {"emb_dim": 0},
            "collab_neighbors=1682": {"collab_neighbors": 1682},
        } if holdout == "random" else {}
        for vname, changes in variants.items():
            rc = cfg.ranking.model_copy(update=changes)
            model.ranker = refit_ranker(model, fit, rc, cfg.trainer, seed=cfg.seed, fit_tower=_fold_towers(model, cfg)).ranker
            res[vname] = ordered_metrics(model, val, rank=True)
            print(f"    {vname}: ranked ndcg@10 {res[vname]['ndcg@10']:.4f}", flush=True)
        out[holdout] = res
    e = out["baselines"]["ease"]["ndcg@10"]
    print(f"  val EASE ndcg@10 {e:.4f}")
    return out


def run_p2(ds: Dataset, workdir: Path, config: Config) -> dict[str, Any]:
    train, test = holdout_per_user(ds, 0.2, 42)
    out: dict[str, Any] = baseline_metrics(train, test)
    model, secs = fit_bundle(train, config, workdir, "p2")
    out["retrieval order"] = ordered_metrics(model, test, rank=False)
    out["ranked order"] = ordered_metrics(model, test, rank=True)
    out["train_seconds"] = secs
    out["ranker_metrics"] = model.bundle.manifest.get("metrics", {}).get("ranker", {})
    for group in ("content", "collab"):
        rc = config.ranking.model_copy(update={"exclude": [group]})
        model.ranker = refit_ranker(model, train, rc, config.trainer, seed=config.seed, fit_tower=_fold_towers(model, config)).ranker
        out[f"ranked, no {group} features"] = ordered_metrics(model, test, rank=True)
    rows = ["popular", "ease", "retrieval order", "ranked order", "ranked, no content features", "ranked, no collab features"]
    print("| P2 (ML-100K, 20% per user, seed 42) | Recall@10 | NDCG@10 | Recall@50 | Coverage@10 |\n|---|---|---|---|---|")
    for name in rows:
        print(_row(name, out[name]))
    ratio = out["ranked order"]["ndcg@10"] / out["ease"]["ndcg@10"]
    out["ranked_over_ease_ndcg@10"] = ratio
    print(f"ranked / EASE NDCG@10 = {ratio:.3f} (target >= 1.10); full pipeline train {secs:.0f}s")
    return out


def run_p1(ds: Dataset, data: Path, workdir: Path, config: Config, folds: tuple[str, ...] = ("u1", "u2", "u3", "u4", "u5")) -> dict[str, Any]:
    """Each official fold: the bundle's P1 predictions (its dedicated rating model, ranking/rating.py,
    when it has one) and, for comparison, the ranker's rating head."""
    rows: dict[str, list[tuple[float, float]]] = {}
    for fold in folds:
        train, test = ml100k_fold(ds, data, fold)
        model, secs = fit_bundle(train, config, workdir, f"p1-{fold}")
        r = test.ratings
        u, i, y = r["user_idx"].to_numpy(), r["item_idx"].to_numpy(), r["rating"].to_numpy()
        preds = {"bundle (P1 model)": model.predict_ratings(u, i)}
        if model.ranker is not None:
            preds["ranker rating head"] = model.ranker.predict_ratings(model, u, i)
        for name, pred in preds.items():
            rows.setdefault(name, []).append((rmse(y, pred), mae(y, pred)))
        timings = model.bundle.manifest.get("timings", {})
        print(f"  P1 {fold}: " + "; ".join(f"{n} RMSE {v[-1][0]:.4f} MAE {v[-1][1]:.4f}" for n, v in rows.items())
              + f" (pipeline {secs:.0f}s, rating model {timings.get('rating_model', float('nan')):.0f}s)", flush=True)
    out: dict[str, Any] = {}
    for name, v in rows.items():
        rm, ma = [a for a, _ in v], [b for _, b in v]
        out[name] = {"rmse": float(np.mean(rm)), "rmse_std": float(np.std(rm)), "mae": float(np.mean(ma)), "folds": rm}
        print(f"| P1 {name} ({'..'.join(folds[::max(1, len(folds) - 1)])} mean) | RMSE {out[name]['rmse']:.4f} ± {out[name]['rmse_std']:.4f} | MAE {out[name]['mae']:.4f} |")
    out.update(out["bundle (P1 model)"])  # the system's P1 number at the top level, as before
    return out


def run_p3(ds: Dataset, workdir: Path, config: Config) -> dict[str, Any]:
    """Cold items: rank only among the cold items for users who rated one of them in test."""
    train, test, cold = cold_items(ds, 0.2, 42)
    model, _ = fit_bundle(train, config, workdir, "p3")
    rel = test.to_csr().tocsr()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    mask = np.zeros(ds.n_items, bool)
    mask[cold] = True
    retr = model.retrieval
    tt = retr.user_vectors[users] @ retr.item_vectors.T
    tt[:, ~mask] = -np.inf  # cold items have no ratings in train, so nothing seen to exclude
    c = min(model.ranker.n_candidates, len(cold))
    cand = top_k(tt, c)
    cs = np.take_along_axis(tt, cand, 1).astype(np.float32)
    hists = [retr.histories.of(u) for u in users]
    ranked = model.ranker.rerank(model, users, hists, cand, cs)
    order = np.argsort(-ranked, axis=1, kind="stable")
    out: dict[str, Any] = {}
    for name, recs in (("retrieval order", cand), ("ranked order", np.take_along_axis(cand, order, 1))):
        m = {}
        for k in (10,):
            res = topn_metrics(recs, rel[users], k)
            m.update({f"recall@{k}": res[f"recall@{k}"], f"ndcg@{k}": res[f"ndcg@{k}"]})
        out[name] = m
    content = model.content.fit_users(train)
    res = evaluate_topn(content.score_users, train, test, ks=(10,), candidate_items=cold)
    out["tf-idf alone"] = {"recall@10": res["recall@10"], "ndcg@10": res["ndcg@10"]}
    print("| P3 cold items (20% of items, seed 42) | Recall@10 | NDCG@10 |\n|---|---|---|")
    for name in ("tf-idf alone", "retrieval order", "ranked order"):
        print(f"| {name} | {out[name]['recall@10']:.4f} | {out[name]['ndcg@10']:.4f} |")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    p.add_argument("--validate", action="store_true")
    p.add_argument("--p2", action="store_true")
    p.add_argument("--p1", action="store_true")
    p.add_argument("--p3", action="store_true")
    p.add_argument("--folds", default="u1,u2,u3,u4,u5", help="P1 folds, comma separated")
    p.add_argument("--set", nargs="*", default=[], help="config overrides section.key=value for --p1/--p2/--p3")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ranking_quality.json")
    p.add_argument("--workdir", type=Path, help="keep the trained bundles here (default: a temp dir, removed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _quiet()
    torch.set_num_threads(1)
    ds = load_dataset(args.data)
    from movierec.core.config import load_config

    config = load_config(None, args.set)
    config.trainer.progress = False
    results: dict[str, Any] = {"config": config.model_dump(mode="json")}
    if args.out.is_file():
        results = {**json.loads(args.out.read_text()), **results}
    with tempfile.TemporaryDirectory(prefix="movierec-rankq-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.validate:
            results["validate"] = run_validate(ds, work)
        if args.p2:
            results["P2"] = run_p2(ds, work, config)
        if args.p1:
            results["P1"] = run_p1(ds, args.data, work, config, tuple(args.folds.split(",")))
        if args.p3:
            results["P3"] = run_p3(ds, work, config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
