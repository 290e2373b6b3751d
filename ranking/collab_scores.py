"""Item-item scores of users' histories: the sums the collaborative features read, and the
item-item candidates, the second candidate source next to the two-tower index.

Every computation runs over the items the matrix covers (:class:`~ranking.collab_matrix.Covered`)
and picks, per batch, the cheapest of a request's dense block, candidate columns or whole rows;
the answers do not depend on the choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ranking.collab_matrix import Covered, _dense32, _float64, _per_matrix, _row_lengths, _small_enough, covered
from ranking.padding import PaddedHistories, pad_histories

if TYPE_CHECKING:
    from ranking.features import FeatureContext

SMALL_BATCH = 4
"""Up to this many users, whole item-item rows are summed with plain numpy (no sparse-matrix
set-up cost); larger batches use one sparse product, several times faster per user."""


def _collab_dense(collab: sp.csr_matrix, items: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(b, i0) item-item score of every item given each padded history row, and the version
    weighted by ``weights`` (b, L) when given, summed in float64."""
    i0 = collab.shape[0]
    b = len(items)
    ok = (items >= 0) & (items < i0)
    if b <= SMALL_BATCH and _small_enough(collab):  # a request: add up the history's dense rows
        w32 = _per_matrix(collab, "dense32", _dense32)  # float32 rows read, float64 sums (exact copies)
        hist_rows = [w32[items[r][ok[r]]].astype(np.float64) for r in range(b)]
        plain = np.stack([x.sum(0) for x in hist_rows]) if b else np.zeros((0, i0))
        if weights is None:
            return plain, None
        return plain, np.stack([weights[r][ok[r]].astype(np.float64) @ x for r, x in enumerate(hist_rows)])
    rows, cols = np.nonzero(ok)
    it = items[rows, cols]
    if b > SMALL_BATCH:
        w64 = _per_matrix(collab, "float64", _float64)
        data = np.ones(len(it)) if weights is None else np.concatenate([np.ones(len(it)), weights[rows, cols].astype(np.float64)])
        hrows = rows if weights is None else np.concatenate([rows, rows + b])
        hmat = sp.csr_matrix((data, (hrows, np.tile(it, 1 if weights is None else 2))), shape=(b if weights is None else 2 * b, i0))
        dense = hmat @ w64
        dense = dense if isinstance(dense, np.ndarray) else dense.toarray()
        return (dense, None) if weights is None else (dense[:b], dense[b:])
    # a request: read the CSR rows of the history items straight from the arrays, one bincount
    indptr, indices, data = collab.indptr, collab.indices, collab.data
    starts = indptr[it]
    lens = indptr[it + 1] - starts
    seg = np.repeat(np.arange(len(it)), lens)
    pos = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens) + starts[seg]
    key = rows[seg] * i0 + indices[pos]
    vals = data[pos].astype(np.float64)
    size = b * i0
    # (astype: numpy's bincount returns int64 for empty input even with weights)
    plain = np.bincount(key, weights=vals, minlength=size).astype(np.float64, copy=False).reshape(b, i0)
    if weights is None:
        return plain, None
    weighted = np.bincount(key, weights=vals * weights[rows, cols][seg], minlength=size).astype(np.float64, copy=False).reshape(b, i0)
    return plain, weighted


