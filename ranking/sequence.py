"""Item adjacency in rating order: which movies users rate next to each other in time.

EASE and the other item-item models read a user's ratings as a set; the order is lost. People
rate in runs (a genre, a series, what a page showed them), so the movies rated just before and
after one movie are a signal of their own: a movie that many users rate next to movies this user
rated is likely among the ones this user rated, or will rate, around them. ``adjacent_z`` of
:mod:`ranking.features` reads it.

The matrix counts, over every user's ratings in time order, pairs of movies ``w`` positions apart
(``w`` up to ``window``) with weight ``1 / w``, both directions, then normalises by the square
roots of both movies' totals (so popular movies do not adjoin everything) and keeps each movie's
``neighbors`` largest weights (bounded memory and request work at any catalogue size).
"""

from __future__ import annotations

import threading

import numpy as np
import scipy.sparse as sp


def adjacency_matrix(users: np.ndarray, items: np.ndarray, n_items: int, window: int, neighbors: int) -> sp.csr_matrix:
    """(n_items, n_items) float32 adjacency of ratings given in time order within each user.

    Args:
        users, items: the ratings, sorted by user and, within a user, by time.
        window: largest distance in a user's sequence that counts (0: an empty matrix).
        neighbors: weights kept per row (the row's movie: the candidate a feature scores).
    """
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    adj = sp.csr_matrix((n_items, n_items), dtype=np.float32)
    for w in range(1, min(window, max(len(items) - 1, 0)) + 1):
        # one distance at a time: the pairs of all distances at once took 3 GB at 20M ratings
        keep = (users[w:] == users[:-w]) & (items[w:] != items[:-w])
        a, b = items[:-w][keep].astype(np.int32), items[w:][keep].astype(np.int32)
        # built from (row, col) pairs, a CSR matrix sums repeated pairs; the sum of two is canonical
        part = sp.csr_matrix(
            (np.full(2 * len(a), 1.0 / w, np.float32), (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n_items, n_items)
        )
        adj = adj + part
        del a, b, part
    norm = (1.0 / np.sqrt(np.maximum(np.asarray(adj.sum(1), np.float64).ravel(), 1.0))).astype(np.float32)
    adj.data *= np.repeat(norm, np.diff(adj.indptr)) * norm[adj.indices]
    return _prune_rows(adj, neighbors)


def _prune_rows(m: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """The ``keep`` largest entries of each row (ties: the lower column); only rows longer than
    ``keep`` are sorted."""
    m.sort_indices()
    lengths = np.diff(m.indptr)
    long = np.flatnonzero(lengths > keep)
    if not len(long):
        return m
    rows = np.repeat(np.arange(m.shape[0]), lengths)
    ent = np.flatnonzero(lengths[rows] > keep)
    order = ent[np.lexsort((-m.data[ent], rows[ent]))]  # stable: equal weights keep column order
    n_long = lengths[long]
    pos = np.arange(len(order)) - np.repeat(np.cumsum(n_long) - n_long, n_long)
    kept = np.ones(m.nnz, bool)
    kept[order[pos >= keep]] = False
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[kept], minlength=m.shape[0]))])
    return sp.csr_matrix((m.data[kept], m.indices[kept], indptr), shape=m.shape)


def padded_rows(m: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(I0 + 1, K) column indices (int32) and weights of each row of a square CSR matrix, K = the
    longest row; padding and the extra last row (for an index without a row) point at column I0
    with weight 0. Also the item-item features' padded columns (of the transposed matrix)."""
    i0 = m.shape[0]
    lengths = np.diff(m.indptr)
    k = int(lengths.max()) if i0 else 0
    idx = np.full((i0 + 1, k), i0, np.int32)
    val = np.zeros((i0 + 1, k), np.result_type(m.data.dtype, np.float32))
    rows = np.repeat(np.arange(i0), lengths)
    pos = np.arange(m.nnz) - np.repeat(m.indptr[:-1], lengths)
    idx[rows, pos] = m.indices
    val[rows, pos] = m.data
    return idx, val


def adjacent_scores(padded: tuple[np.ndarray, np.ndarray], hist_items: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """(n, C) sum over each user's history of the candidate's adjacency weight to the history
    movie (row = candidate), 0 for padding and for movies without a row.

    Args:
        padded: :func:`padded_rows` of the adjacency matrix.
        hist_items: (n, L) padded histories (-1 = padding).
        cand: (n, C) candidate movies (-1 = padding).
    """
    idx, val = padded
    i0 = idx.shape[0] - 1
    n, c = cand.shape
    out = np.zeros((n, c), np.float32)
    if n == 0 or c == 0 or i0 == 0:
        return out
    crow = np.where((cand >= 0) & (cand < i0), cand, i0)
    hrow = np.where((hist_items >= 0) & (hist_items < i0), hist_items, i0)
    # users per step: their history masks and gathered neighbour rows stay near 4M entries each
    step = max(1, min((1 << 22) // (i0 + 1), (1 << 22) // max(c * idx.shape[1], 1)))
    for s in range(0, n, step):
        e = min(n, s + step)
        offsets = np.arange(e - s, dtype=np.int64) * (i0 + 1)  # row r of the flat mask starts at r * (I0 + 1)
        held = (hrow[s:e] + offsets[:, None]).ravel()
        mask = _scratch((e - s) * (i0 + 1))
        mask[held] = 1
        mask[offsets + i0] = 0  # the "no movie" column
        nb = idx[crow[s:e]]  # (b, C, K) columns of the candidates' rows
        if e - s > 1:
            nb = nb + offsets[:, None, None]
        out[s:e] = np.where(np.take(mask, nb), val[crow[s:e]], np.float32(0)).sum(-1)
        mask[held] = 0
    return out


_SCRATCH = threading.local()


def _scratch(size: int) -> np.ndarray:
    """A zeroed byte buffer of at least ``size`` for this thread, reused by the next call
    (callers zero what they set): a fresh catalogue-wide mask per request cost more in page
    faults than the rest of the feature, and bytes keep it in cache."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or len(buf) < size:
        buf = _SCRATCH.buf = np.zeros(size, np.uint8)
    return buf
