"""Cold items placed where their ratings would put them: a ridge map from content to the two-tower space.

A movie nobody has rated has no id embedding; the item tower then encodes it from its genres and
dense content vector alone (the id-dropout path). This module learns a second, direct map from
the movie's *sparse* content (every TF-IDF term of its title, genres, year, tags and description,
plus the genre multi-hot and a bias) to the trained two-tower item vectors of the rated movies,

    W = argmin_W  || F_warm W - V_warm ||^2 + lam ||W||^2,

and gives every movie without training ratings the unit vector ``normalize(f W)``: the place in
the collaborative space that movies with the same words and genres occupy. The same map encodes
movies added at run time (``POST /items``), so they land with the catalogue's cold movies.

Why a ridge on the sparse terms and not the tower alone: a rare tag or title word ("pixar",
"noir", a director's name in the tags) that the 128-d SVD content vector blurs keeps its own
weight here. Chosen on the validation cold splits (P3, two-tower order among the cold movies);
the figures are in benchmarks/RESULTS.md, "Cold items (P3)".

Cost: block conjugate gradient with a Jacobi preconditioner over all output dimensions at once;
each iteration is two sparse x dense products, so training is linear in the catalogue's nonzero
terms. Nothing here imports Lightning: the
serving side loads :class:`ColdMap` from plain arrays.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from movierec.core.artifacts import Bundle, BundleWriter

log = logging.getLogger(__name__)
PREFIX = "retrieval/cold_"
FORMAT_VERSION = 1


def _features(content: sp.spmatrix, genres: np.ndarray) -> sp.csr_matrix:
    """(n, n_terms + n_genres + 1) map inputs: TF-IDF rows, genre multi-hot, a constant 1."""
    content = sp.csr_matrix(content, dtype=np.float64)
    if content.shape[0] != len(genres):
        raise ValueError(f"cold map: {content.shape[0]} content rows but {len(genres)} genre rows")
    ones = sp.csr_matrix(np.ones((content.shape[0], 1)))
    return sp.hstack([content, sp.csr_matrix(np.asarray(genres, dtype=np.float64)), ones], format="csr")


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def ridge_block_cg(
    x: sp.csr_matrix, y: np.ndarray, lam: float, iters: int = 30, tol: float = 1e-4
) -> tuple[np.ndarray, int]:
    """Solve ``(X^T X + lam I) W = X^T Y`` for every column of ``Y`` at once.

    Jacobi-preconditioned conjugate gradient run column-wise in lock step (each step is one
    ``X @ P`` and one ``X^T @ Q`` over all columns), stopped after ``iters`` steps or when every
    column's residual is below ``tol`` of its right-hand side.

    Args:
        x: (n, f) sparse inputs.
        y: (n, d) targets.
        lam: ridge weight (> 0).

    Returns:
        ((f, d) float64 weights, steps taken).
    """
    if lam <= 0:
        raise ValueError(f"cold map: ridge weight must be > 0, got {lam}")
    xt = x.T.tocsr()
    y = np.asarray(y, dtype=np.float64)
    diag = np.asarray(x.multiply(x).sum(axis=0)).ravel() + lam
    b = xt @ y
    w = np.zeros_like(b)
    r = b.copy()
    z = r / diag[:, None]
    p = z.copy()
    rz = (r * z).sum(0)
    b2 = np.maximum((b * b).sum(0), 1e-30)
    step = 0
    for step in range(1, iters + 1):
        ap = xt @ (x @ p) + lam * p
        alpha = rz / np.maximum((p * ap).sum(0), 1e-30)
        w += alpha * p
        r -= alpha * ap
        if np.all((r * r).sum(0) <= tol * tol * b2):
            break
        z = r / diag[:, None]
        rz_next = (r * z).sum(0)
        p = z + (rz_next / np.maximum(rz, 1e-30)) * p
        rz = rz_next
    return w, step


@dataclass
class ColdMap:
    """Linear map from an item's content to its two-tower vector (see the module docstring).

    Attributes:
        weights: (n_terms + n_genres + 1, dim) float32; rows follow :func:`_features`.
        n_terms: TF-IDF columns the map was fitted on (the content model's vocabulary).
        n_genres: genre columns.
        meta: ridge weight, steps and fit statistics (kept in the bundle for reading).
    """

    weights: np.ndarray
    n_terms: int
    n_genres: int
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        self.weights = np.ascontiguousarray(self.weights, dtype=np.float32)
        if self.weights.shape[0] != self.n_terms + self.n_genres + 1:
            raise ValueError(
                f"cold map: weights have {self.weights.shape[0]} rows, expected {self.n_terms} terms + {self.n_genres} genres + 1"
            )

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def __repr__(self) -> str:
        return f"ColdMap({self.n_terms:,} terms + {self.n_genres} genres -> {self.dim}-d, lam={self.meta.get('lam')})"

    @classmethod
    def fit(
        cls,
        content: sp.spmatrix,
        genres: np.ndarray,
        item_vectors: np.ndarray,
        has_id: np.ndarray,
        lam: float = 0.5,
        iters: int = 30,
    ) -> "ColdMap":
        """Fit on the items with an id embedding (``has_id > 0``).

        Args:
            content: (n_items, n_terms) weighted TF-IDF rows (``ContentModel.sparse``).
            genres: (n_items, G) genre multi-hot (the item tower's input).
            item_vectors: (n_items, dim) trained two-tower item vectors.
            has_id: (n_items,) 1 where the item had training ratings.
            lam: ridge weight.
            iters: most conjugate-gradient steps.

        Raises:
            ValueError: the shapes disagree, or no item has training ratings.
        """
        t0 = time.perf_counter()
        x = _features(content, genres)
        warm = np.asarray(has_id) > 0
        if len(warm) != x.shape[0] or len(item_vectors) != x.shape[0]:
            raise ValueError(
                f"cold map: {x.shape[0]} content rows, {len(item_vectors)} item vectors, {len(warm)} has_id flags"
            )
        if not warm.any():
            raise ValueError("cold map: no item has training ratings to learn from")
        w, steps = ridge_block_cg(x[warm], item_vectors[warm], lam, iters)
        fitted = _normalize(np.asarray(x[warm] @ w))
        cosine = float(np.mean(np.sum(fitted * _normalize(item_vectors[warm]), axis=1)))
        meta = {"format_version": FORMAT_VERSION, "lam": lam, "steps": steps, "warm_items": int(warm.sum()),
                "fit_cosine": round(cosine, 4), "seconds": round(time.perf_counter() - t0, 3)}
        log.info("cold map: %d terms + %d genres -> %d-d on %d rated items in %.2fs (%d CG steps, train cosine %.3f)",
                 content.shape[1], genres.shape[1], item_vectors.shape[1], meta["warm_items"], meta["seconds"], steps, cosine)
        return cls(w, int(content.shape[1]), int(genres.shape[1]), meta)

    def transform(self, content: sp.spmatrix, genres: np.ndarray) -> np.ndarray:
        """(n, dim) unit vectors for any items' content rows and genre multi-hot.

        Raises:
            ValueError: the content or genre width differs from the fitted one.
        """
        if content.shape[1] != self.n_terms or np.shape(genres)[1] != self.n_genres:
            raise ValueError(
                f"cold map: fitted on {self.n_terms} terms x {self.n_genres} genres, got {content.shape[1]} x {np.shape(genres)[1]}"
            )
        x = _features(content, genres).astype(np.float32)
        return _normalize(np.asarray(x @ self.weights))

    def fill(self, item_vectors: np.ndarray, content: sp.spmatrix, genres: np.ndarray, has_id: np.ndarray) -> np.ndarray:
        """``item_vectors`` with every row whose ``has_id`` is 0 replaced by the map's vector."""
        out = np.array(item_vectors, dtype=np.float32, copy=True)
        cold = np.flatnonzero(np.asarray(has_id) <= 0)
        if len(cold):
            out[cold] = self.transform(sp.csr_matrix(content)[cold], np.asarray(genres)[cold])
        return out

    # ---- persistence ------------------------------------------------------------------------------
    def save(self, writer: BundleWriter) -> None:
        writer.save_array(f"{PREFIX}weights.npy", self.weights)
        writer.save_json(f"{PREFIX}meta.json", {**self.meta, "n_terms": self.n_terms, "n_genres": self.n_genres})

    @classmethod
    def load(cls, bundle: Bundle) -> "ColdMap | None":
        """The bundle's map, or None for bundles written without one.

        Raises:
            ValueError: an unsupported format version.
        """
        if not bundle.has(f"{PREFIX}meta.json"):
            return None
        meta = bundle.json(f"{PREFIX}meta.json")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{bundle.path}: cold map format version {meta.get('format_version')!r} is not supported")
        n_terms, n_genres = int(meta.pop("n_terms")), int(meta.pop("n_genres"))
        return cls(bundle.array(f"{PREFIX}weights.npy"), n_terms, n_genres, meta)


def place_cold_items(
    item_vectors: np.ndarray,
    content: sp.spmatrix,
    genres: np.ndarray,
    has_id: np.ndarray,
    lam: float = 0.5,
    iters: int = 30,
) -> tuple[np.ndarray, ColdMap | None]:
    """Fit the map on the rated items and give the others its vectors.

    Returns:
        (item vectors with the cold rows replaced, the map); the vectors unchanged and None when
        no item (or every item) has training ratings.
    """
    warm = np.asarray(has_id) > 0
    if not warm.any() or content.shape[1] == 0:
        return item_vectors, None
    cold_map = ColdMap.fit(content, genres, item_vectors, has_id, lam, iters)
    return cold_map.fill(item_vectors, content, genres, has_id), cold_map