def _collab_columns_sum(
    columns: tuple[np.ndarray, np.ndarray], items: np.ndarray, centred: np.ndarray, cidx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Plain and rating-weighted item-item sums of the candidates ``cidx`` (b, C; I0 = none)
    from their padded columns: the history ``items`` (b, L; outside [0, I0) = none) with its
    ``centred`` ratings enters as a (b, I0 + 1) count / weight table."""
    rows_t, w_t = columns
    b = len(cidx)
    slot = len(rows_t)  # I0 + 1; row I0 of each user's slot stays empty
    h = items
    key = np.where((h >= 0) & (h < slot - 1), np.arange(b)[:, None] * slot + h, b * slot).ravel()
    counts = np.bincount(key, minlength=b * slot + 1)[:-1].astype(np.float64)
    liked = np.bincount(key, weights=centred.ravel(), minlength=b * slot + 1)[:-1].astype(np.float64, copy=False)
    r = rows_t[cidx]
    if b > 1:
        r = r + (np.arange(b) * slot)[:, None, None]
    w = w_t[cidx]
    return (w * counts[r]).sum(2), (w * liked[r]).sum(2)


def _collab_scores(
    ctx: FeatureContext, hist: PaddedHistories, cand: np.ndarray, chunk_cells: int = 1 << 22
) -> tuple[np.ndarray, np.ndarray]:
    """Item-item scores of each candidate given the history: plain and rating-weighted sums.

    Over the covered items only (:class:`Covered`): uncovered history items add nothing and
    uncovered candidates score 0, as their empty rows and columns gave. Whichever is cheaper for
    the batch: the candidates' columns (work ~ candidates x neighbours, independent of the
    catalogue; what a request uses) or whole rows summed over the covered items and gathered
    (work ~ history x neighbours + covered items; cheaper for big batches over a small
    catalogue, where histories are shorter than candidate lists).
    """
    n, c = cand.shape
    plain = np.zeros((n, c), np.float32)
    liked = np.zeros((n, c), np.float32)
    if ctx.collab.shape[0] == 0 or n == 0:
        return plain, liked
    cov = ctx.collab_covered
    collab, i0 = cov.matrix, cov.m  # from here on, item indices are covered positions; i0 = none
    if i0 == 0:
        return plain, liked
    items, centred = cov.map(hist.items), hist.centred
    cand = cov.map(cand)
    cand_ok = cand < i0
    if n <= SMALL_BATCH and _small_enough(collab):
        # a request over a small catalogue: the (history x candidates) block of the dense matrix,
        # read as whole float32 rows (contiguous copies) and then columns: half the bytes and far
        # fewer cache misses than picking each cell of a float64 matrix; exact in float64
        w32 = _per_matrix(collab, "dense32", _dense32)
        for r in range(n):
            keep = items[r] < i0
            block = w32[items[r][keep]][:, cand[r][cand_ok[r]]].astype(np.float64)
            plain[r, cand_ok[r]] = block.sum(0)
            liked[r, cand_ok[r]] = centred[r][keep].astype(np.float64) @ block
        return plain, liked
    columns, by_columns = _collab_plan(ctx, items, c)
    k = columns[0].shape[1] if by_columns else 0
    step = max(1, chunk_cells // (c * k if by_columns else i0))
    for s in range(0, n, step):
        e = min(n, s + step)
        if by_columns:
            plain[s:e], liked[s:e] = _collab_columns_sum(columns, items[s:e], centred[s:e], cand[s:e])
        else:
            safe = np.where(cand_ok[s:e], cand[s:e], 0)
            dense_plain, dense_liked = _collab_dense(collab, items[s:e], centred[s:e])
            plain[s:e] = np.where(cand_ok[s:e], np.take_along_axis(dense_plain, safe, 1), 0.0)
            liked[s:e] = np.where(cand_ok[s:e], np.take_along_axis(dense_liked, safe, 1), 0.0)
    return plain, liked


def _collab_plan(ctx: FeatureContext, items: np.ndarray, c: int) -> tuple[tuple[np.ndarray, np.ndarray] | None, bool]:
    """(padded columns, whether a batch with covered history positions ``items`` (n, L) and
    ``c`` candidates per user reads candidate columns rather than whole rows)."""
    columns = ctx.collab_columns
    if columns is None:
        return None, False
    n, i0 = len(items), ctx.collab_covered.m
    row_nnz = int(_per_matrix(ctx.collab_covered.matrix, "row_lengths", _row_lengths)[items].sum())
    # per entry a column read costs about twice a row entry of the sparse product;
    # rows also pay for the dense output over the covered items and a fixed set-up cost
    return columns, 2 * n * c * columns[0].shape[1] <= row_nnz + n * i0 + 50_000


@dataclass
class CollabRows:
    """A batch's item-item scores of every covered item: the plain and rating-weighted sums
    (what :func:`_collab_scores` sums by whole rows), read by both the item-item candidates
    (:meth:`top`) and the features of any candidate list (:meth:`at`), so a batch that needs
    both computes the sparse product once.

    Attributes:
        cov: the covered block the rows are over.
        plain, liked: (n, m) float64 sums.
        hist: the padded histories the rows sum over (the features read them too).
    """

    cov: Covered
    plain: np.ndarray
    liked: np.ndarray
    hist: PaddedHistories | None = None

    @classmethod
    def of(cls, ctx: FeatureContext, hist: PaddedHistories, n_cand: int) -> CollabRows | None:
        """The rows of a batch's users, or None where :func:`compute_features` would not sum
        whole rows for ``n_cand`` candidates per user (candidate columns being cheaper, or a
        request over a catalogue too large for the dense matrix): the features then keep their
        own path, so answers never depend on this. A request over a small catalogue sums the
        history's dense rows, the same numbers as the features' dense block: the item-item
        candidates and the features then share one pass."""
        n = len(hist.items)
        cov = ctx.collab_covered
        if cov.m == 0 or (n <= SMALL_BATCH and not _small_enough(cov.matrix)):
            return None
        items = cov.map(hist.items)
        if n > SMALL_BATCH and _collab_plan(ctx, items, n_cand)[1]:
            return None
        plain, liked = _collab_dense(cov.matrix, items, hist.centred)
        return cls(cov, plain, liked, hist)

    def at(self, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, C) float32 plain and rating-weighted sums of candidates ``cand`` (-1 padded)."""
        c = self.cov.map(cand)
        ok = c < self.cov.m
        safe = np.where(ok, c, 0)
        plain = np.where(ok, np.take_along_axis(self.plain, safe, 1), 0.0).astype(np.float32)
        liked = np.where(ok, np.take_along_axis(self.liked, safe, 1), 0.0).astype(np.float32)
        return plain, liked

    def top(self, exclude: list[np.ndarray], k: int) -> np.ndarray:
        """What :func:`collab_top` gives for these users' histories."""
        out = np.full((len(self.plain), k), -1, dtype=np.int64)
        if k > 0:
            out[:, : min(k, self.cov.m)] = _top_items(self.cov, self.plain, exclude, k)
        return out


