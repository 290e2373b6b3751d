"""Quality benchmark: P1 (rating, official ML-100K folds) and P2 (top-N, 20% per-user holdout).

    python benchmarks/quality.py --data ../shared/data/ml-100k [--models popular,ease] [--tune]

Prints both tables, writes ``benchmarks/out/quality.json`` and ``benchmarks/out/quality.md``.

Later stages add rows by registering a model factory::

    from benchmarks.quality import register

    @register("two-tower", protocols=("P2",))
    def _two_tower(train: Dataset) -> Fitted: ...

A factory takes the training :class:`~movierec.core.data.Dataset` and returns a fitted object with
``score_users`` (P2) and/or ``predict`` (P1). ``--tune`` searches each baseline's grid on a
validation split carved from the training side only (``movierec.core.splits.validation_split``), never
on the test split; the chosen values are the defaults in ``movierec/core/baselines.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from movierec.core.baselines import make_baseline  # noqa: E402
from movierec.core.data import Dataset  # noqa: E402
from movierec.core.loaders import load_dataset  # noqa: E402
from movierec.core.metrics import evaluate_topn, mae, rmse  # noqa: E402
from movierec.core.splits import holdout_per_user, ml100k_fold, validation_split  # noqa: E402

Factory = Callable[[Dataset], Any]


@dataclass
class Entry:
    name: str
    factory: Factory
    protocols: tuple[str, ...]


REGISTRY: dict[str, Entry] = {}


def register(name: str, protocols: Iterable[str] = ("P2",)) -> Callable[[Factory], Factory]:
    """Add a named model to the benchmark; ``protocols`` is a subset of ("P1", "P2")."""

    def deco(factory: Factory) -> Factory:
        REGISTRY[name] = Entry(name, factory, tuple(protocols))
        return factory

    return deco


def _baseline(name: str, protocols: tuple[str, ...], **params: Any) -> None:
    register(name, protocols)(lambda train: make_baseline(name, **params).fit(train))


_baseline("global-mean", ("P1",))
_baseline("bias", ("P1",))
_baseline("mf", ("P1", "P2"))
_baseline("svd-rating", ("P1",))
_baseline("popular", ("P2",))
_baseline("mf-bpr", ("P2",))
_baseline("svd", ("P2",))
_baseline("item-knn", ("P2",))
_baseline("ease", ("P2",))

# Grids searched by --tune (validation split of the training side only).
GRIDS: dict[str, dict[str, list[Any]]] = {
    "bias": {"damping": [1, 5, 10, 25]},
    "mf": {"dim": [32, 64], "lr": [2e-3, 5e-3], "reg": [0.1, 0.2, 0.4]},
    "svd-rating": {"n_components": [4, 8, 16, 32], "damping": [5, 10, 25]},
    "mf-bpr": {"dim": [32, 64], "reg": [0.002, 0.01, 0.05]},
    "svd": {"n_components": [8, 16, 32, 64]},
    "item-knn": {"k_neighbors": [10, 25, 50, 100], "shrinkage": [10, 50, 100, 200]},
    "ease": {"lam": [50, 100, 200, 500, 1000]},
}
RATING_MODELS = {"bias", "mf", "svd-rating"}


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def run_p1(data: Path, ds: Dataset, names: list[str]) -> dict[str, dict[str, float]]:
    """Mean RMSE/MAE over the official folds u1..u5 (ML-100K only)."""
    out: dict[str, dict[str, float]] = {}
    for name in names:
        rm, ma, secs = [], [], []
        for fold in ("u1", "u2", "u3", "u4", "u5"):
            train, test = ml100k_fold(ds, data, fold)
            t = time.perf_counter()
            model = REGISTRY[name].factory(train)
            secs.append(time.perf_counter() - t)
            r = test.ratings
            pred = model.predict(r["user_idx"].to_numpy(), r["item_idx"].to_numpy())
            rm.append(rmse(r["rating"].to_numpy(), pred))
            ma.append(mae(r["rating"].to_numpy(), pred))
        out[name] = {"rmse": float(np.mean(rm)), "rmse_std": float(np.std(rm)), "mae": float(np.mean(ma)),
                     "fit_seconds": float(np.mean(secs)), "folds": {f"u{i + 1}": v for i, v in enumerate(rm)}}
        print(f"  P1 {name:12s} RMSE {out[name]['rmse']:.4f}  MAE {out[name]['mae']:.4f}", flush=True)
    return out


def run_p2(ds: Dataset, names: list[str], seed: int) -> dict[str, dict[str, float]]:
    """Per-user 20% holdout; full ranking over items the user did not rate in train."""
    train, test = holdout_per_user(ds, 0.2, seed=seed)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        t = time.perf_counter()
        model = REGISTRY[name].factory(train)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        res = evaluate_topn(model.score_users, train, test, ks=(10, 50))
        eval_s = time.perf_counter() - t
        out[name] = {**{k: v for k, v in res.items()}, "fit_seconds": fit_s, "eval_seconds": eval_s}
        print(f"  P2 {name:12s} R@10 {res['recall@10']:.4f}  NDCG@10 {res['ndcg@10']:.4f}  "
              f"R@50 {res['recall@50']:.4f}  Cov@10 {res['coverage@10']:.4f}  "
              f"(fit {fit_s:.1f}s, eval {eval_s:.2f}s)", flush=True)
    return out


def tune(ds: Dataset, data: Path, names: list[str], seed: int) -> dict[str, Any]:
    """Grid search on validation splits carved from the training side (P2 train, u1.base)."""
    p2_train, _ = holdout_per_user(ds, 0.2, seed=seed)
    fit_p2, val_p2 = validation_split(p2_train, 0.1, seed=0)
    has_folds = (data / "u1.base").is_file()
    if has_folds:
        u1_train, _ = ml100k_fold(ds, data, "u1")
        fit_p1, val_p1 = validation_split(u1_train, 0.1, seed=0)
    results: dict[str, Any] = {}
    for name in names:
        grid = GRIDS.get(name)
        if not grid:
            continue
        rating = name in RATING_MODELS
        if rating and not has_folds:
            continue
        rows = []
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid.keys(), values))
            model = make_baseline(name, **params)
            if rating:
                model.fit(fit_p1)
                r = val_p1.ratings
                score = rmse(r["rating"].to_numpy(), model.predict(r["user_idx"].to_numpy(), r["item_idx"].to_numpy()))
            else:
                model.fit(fit_p2)
                score = evaluate_topn(model.score_users, fit_p2, val_p2, ks=(10,))["ndcg@10"]
            rows.append((params, score))
            print(f"  tune {name:10s} {params} -> {'val RMSE' if rating else 'val NDCG@10'} {score:.4f}", flush=True)
        best = (min if rating else max)(rows, key=lambda x: x[1])
        results[name] = {"metric": "val_rmse" if rating else "val_ndcg@10", "best": best[0],
                         "best_score": best[1], "grid": [{"params": p, "score": s} for p, s in rows]}
        print(f"  best {name}: {best[0]} ({best[1]:.4f})", flush=True)
    return results


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Dataset: `{result['dataset']}`; seed {result['seed']}.", ""]
    if result.get("P1"):
        lines += ["P1 (official folds u1..u5, mean):", "", "| model | RMSE | MAE | fit s/fold |", "|---|---:|---:|---:|"]
        for n, m in result["P1"].items():
            lines.append(f"| {n} | {m['rmse']:.4f} | {m['mae']:.4f} | {m['fit_seconds']:.1f} |")
        lines.append("")
    if result.get("P2"):
        lines += [f"P2 (20% per user held out, seed {result['seed']}, full ranking):", "",
                  "| model | Recall@10 | NDCG@10 | Recall@50 | Coverage@10 | fit s | eval s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for n, m in result["P2"].items():
            lines.append(f"| {n} | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | {m['recall@50']:.4f} | "
                         f"{m['coverage@10']:.4f} | {m['fit_seconds']:.1f} | {m['eval_seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="MovieLens folder (or synth output)")
    ap.add_argument("--models", default=None, help="comma-separated subset of: " + ",".join(REGISTRY))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--tune", action="store_true", help="grid-search the baselines on validation splits")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    _quiet_lightning()
    names = args.models.split(",") if args.models else list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {', '.join(REGISTRY)}")
    ds = load_dataset(args.data)
    print(ds, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tune:
        res = tune(ds, args.data, names, args.seed)
        (args.out / "tune.json").write_text(json.dumps(res, indent=1))
        return 0
    result: dict[str, Any] = {"dataset": str(args.data), "name": ds.name, "seed": args.seed,
                              "command": " ".join(sys.argv)}
    p1 = [n for n in names if "P1" in REGISTRY[n].protocols]
    if p1 and (args.data / "u1.test").is_file():
        result["P1"] = run_p1(args.data, ds, p1)
    elif p1:
        print("  P1 skipped: no official u1..u5 folds in this folder", flush=True)
    p2 = [n for n in names if "P2" in REGISTRY[n].protocols]
    if p2:
        result["P2"] = run_p2(ds, p2, args.seed)
    stem = f"quality-{ds.name}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (args.out / f"{stem}.md").write_text(md)
    print()
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
