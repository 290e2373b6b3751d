"""The ranker's item-item matrix in the forms its computations read, each built once per matrix.

The matrix never changes after training, while the feature context is rebuilt whenever movies
are added at run time; the derived forms (the covered block, dense copies, padded columns, row
lengths) take seconds at large catalogues, so a registry keyed by the matrix object keeps them
until the matrix is garbage collected.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ranking.sequence import padded_rows

_MATRIX_CACHE: dict[tuple[int, str], tuple[weakref.ref, Any]] = {}


def _per_matrix(collab: sp.csr_matrix, kind: str, build: Any) -> Any:
    """``build(collab)``, made once per matrix object: the item-item matrix never changes after
    training, while contexts are rebuilt whenever run-time items are added (and these tables
    take seconds at 100k items). Entries go when the matrix is garbage collected."""
    key = (id(collab), kind)
    hit = _MATRIX_CACHE.get(key)
    if hit is not None and hit[0]() is collab:
        return hit[1]
    value = build(collab)
    # (the dict is bound now: at interpreter exit the module global may be gone before the matrix)
    _MATRIX_CACHE[key] = (weakref.ref(collab, lambda _ref, key=key, cache=_MATRIX_CACHE: cache.pop(key, None)), value)
    return value


@dataclass(frozen=True)
class Covered:
    """The item-item matrix restricted to the items it covers (a weight in their row or column).

    EASE covers only the most-rated movies (``ranking.collab_dense_max_items``, 6,000 by
    default): past that size the rows and columns of every other movie are empty, and work
    over the whole catalogue (a dense score per movie, a top-k over all of them) is spent on
    zeros. Every item-item computation runs on ``matrix`` with items mapped by :meth:`map`; an
    uncovered movie maps to ``m``, which the computations treat like padding: it adds nothing to
    a history's scores and scores 0 itself, exactly what its empty row and column gave.

    Attributes:
        items: (m,) sorted item_idx of the covered items.
        pos: (I0 + 1,) position of each item in ``items``; ``m`` for uncovered items and for the
            extra last index I0 (what :meth:`map` sends padding and out-of-range indices to).
        matrix: (m, m) CSR, ``collab[items][:, items]``; ``collab`` itself when it covers every item.
    """

    items: np.ndarray
    pos: np.ndarray
    matrix: sp.csr_matrix

    @property
    def m(self) -> int:
        return len(self.items)

    def map(self, idx: np.ndarray) -> np.ndarray:
        """Covered positions of item indices (any shape); ``m`` for padding (-1), uncovered items
        and indices beyond the matrix."""
        i0 = len(self.pos) - 1
        return self.pos[np.where((idx >= 0) & (idx < i0), idx, i0)]


def _covered(collab: sp.csr_matrix) -> Covered:
    i0 = collab.shape[0]
    used = np.diff(collab.indptr) > 0
    used[collab.indices] = True
    items = np.flatnonzero(used)
    pos = np.full(i0 + 1, len(items), np.int64)
    pos[items] = np.arange(len(items))
    if len(items) == i0:
        return Covered(items, pos, collab)
    sub = collab[items][:, items]
    sub.sort_indices()
    return Covered(items, pos, sp.csr_matrix(sub))


def covered(collab: sp.csr_matrix) -> Covered:
    """:class:`Covered` of ``collab``, made once per matrix."""
    return _per_matrix(collab, "covered", _covered)


def prepare_collab(collab: sp.csr_matrix, batch: bool = False) -> None:
    """Build the item-item tables a request reads (at load, not in the first request), and with
    ``batch`` those of whole-row sums too."""
    cov = covered(collab)
    _per_matrix(cov.matrix, "columns", _padded_columns)
    if _small_enough(cov.matrix):
        _per_matrix(cov.matrix, "dense32", _dense32)  # what a request over a small catalogue reads
    if batch:
        _per_matrix(cov.matrix, "float64", _float64)
        _per_matrix(cov.matrix, "row_lengths", _row_lengths)


def adjacent_rows(adjacent: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """The rating-order adjacency's padded rows (:func:`~ranking.sequence.padded_rows`), made once
    per matrix: a runtime ranker builds them at load, not in the first request."""
    return _per_matrix(adjacent, "adjacent", padded_rows)


DENSE_PRODUCT_CELLS = 1 << 23
"""Item-item matrices up to this many cells (a few thousand items; 64 MB) are also kept dense for
the whole-row products of large batches, where sparse x dense beats sparse x sparse."""


def _small_enough(collab: sp.csr_matrix) -> bool:
    return collab.shape[0] * collab.shape[1] <= DENSE_PRODUCT_CELLS


def _float64(collab: sp.csr_matrix) -> sp.csr_matrix | np.ndarray:
    """``collab`` in float64 for the whole-row products (scipy would convert it on every call),
    dense when small."""
    if _small_enough(collab):
        return collab.toarray().astype(np.float64)
    return collab if collab.dtype == np.float64 else sp.csr_matrix(collab, dtype=np.float64)


def _dense32(collab: sp.csr_matrix) -> np.ndarray:
    """``collab`` as a dense float32 array (its own dtype: float64 copies of it are exact)."""
    return collab.toarray().astype(np.float32, copy=False)


def _row_lengths(collab: sp.csr_matrix) -> np.ndarray:
    """Stored entries per row, and 0 for the "no item" index I0."""
    return np.append(np.diff(collab.indptr), 0)


def _padded_columns(collab: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray] | None:
    """(I0 + 1, K) history rows and weights of each candidate column, K = longest column.

    Padding (and the extra last row, for candidates without a column) points at row I0, which
    no history holds, with weight 0. A request reads its C candidates' columns instead of
    summing whole rows over the catalogue. ``None`` when padding would cost over 4x the sparse
    matrix (a few very dense columns); features then always use rows.
    """
    i0 = collab.shape[0]
    by_column = collab.T.tocsr()  # row j = column j of ``collab``
    k = int(np.diff(by_column.indptr).max()) if i0 else 0
    if (i0 + 1) * k > 4 * by_column.nnz + (1 << 16):
        return None
    return padded_rows(by_column)
