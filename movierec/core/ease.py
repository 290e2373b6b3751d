"""EASE (Steck 2019), the closed-form linear item-item model: the baseline every ranker is measured
against, and the ranker's strongest collaborative feature and candidate source."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def gram(x: sp.spmatrix) -> np.ndarray:
    """``X^T X`` of a users x items 0/1 matrix as dense float32: co-occurrence counts, exact in
    float32 below 2^24 users. One Gram matrix serves every L2 weight (:func:`ease_from_gram`)."""
    return np.asarray((x.T @ x).todense(), dtype=np.float32)


def ease_weights(x: sp.spmatrix, lam: float) -> np.ndarray:
    """EASE item-item weights ``B = -P / diag(P)`` with zero diagonal, ``P = (X^T X + lam I)^-1``,
    for a users x items 0/1 matrix: dense float32 ``(n_items, n_items)``."""
    return ease_from_gram(gram(x), lam)


def ease_from_gram(g: np.ndarray, lam: float) -> np.ndarray:
    """:func:`ease_weights` from the Gram matrix ``g`` (:func:`gram`), which is left as it was.

    The inverse goes through a float32 Cholesky factorisation (``X^T X + lam I`` is symmetric
    positive definite for ``lam > 0``), several times cheaper than a general float64 inverse;
    float64 is the fallback should the factorisation report a non-positive pivot.
    """
    from scipy.linalg import lapack

    a = g.copy()
    a[np.diag_indices_from(a)] += np.float32(lam)
    if len(a) == 0:
        return a
    c, info = lapack.spotrf(a, lower=1, overwrite_a=1)
    if info == 0:
        p, info = lapack.spotri(c, lower=1, overwrite_c=1)
    if info != 0:  # pragma: no cover - needs an ill-conditioned Gram matrix
        a = g.astype(np.float64)
        a[np.diag_indices_from(a)] += lam
        p = np.linalg.inv(a).astype(np.float32)
    else:
        _mirror_lower(p)  # spotri fills the lower triangle only
    p /= -np.diag(p)[None, :]  # in place: one n_items^2 buffer at a time
    p[np.diag_indices_from(p)] = 0.0
    return p


def _mirror_lower(p: np.ndarray, block: int = 256) -> None:
    """Copy the lower triangle of square ``p`` onto its upper triangle, in place.

    Block by block: ``np.tril`` over the whole matrix builds an n^2 mask and two more n^2
    arrays, several times the time of moving the entries through the cache in tiles."""
    n = len(p)
    for i in range(0, n, block):
        e = min(i + block, n)
        d = p[i:e, i:e]
        lower = np.tril(d)
        d[...] = lower + np.tril(lower, -1).T
        p[i:e, e:] = p[e:, i:e].T
