"""Training the ranker with Lightning on ratings the two-tower model did not see.

:func:`fit_ranker` builds the training lists (:mod:`ranking.lists`), normalises their features,
trains the cross-fitted member nets and their guard weight (:mod:`ranking.ensemble`, each member
in :mod:`ranking.member`), and returns the runtime :class:`~ranking.runtime.Ranker`, which at
serve time recomputes the same features from the full training data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from movierec.core.config import RankingConfig, TrainerConfig
from movierec.core.data import Dataset
from ranking.background import BackgroundWorker
from ranking.ensemble import fit_guarded
from ranking.features import feature_names
from ranking.lists import (
    TowerFit,
    build_lists,
    cross_fitted_lists,
    feature_columns,
    list_features,
    resolve_collab_lambda,
    resolve_holdout,
    snapshot,
    split_for_ranker,
)
from ranking.member import RankerModule
from ranking.runtime import TIME_ARRAYS, Ranker

log = logging.getLogger(__name__)


@dataclass
class RankerResult:
    ranker: Ranker
    metrics: dict[str, Any]


def _base_column(columns: np.ndarray, n_user_features: int, config: RankingConfig) -> int:
    """Position (among the kept columns) of the feature the residual score starts from, or -1."""
    if not config.residual_feature:
        return -1
    names = [feature_names(n_user_features)[i] for i in columns]
    return names.index(config.residual_feature) if config.residual_feature in names else -1


def _column_of(columns: np.ndarray, n_user_features: int, name: str) -> int:
    names = [feature_names(n_user_features)[i] for i in columns]
    return names.index(name) if name in names else -1


def fit_ranker(
    full: Dataset,
    past: Dataset,
    held_out: Dataset,
    content: np.ndarray,
    genres: np.ndarray,
    user_features: np.ndarray,
    past_user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    config: RankingConfig,
    trainer_config: TrainerConfig | None = None,
    seed: int = 42,
    log_dir: str | Path | None = None,
    fit_tower: TowerFit | None = None,
    worker: BackgroundWorker | None = None,
) -> RankerResult:
    """Train the ranker and return its runtime form with full-data feature arrays.

    Args:
        full: all training ratings (the serve-time snapshot).
        past: the part the two-tower model was trained on (features of training lists).
        held_out: the held-out ratings (targets).
        content: (n_items, d) unit content vectors; genres: (n_items, G) multi-hot.
        user_features: (n_users, F) encoded user features.
        past_user_vectors: (n_users, dim) two-tower query vectors from ``past`` histories.
        item_vectors: (n_items, dim) two-tower candidate vectors.
        fit_tower: trains the extra two-tower models of ``config.folds`` (see :func:`cross_fitted_lists`).
        worker: a second process that trains member nets when it is free (:func:`fit_guarded`).
    """
    trainer_config = trainer_config or TrainerConfig()
    torch.set_num_threads(config.threads)
    L.seed_everything(seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    n_user_features = np.asarray(user_features).shape[1]
    config, past_block, lambda_curve = resolve_collab_lambda(past, held_out, config, seed)
    if config.folds > 1:
        if fit_tower is None:
            raise ValueError("ranking.folds > 1 needs fit_tower (a two-tower model per fold)")
        arrays = (content, genres, user_features)
        lists, raw = cross_fitted_lists(
            full, past, held_out, arrays, past_user_vectors, item_vectors, fit_tower, config, seed, past_block
        )
        center = float(full.ratings["rating"].mean())
    else:
        snap = snapshot(past, content, genres, user_features, config, past_block)
        lists = build_lists(snap, held_out, past_user_vectors, item_vectors, config, seed)
        raw = list_features(snap, lists)
        lists.collab = None  # read: the member nets (and the second process) need none of it
        center = snap.ctx.global_mean
    columns = feature_columns(n_user_features, config.exclude)
    t_feat = time.perf_counter() - t0

    # normalisation statistics over every list (no labels involved)
    valid = lists.cand >= 0
    listed = raw[valid][:, columns]
    del raw
    sel = listed.astype(np.float64)
    mean = np.nan_to_num(np.nanmean(sel, 0)) if len(sel) else np.zeros(len(columns))
    std = np.nan_to_num(np.nanstd(sel, 0)) if len(sel) else np.ones(len(columns))
    std = np.where(std > 1e-6, std, 1.0)
    del sel
    x = np.zeros((*valid.shape, len(columns)), np.float32)  # padding stays 0
    x[valid] = np.nan_to_num((listed - mean) / std)
    del listed

    lo, hi = full.rating_scale
    use_ids = "ids" not in config.exclude
    hparams = dict(
        n_dense=len(columns),
        n_users=full.n_users,
        n_items=full.n_items,
        emb_dim=config.emb_dim if use_ids else 0,
        hidden=list(config.hidden),
        cross_layers=config.cross_layers,
        dropout=config.dropout,
        rating_center=center,
        rating_scale=max((hi - lo) / 2.0, 1e-3),
        lr=config.lr,
        weight_decay=config.weight_decay,
        rating_weight=config.rating_weight,
        id_dropout=config.id_dropout if use_ids else 0.0,
        base_column=_base_column(columns, n_user_features, config),
    )
    base_col = hparams["base_column"] if hparams["base_column"] >= 0 else _column_of(columns, n_user_features, "collab_z")
    net, curve, member_metrics = fit_guarded(x, lists, hparams, base_col, config, trainer_config, seed, log_dir, worker)
    nets, alpha = list(net.nets), net.alpha
    log.info(
        "ranker: %d member(s); lists no member saw: ndcg@10 over the retrieved pool %.4f (base) -> %.4f (nets) -> %.4f at alpha %.2f",
        len(nets), curve.get(0.0, float("nan")), curve.get(1.0, float("nan")), curve[alpha], alpha,
    )

    serve = snapshot(full, content, genres, user_features, config)
    meta = {
        "candidates": int(config.candidates),
        "collab_candidates": int(config.collab_candidates),
        "columns": columns.tolist(),
        "feature_names": [feature_names(n_user_features)[i] for i in columns],
        "mean": mean.tolist(),
        "std": std.tolist(),
        "rating_scale": [float(lo), float(hi)],
        "global_mean": serve.ctx.global_mean,
        "ref_year": serve.ctx.ref_year,
        "collab_items": int(serve.ctx.collab.shape[0]),
        "net": RankerModule(**hparams).net_kwargs(),
        "ensemble": {"members": len(nets), "alpha": float(alpha), "base_column": int(base_col)},
        "holdout": resolve_holdout(full, config.holdout)[0],
        "exclude": list(config.exclude),
    }
    arrays = {
        "item_counts": serve.item_counts,
        "item_mean": serve.ctx.item_mean,
        "user_mean": serve.ctx.user_mean,
        "hist_indptr": serve.hist_indptr,
        "hist_ratings": serve.hist_ratings,
    }
    if serve.ctx.item_first_day is not None:
        arrays.update({name: getattr(serve.ctx, name) for name in TIME_ARRAYS})
        meta["ref_day"] = serve.ctx.ref_day
    if serve.ctx.adjacent is not None:
        meta["adjacent_items"] = int(serve.ctx.adjacent.shape[0])
    metrics = {
        "val_ndcg@10_pool": float(curve[alpha]),  # the served weight, over the retrieved pool
        "val_ndcg@10_base": float(curve.get(0.0, float("nan"))),
        "val_ndcg@10_nets": float(curve.get(1.0, float("nan"))),
        "alpha": float(alpha),
        "collab_lambda": float(config.collab_lambda),
        "collab_lambda_ndcg@10": {str(k): round(v, 4) for k, v in sorted(lambda_curve.items())},
        "members": len(nets),
        "lists": int(len(lists.users)),
        "list_width": int(lists.cand.shape[1]),
        "epochs": [m["epochs"] for m in member_metrics],
        "val_loss_untrained": float(np.mean([m["val_loss_untrained"] for m in member_metrics])),
        "val_loss": float(np.mean([m["val_loss"] for m in member_metrics])),
        "val_rmse": float(np.nanmean([m["val_rmse"] for m in member_metrics])),
        "feature_seconds": round(t_feat, 2),
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    return RankerResult(Ranker(net, meta, arrays, serve.ctx.collab, serve.ctx.adjacent), metrics)


def refit_ranker(
    model: Any,
    ds: Dataset,
    config: RankingConfig,
    trainer_config: TrainerConfig | None = None,
    seed: int = 42,
    fit_tower: TowerFit | None = None,
) -> RankerResult:
    """Train a new ranker for a loaded bundle's retrieval model (ablations, tuning).

    ``ds`` must be the data the bundle was trained on and ``config`` must hold out the same part
    as at training (same ``holdout``, ``holdout_fraction`` and seed): the two-tower model saw
    only the past part, and the past query vectors are re-encoded from it with the bundle's tower.

    Args:
        model: a :class:`recommender.HybridRecommender`.
    """
    from retrieval.inputs import Histories
    from retrieval.towers import encode_all_users

    retr = model.retrieval
    past, held_out = split_for_ranker(ds, config, seed=seed)
    past_uv = encode_all_users(
        retr.user_tower, Histories.from_ratings(past.ratings, past.n_users), retr.item_content[: ds.n_items],
        retr.user_features, retr.n_model_items, retr.history_len,
    )
    return fit_ranker(
        ds, past, held_out, np.asarray(model.content.item_vectors)[: ds.n_items], retr.item_genres[: ds.n_items],
        retr.user_features, past_uv, retr.item_vectors[: ds.n_items], config, trainer_config, seed=seed, fit_tower=fit_tower,
    )
