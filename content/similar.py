"""Similar movies and the content-only recommender over :class:`~content.tfidf.ContentModel` vectors.

:class:`ContentSimilarity` is the content stage's candidate source. It keeps the growing
catalogue (fitted items plus movies added later) as dense vectors in a FAISS inner-product index
(:mod:`movierec.core.index`) and as sparse tf-idf rows:

- ``similar_items``: cosine neighbours, the item itself excluded, ties broken by lower item_idx.
  Catalogues smaller than ``ContentConfig.exact_below`` use exact sparse cosine (every title
  word counts, not only what the SVD kept); larger ones use the FAISS index.
- ``add_items``: a new movie is transformed with the fitted vocabulary and appended to both,
  without refitting; it is a neighbour at once.
- ``score_users`` / ``recommend``: "content alone" (protocol P3): a user's profile is the mean of
  the vectors of the items they rated, weighted by the rating minus (a share of) their mean rating,
  so disliked movies push away; scores are profile . item vectors.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pandas as pd
import scipy.sparse as sp

from movierec.core.artifacts import Bundle, BundleWriter
from movierec.core.config import IndexConfig
from movierec.core.data import Dataset
from movierec.core.index import VectorIndex, build_index
from movierec.core.metrics import top_k
from movierec.core.sources import DenseScorer

from content.tfidf import ContentModel

log = logging.getLogger(__name__)


class ContentSimilarity(DenseScorer):
    """Item-item cosine similarity and content-only recommendations (a CandidateSource).

    Args:
        model: the fitted content model; its ``vectors`` are item_idx ``0..n-1``.
        index_config: FAISS settings (exact below ``ann_threshold`` items, HNSW/IVF above).
        exact: ``True`` always ranks by exact sparse cosine, ``False`` always by the FAISS index,
            ``None`` picks exact when the catalogue is smaller than ``config.exact_below``.
        index: an already built (e.g. loaded) index over the catalogue's vectors.
        vectors, sparse: the whole catalogue's dense and sparse rows when it holds more than the
            fitted items (a reloaded catalogue with added movies); default ``model``'s.
    """

    def __init__(
        self,
        model: ContentModel,
        index_config: IndexConfig | None = None,
        exact: bool | None = None,
        index: VectorIndex | None = None,
        vectors: np.ndarray | None = None,
        sparse: sp.csr_matrix | None = None,
    ) -> None:
        self.model = model
        self.exact = exact
        self._lock = threading.RLock()
        start = np.ascontiguousarray(model.vectors if vectors is None else vectors, dtype=np.float32)
        # a buffer with spare rows so that adding movies one by one costs O(1) amortised, not a
        # full copy of the catalogue each time
        self._buf = start.copy()
        self._n = len(start)
        self._sparse_base = (model.sparse if sparse is None else sparse).tocsr()
        self._sparse_added: list[sp.csr_matrix] = []
        self._sparse_t: sp.csr_matrix | None = None
        if self._sparse_base.shape != (self._n, model.n_features):
            raise ValueError(
                f"content: sparse rows {self._sparse_base.shape} do not match {self._n} vectors "
                f"x {model.n_features} features"
            )
        self.index = index if index is not None else build_index(self._vectors, index_config)
        if len(self.index) != self._n:
            raise ValueError(f"content index has {len(self.index)} rows but the catalogue has {self._n} item vectors")
        self._profiles: np.ndarray | None = None

    # ---- catalogue ---------------------------------------------------------------------------
    @property
    def n_items(self) -> int:  # type: ignore[override]
        return self._n

    @property
    def item_vectors(self) -> np.ndarray:  # type: ignore[override]
        """(n_items, dim) unit vectors, fitted items first, then added ones (a read-only view)."""
        view = self._buf[: self._n]
        view.flags.writeable = False
        return view

    @property
    def _vectors(self) -> np.ndarray:
        return self._buf[: self._n]

    @property
    def _sparse(self) -> sp.csr_matrix:
        """Sparse rows of the whole catalogue; added rows are merged lazily (only exact search reads them)."""
        if self._sparse_added:
            with self._lock:
                if self._sparse_added:
                    self._sparse_base = sp.vstack([self._sparse_base, *self._sparse_added], format="csr")
                    self._sparse_added = []
                    self._sparse_t = None
        return self._sparse_base

    @property
    def _sparse_transposed(self) -> sp.csr_matrix:
        """(n_features, n_items) CSR, cached: ``row @ X.T`` would otherwise re-transpose X per query."""
        x = self._sparse
        t = self._sparse_t
        if t is None or t.shape[1] != x.shape[0]:
            t = self._sparse_t = x.T.tocsr()
        return t

    @property
    def uses_exact(self) -> bool:
        if self.exact is not None:
            return self.exact
        return self.n_items < self.model.config.exact_below

    def add_items(self, items: pd.DataFrame) -> np.ndarray:
        """Append movies that arrived after fitting; returns their new item_idx.

        Their text is encoded with the fitted vocabulary, idf and SVD (no refit); unknown words
        are ignored and a movie with no known term gets the centroid vector.
        """
        sparse = self.model.transform_sparse(items)
        vectors = self.model.dense_from_sparse(sparse)
        with self._lock:
            n, m = self._n, len(vectors)
            if n + m > len(self._buf):
                grown = np.empty((max(2 * len(self._buf), n + m, 16), self._buf.shape[1]), dtype=np.float32)
                grown[:n] = self._buf[:n]
                self._buf = grown
            self._buf[n : n + m] = vectors
            rows = self.index.add(vectors)
            self._sparse_added.append(sparse)
            self._n = n + m
        log.debug("content: added %d items (now %d)", len(rows), self.n_items)
        return rows

    # ---- item-item -----------------------------------------------------------------------------
    def similar_items(
        self, item_idx: np.ndarray | int, k: int, exact: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k most similar items by cosine, the item itself excluded, best first.

        Equal scores come in increasing item_idx (so results are reproducible).

        Args:
            item_idx: one item_idx or an array of them.
            k: how many neighbours.
            exact: override the exact/FAISS choice for this call.

        Returns:
            (ids, scores): (k,) or (n, k) int64 / float32, padded with -1 / -inf.

        Raises:
            IndexError: an item_idx outside the catalogue.
        """
        items = np.atleast_1d(np.asarray(item_idx, dtype=np.int64))
        n = self.n_items
        bad = (items < 0) | (items >= n)
        if bad.any():
            raise IndexError(f"item_idx {int(items[bad][0])} is outside the catalogue of {n} items")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        use_exact = self.uses_exact if exact is None else exact
        ids, scores = self._similar_exact(items, k) if use_exact else self._similar_index(items, k)
        return (ids[0], scores[0]) if np.ndim(item_idx) == 0 else (ids, scores)

    def _similar_exact(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact sparse cosine; rows without any known term use their dense (centroid) vector."""
        x = self._sparse
        scores = (x[items] @ self._sparse_transposed).toarray().astype(np.float32)
        empty = np.diff(x.indptr)[items] == 0
        if empty.any():
            vec = self._vectors[: x.shape[0]]  # same rows as the sparse snapshot (adds may run concurrently)
            scores[empty] = vec[items[empty]] @ vec.T
        return self._top(scores, items, k)

    def _top(self, scores: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores[np.arange(len(items)), items] = -np.inf
        out = np.full((len(items), k), -1, dtype=np.int64)
        s_out = np.full((len(items), k), -np.inf, dtype=np.float32)
        ids = top_k(scores, k)
        s = np.take_along_axis(scores, ids, 1)
        w = ids.shape[1]
        out[:, :w] = np.where(np.isneginf(s), -1, ids)
        s_out[:, :w] = s
        return out, s_out

    def _similar_index(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search with over-fetch so that self-exclusion and tie order are exact.

        FAISS does not promise an order among equal scores, and the item itself may be tied with
        duplicates; so fetch more than ``k + 1`` and widen the search while the last kept score
        is tied with the last fetched one.
        """
        n = self.n_items
        out = np.full((len(items), k), -1, dtype=np.int64)
        s_out = np.full((len(items), k), -np.inf, dtype=np.float32)
        pending = np.arange(len(items))
        fetch = min(n, k + 1 + max(4, k // 4))
        while len(pending):
            got_ids, got_s = self.index.search(self._vectors[items[pending]], fetch)
            retry = []
            for row, row_ids, row_s in zip(pending, got_ids, got_s):
                keep = (row_ids >= 0) & (row_ids != items[row])
                order = np.lexsort((row_ids[keep], -row_s[keep]))
                ids, s = row_ids[keep][order][:k], row_s[keep][order][:k]
                # exact search: nothing unfetched scores above the lowest fetched score, so the
                # top k is settled once its last score is strictly above that
                complete = fetch >= n or len(ids) < k or (keep.sum() > k and s[-1] > row_s[keep].min())
                if not complete:
                    retry.append(row)
                    continue
                out[row, : len(ids)] = ids
                s_out[row, : len(ids)] = s
            pending = np.asarray(retry, dtype=np.int64)
            fetch = min(n, fetch * 2)
        return out, s_out

    # ---- user profiles (content alone) -------------------------------------------------------
    def fit_users(self, train: Dataset | sp.csr_matrix, centering: float | None = None) -> "ContentSimilarity":
        """Build each user's profile from their training ratings.

        Args:
            train: a Dataset (its ``rating`` values are used) or a (n_users, n_items) CSR of ratings
                whose items are this model's fitted items.
            centering: share of the user's mean rating subtracted from each rating before it
                weights an item (1: fully centred, disliked items count against; 0: plain
                rating-weighted mean). Defaults to ``config.profile_centering``.
        """
        c = self.model.config.profile_centering if centering is None else float(centering)
        r = train.to_csr("rating") if isinstance(train, Dataset) else sp.csr_matrix(train)
        r = r.tocsr().astype(np.float64)
        if r.shape[1] > self.n_items:
            raise ValueError(f"ratings cover {r.shape[1]} items but the catalogue has {self.n_items}")
        counts = np.diff(r.indptr)
        means = np.divide(np.asarray(r.sum(axis=1)).ravel(), counts, out=np.zeros(r.shape[0]), where=counts > 0)
        w = r.copy()
        w.data = r.data - c * np.repeat(means, counts)
        mass = np.asarray(abs(w).sum(axis=1)).ravel()
        flat = (mass <= 1e-9) & (counts > 0)  # every rating equal: fall back to an unweighted mean
        if flat.any():
            w.data[np.repeat(flat, counts)] = 1.0
            mass = np.asarray(abs(w).sum(axis=1)).ravel()
        w = sp.diags(np.divide(1.0, mass, out=np.zeros_like(mass), where=mass > 0)) @ w
        self._profiles = np.asarray(w @ self._vectors[: r.shape[1]], dtype=np.float32)
        return self

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        """(n,) user_idx -> (n, n_items) profile . item vector scores (0 for users without ratings)."""
        if self._profiles is None:
            raise RuntimeError("call fit_users(train) before scoring users")
        users = np.atleast_1d(np.asarray(user_idx, dtype=np.int64))
        return self._profiles[users] @ self._vectors.T

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, writer: BundleWriter, prefix: str = "content/") -> None:
        """Model arrays plus the FAISS index over every item, added ones included."""
        n_fit = self.model.n_items
        self.model.save(writer, prefix)
        if self.n_items > n_fit:
            writer.save_array(f"{prefix}added_vectors.npy", self._vectors[n_fit:])
            extra = self._sparse[n_fit:]
            writer.save_array(f"{prefix}added_sparse_data.npy", extra.data)
            writer.save_array(f"{prefix}added_sparse_indices.npy", extra.indices.astype(np.int64))
            writer.save_array(f"{prefix}added_sparse_indptr.npy", extra.indptr.astype(np.int64))
        self.index.save(writer.file(f"{prefix}index.faiss"))
        writer.save_json(f"{prefix}index.json", {"kind": self.index.kind, "n_items": self.n_items, "exact": self.exact})

    @classmethod
    def load(cls, bundle: Bundle, prefix: str = "content/") -> "ContentSimilarity":
        """Load model and index from a bundle (plain arrays, JSON and the FAISS file)."""
        model = ContentModel.load(bundle, prefix)
        meta = bundle.json(f"{prefix}index.json")
        index = VectorIndex.load(bundle.file(f"{prefix}index.faiss"), meta["kind"])
        vectors, sparse = model.vectors, model.sparse
        if bundle.has(f"{prefix}added_vectors.npy"):
            indptr = bundle.array(f"{prefix}added_sparse_indptr.npy")
            extra = sp.csr_matrix(
                (bundle.array(f"{prefix}added_sparse_data.npy"), bundle.array(f"{prefix}added_sparse_indices.npy"), indptr),
                shape=(len(indptr) - 1, model.n_features),
            )
            vectors = np.vstack([vectors, bundle.array(f"{prefix}added_vectors.npy")])
            sparse = sp.vstack([sparse, extra], format="csr")
        if meta["n_items"] != len(vectors) or index.dim != model.dim:
            raise ValueError(
                f"{bundle.path}: content index is {len(index)} x {index.dim}, expected {meta['n_items']} x {model.dim}"
            )
        return cls(model, exact=meta.get("exact"), index=index, vectors=vectors, sparse=sparse)
