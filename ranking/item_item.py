"""The ranker's item-item model: EASE over the most-rated movies, its L2 weight chosen on the
ranker's own held-out ratings.

It is the ranker's strongest collaborative feature, a candidate source next to the two-tower
index, and the order the guarded ranker falls back to (``ranking.net.GuardedRanker``), so it has
to be as good as the EASE a user would tune by hand: its weight is picked per data set from
:data:`LAMBDAS` by full-ranking NDCG@10 of the held-out ratings, the way the EASE baseline is tuned.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from movierec.core.ease import ease_from_gram, ease_weights, gram
from movierec.core.metrics import top_k, topn_metrics

log = logging.getLogger(__name__)

LAMBDAS = (125.0, 250.0, 500.0, 1000.0)
"""L2 weights tried when ``ranking.collab_lambda`` is ``auto``: around the best ones on the
MovieLens sets' validation (benchmarks/RESULTS.md)."""
CHOICE_USERS = 1000
"""Held-out users the weight is chosen on (a seeded sample past this many)."""


def binary(x: sp.spmatrix) -> sp.csr_matrix:
    out = sp.csr_matrix(x, dtype=np.float32, copy=True)
    out.data[:] = 1.0
    return out


def most_rated(x: sp.csr_matrix, dense_max_items: int) -> np.ndarray:
    """Sorted indices of the ``dense_max_items`` most-rated items (all of them when fewer)."""
    n_items = x.shape[1]
    if n_items <= dense_max_items:
        return np.arange(n_items)
    counts = np.asarray(x.sum(0)).ravel()
    return np.sort(np.argsort(-counts, kind="stable")[:dense_max_items])


def item_item_matrix(
    x: sp.spmatrix, lam: float = 300.0, neighbors: int = 256, dense_max_items: int = 6000, block: sp.csr_matrix | None = None
) -> sp.csr_matrix:
    """EASE item-item weights from a users x items 0/1 matrix, kept sparse (top ``neighbors`` per candidate).

    EASE (Steck 2019, :func:`movierec.core.ease.ease_weights`) over the catalogue's ``dense_max_items``
    most-rated items: the inverse is cubic in the items it covers, so past that size the rarest
    items (a rating or two each, whose weights would be noise) are left out and get their scores
    from the two-tower and content signals alone. Per candidate column only the ``neighbors``
    largest weights by magnitude are kept, so memory is ``O(items * neighbors)`` and a user's
    score is one sparse product.

    Args:
        block: the pruned EASE block over :func:`most_rated` items at ``lam`` when already
            computed (:func:`choose_lambda` hands back the one it chose).

    Returns:
        (I, I) CSR, row = history item, column = candidate, zero diagonal.
    """
    x = binary(x)
    n_items = x.shape[1]
    if n_items == 0:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    kept = most_rated(x, dense_max_items)
    if len(kept) < n_items:
        log.info("item-item model: EASE over the %d most-rated of %d items", len(kept), n_items)
    w = (_prune_columns(ease_weights(x[:, kept], lam), min(neighbors, len(kept))) if block is None else block).tocoo()
    return sp.csr_matrix((w.data, (kept[w.row], kept[w.col])), shape=(n_items, n_items))


def _prune_columns(w: np.ndarray, keep: int) -> sp.csr_matrix:
    """Keep the ``keep`` largest-magnitude entries of each column of a dense block."""
    if keep < w.shape[0]:
        # each column partitioned as a contiguous row of the transpose (the same selection as
        # along the strided column) and the kept entries laid out by column, which is CSC as is
        by_column = np.abs(w.T, out=np.empty(w.shape[::-1], w.dtype))
        np.negative(by_column, out=by_column)
        rows = np.argpartition(by_column, keep - 1, axis=1)[:, :keep].copy()
        del by_column
        vals = w[rows, np.arange(w.shape[1])[:, None]]
        indptr = np.arange(0, rows.size + 1, keep)
        return sp.csc_matrix((vals.ravel(), rows.ravel(), indptr), shape=w.shape).tocsr()
    return sp.csr_matrix(w)


def choose_lambda(
    past: sp.spmatrix, held_out: sp.spmatrix, neighbors: int, dense_max_items: int, seed: int = 0,
    lambdas: tuple[float, ...] = LAMBDAS,
) -> tuple[float, sp.csr_matrix | None, dict[float, float]]:
    """The L2 weight whose (pruned) EASE on ``past`` ranks the ``held_out`` ratings best.

    Full ranking over the covered items of every movie the user has not rated in ``past``,
    NDCG@10 with every held-out rating relevant, on at most :data:`CHOICE_USERS` users. Ties go
    to the larger weight (the smoother model).

    One Gram matrix of ``past`` serves every weight; only the inverse is per weight.

    Returns:
        (lambda, the pruned EASE block of ``past`` at that lambda for :func:`item_item_matrix`
        to reuse, NDCG@10 per lambda).
    """
    x = binary(past)
    rel = sp.csr_matrix(held_out)
    kept = most_rated(x, dense_max_items)
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    if len(users) > CHOICE_USERS:
        users = np.sort(np.random.default_rng(seed).choice(users, CHOICE_USERS, replace=False))
    if len(lambdas) == 1 or not len(users) or not len(kept):
        return float(lambdas[-1]), None, {}
    hist = x[users][:, kept]
    seen = hist.nonzero()
    g = gram(x[:, kept])
    curve: dict[float, float] = {}
    lam, best_w = float(lambdas[-1]), None
    for cand in sorted(lambdas, reverse=True):  # ties keep the larger weight seen first
        w = _prune_columns(ease_from_gram(g, cand), min(neighbors, len(kept)))
        scores = (hist @ w).toarray()
        scores[seen] = -np.inf
        recs = kept[top_k(scores, min(10, len(kept)))]
        curve[cand] = float(topn_metrics(recs, rel[users], 10)["ndcg@10"])
        if best_w is None or curve[cand] > curve[lam] + 1e-9:
            lam, best_w = cand, w
    log.info("item-item model: EASE lambda %g chosen on %d held-out users (ndcg@10 %s)", lam, len(users),
             ", ".join(f"{k:g}: {v:.4f}" for k, v in sorted(curve.items())))
    return lam, best_w, curve