def _top_items(cov: Covered, dense: np.ndarray, exclude: list[np.ndarray], k: int) -> np.ndarray:
    """(b, min(k, m)) items of the highest positive plain scores ``dense`` (b, m), the
    ``exclude`` items of each row left out; -1 padded."""
    m = cov.m
    # negated, so one pass makes the keys of the partial sort: no evidence (<= 0) sorts last
    keys = np.where(dense > 0, -dense, np.inf)
    lens = np.fromiter((len(e) for e in exclude), np.int64, len(exclude))
    if lens.sum():
        rows = np.repeat(np.arange(len(exclude)), lens)
        cols = cov.map(np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude]))
        keys[rows[cols < m], cols[cols < m]] = np.inf
    top = _smallest_k(keys, min(k, m))
    vals = keys[np.arange(len(keys))[:, None], top]
    return np.where(np.isfinite(vals), cov.items[top], -1)


def _smallest_k(keys: np.ndarray, k: int) -> np.ndarray:
    """(b, k) column indices of each row's ``k`` smallest finite keys, smallest first, ties to
    the lower column: what a stable ascending sort of the row gives, by a partial sort.

    The partial sort picks among entries tied at the k-th key by position, so rows where a
    finite tie straddles the cut are sorted in full (rare: ties of float64 sums)."""
    b, m = keys.shape
    if k >= m:
        return np.argsort(keys, axis=1, kind="stable")[:, :k]
    top = np.argpartition(keys, k - 1, axis=1)[:, :k]
    rows_ = np.arange(b)[:, None]  # plain indexing: take_along_axis's set-up outweighs a request's single row
    vals = keys[rows_, top]
    top = top[rows_, np.lexsort((top, vals), axis=-1)]
    kth = keys[rows_, top[:, -1:]]
    redo = np.flatnonzero(np.isfinite(kth[:, 0]) & ((keys <= kth).sum(1) > k))
    if len(redo):
        top[redo] = np.argsort(keys[redo], axis=1, kind="stable")[:, :k]
    return top


