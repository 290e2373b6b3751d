"""A small wrapper over FAISS inner-product indexes, shared by the content and retrieval stages.

Row ``i`` of the index is item_idx ``i``; items added later get the next rows. Exact search
(``IndexFlatIP``) for small catalogues; HNSW or IVF above ``ann_threshold`` items; IVF-PQ
(compressed codes, trained on a sample) for millions of items. Any kind loads memory-mapped
read-only (``VectorIndex.load(..., mmap=True)``) so serving replicas share the file's pages. Vectors meant
for cosine similarity are L2-normalised by the caller (see :func:`normalize`).

This lives in the core rather than in ``retrieval/`` (as DESIGN.md's layout has it) because the
content stage, which comes before retrieval, needs the same index for similar-movie lookup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from movierec.core.config import IndexConfig

log = logging.getLogger(__name__)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation; zero rows stay zero (no NaN)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


class _ReadWriteLock:
    """Many concurrent searches or one add at a time.

    FAISS releases the GIL while it searches, and an ``add`` may reallocate the storage a
    concurrent search is reading (a crash, not just a stale answer), so adds wait for running
    searches and block new ones. A waiting add keeps new searches out so it cannot starve.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class VectorIndex:
    """Inner-product search over item vectors, one row per item_idx.

    Args:
        index: a FAISS index whose ``ntotal`` rows are the items in order.
        kind: ``flat``, ``hnsw`` or ``ivf`` (for reporting and reload).
    """

    def __init__(self, index: faiss.Index, kind: str) -> None:
        self.index = index
        self.kind = kind
        self._lock = _ReadWriteLock()

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows for each query, best first.

        Returns:
            (item_idx, scores): (n, k) int64 and float32; -1 / -inf pad rows with fewer hits.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} does not match index dimension {self.dim}")
        with self._lock.read():
            k = int(min(max(k, 1), max(len(self), 1)))
            if self.kind == "flat" and len(q) > 1 and len(self):
                return self._search_exact_batch(q, k)
            scores, ids = self.index.search(q, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return ids.astype(np.int64), scores

    def _search_exact_batch(self, q: np.ndarray, k: int, cells: int = 1 << 25) -> tuple[np.ndarray, np.ndarray]:
        """Exact batch search as blocked matmul + top-k in torch over the flat index's own
        storage (zero copy): faster than ``IndexFlatIP.search`` for batches with large k (the
        batch candidate job; ``benchmarks/batch_candidates.py``), and the block size keeps memory
        flat."""
        import torch

        n, d = len(self), self.dim
        block = max(8, min(256, cells // max(n, 1)))  # scores per block stay near 128 MB at any size
        stored = faiss.rev_swig_ptr(self.index.get_xb(), n * d)
        items = torch.from_numpy(np.asarray(stored).reshape(n, d))
        ids = np.empty((len(q), k), dtype=np.int64)
        scores = np.empty((len(q), k), dtype=np.float32)
        for s in range(0, len(q), block):
            sc = torch.from_numpy(q[s : s + block]) @ items.T
            top = torch.topk(sc, k, dim=1, sorted=True)
            ids[s : s + block] = top.indices.numpy()
            scores[s : s + block] = top.values.numpy()
        return ids, scores

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append vectors; returns their new row numbers (item_idx)."""
        v = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if v.shape[1] != self.dim:
            raise ValueError(f"vector dimension {v.shape[1]} does not match index dimension {self.dim}")
        with self._lock.write():
            start = len(self)
            self.index.add(v)
            return np.arange(start, start + len(v))

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of the given rows (IVF indexes get a direct map on first use)."""
        if self.kind in ("ivf", "ivfpq"):
            ivf = faiss.extract_index_ivf(self.index)
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                with self._lock.write():
                    if ivf.direct_map.type == faiss.DirectMap.NoMap:
                        ivf.make_direct_map()
        with self._lock.read():
            return np.stack([self.index.reconstruct(int(r)) for r in np.atleast_1d(rows)])

    def save(self, path: str | Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, kind: str, mmap: bool = False) -> "VectorIndex":
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as e:
            raise ValueError(f"{path}: cannot read FAISS index ({str(e).splitlines()[0]})") from None
        return cls(index, kind)


def build_index(vectors: np.ndarray, config: IndexConfig | None = None, seed: int = 42) -> VectorIndex:
    """Build an inner-product index: exact for small catalogues, HNSW or IVF above the threshold."""
    config = config or IndexConfig()
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = v.shape
    kind = config.kind
    if kind == "auto":
        kind = "flat" if n < config.ann_threshold else "hnsw"
    t0 = time.perf_counter()
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, config.hnsw_m * 2)
        index.hnsw.efSearch = config.ef_search
    elif kind == "ivf":
        nlist = config.nlist or max(1, int(4 * np.sqrt(max(n, 1))))
        nlist = min(nlist, max(1, n // 39))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = v[rng.choice(n, size=min(n, config.train_size or nlist * 256), replace=False)] if n else v
        index.train(sample)
        index.nprobe = min(config.nprobe, nlist)
    elif kind == "ivfpq":
        index = _ivfpq(v, config, seed)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    if n:
        index.add(v)
    log.debug("built %s index over %d x %d in %.2fs", kind, n, d, time.perf_counter() - t0)
    return VectorIndex(index, kind)


BATCH_LIST_SIZE = 128
"""Items per IVF list of the batch index (``nlist = n / BATCH_LIST_SIZE``)."""
BATCH_PROBE_SHARE = 0.075
"""Share of the lists the batch index scans per query: chosen on a large synthetic catalogue for
recall close to exact search at more queries per CPU-second than the bundle's HNSW index
(``benchmarks/batch_candidates.py``; benchmarks/RESULTS.md, "Batch candidates")."""


def build_batch_index(vectors: np.ndarray, nlist: int | None = None, nprobe: int | None = None, seed: int = 42,
                      codes: str = "sq8") -> VectorIndex:
    """An IVF index for batch search over a large catalogue (the candidates job).

    Exact flat search costs users x items dot products plus a top-k over every item per user;
    an IVF index scans ``nprobe`` of ``nlist`` lists per query (a few thousand items at 100k).
    With ``codes="sq8"`` the lists hold 8-bit scalar-quantised vectors (a quarter of the memory
    traffic of float scanning) and the hits are re-scored with the exact float vectors
    (``IndexRefineFlat``, no extra candidates), so scores are exact inner products and the
    order among the hits is exact; ``codes="flat"`` scans float vectors, and with
    ``nprobe = nlist`` is exact search. The coarse quantizer is trained on a sample of 64
    vectors per list (a second or two at 100k items).

    Args:
        vectors: (n, d) item vectors, row = item_idx.
        nlist: IVF lists (None: ``n / BATCH_LIST_SIZE``).
        nprobe: lists scanned per query (None: ``BATCH_PROBE_SHARE`` of the lists, at least 8).
        codes: ``sq8`` or ``flat`` (see above).
    """
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = v.shape
    nlist = int(nlist or max(1, n // BATCH_LIST_SIZE))
    nlist = max(1, min(nlist, n))
    nprobe = int(nprobe or max(8, round(BATCH_PROBE_SHARE * nlist)))
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(d)
    if codes == "flat":
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index: faiss.Index = ivf
    elif codes == "sq8":
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexRefineFlat(ivf)
        index.k_factor = 1.0
    else:
        raise ValueError(f"batch index codes must be sq8 or flat, not {codes!r}")
    ivf.cp.seed = seed
    ivf.cp.min_points_per_centroid = 1  # a sample of 64 per list is enough here; no warning
    rng = np.random.default_rng(seed)
    index.train(v[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))])
    index.add(v)
    ivf.nprobe = min(nprobe, nlist)
    log.info("batch index: IVF (%s) over %d items, %d lists, %d probed per query, built in %.1fs",
             codes, n, nlist, ivf.nprobe, time.perf_counter() - t0)
    return VectorIndex(index, "ivf")


def _ivfpq(v: np.ndarray, config: IndexConfig, seed: int) -> faiss.Index:
    """An untrained-then-trained ``IndexIVFPQ`` (inner product) over ``v``'s dimension.

    Coarse lists and PQ codebooks are trained on a random sample, not on every vector: k-means
    cost grows with the sample, and FAISS itself uses at most 256 points per centroid. Codes
    are residuals to the list centroid (``by_residual``), which is what makes 8-bit codes
    accurate enough at 16-32 sub-quantizers for 64-dimensional vectors.

    Raises:
        ValueError: ``pq_m`` does not divide the dimension, or too few vectors to train.
    """
    n, d = v.shape
    if d % config.pq_m:
        raise ValueError(f"index.pq_m={config.pq_m} must divide the vector dimension {d}")
    centroids = 2**config.pq_nbits
    nlist = config.nlist or max(1, int(4 * np.sqrt(max(n, 1))))
    if n < max(nlist, centroids):
        raise ValueError(
            f"ivfpq needs at least max(nlist={nlist}, 2**pq_nbits={centroids}) vectors to train, got {n}; "
            "use kind flat or hnsw for a catalogue this small"
        )
    size = config.train_size or max(64 * nlist, 64 * centroids)
    rng = np.random.default_rng(seed)
    sample = v[np.sort(rng.choice(n, size=min(n, size), replace=False))]
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quantizer, d, nlist, config.pq_m, config.pq_nbits, faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    index.train(sample)
    log.debug("ivfpq: trained %d lists x %d sub-quantizers on %d vectors in %.2fs", nlist, config.pq_m, len(sample), time.perf_counter() - t0)
    index.nprobe = min(config.nprobe, nlist)
    return index


def recall_against_exact(index: VectorIndex, vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k that the index returns (1.0 for an exact index)."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    got, _ = index.search(queries, k)
    hits = sum(len(np.intersect1d(a[a >= 0], b[b >= 0])) for a, b in zip(got, truth))
    return hits / max(1, (truth >= 0).sum())
