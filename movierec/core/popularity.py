"""Popularity: how many ratings each movie has, and the most-rated movies first.

The one rule every popularity order uses (the baseline, the serve-time fallback, the ranker's
fallback for a user with nothing to rank on, the report): movies are ordered by their rating
count, ties to the lower item row; a movie the counts do not cover (added after training) has 0.
"""

from __future__ import annotations

import numpy as np


def rating_counts(item_idx: np.ndarray, n_items: int) -> np.ndarray:
    """(n_items,) number of ratings of each item row, from the item row of every rating."""
    return np.bincount(np.asarray(item_idx, dtype=np.int64), minlength=n_items)


def item_popularity(counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rating counts (float32) of the item rows ``idx``; 0 for rows outside the counts (movies
    added after training, and -1 padding)."""
    counts = np.asarray(counts)
    idx = np.asarray(idx, dtype=np.int64)
    ok = (idx >= 0) & (idx < len(counts))
    out = np.zeros(idx.shape, dtype=np.float32)
    out[ok] = counts[idx[ok]]
    return out


def most_popular(
    counts: np.ndarray, n_items: int, k: int, exclude: np.ndarray | None = None, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most-rated of ``n_items`` movies, best first, with their counts.

    Args:
        exclude: item rows left out.
        allowed: boolean mask over the items; only those may come back (None: all).
    """
    score = item_popularity(counts, np.arange(n_items))
    ok = np.ones(n_items, bool) if allowed is None else np.array(allowed, dtype=bool)
    if exclude is not None and len(exclude):
        ok[np.asarray(exclude, dtype=np.int64)] = False
    cand = np.flatnonzero(ok)
    order = np.argsort(-score[cand], kind="stable")[:k]
    return cand[order], score[cand][order]
