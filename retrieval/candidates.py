"""Retrieval at run time: the trained towers, item vectors in FAISS, and stored user vectors.

:class:`RetrievalModel` is what a bundle's retrieval part loads into (plain torch modules, no
Lightning). It answers "which items for these query vectors" with seen items excluded, encodes
new users from a few liked movies and new movies from their content, and is shared by the batch
candidate job, the CLI and the HTTP service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from movierec.core.artifacts import Bundle, BundleWriter
from movierec.core.config import IndexConfig
from movierec.core.index import VectorIndex, build_batch_index, build_index, recall_against_exact
from movierec.core.metrics import top_k
from retrieval.cold import ColdMap
from retrieval.inputs import Histories, UserFeatureEncoder, user_batch
from retrieval.towers import ItemTower, UserTower

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)
PREFIX = "retrieval/"
BATCH_MIN_ITEMS = 50_000
"""From this many items, searches of ``BATCH_MIN_QUERIES`` or more queries at once (the batch
candidates job, batch evaluation) over an exact flat index go through an IVF batch index
(:func:`build_batch_index`) instead of scanning every item."""
BATCH_MIN_QUERIES = 256


class RetrievalModel:
    """Two-tower retrieval over the whole catalogue (cold items included).

    Batch searches over a large catalogue with an exact flat index (``batch_min_items`` items,
    ``batch_min_queries`` queries or more in one call) use an IVF index over the same vectors, built on first use
    (:meth:`batch_index`); rows it leaves short of ``k`` are searched again with the bundle's
    index. Set ``batch_min_items`` to a huge number for exact batches, or ``batch_codes = "flat"``
    and ``batch_nprobe`` to the list count for an exact IVF scan.

    Args:
        user_tower, item_tower: trained plain modules (eval mode).
        item_vectors: (n_items, dim) candidate vectors, row = item_idx.
        user_vectors: (n_users, dim) query vectors of the training users.
        histories: each user's training items, oldest first (exclusion and pooling).
        item_genres, item_content, item_has_id: item-side tower inputs.
        user_features: (n_users, F) encoded user features.
        encoder: the user feature encoder (for users added at run time).
        hparams: tower sizes and ``history_len``.
        index: a FAISS index over ``item_vectors``; built when not given.
        cold_map: content -> item-vector map (:mod:`retrieval.cold`) that placed the movies without
            training ratings; movies added later are placed by it too (None: by the item tower).
    """

    def __init__(
        self,
        user_tower: UserTower,
        item_tower: ItemTower,
        item_vectors: np.ndarray,
        user_vectors: np.ndarray,
        histories: Histories,
        item_genres: np.ndarray,
        item_content: np.ndarray,
        item_has_id: np.ndarray,
        user_features: np.ndarray,
        encoder: UserFeatureEncoder,
        hparams: dict[str, Any],
        index: VectorIndex | None = None,
        index_config: IndexConfig | None = None,
        cold_map: ColdMap | None = None,
    ) -> None:
        self.user_tower = user_tower.eval()
        self.item_tower = item_tower.eval()
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self.user_vectors = np.ascontiguousarray(user_vectors, dtype=np.float32)
        self.histories = histories
        self.item_genres = item_genres
        self.item_content = item_content
        self.item_has_id = item_has_id
        self.user_features = user_features
        self.encoder = encoder
        self.hparams = hparams
        self.cold_map = cold_map
        self.index = index if index is not None else build_index(self.item_vectors, index_config)
        self.n_model_items = int(hparams["n_items"])
        self._lock = threading.Lock()
        self.batch_min_items = BATCH_MIN_ITEMS
        self.batch_min_queries = BATCH_MIN_QUERIES
        self.batch_nlist: int | None = None
        self.batch_nprobe: int | None = None
        self.batch_codes = "sq8"
        self._batch: VectorIndex | None = None
        if len(self.index) != len(self.item_vectors) or self.index.dim != self.item_vectors.shape[1]:
            raise ValueError(
                f"retrieval index is {len(self.index)} x {self.index.dim} but item vectors are {self.item_vectors.shape}"
            )

    @property
    def n_items(self) -> int:
        return len(self.item_vectors)

    @property
    def n_users(self) -> int:
        return len(self.user_vectors)

    @property
    def history_len(self) -> int:
        return int(self.hparams.get("history_len", 50))

    # ---- queries -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_histories(self, item_lists: list[np.ndarray], user_idx: np.ndarray | None = None) -> np.ndarray:
        """Query vectors from item histories (new users, or users with live feedback).

        ``user_idx`` gives known users their id embedding and features; -1 (or None) means a
        user the model has never seen, described by the items alone.
        """
        n = len(item_lists)
        hist = np.full((n, self.history_len), -1, dtype=np.int64)
        for row, items in enumerate(item_lists):
            items = np.asarray(items, dtype=np.int64)[-self.history_len :]
            hist[row, : len(items)] = items
        users = np.full(n, -1, dtype=np.int64) if user_idx is None else np.asarray(user_idx, dtype=np.int64)
        known = (users >= 0) & (users < len(self.user_features))
        feats = np.zeros((n, self.user_features.shape[1]), dtype=np.float32)
        feats[known] = self.user_features[users[known]]
        b = user_batch(np.where(known, users, 0), hist, self.item_content, feats, known.astype(np.float32), self.n_model_items)
        return self.user_tower(**b).numpy()

    def search(
        self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item_idx per query with each row's excluded items removed.

        Fetches ``k`` plus the row's number of exclusions so that exclusion never shortens
        the list while enough items remain.
        """
        q = np.atleast_2d(queries)
        ex = _exclusion_lists(exclude, len(q))
        batch = self.batch_index() if len(q) >= self.batch_min_queries else None
        lengths = np.fromiter((len(e) for e in ex), np.int64, len(ex))  # histories hold no repeats
        if batch is None:
            ids, scores = self._search(self.index, q, k, ex, lengths)
        else:
            ids, scores = self._search(batch, q, k, ex, lengths)
            # rows the probed lists left short of k (while unexcluded items remain): the bundle's index
            short = self._short_rows(ids, k, lengths)
            if len(short):
                ids[short], scores[short] = self._search(self.index, q[short], k, [ex[i] for i in short], lengths[short])
        if self.index.kind != "flat":
            # an approximate index can return fewer hits than asked (HNSW past its search breadth,
            # for a user whose history is most of what it found): those rows are searched exactly
            short = self._short_rows(ids, k, lengths)
            if len(short):
                ids[short], scores[short] = self._exact_rows(q[short], k, [ex[i] for i in short])
        return ids, scores

    def _short_rows(self, ids: np.ndarray, k: int, lengths: np.ndarray) -> np.ndarray:
        return np.flatnonzero((ids >= 0).sum(1) < np.minimum(k, self.n_items - lengths))

    def _exact_rows(self, q: np.ndarray, k: int, ex: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by a dense product over every item vector, excluded items removed (a few rows)."""
        scores = np.asarray(q, np.float32) @ np.asarray(self.item_vectors, np.float32).T
        for row, items in enumerate(ex):
            scores[row, np.asarray(items, np.int64)] = -np.inf
        take = min(k, self.n_items)
        top = top_k(scores, take)
        out_ids = np.full((len(q), k), -1, dtype=np.int64)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_s[:, :take] = np.take_along_axis(scores, top, 1)
        out_ids[:, :take] = np.where(np.isfinite(out_s[:, :take]), top, -1)
        return out_ids, out_s

    def batch_index(self) -> VectorIndex | None:
        """The IVF index batch searches use at this catalogue size (built once, kept in step
        with added items), or None: below ``batch_min_items`` items, and when the bundle's own
        index is already approximate (HNSW or IVF: a large bundle's HNSW answers batches at about
        the same recall as this index, and faster; ``benchmarks/batch_candidates.py`` compares
        them). So it replaces exact flat search."""
        if self.n_items < self.batch_min_items or self.index.kind != "flat":
            return None
        with self._lock:
            if self._batch is None:
                self._batch = build_batch_index(self.item_vectors, self.batch_nlist, self.batch_nprobe, codes=self.batch_codes)
            elif len(self._batch) < self.n_items:  # movies added since it was built
                self._batch.add(self.item_vectors[len(self._batch) :])
            return self._batch

    def _search(
        self, index: VectorIndex, q: np.ndarray, k: int, ex: list[np.ndarray], lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows grouped by the size of their exclusion lists (``lengths``; up to 32, then by
        doublings), so one user with a long history does not make every row of a batch fetch
        that many more."""
        group = np.ceil(np.log2(np.maximum(lengths, 32))).astype(np.int64) if len(q) > 1 else np.zeros(len(q), np.int64)
        groups = np.unique(group)
        if len(groups) <= 1:
            return self._search_rows(index, q, k, ex, lengths)
        ids = np.empty((len(q), k), dtype=np.int64)
        scores = np.empty((len(q), k), dtype=np.float32)
        for g in groups:
            rows = np.flatnonzero(group == g)
            ids[rows], scores[rows] = self._search_rows(index, q[rows], k, [ex[i] for i in rows], lengths[rows])
        return ids, scores

    def _search_rows(self, index: VectorIndex, q: np.ndarray, k: int, ex: list[np.ndarray],
                     lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_ex = int(lengths.max()) if len(lengths) else 0
        fetch = min(self.n_items, k + n_ex)
        ids, scores = index.search(q, fetch)
        keep = ids >= 0
        if n_ex:
            # vectorised exclusion: (row, item) pairs encoded as one int64 key each
            rows = np.repeat(np.arange(len(q), dtype=np.int64), lengths)
            banned = rows * self.n_items + np.concatenate(ex).astype(np.int64)
            keys = np.arange(len(q), dtype=np.int64)[:, None] * self.n_items + ids
            keep &= ~np.isin(keys, banned)
        # compact each row's kept entries to the front, in order, then cut at k
        pos = np.cumsum(keep, axis=1) - 1
        take = keep & (pos < k)
        out_ids = np.full((len(q), k), -1, dtype=np.int64)
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        r, c = np.nonzero(take)
        out_ids[r, pos[r, c]] = ids[r, c]
        out_s[r, pos[r, c]] = scores[r, c]
        return out_ids, out_s

    def recommend(self, user_idx: np.ndarray | int, k: int, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        users = np.atleast_1d(np.asarray(user_idx, dtype=np.int64))
        ex = [self.histories.of(u) for u in users] if exclude_seen else None
        ids, s = self.search(self.user_vectors[users], k, ex)
        return (ids[0], s[0]) if np.ndim(user_idx) == 0 else (ids, s)

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        """(n, n_items) dot-product scores (for full-ranking evaluation)."""
        return self.user_vectors[np.asarray(user_idx)] @ self.item_vectors.T

    def similar_items(self, item_idx: np.ndarray | int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest items by vector; a movie without ratings (placed by the cold map) is compared
        with the rated movies only.

        A placed vector is a shrunk estimate, pulled towards the catalogue's mean where its
        content is uninformative, and two such estimates look alike mostly through that shared
        pull: an unrated movie's nearest neighbours would be mostly other unrated movies, far
        beyond their share of the catalogue. Its neighbours among rated movies are where its
        ratings would put it (tests/retrieval/test_cold.py).
        """
        items = np.atleast_1d(np.asarray(item_idx, dtype=np.int64))
        ids, s = self.search(self.item_vectors[items], k, [np.array([i]) for i in items])
        has_id = self.item_has_id[: self.n_items]
        placed = np.flatnonzero(has_id[items] <= 0) if self.cold_map is not None else np.zeros(0, np.int64)
        rated = np.flatnonzero(has_id > 0)
        if len(placed) and len(rated):
            scores = self.item_vectors[items[placed]] @ self.item_vectors[rated].T
            kk = min(k, len(rated))
            top = top_k(scores, kk)
            ids[placed], s[placed] = -1, -np.inf
            ids[placed, :kk] = rated[top]
            s[placed, :kk] = np.take_along_axis(scores, top, axis=1)
        return (ids[0], s[0]) if np.ndim(item_idx) == 0 else (ids, s)

    # ---- catalogue changes ----------------------------------------------------------------------
    @torch.no_grad()
    def add_items(self, genres: np.ndarray, content: np.ndarray, content_sparse: sp.spmatrix | None = None) -> np.ndarray:
        """Encode movies added after training (no id embedding: content and genres only) and
        append them to the index; returns their item_idx.

        With a cold map and the movies' TF-IDF rows (``content_sparse``) they are placed the way
        the training's cold movies were; otherwise the item tower encodes them.
        """
        g = torch.from_numpy(np.ascontiguousarray(genres, dtype=np.float32))
        c = torch.from_numpy(np.array(content, dtype=np.float32))  # a copy: the caller's rows may be read-only
        if self.cold_map is not None and content_sparse is not None:
            vec = self.cold_map.transform(content_sparse, genres)
        else:
            idx = torch.zeros(len(g), dtype=torch.long)
            vec = self.item_tower(idx, torch.zeros(len(g)), g, c).numpy()
        with self._lock:
            rows = self.index.add(vec)
            # appended into buffers that double when full: adding a movie costs O(1) amortised
            # instead of copying every item's vectors
            self.item_vectors = self._append("item_vectors", vec)
            self.item_genres = self._append("item_genres", genres.astype(np.float32))
            self.item_content = self._append("item_content", content.astype(np.float32))
            self.item_has_id = self._append("item_has_id", np.zeros(len(g), np.float32))
        return rows

    def _append(self, name: str, rows: np.ndarray) -> np.ndarray:
        """``getattr(self, name)`` with ``rows`` appended, as a view of a growing buffer."""
        current = getattr(self, name)
        buffers = self.__dict__.setdefault("_buffers", {})
        buf = buffers.get(name)
        n, m = len(current), len(rows)
        if buf is None or len(buf) < n + m or not np.shares_memory(buf[:1], current[:1]):
            buf = np.empty((max(2 * (n + m), 16), *current.shape[1:]), dtype=current.dtype)
            buf[:n] = current
            buffers[name] = buf
        buf[n : n + m] = rows
        return buf[: n + m]

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, writer: BundleWriter) -> None:
        writer.save_tensors(f"{PREFIX}user_tower.safetensors", self.user_tower.state_dict())
        writer.save_tensors(f"{PREFIX}item_tower.safetensors", self.item_tower.state_dict())
        writer.save_json(f"{PREFIX}hparams.json", self.hparams)
        writer.save_json(f"{PREFIX}user_encoder.json", self.encoder.to_json())
        writer.save_array(f"{PREFIX}item_vectors.npy", self.item_vectors)
        writer.save_array(f"{PREFIX}user_vectors.npy", self.user_vectors)
        writer.save_array(f"{PREFIX}item_genres.npy", self.item_genres)
        writer.save_array(f"{PREFIX}item_content.npy", self.item_content)
        writer.save_array(f"{PREFIX}item_has_id.npy", self.item_has_id)
        writer.save_array(f"{PREFIX}user_features.npy", self.user_features)
        writer.save_array(f"{PREFIX}hist_indptr.npy", self.histories.indptr)
        writer.save_array(f"{PREFIX}hist_items.npy", self.histories.items)
        self.index.save(writer.file(f"{PREFIX}index.faiss"))
        writer.save_json(f"{PREFIX}index.json", {"kind": self.index.kind, "n_items": len(self.index), "dim": self.index.dim})
        if self.cold_map is not None:
            self.cold_map.save(writer)

    @classmethod
    def load(cls, bundle: Bundle, mmap: bool = False) -> "RetrievalModel":
        hp = bundle.json(f"{PREFIX}hparams.json")
        user_tower = UserTower(
            hp["n_users"], hp["n_items"], hp["content_dim"], hp["n_user_features"], hp["dim"], hp["hidden"], hp["id_dropout"], hp["dropout"],
            recent_len=hp.get("recent_len", 0), recent_decay=hp.get("recent_decay", 0.8),
        )
        item_tower = ItemTower(hp["n_items"], hp["n_genres"], hp["content_dim"], hp["dim"], hp["hidden"], hp["id_dropout"], hp["dropout"])
        user_tower.load_state_dict(bundle.tensors(f"{PREFIX}user_tower.safetensors"))
        item_tower.load_state_dict(bundle.tensors(f"{PREFIX}item_tower.safetensors"))
        meta = bundle.json(f"{PREFIX}index.json")
        index = VectorIndex.load(bundle.file(f"{PREFIX}index.faiss"), meta["kind"], mmap=mmap)
        return cls(
            user_tower,
            item_tower,
            bundle.array(f"{PREFIX}item_vectors.npy"),
            bundle.array(f"{PREFIX}user_vectors.npy"),
            Histories(bundle.array(f"{PREFIX}hist_indptr.npy"), bundle.array(f"{PREFIX}hist_items.npy")),
            bundle.array(f"{PREFIX}item_genres.npy"),
            bundle.array(f"{PREFIX}item_content.npy"),
            bundle.array(f"{PREFIX}item_has_id.npy"),
            bundle.array(f"{PREFIX}user_features.npy"),
            UserFeatureEncoder.from_json(bundle.json(f"{PREFIX}user_encoder.json")),
            hp,
            index=index,
            cold_map=ColdMap.load(bundle),
        )


def _exclusion_lists(exclude: list[np.ndarray] | sp.csr_matrix | None, n: int) -> list[np.ndarray]:
    if exclude is None:
        return [np.zeros(0, np.int64)] * n
    if sp.issparse(exclude):
        ex = exclude.tocsr()
        return [ex.indices[ex.indptr[i] : ex.indptr[i + 1]] for i in range(n)]
    if len(exclude) != n:
        raise ValueError(f"got {len(exclude)} exclusion lists for {n} queries")
    return [np.asarray(e, dtype=np.int64) for e in exclude]


def index_recall(model: RetrievalModel, n_queries: int = 500, k: int = 10, seed: int = 0) -> float:
    """Recall@k of the model's index against exact search, on a sample of user queries."""
    rng = np.random.default_rng(seed)
    users = rng.choice(model.n_users, size=min(n_queries, model.n_users), replace=False)
    return recall_against_exact(model.index, model.item_vectors, model.user_vectors[users], k)


CANDIDATE_COLUMNS = ("user_id", "item_id", "rank", "score")


def is_candidates_file(path: str | Path) -> bool:
    """Whether ``path`` is a parquet file with the candidates columns (ours to replace)."""
    import pyarrow.parquet as pq

    try:
        return tuple(pq.read_schema(path).names) == CANDIDATE_COLUMNS
    except Exception:  # not parquet, unreadable: not ours
        return False


def check_candidates_target(out: str | Path) -> None:
    """Refuse to replace a file or folder that is not a candidates output.

    Raises:
        FileExistsError: ``out`` is a folder, or a file that is not a candidates parquet.
    """
    out = Path(out)
    if out.is_dir():
        raise FileExistsError(f"{out} is a folder; refusing to replace it with a candidates file")
    if out.exists() and not is_candidates_file(out):
        raise FileExistsError(f"{out} exists and is not a candidates parquet ({', '.join(CANDIDATE_COLUMNS)}); refusing to replace it")


def check_parts_target(out: str | Path) -> None:
    """Refuse to replace anything but an earlier sharded candidates output.

    Raises:
        FileExistsError: ``out`` is a file, or a folder holding anything other than candidate
            parts (``part-*.parquet`` with the candidates columns).
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory (parallel candidates write one part per worker into a directory)")
    foreign = [p for p in out.iterdir() if not (p.name.startswith("part-") and p.suffix == ".parquet" and is_candidates_file(p))]
    if foreign:
        raise FileExistsError(f"{out} holds {foreign[0].name!r}, which is not a candidates part; refusing to replace the folder")


def write_candidates(
    recommend: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    users: np.ndarray,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    out: str | Path,
    chunk_size: int = 2048,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Stream top-k candidates for ``users`` to parquet, one chunk of users at a time.

    Args:
        recommend: (chunk,) user_idx -> ((chunk, k) item_idx, (chunk, k) scores), best first,
            -1 padded; seen items already excluded.
        users: user_idx to write, in output order.
        user_ids, item_ids: outside ids (index = internal idx) written to the file.
        out: parquet path; written to a temp file beside it and renamed, so a crash never leaves
            a half-written file under that name.

    Returns:
        Counts and throughput for the log.
    """
    import time

    from tqdm.auto import tqdm

    users = np.asarray(users, dtype=np.int64)
    t0 = time.perf_counter()
    with atomic_candidates_file(out) as tmp:
        bar = tqdm(total=len(users), disable=not show_progress, desc="candidates", unit="user")
        rows = stream_candidates(recommend, users, user_ids, item_ids, tmp, chunk_size, on_chunk=bar.update)
        bar.close()
    seconds = time.perf_counter() - t0
    summary = {"users": len(users), "rows": rows, "seconds": round(seconds, 2), "users_per_second": round(len(users) / max(seconds, 1e-9), 1)}
    log.info("candidates: %d users, %d rows in %.1fs (%.0f users/s) -> %s", len(users), rows, seconds, summary["users_per_second"], out)
    return summary


def stream_candidates(
    recommend: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    users: np.ndarray,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    path: str | Path,
    chunk_size: int = 2048,
    on_chunk: Callable[[int], Any] | None = None,
) -> int:
    """Write ``users``' candidates to the parquet file ``path`` (created or truncated), one row
    group per chunk of ``chunk_size`` users, and return the row count. ``on_chunk`` hears each
    chunk's user count. No temp file: :func:`write_candidates` and the workers of
    ``movierec.candidates`` call it on paths no reader looks at yet."""
    import pyarrow.parquet as pq

    users = np.asarray(users, dtype=np.int64)
    user_ids, item_ids = np.asarray(user_ids), np.asarray(item_ids)
    schema = candidate_schema(user_ids, item_ids)
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(users), chunk_size):
            chunk = users[start : start + chunk_size]
            ids, scores = recommend(chunk)
            table = candidate_table(chunk, ids, scores, user_ids, item_ids, schema)
            writer.write_table(table)
            rows += len(table)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return rows


@contextmanager
def atomic_candidates_file(out: str | Path) -> Iterator[Path]:
    """A hidden temp path beside ``out`` to write the candidates file into.

    When the block ends without error the file is flushed to disk and renamed over ``out`` (which
    is checked with :func:`check_candidates_target` before and again just before the rename), so
    a reader or a crash sees the old file or the whole new one; on any error it is removed.
    """
    import os
    import tempfile

    out = Path(out)
    check_candidates_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        check_candidates_target(out)  # again: something may have appeared there meanwhile
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def merge_candidate_parts(parts: list[Path], out: str | Path) -> int:
    """Concatenate candidate parts, in the order given, into the one parquet file ``out``
    (atomically, see :func:`atomic_candidates_file`) and return its row count.

    Streams one row group at a time, so memory stays at one chunk's rows whatever the total, and
    keeps the parts' row groups: the file has the schema, rows, order and row groups of the same
    users written by one process in the parts' chunks.

    Raises:
        ValueError: no parts, or parts whose schemas differ.
    """
    import pyarrow.parquet as pq

    if not parts:
        raise ValueError("no candidate parts to merge")
    rows = 0
    with atomic_candidates_file(out) as tmp:
        schema = pq.read_schema(parts[0])
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                source = pq.ParquetFile(part)
                if not source.schema_arrow.equals(schema):
                    raise ValueError(f"{part}: schema {source.schema_arrow} differs from {parts[0]}'s {schema}")
                for group in range(source.num_row_groups):
                    table = source.read_row_group(group)
                    writer.write_table(table)
                    rows += len(table)
    return rows


def candidate_table(users: np.ndarray, ids: np.ndarray, scores: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray, schema: pa.Schema) -> pa.Table:
    """Rows (user_id, item_id, rank, score) for one chunk; -1 padded slots are dropped."""
    import pyarrow as pa

    valid = ids >= 0
    ranks = np.broadcast_to(np.arange(1, ids.shape[1] + 1, dtype=np.int32), ids.shape)[valid]
    return pa.table(
        {
            "user_id": pa.array(np.repeat(user_ids[users], valid.sum(1)), type=schema.field("user_id").type),
            "item_id": pa.array(item_ids[ids[valid]], type=schema.field("item_id").type),
            "rank": pa.array(ranks, type=pa.int32()),
            "score": pa.array(scores[valid].astype(np.float32), type=pa.float32()),
        },
        schema=schema,
    )


def candidate_schema(user_ids: np.ndarray, item_ids: np.ndarray) -> pa.Schema:
    """The ``movierec candidates`` schema, with id types taken from the data."""
    import pyarrow as pa

    def arrow_type(ids: np.ndarray) -> pa.DataType:
        return pa.string() if ids.dtype == object else pa.from_numpy_dtype(ids.dtype)

    return pa.schema([("user_id", arrow_type(user_ids)), ("item_id", arrow_type(item_ids)), ("rank", pa.int32()), ("score", pa.float32())])
