"""Explanations of a recommendation list: for each movie, the history movies most like it.

They work on the final list only, need no training, and read the two-tower item vectors
(normalised: similarity is a cosine) and the content vectors, so that "similar to X" also holds
for movies with no ratings yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from movierec.core.index import normalize

if TYPE_CHECKING:
    from recommender.model import HybridRecommender


EXPLAIN_ROWS = 256
"""Recommended items explained per block: the similarity matrices of a block are at most this
many rows by the history bound, whatever ``k`` is."""


def explain(
    model: HybridRecommender,
    history: np.ndarray,
    ratings: np.ndarray | None,
    item_idx: np.ndarray,
    top: int = 3,
    verb: str = "rated",
    limit: int | None = None,
) -> list[list[dict[str, object]]]:
    """For each recommended item, the (up to) ``top`` history items most similar to it.

    Similarity is the mean of the two-tower item-vector cosine (taste: people who liked one
    liked the other) and the content cosine (same genres, words, era). The reason names which
    of the two carried the match.

    Args:
        model: the recommender that produced the list.
        history: (h,) item_idx of the user's movies, oldest first.
        ratings: (h,) their ratings, or None (liked movies of a new user).
        item_idx: (n,) recommended item_idx.
        limit: only the most recent ``limit`` history items are read (default: the model's
            ``history_limit``), so the work is at most n x limit, in blocks of
            :data:`EXPLAIN_ROWS` rows.
    Returns:
        n lists of ``{"item_id", "title", "reason", "similarity"}``, most similar first.
    """
    history = np.asarray(history, dtype=np.int64)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    if len(history) == 0 or len(item_idx) == 0:
        return [[] for _ in item_idx]
    limit = limit if limit is not None else model.history_limit
    if limit is not None and len(history) > limit:
        history = history[-limit:]
        ratings = ratings[-limit:] if ratings is not None else None
    history, first = np.unique(history, return_index=True)
    hr = ratings[first] if ratings is not None else None
    hv = normalize(model.retrieval.item_vectors[history])
    cv = model.content.item_vectors
    hc = cv[history]
    picks = []  # per recommended item: (history positions, similarity, content carried it)
    for s in range(0, len(item_idx), EXPLAIN_ROWS):
        block = item_idx[s : s + EXPLAIN_ROWS]
        collab = normalize(model.retrieval.item_vectors[block]) @ hv.T
        content = cv[block] @ hc.T
        sim = 0.5 * collab + 0.5 * content
        order = np.argsort(-sim, axis=1, kind="stable")[:, :top]
        rows = np.arange(len(block))[:, None]
        picks.extend(zip(order, sim[rows, order], content[rows, order] >= collab[rows, order]))
    used = np.unique(np.concatenate([p[0] for p in picks]))
    records = dict(zip(used.tolist(), model.item_records(history[used])))  # only the history items named
    out = []
    for order, sims, by_content in picks:
        because = []
        for h, similarity, c in zip(order.tolist(), sims, by_content):
            title = records[h]["title"]
            rated = f" you {verb} {hr[h]:g}" if hr is not None else f" you {verb}"
            reason = f"similar to {title}{rated}" if c else f"popular with people who liked {title}"
            because.append({"item_id": records[h]["item_id"], "title": title, "reason": reason, "similarity": round(float(similarity), 4)})
        out.append(because)
    return out
