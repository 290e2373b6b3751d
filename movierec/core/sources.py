"""The one candidate-source protocol every model implements (baselines, content, two-tower).

All methods speak internal indices (``user_idx``/``item_idx`` of a :class:`~movierec.core.data.Dataset`)
and return ``(ids, scores)`` arrays sorted best first, padded with -1 / -inf when fewer than ``k``
items qualify.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from movierec.core.metrics import top_k


@runtime_checkable
class CandidateSource(Protocol):
    """What evaluation, the ranker and serving ask of any model."""

    n_items: int

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        """(n,) user_idx -> (n, n_items) scores, higher is better."""
        ...

    def recommend(
        self, user_idx: np.ndarray | int, k: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items per user, skipping ``exclude[user_idx]`` nonzeros."""
        ...

    def similar_items(self, item_idx: np.ndarray | int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k most similar items per item, the item itself excluded."""
        ...


def rank_scores(
    scores: np.ndarray, k: int, user_idx: np.ndarray | None = None, exclude: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mask excluded items and take the top k; shared by every dense-scoring model."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    if exclude is not None and user_idx is not None:
        ex = exclude[np.asarray(user_idx)]
        scores[np.repeat(np.arange(len(user_idx)), np.diff(ex.indptr)), ex.indices] = -np.inf
    ids = top_k(scores, k)
    s = np.take_along_axis(scores, ids, 1)
    ids = np.where(np.isneginf(s), -1, ids)
    return ids, s


class DenseScorer:
    """Mixin: ``recommend`` and ``similar_items`` from ``score_users`` and ``item_vectors``.

    Subclasses set ``n_items`` and implement ``score_users``; those with item vectors set
    ``item_vectors`` (n_items, d) so ``similar_items`` works by cosine similarity.
    """

    n_items: int
    item_vectors: np.ndarray | None = None

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def recommend(
        self, user_idx: np.ndarray | int, k: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        users = np.atleast_1d(np.asarray(user_idx))
        ids, s = rank_scores(self.score_users(users), k, users, exclude)
        return (ids[0], s[0]) if np.ndim(user_idx) == 0 else (ids, s)

    def similar_items(self, item_idx: np.ndarray | int, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.item_vectors is None:
            raise NotImplementedError(f"{type(self).__name__} has no item vectors")
        items = np.atleast_1d(np.asarray(item_idx))
        v = self.item_vectors
        norms = np.linalg.norm(v, axis=1) + 1e-12
        scores = (v[items] @ v.T) / norms[items, None] / norms[None, :]
        scores[np.arange(len(items)), items] = -np.inf
        ids, s = rank_scores(scores, k)
        return (ids[0], s[0]) if np.ndim(item_idx) == 0 else (ids, s)
