"""Training the ranker with Lightning on ratings the two-tower model did not see.

Protocol (see :func:`split_for_ranker` and :func:`fit_ranker`): the training data is split per
user into a "past" part, on which the two-tower model is trained, and a held-out part. For every
user with held-out ratings, one list is built: the two-tower model's top ``candidates`` items
(hard negatives unless held out), the held-out items it missed (for the rating head only; in the
ranking loss they would leak "outside the pool means relevant"), and a few random items. The
ranking loss is a listwise softmax over each list with the held-out items as targets
(ListNet top-one); the rating head regresses held-out rating values. Early stopping and
checkpointing watch the same ``val/ndcg@10`` (in-list, on validation users).

With ``folds`` = K > 1 (:func:`cross_fitted_lists`) every user gets K such lists, one per fold of
the training data, each built without its fold's ratings (K-1 extra two-tower fits): five times
the lists (benchmarks/RESULTS.md, issue 5).

The ranker is ``ranking.ensemble`` member nets, cross-fitted over users, whose averaged order
is shrunk towards the EASE order (the ``collab_z`` feature) by a weight chosen on lists no member
trained on (:func:`fit_guarded`, :class:`~ranking.net.GuardedRanker`): where the features add
nothing beyond EASE, the order stays EASE's.

At serve time the runtime :class:`~ranking.runtime.Ranker` recomputes the same features from
the full training data.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset, default_collate

from movierec.core.config import RankingConfig, TrainerConfig
from movierec.core.data import Dataset
from movierec.core.metrics import top_k
from movierec.core.splits import holdout_per_user, temporal_per_user, user_folds
from ranking.background import BackgroundWorker
from ranking.collab_scores import collab_top
from ranking.features import FEATURES, GROUPS, FeatureContext, _z_within, compute_features, damped_means, feature_names
from ranking.padding import pad_histories
from ranking.item_item import choose_lambda, item_item_matrix
from ranking.net import TIE_BREAK, GuardedRanker, RankerNet
from ranking.runtime import TIME_ARRAYS, Ranker
from ranking.sequence import adjacency_matrix

log = logging.getLogger(__name__)


def resolve_holdout(ds: Dataset, holdout: str) -> tuple[str, str]:
    """The held-out part the ranker learns from, ``"temporal"`` or ``"random"``, and why.

    ``auto`` follows the job a service does: each user's next movies when the ratings have real
    timestamps (more than one value), a random share when they have none (the loaders write 0
    throughout), where "latest" would be row order and mean nothing.
    """
    if holdout != "auto":
        return holdout, f"ranking.holdout={holdout} in the config"
    ts = ds.ratings["timestamp"].to_numpy()
    if len(ts) and ts.min() != ts.max():
        return "temporal", "ranking.holdout=auto and the ratings have timestamps: the ranker learns each user's next movies"
    return "random", "ranking.holdout=auto and the ratings have no timestamps: the ranker learns a random share of each user's ratings"


def split_for_ranker(ds: Dataset, config: RankingConfig, seed: int = 42) -> tuple[Dataset, Dataset]:
    """(past, held_out): the two-tower model trains on ``past``, the ranker on ``held_out``.

    ``temporal`` holds out each user's latest ratings (what production ranking predicts: the
    next movies, protocol P5); ``random`` holds out a random share (what the P2 protocol
    measures); ``auto`` picks one from the data (:func:`resolve_holdout`).
    """
    if resolve_holdout(ds, config.holdout)[0] == "temporal":
        return temporal_per_user(ds, fraction=config.holdout_fraction)
    return holdout_per_user(ds, fraction=config.holdout_fraction, seed=seed + 1)


def item_years(ds: Dataset) -> np.ndarray:
    """(n_items,) float year, NaN when unknown."""
    return ds.items["year"].astype("Float64").to_numpy(np.float64, na_value=np.nan)


@dataclass
class Snapshot:
    """Feature arrays of one set of ratings plus its histories with ratings (time order)."""

    ctx: FeatureContext
    hist_indptr: np.ndarray
    hist_items: np.ndarray
    hist_ratings: np.ndarray
    item_counts: np.ndarray


def snapshot(
    ds: Dataset, content: np.ndarray, genres: np.ndarray, user_features: np.ndarray, config: RankingConfig,
    collab_weights: np.ndarray | None = None,
) -> Snapshot:
    """Everything :func:`compute_features` needs about ``ds``'s ratings.

    ``config.collab_lambda`` must be a number here (:func:`resolve_collab_lambda`);
    ``collab_weights`` is the dense EASE block of ``ds`` at that lambda when already computed.
    """
    r = ds.ratings
    ratings = r["rating"].to_numpy(np.float64)
    mu = float(ratings.mean()) if len(ratings) else 0.0
    item_counts, item_mean = damped_means(r["item_idx"].to_numpy(), ratings, ds.n_items, mu)
    _, user_mean = damped_means(r["user_idx"].to_numpy(), ratings, ds.n_users, mu)
    if "collab" in config.exclude and config.collab_candidates == 0:
        # nothing reads the item-item model (the one step quadratic in items: tens of minutes at
        # 100k items here). A 0 x 0 matrix means no item has item-item rows, so the feature code
        # returns zeros at once instead of scoring users x items dense blocks of zeros.
        collab = sp.csr_matrix((0, 0), dtype=np.float32)
    else:
        if config.collab_lambda == "auto":
            raise ValueError("snapshot needs a numeric ranking.collab_lambda: resolve 'auto' first (resolve_collab_lambda)")
        collab = item_item_matrix(
            ds.to_csr(), float(config.collab_lambda), config.collab_neighbors, config.collab_dense_max_items, collab_weights
        )
    years = item_years(ds)
    order = np.lexsort((r["timestamp"].to_numpy(), r["user_idx"].to_numpy()))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r["user_idx"].to_numpy(), minlength=ds.n_users))]).astype(np.int64)
    days = timeline_days(r["user_idx"].to_numpy(), r["item_idx"].to_numpy(), r["timestamp"].to_numpy(), ds.n_users, ds.n_items)
    if days and config.adjacent_window > 0 and "time" not in config.exclude:
        days["adjacent"] = adjacency_matrix(
            r["user_idx"].to_numpy()[order], r["item_idx"].to_numpy()[order], ds.n_items, config.adjacent_window, config.adjacent_neighbors
        )
    ctx = FeatureContext(
        content=np.ascontiguousarray(content, np.float32),
        genres=np.asarray(genres, np.float32),
        years=years,
        item_counts=item_counts.astype(np.int64),
        item_mean=item_mean,
        collab=collab,
        user_mean=user_mean,
        user_features=np.asarray(user_features, np.float32),
        global_mean=mu,
        ref_year=float(np.nanmax(years)) if np.isfinite(years).any() else 0.0,
        **days,
    )
    return Snapshot(ctx, indptr, r["item_idx"].to_numpy(np.int64)[order], ratings.astype(np.float32)[order], item_counts.astype(np.int64))


SECONDS_PER_DAY = 86_400.0


def timeline_days(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, n_users: int, n_items: int) -> dict[str, Any]:
    """The time-feature arrays of :class:`~ranking.features.FeatureContext` from rating
    timestamps (unix seconds): each item's first rating day (NaN when unrated), each user's first
    and last rating day (the newest day when the user has none), and the newest day. Ratings
    without timestamps (all one value: the loaders write 0) give none, and the features are 0."""
    ts = np.asarray(timestamps, np.float64)
    if not len(ts) or ts.min() == ts.max():
        return {}
    days = ts / SECONDS_PER_DAY
    ref = float(days.max())
    item_first = np.full(n_items, np.inf)
    np.minimum.at(item_first, items, days)
    user_first = np.full(n_users, np.inf)
    np.minimum.at(user_first, users, days)
    user_last = np.full(n_users, -np.inf)
    np.maximum.at(user_last, users, days)
    return {
        "item_first_day": np.where(np.isfinite(item_first), item_first, np.nan),
        "user_first_day": np.where(np.isfinite(user_first), user_first, ref),
        "user_last_day": np.where(np.isfinite(user_last), user_last, ref),
        "ref_day": ref,
    }


@dataclass
class Lists:
    """Training lists: one row per user, padded with -1."""

    users: np.ndarray  # (n,)
    cand: np.ndarray  # (n, W)
    scores: np.ndarray  # (n, W) two-tower scores
    in_loss: np.ndarray  # (n, W) rows of the ranking loss (retrieved + random)
    label: np.ndarray  # (n, W) held-out item
    rating: np.ndarray  # (n, W) held-out rating, NaN elsewhere
    retrieved: np.ndarray | None = None  # (n, W) the candidate pool a request would rank (None: the loss rows)


def _used_width(cand: np.ndarray | torch.Tensor) -> int:
    """Columns the widest of these lists fills (lists are packed to the left, then -1)."""
    return max(int((cand >= 0).sum(1).max()), 1) if len(cand) else 1


def resolve_collab_lambda(
    past: Dataset, held_out: Dataset, config: RankingConfig, seed: int
) -> tuple[RankingConfig, np.ndarray | None, dict[float, float]]:
    """``config`` with a numeric ``collab_lambda``: an ``auto`` weight is chosen on the held-out
    ratings (:func:`ranking.item_item.choose_lambda`); also that choice's EASE block of ``past``
    and the NDCG@10 per weight (empty when the weight was given)."""
    if config.collab_lambda != "auto":
        return config, None, {}
    needs = "collab" not in config.exclude or config.collab_candidates > 0
    if not needs or not len(held_out.ratings):
        return config.model_copy(update={"collab_lambda": 500.0}), None, {}
    lam, weights, curve = choose_lambda(
        past.to_csr(), held_out.to_csr(), config.collab_neighbors, config.collab_dense_max_items, seed
    )
    return config.model_copy(update={"collab_lambda": lam}), weights, curve


def build_lists(
    past: Snapshot,
    held_out: Dataset,
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    config: RankingConfig,
    seed: int,
) -> Lists:
    """One candidate list per user with held-out ratings (see the module docstring)."""
    rng = np.random.default_rng(seed)
    h = held_out.ratings
    users = np.unique(h["user_idx"].to_numpy())
    if len(users) > config.max_users:
        users = np.sort(rng.choice(users, config.max_users, replace=False))
    h = h[np.isin(h["user_idx"].to_numpy(), users)]
    n_items = len(item_vectors)
    pos_order = np.argsort(h["user_idx"].to_numpy(), kind="stable")
    pu = h["user_idx"].to_numpy()[pos_order]
    pi = h["item_idx"].to_numpy()[pos_order]
    pr = h["rating"].to_numpy(np.float32)[pos_order]
    pos_ptr = np.searchsorted(pu, users), np.searchsorted(pu, users, side="right")
    c = min(config.candidates, n_items)
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for s in range(0, len(users), 1024):
        ub = users[s : s + 1024]
        sc = user_vectors[ub] @ item_vectors.T
        for r, u in enumerate(ub):
            sc[r, past.hist_items[past.hist_indptr[u] : past.hist_indptr[u + 1]]] = -np.inf
        top = top_k(sc, c)
        seen_lists = [past.hist_items[past.hist_indptr[u] : past.hist_indptr[u + 1]] for u in ub]
        extra = collab_top(past.ctx.collab, seen_lists, seen_lists, config.collab_candidates)
        for r, u in enumerate(ub):
            j = s + r
            items, ratings = pi[pos_ptr[0][j] : pos_ptr[1][j]], pr[pos_ptr[0][j] : pos_ptr[1][j]]
            retrieved = top[r][np.isfinite(sc[r, top[r]])]
            more = extra[r][(extra[r] >= 0) & ~np.isin(extra[r], retrieved)]
            retrieved = np.concatenate([retrieved, more])
            missed = items[~np.isin(items, retrieved)]
            rand = rng.integers(0, n_items, size=config.negatives)
            seen = past.hist_items[past.hist_indptr[u] : past.hist_indptr[u + 1]]
            rand = np.unique(rand[~np.isin(rand, np.concatenate([seen, items, retrieved]))])
            cand = np.concatenate([retrieved, missed, rand])
            in_loss = np.r_[np.ones(len(retrieved), bool), np.zeros(len(missed), bool), np.ones(len(rand), bool)]
            rows.append((cand, in_loss, items, ratings, len(retrieved)))
    width = max((len(x[0]) for x in rows), default=1)
    n = len(rows)
    out = Lists(
        users=users.astype(np.int64),
        cand=np.full((n, width), -1, np.int64),
        scores=np.zeros((n, width), np.float32),
        in_loss=np.zeros((n, width), bool),
        label=np.zeros((n, width), bool),
        rating=np.full((n, width), np.nan, np.float32),
        retrieved=np.zeros((n, width), bool),
    )
    for r, (cand, in_loss, items, ratings, n_retrieved) in enumerate(rows):
        m = len(cand)
        out.cand[r, :m] = cand
        out.in_loss[r, :m] = in_loss
        out.retrieved[r, :n_retrieved] = True
        pos = {int(i): float(v) for i, v in zip(items, ratings)}
        lab = np.array([int(i) in pos for i in cand])
        out.label[r, :m] = lab
        out.rating[r, :m] = [pos.get(int(i), np.nan) for i in cand]
        out.scores[r, :m] = item_vectors[cand] @ user_vectors[users[r]]
    return out


def concat_lists(parts: list[Lists]) -> Lists:
    """Stack lists of different widths (padding as in :func:`build_lists`)."""
    width = max(p.cand.shape[1] for p in parts)

    def pad(name: str, fill: Any) -> np.ndarray:
        return np.concatenate([
            np.pad(getattr(p, name), ((0, 0), (0, width - p.cand.shape[1])), constant_values=fill) for p in parts
        ])

    return Lists(
        np.concatenate([p.users for p in parts]), pad("cand", -1), pad("scores", 0.0), pad("in_loss", False),
        pad("label", False), pad("rating", np.nan),
        pad("retrieved", False) if all(p.retrieved is not None for p in parts) else None,
    )


TowerFit = Callable[[Dataset], tuple[np.ndarray, np.ndarray]]
"""Trains a two-tower model on the given ratings; returns (user vectors from those histories, item vectors)."""


def cross_fitted_lists(
    full: Dataset,
    past: Dataset,
    held_out: Dataset,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
    past_user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    fit_tower: TowerFit,
    config: RankingConfig,
    seed: int,
) -> tuple[Lists, np.ndarray]:
    """Lists and raw features of ``config.folds`` folds of ``full``, each one cross-fitted.

    Fold 0 is ``held_out``, scored by the main two-tower model (trained on ``past``); ``past``
    is dealt per user into K-1 more folds, each scored by a model ``fit_tower`` trains without
    it. Every fold's features and candidates come from a snapshot of the other folds, so
    nothing a list is built from saw the ratings it labels: K times the lists of the single
    holdout, whose ~940 lists on ML-100K left the ranker noisy, for K-1 extra tower fits.

    Args:
        arrays: (content, genres, user_features) as :func:`snapshot` takes them.
    """
    folds = user_folds(past, config.folds - 1, seed)
    r = past.ratings
    parts = [(past, held_out, past_user_vectors, item_vectors)]
    for k in range(config.folds - 1):
        rest = full.with_ratings(pd.concat([r[folds != k], held_out.ratings]))
        parts.append((rest, past.with_ratings(r[folds == k]), *fit_tower(rest)))
    lists, raws = [], []
    for k, (rest, labels, user_vectors, items) in enumerate(parts):
        snap = snapshot(rest, *arrays, config)
        lists.append(build_lists(snap, labels, user_vectors, items, config, seed + k))
        raws.append(list_features(snap, lists[-1]))
    out = concat_lists(lists)
    width = out.cand.shape[1]
    return out, np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0))) for x in raws])


def list_features(snap: Snapshot, lists: Lists) -> np.ndarray:
    """Raw features (n, W, F) of the training lists from the past snapshot."""
    hists = [snap.hist_items[snap.hist_indptr[u] : snap.hist_indptr[u + 1]] for u in lists.users]
    rats = [snap.hist_ratings[snap.hist_indptr[u] : snap.hist_indptr[u + 1]] for u in lists.users]
    out = np.zeros((*lists.cand.shape, len(FEATURES) + snap.ctx.n_user_features), np.float32)  # padding features are zeros
    for s in range(0, len(lists.users), 256):
        e = s + 256
        w = _used_width(lists.cand[s:e])  # compute only the columns these lists use
        hp = pad_histories(hists[s:e], rats[s:e], snap.ctx.user_mean[lists.users[s:e]])
        out[s:e, :w] = compute_features(snap.ctx, lists.users[s:e], hp, lists.cand[s:e, :w], lists.scores[s:e, :w])
    return out


def feature_columns(n_user_features: int, exclude: list[str]) -> np.ndarray:
    """Indices of the feature columns kept after leaving out the ``exclude`` groups."""
    names = feature_names(n_user_features)
    drop = {f for g in exclude if g in GROUPS for f in GROUPS[g]}
    return np.array([i for i, n in enumerate(names) if n not in drop], dtype=np.int64)


def _base_column(columns: np.ndarray, n_user_features: int, config: RankingConfig) -> int:
    """Position (among the kept columns) of the feature the residual score starts from, or -1."""
    if not config.residual_feature:
        return -1
    names = [feature_names(n_user_features)[i] for i in columns]
    return names.index(config.residual_feature) if config.residual_feature in names else -1


# ---- Lightning -------------------------------------------------------------------------------
class RankerModule(L.LightningModule):
    """Wraps :class:`RankerNet` for the listwise + rating loss, optimiser and validation."""

    def __init__(
        self,
        n_dense: int,
        n_users: int,
        n_items: int,
        emb_dim: int = 16,
        hidden: list[int] | None = None,
        cross_layers: int = 2,
        dropout: float = 0.1,
        rating_center: float = 3.0,
        rating_scale: float = 1.0,
        lr: float = 2e-3,
        weight_decay: float = 1e-5,
        rating_weight: float = 0.5,
        id_dropout: float = 0.1,
        base_column: int = -1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = RankerNet(
            n_dense, n_users, n_items, emb_dim, list(hidden) if hidden is not None else [128, 64], cross_layers, dropout, rating_center, rating_scale, base_column
        )
        self._val: dict[str, list[float]] = {}

    def net_kwargs(self) -> dict[str, Any]:
        hp = self.hparams
        return {k: (list(hp[k]) if k == "hidden" else hp[k]) for k in (
            "n_dense", "n_users", "n_items", "emb_dim", "hidden", "cross_layers", "dropout", "rating_center", "rating_scale",
            "base_column")}

    def _losses(self, batch: list[torch.Tensor], train: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, users, cand, in_loss, label, rating = batch
        if train and self.hparams.id_dropout > 0:
            users = torch.where(torch.rand(users.shape) < self.hparams.id_dropout, torch.full_like(users, -1), users)
            cand = torch.where(torch.rand(cand.shape) < self.hparams.id_dropout, torch.full_like(cand, -1), cand)
        score, pred = self.net(x, users, cand)
        logits = score.masked_fill(~in_loss, -1e9)
        target = (label & in_loss).float()
        n_pos = target.sum(1)
        has = n_pos > 0
        rank_loss = -(target * F.log_softmax(logits, 1)).sum(1)[has] / n_pos[has]
        rank_loss = rank_loss.mean() if has.any() else score.sum() * 0
        rated = ~torch.isnan(rating)
        scale = self.net.rating_scale
        err = (pred - torch.nan_to_num(rating)) / scale
        mse = (err[rated] ** 2).mean() if rated.any() else score.sum() * 0
        loss = rank_loss + self.hparams.rating_weight * mse
        return loss, rank_loss, mse, score

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, rank_loss, mse, _ = self._losses(batch, train=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"ranker loss is {loss.item()} at step {self.global_step}; lower ranking.lr")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        loss, rank_loss, mse, score = self._losses(batch, train=False)
        n = len(batch[0])
        _, _, cand, in_loss, label, rating = batch
        s = score.masked_fill(~in_loss, -float("inf"))
        top = torch.topk(s, min(10, s.shape[1]), dim=1).indices
        hits = torch.gather(label & in_loss, 1, top).float()
        disc = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2).float())
        n_rel = (label & in_loss).sum(1)
        ideal = torch.cumsum(disc, 0)[(n_rel.clamp(1, top.shape[1]) - 1)]
        ndcg = ((hits * disc).sum(1) / ideal)[n_rel > 0]
        # under DDP each rank validates its own shard: average over ranks, so early stopping and
        # the checkpoint see the same value everywhere
        sync = self._trainer is not None and self.trainer.world_size > 1
        self.log("val/loss", loss, batch_size=n, sync_dist=sync)
        self.log("val/rank_loss", rank_loss, batch_size=n, sync_dist=sync)
        self.log("val/rmse", mse.sqrt() * self.net.rating_scale, batch_size=n, sync_dist=sync)
        self.log("val/ndcg@10", ndcg.mean() if len(ndcg) else torch.tensor(0.0), prog_bar=True, batch_size=max(len(ndcg), 1), sync_dist=sync)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def _net_inputs(x: np.ndarray, lists: Lists, rows: np.ndarray) -> tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(width, (dense, users, cand)) of these lists, without the padding none of them uses."""
    w = _used_width(lists.cand[rows])
    return w, (torch.from_numpy(x[rows, :w]), torch.from_numpy(lists.users[rows]), torch.from_numpy(lists.cand[rows, :w]))


