"""The ranker's training lists: what the two-tower model did not see, and the features of each list.

Protocol (see :func:`split_for_ranker`): the training data is split per user into a "past" part,
on which the two-tower model is trained, and a held-out part. For every user with held-out
ratings, one list is built (:func:`build_lists`): the two-tower model's top ``candidates`` items
(hard negatives unless held out), the held-out items it missed (for the rating head only; in the
ranking loss they would leak "outside the pool means relevant"), and a few random items.

With ``folds`` = K > 1 (:func:`cross_fitted_lists`) every user gets K such lists, one per fold of
the training data, each built without its fold's ratings (K-1 extra two-tower fits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from movierec.core.config import RankingConfig
from movierec.core.data import Dataset
from movierec.core.metrics import top_k
from movierec.core.splits import holdout_per_user, temporal_per_user, user_folds
from ranking.collab_scores import CollabRows, collab_top_rows, rows_path
from ranking.features import FEATURES, GROUPS, FeatureContext, compute_features, damped_means, feature_names
from ranking.item_item import choose_lambda, item_item_matrix
from ranking.padding import pad_histories
from ranking.sequence import adjacency_matrix


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
    collab_block: sp.csr_matrix | None = None,
) -> Snapshot:
    """Everything :func:`compute_features` needs about ``ds``'s ratings.

    ``config.collab_lambda`` must be a number here (:func:`resolve_collab_lambda`);
    ``collab_block`` is the pruned EASE block of ``ds`` at that lambda when already computed.
    """
    r = ds.ratings
    ratings = r["rating"].to_numpy(np.float64)
    mu = float(ratings.mean()) if len(ratings) else 0.0
    item_counts, item_mean = damped_means(r["item_idx"].to_numpy(), ratings, ds.n_items, mu)
    _, user_mean = damped_means(r["user_idx"].to_numpy(), ratings, ds.n_users, mu)
    if "collab" in config.exclude and config.collab_candidates == 0:
        # nothing reads the item-item model (the one step quadratic in items, the slowest on a
        # large catalogue). A 0 x 0 matrix means no item has item-item rows, so the feature code
        # returns zeros at once instead of scoring users x items dense blocks of zeros.
        collab = sp.csr_matrix((0, 0), dtype=np.float32)
    else:
        if config.collab_lambda == "auto":
            raise ValueError("snapshot needs a numeric ranking.collab_lambda: resolve 'auto' first (resolve_collab_lambda)")
        collab = item_item_matrix(
            ds.to_csr(), float(config.collab_lambda), config.collab_neighbors, config.collab_dense_max_items, collab_block
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
    # (plain, liked, shared): (n, W) item-item sums of each candidate from the rows that picked
    # the item-item candidates, for list_features to read instead of summing those rows again;
    # (n,) shared marks the lists that have them
    collab: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def used_width(cand: np.ndarray | torch.Tensor) -> int:
    """Columns the widest of these lists fills (lists are packed to the left, then -1)."""
    return max(int((cand >= 0).sum(1).max()), 1) if len(cand) else 1


def resolve_collab_lambda(
    past: Dataset, held_out: Dataset, config: RankingConfig, seed: int
) -> tuple[RankingConfig, sp.csr_matrix | None, dict[float, float]]:
    """``config`` with a numeric ``collab_lambda``: an ``auto`` weight is chosen on the held-out
    ratings (:func:`ranking.item_item.choose_lambda`); also that choice's pruned EASE block of
    ``past`` (for :func:`snapshot` of ``past``) and the NDCG@10 per weight (empty when the
    weight was given)."""
    if config.collab_lambda != "auto":
        return config, None, {}
    needs = "collab" not in config.exclude or config.collab_candidates > 0
    if not needs or not len(held_out.ratings):
        return config.model_copy(update={"collab_lambda": 500.0}), None, {}
    lam, block, curve = choose_lambda(
        past.to_csr(), held_out.to_csr(), config.collab_neighbors, config.collab_dense_max_items, seed
    )
    return config.model_copy(update={"collab_lambda": lam}), block, curve


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
        rated = [past.hist_ratings[past.hist_indptr[u] : past.hist_indptr[u + 1]] for u in ub]
        padded = pad_histories(seen_lists, rated, past.ctx.user_mean[ub])
        extra, collab_rows = collab_top_rows(past.ctx, seen_lists, padded, config.collab_candidates)
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
            sums = None
            if collab_rows is not None:
                sums = CollabRows(collab_rows.cov, collab_rows.plain[r : r + 1], collab_rows.liked[r : r + 1]).at(cand[None])
            rows.append((cand, in_loss, items, ratings, len(retrieved), sums))
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
        collab=(np.zeros((n, width), np.float32), np.zeros((n, width), np.float32), np.zeros(n, bool)),
    )
    for r, (cand, in_loss, items, ratings, n_retrieved, sums) in enumerate(rows):
        m = len(cand)
        if sums is not None:
            out.collab[0][r, :m], out.collab[1][r, :m] = sums[0][0], sums[1][0]
            out.collab[2][r] = True
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
    past_block: sp.csr_matrix | None = None,
) -> tuple[Lists, np.ndarray]:
    """Lists and raw features of ``config.folds`` folds of ``full``, each one cross-fitted.

    Fold 0 is ``held_out``, scored by the main two-tower model (trained on ``past``); ``past``
    is dealt per user into K-1 more folds, each scored by a model ``fit_tower`` trains without
    it. Every fold's features and candidates come from a snapshot of the other folds, so
    nothing a list is built from saw the ratings it labels: K times the lists of the single
    holdout, which on small data sets are too few for a steady ranker, for K-1 extra tower fits.

    Args:
        arrays: (content, genres, user_features) as :func:`snapshot` takes them.
        past_block: the pruned EASE block of ``past`` when already computed (:func:`resolve_collab_lambda`).
    """
    folds = user_folds(past, config.folds - 1, seed)
    r = past.ratings
    parts = [(past, held_out, past_user_vectors, item_vectors)]
    for k in range(config.folds - 1):
        rest = full.with_ratings(pd.concat([r[folds != k], held_out.ratings]))
        parts.append((rest, past.with_ratings(r[folds == k]), *fit_tower(rest)))
    lists, raws = [], []
    for k, (rest, labels, user_vectors, items) in enumerate(parts):
        snap = snapshot(rest, *arrays, config, past_block if k == 0 else None)
        lists.append(build_lists(snap, labels, user_vectors, items, config, seed + k))
        raws.append(list_features(snap, lists[-1]))
    out = concat_lists(lists)
    width = out.cand.shape[1]
    return out, np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0))) for x in raws])


def list_features(snap: Snapshot, lists: Lists) -> np.ndarray:
    """Raw features (n, W, F) of the training lists from the past snapshot (``lists.collab``
    holds item-item sums :func:`build_lists` already computed: read where they are the ones
    :func:`compute_features` would sum)."""
    hists = [snap.hist_items[snap.hist_indptr[u] : snap.hist_indptr[u + 1]] for u in lists.users]
    rats = [snap.hist_ratings[snap.hist_indptr[u] : snap.hist_indptr[u + 1]] for u in lists.users]
    out = np.zeros((*lists.cand.shape, len(FEATURES) + snap.ctx.n_user_features), np.float32)  # padding features are zeros
    for s in range(0, len(lists.users), 256):
        e = s + 256
        w = used_width(lists.cand[s:e])  # compute only the columns these lists use
        hp = pad_histories(hists[s:e], rats[s:e], snap.ctx.user_mean[lists.users[s:e]])
        known = None
        if lists.collab is not None and lists.collab[2][s:e].all() and rows_path(snap.ctx, hp, w):
            known = _Sums(lists.collab[0][s:e, :w], lists.collab[1][s:e, :w])
        out[s:e, :w] = compute_features(snap.ctx, lists.users[s:e], hp, lists.cand[s:e, :w], lists.scores[s:e, :w], known)
    return out


@dataclass
class _Sums:
    """Item-item sums of a batch's candidates already at hand, read as :meth:`CollabRows.at` reads rows."""

    plain: np.ndarray
    liked: np.ndarray

    def at(self, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.plain, self.liked


def feature_columns(n_user_features: int, exclude: list[str]) -> np.ndarray:
    """Indices of the feature columns kept after leaving out the ``exclude`` groups."""
    names = feature_names(n_user_features)
    drop = {f for g in exclude if g in GROUPS for f in GROUPS[g]}
    return np.array([i for i, n in enumerate(names) if n not in drop], dtype=np.int64)
