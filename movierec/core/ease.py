"""EASE (Steck 2019), the closed-form linear item-item model: the baseline every ranker is measured
against, and the ranker's strongest collaborative feature and candidate source."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def ease_weights(x: sp.spmatrix, lam: float) -> np.ndarray:
    """EASE item-item weights ``B = -P / diag(P)`` with zero diagonal, ``P = (X^T X + lam I)^-1``,
    for a users x items 0/1 matrix: dense float32 ``(n_items, n_items)``.

    The inverse goes through a float32 Cholesky factorisation (``X^T X + lam I`` is symmetric
    positive definite for ``lam > 0``), several times cheaper than a general float64 inverse;
    float64 is the fallback should the factorisation report a non-positive pivot.
    """
    from scipy.linalg import lapack

    g = np.asarray((x.T @ x).todense(), dtype=np.float32)
    g[np.diag_indices_from(g)] += np.float32(lam)
    if len(g) == 0:
        return g
    c, info = lapack.spotrf(g, lower=1, overwrite_a=1)
    if info == 0:
        p, info = lapack.spotri(c, lower=1, overwrite_c=1)
    if info != 0:  # pragma: no cover - needs an ill-conditioned Gram matrix
        g = np.asarray((x.T @ x).todense(), dtype=np.float64)
        g[np.diag_indices_from(g)] += lam
        p = np.linalg.inv(g).astype(np.float32)
    else:
        p = np.tril(p) + np.tril(p, -1).T  # spotri fills the lower triangle only
    p /= -np.diag(p)[None, :]  # in place: one n_items^2 buffer at a time
    p[np.diag_indices_from(p)] = 0.0
    return p
