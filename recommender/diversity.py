"""Diversity re-ranking of a recommendation list by maximal marginal relevance (MMR).

It works on the final candidates only (a few hundred at most) and needs no training. Item
vectors are the two-tower candidate vectors; similarity is their cosine after centring.
"""

from __future__ import annotations

import numpy as np

from movierec.core.index import normalize


def mmr(item_idx: np.ndarray, scores: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> np.ndarray:
    """Maximal marginal relevance: pick ``k`` of the candidates, trading relevance for novelty.

    Each step takes the candidate maximising ``(1 - diversity) * rel - diversity * max_sim``,
    where ``rel`` is the candidate score rescaled to [0, 1] (ranker and retrieval scores are on
    different scales) and ``max_sim`` its highest cosine to anything already picked.

    Args:
        item_idx: (n,) candidates, best first.
        scores: (n,) their scores.
        vectors: (n, d) their item vectors (any norm).
        k: how many to keep.
        diversity: 0 keeps the relevance order; 1 ignores relevance after the first pick.
    Returns:
        (min(k, n),) positions into the candidate arrays, in the new order.
    """
    n = len(item_idx)
    k = min(k, n)
    if diversity <= 0 or n <= 1:
        return np.arange(k)
    s = np.asarray(scores, dtype=np.float64)
    span = s.max() - s.min()
    rel = (s - s.min()) / span if span > 0 else np.ones(n)
    v = np.asarray(vectors, dtype=np.float32)
    # centre on the candidates' mean first: two-tower vectors share a large common direction
    # (a top list's vectors are nearly parallel), so raw cosines barely differ between
    # candidates and MMR would hardly move anything; centred, they spread over [-1, 1]
    v = normalize(v - v.mean(axis=0, keepdims=True))
    sim = v @ v.T
    picked = [int(np.argmax(rel))]
    max_sim = sim[picked[0]].astype(np.float64)
    free = np.ones(n, dtype=bool)
    free[picked[0]] = False
    for _ in range(k - 1):
        gain = (1 - diversity) * rel - diversity * max_sim
        gain[~free] = -np.inf
        j = int(np.argmax(gain))
        picked.append(j)
        free[j] = False
        np.maximum(max_sim, sim[j], out=max_sim)
    return np.asarray(picked)