def collab_top(
    collab: sp.csr_matrix, histories: list[np.ndarray], exclude: list[np.ndarray], k: int, chunk_cells: int = 1 << 22
) -> np.ndarray:
    """(n, k) items with the highest item-item score given each history, excluded items and
    items with no item-item evidence left out (-1 padded; ties to the lower item index). The
    second candidate source next to the two-tower index: it brings in what the collaborative
    feature ranks high but the towers missed, in training and at serve time alike.

    Scores and the top-k run over the covered items only (:class:`Covered`): an uncovered item
    scores 0, and items without positive evidence are never returned."""
    n = len(histories)
    out = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or collab.shape[0] == 0 or k <= 0:
        return out
    cov = covered(collab)
    w, m = cov.matrix, cov.m
    if m == 0:
        return out
    items = cov.map(pad_histories(histories, [None] * n, np.zeros(n)).items)
    step = max(1, chunk_cells // m)
    for s in range(0, n, step):
        e = min(n, s + step)
        dense, _ = _collab_dense(w, items[s:e])
        out[s:e, : min(k, m)] = _top_items(cov, dense, exclude[s:e], k)
    return out


def _product_chunk(n: int, m: int, chunk_cells: int) -> int | None:
    """Users per chunk when ``n`` users' whole rows over ``m`` covered items are summed a chunk
    at a time, or None where some chunk (the last, or all) has at most :data:`SMALL_BATCH`
    users: :func:`_collab_dense` sums such a chunk another way than the sparse product."""
    step = max(1, chunk_cells // max(m, 1))
    return None if n == 0 or min(step, n - (n - 1) // step * step) <= SMALL_BATCH else step


def rows_path(ctx: FeatureContext, hist: PaddedHistories, n_cand: int, chunk_cells: int = 1 << 22) -> bool:
    """Whether :func:`_collab_scores` sums this batch's whole rows with the sparse product in
    every chunk (so :class:`CollabRows` of the same histories give its numbers exactly)."""
    n, cov = len(hist.items), ctx.collab_covered
    if n <= SMALL_BATCH or cov.m == 0 or ctx.collab.shape[0] == 0 or _product_chunk(n, cov.m, chunk_cells) is None:
        return False
    return not _collab_plan(ctx, cov.map(hist.items), n_cand)[1]


def collab_top_rows(
    ctx: FeatureContext, histories: list[np.ndarray], hist: PaddedHistories, k: int, chunk_cells: int = 1 << 22
) -> tuple[np.ndarray, CollabRows | None]:
    """:func:`collab_top` of ``histories`` (each excluded from its own candidates) and the
    :class:`CollabRows` it picked them from, ``hist`` being the same histories padded with
    their ratings: the features of these users' lists then read those rows instead of summing
    them again. The rows are None (and :func:`collab_top` runs as is) where a chunk of users is
    small enough for :func:`_collab_dense` to sum it another way."""
    cov = ctx.collab_covered
    n, m = len(histories), cov.m
    step = _product_chunk(n, m, chunk_cells)
    if step is None or k <= 0 or m == 0 or ctx.collab.shape[0] == 0:
        return collab_top(ctx.collab, histories, histories, k, chunk_cells), None
    items = cov.map(hist.items)
    plain, liked = np.empty((n, m)), np.empty((n, m))
    out = np.full((n, k), -1, dtype=np.int64)
    for s in range(0, n, step):
        e = min(n, s + step)
        plain[s:e], liked[s:e] = _collab_dense(cov.matrix, items[s:e], hist.centred[s:e])
        out[s:e, : min(k, m)] = _top_items(cov, plain[s:e], histories[s:e], k)
    return out, CollabRows(cov, plain, liked)


def merge_candidates(ids: np.ndarray, extra: np.ndarray, n_items: int) -> np.ndarray:
    """Append each row's ``extra`` items that ``ids`` lacks (order kept, -1 padded)."""
    n = len(ids)
    dup = np.zeros(extra.shape, bool)
    step = max(1, (1 << 24) // max(extra.shape[1] * ids.shape[1], 1))
    for s in range(0, n, step):  # row-wise comparison: an order faster than isin over row-keyed ids
        dup[s : s + step] = (extra[s : s + step, :, None] == ids[s : s + step, None, :]).any(2)
    extra = np.where(dup | (extra < 0), -1, extra)
    merged = np.concatenate([ids, extra], axis=1)
    # compact each row so valid entries come first
    order = np.argsort(merged < 0, axis=1, kind="stable")
    return np.take_along_axis(merged, order, 1)