@torch.no_grad()
def _head_inputs(net: RankerNet, x: np.ndarray, lists: Lists, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of the rating head (frozen trunk, eval mode) and targets of the rated pairs."""
    net.eval()
    hs, ys = [], []
    for s in range(0, len(rows), 128):
        r = rows[s : s + 128]
        w, inputs = _net_inputs(x, lists, r)
        h = net.head_input(*inputs).numpy()
        rated = ~np.isnan(lists.rating[r, :w])
        hs.append(h[rated])
        ys.append(lists.rating[r, :w][rated])
    return np.concatenate(hs).astype(np.float64), np.concatenate(ys).astype(np.float64)


def refit_rating_head(net: RankerNet, x: np.ndarray, lists: Lists, fit_rows: np.ndarray, val_rows: np.ndarray) -> float:
    """Refit the linear rating head in closed form (ridge) on the frozen trunk; returns val RMSE.

    Early stopping picks the epoch where the *order* is best, which comes well before the rating
    regression converges (it has fewer, noisier targets). A linear head on fixed inputs has an
    exact least-squares solution, so no extra epochs are needed; the ridge weight is chosen on
    the validation users.
    """
    h, y = _head_inputs(net, x, lists, fit_rows)
    hv, yv = _head_inputs(net, x, lists, val_rows)
    center, scale = float(net.rating_center), float(net.rating_scale)
    hb, hvb = np.c_[h, np.ones(len(h))], np.c_[hv, np.ones(len(hv))]
    gram, rhs = hb.T @ hb, hb.T @ ((y - center) / scale)
    best: tuple[float, np.ndarray] | None = None
    for lam in (0.1, 1.0, 10.0, 100.0, 1000.0):
        w = np.linalg.solve(gram + lam * np.diag(np.r_[np.ones(h.shape[1]), 0.0]), rhs)
        rmse = float(np.sqrt(np.mean((center + scale * (hvb @ w) - yv) ** 2)))
        if best is None or rmse < best[0]:
            best = (rmse, w)
    assert best is not None
    with torch.no_grad():
        net.rating_head.weight.copy_(torch.from_numpy(best[1][:-1]).float()[None, :])
        net.rating_head.bias.fill_(float(best[1][-1]))
    return best[0]


ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
"""Weights of the learned order against the base (EASE) order that training chooses from."""


def _column_of(columns: np.ndarray, n_user_features: int, name: str) -> int:
    names = [feature_names(n_user_features)[i] for i in columns]
    return names.index(name) if name in names else -1


def _list_ndcg(scores: np.ndarray, lists: Lists, rows: np.ndarray, k: int = 10, pool: bool = False) -> np.ndarray:
    """NDCG@k of each list's order by ``scores`` (n, W) over its loss candidates (labels: held-out
    items), NaN for lists without a held-out item among them.

    ``pool``: order only the candidates a request would rank (no random negatives) and count
    every held-out item in the ideal, retrieved or not: full-ranking NDCG@10 of the served list.
    """
    pooled = pool and lists.retrieved is not None
    inl = (lists.retrieved[rows] if pooled else lists.in_loss[rows]) & (lists.cand[rows] >= 0)
    lab = lists.label[rows] & inl
    s = np.where(inl, scores, -np.inf)
    kk = min(k, s.shape[1])
    top = np.argsort(-s, axis=1, kind="stable")[:, :kk]
    disc = 1.0 / np.log2(np.arange(2, kk + 2))
    dcg = (np.take_along_axis(lab, top, 1) * disc).sum(1)
    n_rel = (lists.label[rows] & (lists.cand[rows] >= 0)).sum(1) if pooled else lab.sum(1)
    ideal = np.cumsum(disc)[np.clip(n_rel, 1, kk) - 1]
    return np.where(n_rel > 0, dcg / ideal, np.nan)


def choose_alpha(scores: np.ndarray, base: np.ndarray | None, lists: Lists, rows: np.ndarray) -> tuple[float, dict[float, float]]:
    """The weight of the learned order against the base order: the smallest weight whose mean
    NDCG@10 is within one standard error of the best weight's (the one-standard-error rule).

    ``scores`` are the nets' scores of lists none of them trained on, ``base`` the base column
    (the within-list standardised EASE score). Both are standardised over the candidate pool a
    request would rank, as :class:`GuardedRanker` sees them, and each weight is scored by
    NDCG@10 of that pool against every held-out item (:func:`_list_ndcg` with ``pool``): the
    served order, not the order among the training lists' random negatives, which favoured the
    nets. The standard error is that of the per-list difference to the best weight. Leaning to
    the base is deliberate: the lists come from a snapshot without the held-out ratings, whose
    EASE is weaker than the one served from all of them, so these lists overrate the nets (on
    validation the best served weight sat below the one these lists picked; benchmarks/RESULTS.md,
    session 5). Without a base the learned order is all there is.
    """
    if base is None or not len(rows):
        return 1.0, {1.0: float(np.nanmean(_list_ndcg(scores, lists, rows, pool=True))) if len(rows) else float("nan")}
    valid = lists.cand[rows] >= 0
    if lists.retrieved is not None:
        valid &= lists.retrieved[rows]
        base = _z_within(base, valid)
    z = _z_within(scores, valid)  # as GuardedRanker standardises the nets' order
    per_list = {}
    for a in ALPHAS:
        w = max(a, TIE_BREAK)  # as GuardedRanker scores
        per_list[a] = _list_ndcg(w * z + (1 - w) * base, lists, rows, pool=True)
    curve = {a: float(np.nanmean(v)) for a, v in per_list.items()}
    best = max(curve, key=lambda a: (curve[a], -a))
    for a in ALPHAS:  # ascending: the first weight close enough to the best
        diff = per_list[best] - per_list[a]
        diff = diff[np.isfinite(diff)]
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        if curve[a] >= curve[best] - se - 1e-9:
            return a, curve
    return best, curve


@torch.no_grad()
def _net_scores(net: RankerNet, x: np.ndarray, lists: Lists, rows: np.ndarray) -> np.ndarray:
    net.eval()
    out = np.zeros((len(rows), x.shape[1]), np.float32)
    for s in range(0, len(rows), 256):
        r = rows[s : s + 256]
        w, inputs = _net_inputs(x, lists, r)
        out[s : s + 256, :w] = net.score(*inputs).numpy()
    return out


def _fit_member(
    x: np.ndarray,
    lists: Lists,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    hparams: dict[str, Any],
    config: RankingConfig,
    trainer_config: TrainerConfig,
    seed: int,
    log_dir: str | Path | None,
) -> tuple[RankerModule, dict[str, float]]:
    """Train one member net on ``fit_rows``, early stopping on ``val_rows`` (in-list NDCG@10)."""
    from retrieval.distributed import resolve_strategy
    from retrieval.two_tower import show_progress

    L.seed_everything(seed, workers=True, verbose=False)
    module = RankerModule(**hparams)
    gen = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(
        _tensors(x, lists, fit_rows), batch_size=config.batch_size, shuffle=True, generator=gen, collate_fn=_trimmed_batch
    )
    val_dl = DataLoader(_tensors(x, lists, val_rows), batch_size=256, collate_fn=_trimmed_batch)
    monitor = "val/ndcg@10"
    with tempfile.TemporaryDirectory(prefix="movierec-ranker-") as ckpt_dir:
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, monitor=monitor, mode="max", save_top_k=1, save_weights_only=True)
        trainer = L.Trainer(
            max_epochs=config.epochs,
            accelerator=trainer_config.accelerator,
            devices=trainer_config.devices,
            num_nodes=trainer_config.num_nodes,
            strategy=resolve_strategy(trainer_config),  # ddp: workers forked from this process (retrieval.distributed)
            callbacks=[EarlyStopping(monitor=monitor, mode="max", patience=config.patience), checkpoint],
            logger=CSVLogger(str(log_dir), name="ranker", version="") if log_dir else False,
            enable_progress_bar=show_progress(trainer_config),
            enable_model_summary=False,
            deterministic=True,
            num_sanity_val_steps=0,
            log_every_n_steps=5,
        )
        before = trainer.validate(module, val_dl, verbose=False)[0] if len(val_rows) else {}
        trainer.fit(module, train_dl, val_dl)
        best = checkpoint.best_model_score
        if checkpoint.best_model_path:
            module.load_state_dict(torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
        after = trainer.validate(module, val_dl, verbose=False)[0] if len(val_rows) else {}
    val_rmse = float("nan")
    if config.refit_rating_head and len(val_rows):
        val_rmse = refit_rating_head(module.net, x, lists, fit_rows, val_rows)
    module.eval()
    return module, {
        "epochs": int(trainer.current_epoch),
        "val_ndcg@10": float(best) if best is not None else float("nan"),
        "val_loss_untrained": float(before.get("val/loss", float("nan"))),
        "val_loss": float(after.get("val/loss", float("nan"))),
        "val_rmse": val_rmse,
    }


def _member_task(payload: tuple, k: int) -> tuple[RankerNet, dict[str, float], np.ndarray, np.ndarray]:
    """Member ``k`` of :func:`fit_guarded`: its net, training numbers, and its scores of the
    rows it did not train on. Module-level and seeded by ``k``, so it can run in either process."""
    x, lists, users, perm, groups, hparams, config, trainer_config, seed, log_dir = payload
    torch.set_num_threads(config.threads)
    group = groups[k]
    rest = np.setdiff1d(perm, group, assume_unique=True) if len(group) else perm
    rest = rest[np.random.default_rng([seed, k]).permutation(len(rest))]
    n_val = max(1, int(round(len(rest) * config.val_fraction))) if len(rest) > 1 else 0
    fit_rows = np.flatnonzero(np.isin(lists.users, users[rest[n_val:]]))
    val_rows = np.flatnonzero(np.isin(lists.users, users[rest[:n_val]]))
    scored_rows = np.flatnonzero(np.isin(lists.users, users[group])) if len(group) else val_rows
    module, m = _fit_member(x, lists, fit_rows, val_rows, hparams, config, trainer_config, seed + k, log_dir if k == 0 else None)
    return module.net, m, scored_rows, _net_scores(module.net, x, lists, scored_rows)


def fit_guarded(
    x: np.ndarray,
    lists: Lists,
    hparams: dict[str, Any],
    base_col: int,
    config: RankingConfig,
    trainer_config: TrainerConfig,
    seed: int,
    log_dir: str | Path | None = None,
    worker: BackgroundWorker | None = None,
) -> tuple[GuardedRanker, dict[float, float], list[dict[str, float]]]:
    """Cross-fitted member nets and the weight of their order against the base column.

    Users are dealt into ``config.ensemble`` groups; member k trains on the other groups' lists
    (early stopping on a share of those users) and scores group k, so every list gets a score
    from a net that never saw it, and :func:`choose_alpha` picks the weight on all of them. With
    one member, the early-stopping users are the ones scored.

    Args:
        x: (n, W, F) normalised features of ``lists``.
        base_col: feature column of the base order (-1: none, the nets' order is used as is).
        worker: a second process that trains members when it is free (the same members as
            without it: each is seeded by its index).

    Returns:
        The guarded ranker, the NDCG@10 over the retrieved pool per weight, and each member's training numbers.
    """
    users = np.unique(lists.users)
    perm = np.random.default_rng(seed).permutation(len(users))
    k_members = max(1, min(config.ensemble, len(users)))
    groups = np.array_split(perm, k_members) if k_members > 1 else [np.zeros(0, np.int64)]
    payload = (x, lists, users, perm, groups, hparams, config, trainer_config, seed, log_dir)
    if worker is not None and k_members > 1:
        members = worker.map(_member_task, payload, k_members)
        if worker.last_shared:
            log.info("ranker: member(s) %s of %d trained in the background process", ", ".join(map(str, worker.last_shared)), k_members)
    else:
        members = [_member_task(payload, k) for k in range(k_members)]
    oof = np.full(lists.cand.shape, np.nan, np.float32)
    for _, _, scored_rows, scores in members:
        oof[scored_rows] = scores
    nets = [net for net, *_ in members]
    member_metrics = [m for _, m, *_ in members]
    scored = np.flatnonzero(~np.isnan(oof).all(1))
    alpha, curve = choose_alpha(oof[scored], x[scored, :, base_col] if base_col >= 0 else None, lists, scored)
    net = GuardedRanker(nets, alpha, base_col)
    net.eval()
    return net, curve, member_metrics


@dataclass
class RankerResult:
    ranker: Ranker
    metrics: dict[str, Any]


def _trimmed_batch(rows: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """A batch of :func:`_tensors` rows without the padding columns none of its lists uses.

    Lists are as wide as the longest one, and a user with hundreds of held-out ratings makes
    that several times the typical list. Padding never enters the losses, and every layer works
    on each candidate on its own, so a trimmed batch trains as the full one did.
    """
    x, users, cand, in_loss, label, rating = default_collate(rows)
    w = _used_width(cand)
    return [x[:, :w], users, cand[:, :w], in_loss[:, :w], label[:, :w], rating[:, :w]]


def _tensors(x: np.ndarray, lists: Lists, rows: np.ndarray) -> TensorDataset:
    return TensorDataset(
        torch.from_numpy(x[rows]),
        torch.from_numpy(lists.users[rows]),
        torch.from_numpy(lists.cand[rows]),
        torch.from_numpy(lists.in_loss[rows]),
        torch.from_numpy(lists.label[rows]),
        torch.from_numpy(lists.rating[rows]),
    )


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
    config, past_weights, lambda_curve = resolve_collab_lambda(past, held_out, config, seed)
    if config.folds > 1:
        if fit_tower is None:
            raise ValueError("ranking.folds > 1 needs fit_tower (a two-tower model per fold)")
        arrays = (content, genres, user_features)
        lists, raw = cross_fitted_lists(full, past, held_out, arrays, past_user_vectors, item_vectors, fit_tower, config, seed)
        center = float(full.ratings["rating"].mean())
    else:
        snap = snapshot(past, content, genres, user_features, config, past_weights)
        lists = build_lists(snap, held_out, past_user_vectors, item_vectors, config, seed)
        raw = list_features(snap, lists)
        center = snap.ctx.global_mean
    columns = feature_columns(n_user_features, config.exclude)
    t_feat = time.perf_counter() - t0

    # normalisation statistics over every list (no labels involved)
    valid = lists.cand >= 0
    sel = raw[valid][:, columns].astype(np.float64)
    mean = np.nan_to_num(np.nanmean(sel, 0)) if len(sel) else np.zeros(len(columns))
    std = np.nan_to_num(np.nanstd(sel, 0)) if len(sel) else np.ones(len(columns))
    std = np.where(std > 1e-6, std, 1.0)
    del sel
    x = np.nan_to_num((raw[..., columns] - mean) / std).astype(np.float32)
    x[~valid] = 0.0
    del raw

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
