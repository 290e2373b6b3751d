"""Rating and top-N metrics, vectorised, and a full-ranking evaluator shared by every model.

Conventions: Recall@K = hits in the top K / number of relevant items; NDCG@K uses binary gains
with the ideal DCG over min(K, relevant); MRR is 1 / rank of the first hit within the top K (0
when none); coverage@K is the share of the catalogue that appears in anybody's top K.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from movierec.core.data import Dataset

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""Maps a batch of user_idx (n,) to scores over every item (n, n_items); higher is better."""


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2))) if y_true.size else float("nan")


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    return float(np.mean(np.abs(y_true - y_pred))) if y_true.size else float("nan")


def hits_matrix(recs: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean (n_users, k): whether each recommended item is relevant for its row.

    Args:
        recs: (n_users, k) item_idx, best first; -1 marks an empty slot.
        relevant: (n_users, n_items) sparse matrix, nonzero where relevant.
    """
    n, k = recs.shape
    rows = np.repeat(np.arange(n), k)
    cols = recs.ravel()
    ok = cols >= 0
    out = np.zeros(n * k, dtype=bool)
    out[ok] = np.asarray(relevant[rows[ok], cols[ok]]).ravel() != 0
    return out.reshape(n, k)


def topn_metrics(recs: np.ndarray, relevant: sp.csr_matrix, k: int, n_items: int | None = None) -> dict[str, float]:
    """Recall, precision, NDCG, hit rate, MRR and coverage at ``k``, averaged over rows.

    Rows with no relevant item are skipped (they carry no signal).
    """
    recs = np.asarray(recs)[:, :k]
    n_rel = np.diff(relevant.indptr)
    keep = n_rel > 0
    recs, n_rel = recs[keep], n_rel[keep]
    rel = relevant[np.flatnonzero(keep)]
    if len(recs) == 0:
        return {f"{m}@{k}": float("nan") for m in ("recall", "precision", "ndcg", "hitrate", "mrr", "coverage")}
    hits = hits_matrix(recs, rel)
    width = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, width + 2))
    dcg = (hits * discounts).sum(1)
    ideal_len = np.minimum(n_rel, k)
    cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = cum[ideal_len]
    n_hits = hits.sum(1)
    first = np.where(hits.any(1), hits.argmax(1) + 1, 0)
    out = {
        f"recall@{k}": float(np.mean(n_hits / n_rel)),
        f"precision@{k}": float(np.mean(n_hits / k)),
        f"ndcg@{k}": float(np.mean(dcg / idcg)),
        f"hitrate@{k}": float(np.mean(n_hits > 0)),
        f"mrr@{k}": float(np.mean(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0))),
    }
    if n_items:
        shown = np.unique(recs[recs >= 0])
        out[f"coverage@{k}"] = float(len(shown) / n_items)
    return out


def top_positive(sim: np.ndarray, first_row: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of each row's ``k`` largest entries that are > 0, for a dense block
    of a similarity matrix whose first row is item ``first_row`` (COO pieces of a sparse kNN)."""
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    v = np.take_along_axis(sim, top, 1)
    keep = v > 0
    return np.repeat(np.arange(first_row, first_row + len(sim)), keep.sum(1)), top[keep], v[keep]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first (ties broken by lower index).

    ``argpartition`` alone picks an arbitrary subset of the items tied at the k-th score, so the
    result would depend on memory layout; here the k-th score is found first, everything above it
    is taken, and the tied items fill the remaining slots lowest index first. NaN counts as -inf.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-d (n_users, n_items), got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), scores.shape[1])
    if np.isnan(scores).any():
        scores = np.where(np.isnan(scores), -np.inf, scores)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, 1).min(1, keepdims=True)
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= need))
    idx = np.nonzero(chosen)[1].reshape(len(scores), k)  # row-major: ascending index per row
    order = np.lexsort((idx, -np.take_along_axis(scores, idx, 1)), axis=1)
    return np.take_along_axis(idx, order, 1)


def evaluate_topn(
    score_fn: ScoreFn,
    train: Dataset,
    test: Dataset,
    ks: Iterable[int] = (10, 50),
    candidate_items: np.ndarray | None = None,
    batch_size: int = 1024,
    show_progress: bool = False,
) -> dict[str, float]:
    """Full-ranking evaluation: for each test user rank all items not rated in ``train``.

    Args:
        score_fn: scores for a batch of user_idx over every item.
        train: the ratings whose items are excluded from each user's ranking.
        test: held-out ratings; every test rating counts as relevant.
        ks: cut-offs.
        candidate_items: when given (P3 cold items), rank only among these item_idx.
        batch_size: users scored at once.
    """
    ks = sorted(set(int(k) for k in ks))
    kmax = max(ks)
    seen = train.to_csr().tocsr()
    relevant = test.to_csr().tocsr()
    if candidate_items is not None:
        mask = np.zeros(train.n_items, dtype=bool)
        mask[candidate_items] = True
        relevant = sp.csr_matrix(relevant.multiply(mask[None, :]))
        # multiply keeps explicit zeros in the structure; without this every test user would
        # count as having a relevant candidate.
        relevant.eliminate_zeros()
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    all_recs = np.full((len(users), kmax), -1, dtype=np.int64)
    batches = range(0, len(users), batch_size)
    for start in tqdm(batches, disable=not show_progress, desc="evaluate", unit="batch"):
        u = users[start : start + batch_size]
        scores = np.asarray(score_fn(u), dtype=np.float32).copy()
        s = seen[u]
        scores[np.repeat(np.arange(len(u)), np.diff(s.indptr)), s.indices] = -np.inf
        if candidate_items is not None:
            scores[:, ~mask] = -np.inf
        recs = top_k(scores, kmax)
        recs[np.take_along_axis(scores, recs, 1) == -np.inf] = -1
        # kmax may exceed the catalogue; the missing slots stay -1 (empty).
        all_recs[start : start + len(u), : recs.shape[1]] = recs
    rel = relevant[users]
    n_items = len(candidate_items) if candidate_items is not None else train.n_items
    out: dict[str, float] = {"users": float(len(users))}
    for k in ks:
        out.update(topn_metrics(all_recs, rel, k, n_items=n_items))
    return out


def metric_rows(values: dict, prefix: str = "") -> list[tuple[str, str]]:
    """A stage's (possibly nested) training numbers as readable ``(name, value)`` rows.

    Nested dicts become ``outer · inner`` names; floats print with 4 decimals; a list of
    numbers (a per-epoch history, stacker weights) becomes ``N values, first → last (min .., max ..)``;
    a list of words is joined with commas. Never a raw dict or list of hundreds of floats.
    """
    rows: list[tuple[str, str]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += metric_rows(value, f"{name} · ")
        elif isinstance(value, (list, tuple)):
            nums = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if value and len(nums) == len(value):
                if len(nums) <= 3:
                    rows.append((name, ", ".join(_number(v) for v in nums)))
                else:
                    rows.append((name, f"{len(nums)} values, {_number(nums[0])} → {_number(nums[-1])} "
                                       f"(min {_number(min(nums))}, max {_number(max(nums))})"))
            else:
                rows.append((name, ", ".join(str(v) for v in value) or "none"))
        else:
            rows.append((name, _number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)))
    return rows


def _number(v: float | int) -> str:
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.4f}" if abs(v) < 1e4 else f"{v:,.1f}"
