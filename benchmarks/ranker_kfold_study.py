"""Ranker trained on K-fold cross-fitted lists vs the single two-tower list, on validation only.

    OMP_NUM_THREADS=1 python benchmarks/ranker_kfold_study.py --workdir /tmp/kfold-work

One bundle is trained on the fit part of ``validation_split(P2-train, 0.2, seed=0)``; then only
the ranker is retrained per variant and ranker seed (same two-tower model, same ranker holdout:
the seed changes the net's init, the random negatives, the early-stopping users and, with
``folds``, the fold draw) and scored by ``ordered_metrics`` on the validation part, with the
default serve pool (two-tower 200 + item-item 50) and with a wider item-item share (``+ii``:
item-item 250). ``folds`` trains K-1 extra two-tower models per seed (cached in ``--workdir``).
Results are appended to ``--out`` as they come.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.ranking_quality import _config, _quiet, baseline_metrics, ordered_metrics  # noqa: E402
from movierec.core.loaders import load_dataset  # noqa: E402
from movierec.pipeline import train as train_pipeline  # noqa: E402
from movierec.core.splits import holdout_per_user, validation_split  # noqa: E402
from recommender import HybridRecommender  # noqa: E402
from ranking.lists import split_for_ranker  # noqa: E402
from ranking.ranker import fit_ranker  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "folds=5": {"folds": 5},
    "folds=5 ids16": {"folds": 5, "emb_dim": 16},
}


def load_or_train(fit: Any, workdir: Path) -> HybridRecommender:
    """The validation bundle (the rating model is off: nothing here reads it)."""
    path = workdir / "bundle"
    if not (path / "manifest.json").is_file():
        cfg = _config()
        cfg.ranking.rating.enabled = False
        t = time.perf_counter()
        train_pipeline(fit, path, cfg)
        print(f"pipeline trained in {time.perf_counter() - t:.0f}s", flush=True)
    return HybridRecommender.load(path)


def ranker_inputs(model: HybridRecommender, fit: Any) -> dict[str, Any]:
    """fit_ranker's arguments for the bundle's two-tower model (as ``refit_ranker`` builds them)."""
    from retrieval.inputs import Histories
    from retrieval.towers import encode_all_users

    cfg = _config()
    retr = model.retrieval
    past, held_out = split_for_ranker(fit, cfg.ranking, seed=cfg.seed)
    past_uv = encode_all_users(
        retr.user_tower, Histories.from_ratings(past.ratings, past.n_users), retr.item_content[: fit.n_items],
        retr.user_features, retr.n_model_items, retr.history_len,
    )
    return dict(
        full=fit, past=past, held_out=held_out, content=np.asarray(model.content.item_vectors)[: fit.n_items],
        genres=retr.item_genres[: fit.n_items], user_features=retr.user_features, past_user_vectors=past_uv,
        item_vectors=retr.item_vectors[: fit.n_items], trainer_config=cfg.trainer,
    )


def cached_tower_trainer(workdir: Path) -> Any:
    """The pipeline's fold two-tower trainer, cached on disk by the ratings it is given."""
    import hashlib

    from content import ContentModel
    from movierec.pipeline import tower_trainer

    cfg = _config()
    fit_tower = None

    def fit(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        nonlocal fit_tower
        r = ds.ratings.sort_values(["user_idx", "item_idx"])
        key = hashlib.sha1(r[["user_idx", "item_idx"]].to_numpy().tobytes()).hexdigest()[:16]
        cache = workdir / f"tower-{key}.npz"
        if not cache.is_file():
            if fit_tower is None:
                fit_tower = tower_trainer(ContentModel.fit(ds.items, cfg.content, seed=cfg.seed).vectors, cfg)
            t = time.perf_counter()
            user, item = fit_tower(ds)
            np.savez(cache, user=user, item=item)
            print(f"  fold two-tower trained in {time.perf_counter() - t:.0f}s", flush=True)
        z = np.load(cache)
        return z["user"], z["item"]

    return fit


def run_variant(model: HybridRecommender, inputs: dict[str, Any], val: Any, name: str, workdir: Path, seed: int) -> dict[str, Any]:
    rc = _config().ranking.model_copy(update=VARIANTS[name])
    t = time.perf_counter()
    result = fit_ranker(config=rc, seed=seed, fit_tower=cached_tower_trainer(workdir), **inputs)
    secs = time.perf_counter() - t
    model.ranker = result.ranker
    out = {"ndcg@10": ordered_metrics(model, val, rank=True)["ndcg@10"], "fit_seconds": secs, **result.metrics}
    model.ranker.meta["collab_candidates"] = rc.candidates + rc.collab_candidates
    out["ndcg@10 +ii"] = ordered_metrics(model, val, rank=True)["ndcg@10"]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/kfold-work"))
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ranker_kfold_study.json")
    args = p.parse_args(argv)
    _quiet()
    torch.set_num_threads(1)
    ds = load_dataset(args.data)
    train, _ = holdout_per_user(ds, 0.2, 42)
    fit, val = validation_split(train, 0.2, seed=0)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["ease"] = baseline_metrics(fit, val)["ease"]["ndcg@10"]
    print(f"EASE ndcg@10 {results['ease']:.4f}", flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = load_or_train(fit, args.workdir)
    inputs = ranker_inputs(model, fit)
    for name in args.variants:
        for seed in args.seeds:
            res = run_variant(model, inputs, val, name, args.workdir, seed)
            results.setdefault(name, {})[str(seed)] = res
            extra = f", +ii {res['ndcg@10 +ii']:.4f}" if "ndcg@10 +ii" in res else ""
            print(f"{name} seed {seed}: ndcg@10 {res['ndcg@10']:.4f}{extra} ({res['lists']} lists, "
                  f"{res['epochs']} epochs, fit {res['fit_seconds']:.0f}s)", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
