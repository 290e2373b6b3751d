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
    adj = sp.csr_matrix((n_items, n_items), dtype=np.float64)
    for w in range(1, window + 1):
        if len(items) <= w:
            break
        same = users[w:] == users[:-w]
        a, b = items[:-w][same], items[w:][same]
        keep = a != b
        a, b = a[keep], b[keep]
        part = sp.csr_matrix((np.full(len(a), 1.0 / w), (a, b)), shape=(n_items, n_items))
        adj = adj + part + part.T
    adj = adj.tocsr()
    adj.sum_duplicates()
    norm = 1.0 / np.sqrt(np.maximum(np.asarray(adj.sum(1)).ravel(), 1.0))
    adj = sp.diags(norm) @ adj @ sp.diags(norm)
    return _prune_rows(sp.csr_matrix(adj, dtype=np.float32), neighbors)


def _prune_rows(m: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """The ``keep`` largest entries of each row (ties: the lower column)."""
    m.sort_indices()
    lengths = np.diff(m.indptr)
    if not len(lengths) or lengths.max(initial=0) <= keep:
        return m
    rows = np.repeat(np.arange(m.shape[0]), lengths)
    order = np.lexsort((m.indices, -m.data, rows))
    pos = np.arange(len(order)) - np.repeat(m.indptr[:-1], lengths)
    chosen = np.sort(order[pos < keep])
    rows = rows[chosen]
    return sp.csr_matrix((m.data[chosen], (rows, m.indices[chosen])), shape=m.shape, dtype=np.float32)


def padded_rows(adj: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(I0 + 1, K) neighbour columns and weights of each row, K = the longest row; padding and
    the extra last row (for candidates without a row) point at column I0 with weight 0."""
    i0 = adj.shape[0]
    lengths = np.diff(adj.indptr)
    k = max(int(lengths.max(initial=0)), 1)
    idx = np.full((i0 + 1, k), i0, np.int64)
    val = np.zeros((i0 + 1, k), np.float32)
    rows = np.repeat(np.arange(i0), lengths)
    pos = np.arange(adj.nnz) - np.repeat(adj.indptr[:-1], lengths)
    idx[rows, pos] = adj.indices
    val[rows, pos] = adj.data
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
    # users per step: their history masks and gathered neighbour rows stay near 16 MB each
    step = max(1, min((1 << 24) // (i0 + 1), (1 << 22) // max(c * idx.shape[1], 1)))
    for s in range(0, n, step):
        e = min(n, s + step)
        mask = np.zeros((e - s, i0 + 1), bool)
        mask[np.arange(e - s)[:, None], hrow[s:e]] = True
        mask[:, i0] = False
        nb = idx[crow[s:e]]  # (b, C, K)
        hit = mask[np.arange(e - s)[:, None, None], nb]
        out[s:e] = np.einsum("nck,nck->nc", val[crow[s:e]], hit.astype(np.float32))
    return out
