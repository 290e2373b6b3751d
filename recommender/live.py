"""Live histories: the trained per-user histories with the rows changed since overlaid.

Applying a rating replaces one user's row in a dictionary; the trained arrays (the bundle's)
are never copied or rewritten, so the cost of a write does not grow with the number of users.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from retrieval.inputs import Histories

_EMPTY_ITEMS = np.zeros(0, np.int64)
_EMPTY_RATINGS = np.zeros(0, np.float32)


class LiveHistories:
    """Per-user item histories (oldest first) and their ratings, trained rows plus live ones.

    Args:
        base: the trained histories (bundle layout).
        ratings: the rating of each entry of ``base.items``, or None when the bundle lacks them.
    """

    def __init__(self, base: Histories, ratings: np.ndarray | None = None) -> None:
        self.base = base
        self.base_ratings = ratings
        self.n_users = base.n_users
        self._rows: dict[int, np.ndarray] = {}
        self._ratings: dict[int, np.ndarray | None] = {}

    @property
    def indptr(self) -> np.ndarray:
        """The trained layout (offline tools that read the bundle's own rows)."""
        return self.base.indptr

    @property
    def items(self) -> np.ndarray:
        return self.base.items

    @property
    def n_live(self) -> int:
        """Users whose history changed since training."""
        return len(self._rows)

    def of(self, user: int) -> np.ndarray:
        row = self._rows.get(user)
        if row is not None:
            return row
        return self.base.of(user) if 0 <= user < self.base.n_users else _EMPTY_ITEMS

    def ratings_of(self, user: int) -> np.ndarray | None:
        """Ratings aligned with :meth:`of`, or None when unknown (a bundle without them)."""
        if user in self._rows:
            return self._ratings.get(user)
        if not 0 <= user < self.base.n_users:
            return _EMPTY_RATINGS
        if self.base_ratings is None:
            return None
        return self.base_ratings[self.base.indptr[user] : self.base.indptr[user + 1]]

    def set(self, user: int, row: np.ndarray, ratings: np.ndarray | None) -> None:
        self._ratings[user] = ratings
        self._rows[user] = np.asarray(row, np.int64)

    def lengths(self, users: np.ndarray) -> np.ndarray:
        return np.fromiter((len(self.of(int(u))) for u in users), np.int64, len(users))

    def to_csr(self, n_items: int) -> sp.csr_matrix:
        """Users x items 0/1 matrix of the current histories (offline use)."""
        rows = [self.of(u) for u in range(self.n_users)]
        indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        items = np.concatenate(rows) if rows else _EMPTY_ITEMS
        return sp.csr_matrix((np.ones(len(items), np.float32), items, indptr), shape=(self.n_users, n_items))
