"""Features of (user, candidate) pairs, which the runtime ranker (``ranking/runtime.py``) scores.

The ranker sits after two-tower retrieval: retrieval proposes ``C`` candidates per user, and
:class:`~ranking.runtime.Ranker` re-scores them from features that blend collaborative and content signals.
:func:`compute_features` is the one function that builds those features; the training code
(``ranking/ranker.py``), the batch candidate job and the HTTP service all call it, so a feature
means the same thing everywhere. Everything is vectorised over a whole ``(n, C)`` batch (numpy
and torch; Python loops only run over users, never over pairs).

Nothing here imports Lightning.

Items may be added at run time (rows beyond the arrays saved at training): they have zero
popularity, no id embedding, no collaborative neighbours, and are described by content, genres
and year alone.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ranking.sequence import adjacent_scores, padded_rows

log = logging.getLogger(__name__)
PREFIX = "ranking/"

FEATURES: tuple[str, ...] = (
    "tt_score",  # two-tower dot product of user and candidate
    "tt_rank",  # log1p of the candidate's position by two-tower score within the user's list
    "content_mean",  # mean cosine of the candidate's content vector to the user's history
    "content_max",  # max cosine to any history item
    "content_liked",  # cosine weighted by the user's centred ratings of the history items
    "genre_affinity",  # user's genre distribution . candidate's genre distribution
    "tt_z",  # two-tower score standardised within the user's list
    "collab_z",  # item-item score (sum over history of W[history item, candidate]), standardised within the list
    "collab_rank",  # log1p of the candidate's position by the item-item score within the list
    "collab_liked_z",  # item-item score weighted by the user's centred ratings, standardised within the list
    "item_pop",  # log1p(number of training ratings)
    "item_mean",  # damped mean rating of the candidate
    "item_age",  # catalogue's newest year minus the movie's year (0 when unknown)
    "year_missing",  # 1 when the movie has no year
    "year_gap",  # movie year minus the mean year of the user's history
    "user_activity",  # log1p(history length)
    "user_mean",  # damped mean rating of the user
    "since_last",  # signed log1p of days from the user's last rating to the candidate's first rating
    "since_first",  # signed log1p of days from the user's first rating to the candidate's first rating
    "user_span",  # log1p of days between the user's first and last rating
    "adjacent_z",  # rating-order adjacency of the candidate to the history (ranking/sequence.py), standardised within the list
)
"""Dense pair features, in column order (user features, when present, follow them)."""

GROUPS: dict[str, tuple[str, ...]] = {
    "content": ("content_mean", "content_max", "content_liked", "genre_affinity", "year_gap"),
    "collab": ("collab_z", "collab_rank", "collab_liked_z"),
    "time": ("since_last", "since_first", "user_span", "adjacent_z"),
}
"""Named feature groups that an ablation can leave out (``RankingConfig.exclude``)."""

MAX_HISTORY = 256
"""Most recent history items the content features look at (their work is history x candidates x
content dimensions). The item-item scores read the whole history, as EASE does: cut to the last
256 ratings they scored ml-latest-small users (up to thousands of ratings each) below EASE itself."""


@dataclass
class FeatureContext:
    """Per-item and per-user arrays the features read, from one snapshot of the ratings.

    Training builds one from the earlier part of the data and serving one from all of it, so the
    same code sees "the past" in both cases.

    Args:
        content: (n_items, d) unit content vectors of the whole current catalogue.
        genres: (n_items, G) genre multi-hot of the whole current catalogue.
        years: (n_items,) release year, NaN when unknown.
        item_counts: (I0,) ratings per item in the snapshot (items beyond I0 count 0).
        item_mean: (I0,) damped mean rating per item.
        collab: (I0, I0) sparse item-item weights; row = history item, column = candidate.
        user_mean: (n_users,) damped mean rating per user.
        user_features: (n_users, F) encoded user features (zeros for unknown users).
        global_mean: mean rating of the snapshot (what unknown means default to).
        ref_year: newest release year in the catalogue (for ``item_age``).
        item_first_day: (I0,) day (unix days) of each item's first rating in the snapshot, NaN
            when it has none; None when the ratings carry no timestamps (the time features are 0).
        user_first_day, user_last_day: (n_users,) days of each user's first and last rating.
        ref_day: newest rating day of the snapshot: both days of a user the snapshot does not
            know, and the latest "first rating" given to an item nobody has rated yet.
        adjacent: (I0, I0) sparse rating-order adjacency (:func:`ranking.sequence.adjacency_matrix`);
            None without timestamps (the feature is 0).
    """

    content: np.ndarray
    genres: np.ndarray
    years: np.ndarray
    item_counts: np.ndarray
    item_mean: np.ndarray
    collab: sp.csr_matrix
    user_mean: np.ndarray
    user_features: np.ndarray
    global_mean: float
    ref_year: float
    item_first_day: np.ndarray | None = None
    user_first_day: np.ndarray | None = None
    user_last_day: np.ndarray | None = None
    ref_day: float = 0.0
    adjacent: sp.csr_matrix | None = None

    @property
    def n_user_features(self) -> int:
        return int(self.user_features.shape[1])

    @property
    def item_tables(self) -> ItemTables:
        """Per-item lookup tables of the catalogue, made once per context (see :class:`ItemTables`)."""
        cached = self.__dict__.get("_item_tables")
        if cached is None or cached.n_items != len(self.content):
            cached = ItemTables.build(self)
            self.__dict__["_item_tables"] = cached
        return cached

    @property
    def collab_covered(self) -> Covered:
        """``collab`` on the items it covers (see :class:`Covered`)."""
        return covered(self.collab)

    @property
    def collab_columns(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The covered block of ``collab`` by candidate column, padded to the longest column (see
        :func:`_padded_columns`)."""
        return _per_matrix(self.collab_covered.matrix, "columns", _padded_columns)


@dataclass
class ItemTables:
    """Per-item arrays of a context with one extra last row for "no item" (padding, or an index
    beyond the arrays), so one gather replaces a masked lookup per feature and request.

    Every value is the one the per-request code computed: content rows are float32 (zero in the
    extra row), genre rows are normalised to shares, years are float32 (NaN when unknown),
    ``static`` holds ``item_pop, item_mean, item_age, year_missing`` per item, and ``first_day``
    the day of its first rating (for an item without one, see :func:`_first_rating_days`;
    float64, as days since 1970 lose hours in float32).
    """

    n_items: int
    content: np.ndarray
    genres: np.ndarray
    genre_shares: np.ndarray
    years: np.ndarray
    static: np.ndarray
    first_day: np.ndarray

    @classmethod
    def build(cls, ctx: FeatureContext) -> ItemTables:
        n = len(ctx.content)
        idx = np.arange(n + 1)
        idx[n] = -1
        content = np.zeros((n + 1, ctx.content.shape[1]), np.float32)
        content[:n] = ctx.content
        genres = np.zeros((n + 1, ctx.genres.shape[1]), np.float32)
        m = min(n, len(ctx.genres))
        genres[:m] = ctx.genres[:m]
        shares = genres / np.maximum(genres.sum(1, keepdims=True), 1e-9)
        years = _gather(ctx.years, idx, np.nan)
        missing = np.isnan(years)
        static = np.stack(
            [
                np.log1p(_gather(ctx.item_counts.astype(np.float32), idx, 0.0)),
                _gather(ctx.item_mean, idx, ctx.global_mean),
                np.where(missing, 0.0, ctx.ref_year - years).astype(np.float32),
                missing.astype(np.float32),
            ],
            axis=1,
        )
        return cls(n, content, genres, shares.astype(np.float32), years, static, _first_rating_days(ctx, years))


DAYS_PER_YEAR = 365.2425


def _first_rating_days(ctx: FeatureContext, years: np.ndarray) -> np.ndarray:
    """Each item's first rating day, with one extra last row (``ref_day``). A movie the snapshot
    has no rating of was around since its release: it gets January 1 of its release year, held
    between the snapshot's first and newest days (``ref_day`` when the year is unknown). Giving
    every unrated movie the newest day made old movies stripped of their ratings look brand new
    and pulled the ranker away from content on cold movies."""
    n = len(years) - 1
    first = np.full(n + 1, ctx.ref_day, np.float64)
    if ctx.item_first_day is None:
        return first
    k = min(n, len(ctx.item_first_day))
    known = ctx.item_first_day[:k]
    oldest = float(np.nanmin(known)) if np.isfinite(known).any() else ctx.ref_day
    released = np.clip((years[:n].astype(np.float64) - 1970.0) * DAYS_PER_YEAR, oldest, ctx.ref_day)
    first[:n] = np.where(np.isnan(released), ctx.ref_day, released)
    first[:k] = np.where(np.isnan(known), first[:k], known)
    return first


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
"""Item-item matrices up to this many cells (~2,900 items; 64 MB) are also kept dense for the
whole-row products of large batches: sparse x dense is ~1.5x faster than sparse x sparse there."""


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


@dataclass
class PaddedHistories:
    """(n, L) history item_idx (-1 padded) and the user's centred rating of each (0 padded)."""

    items: np.ndarray
    centred: np.ndarray
    lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = (self.items >= 0).sum(1)


def pad_histories(
    histories: list[np.ndarray], ratings: list[np.ndarray | None], user_mean: np.ndarray, max_len: int | None = None
) -> PaddedHistories:
    """Pad the most recent ``max_len`` items of each history (all of them by default); ratings
    are centred on the user's mean (a history without ratings, e.g. a new user's liked movies,
    centres to 0)."""
    n = len(histories)
    lens = [len(h) if max_len is None else min(len(h), max_len) for h in histories]
    width = max(max(lens, default=0), 1)
    items = np.full((n, width), -1, dtype=np.int64)
    centred = np.zeros((n, width), dtype=np.float32)
    for i, (h, r, m, mu) in enumerate(zip(histories, ratings, lens, user_mean)):
        if m:  # one slice per user: cheaper than index arithmetic for a request, on par for a batch
            items[i, :m] = h[len(h) - m :]
            if r is not None:
                centred[i, :m] = np.asarray(r[len(h) - m :], np.float32) - mu
    return PaddedHistories(items, centred)


def _most_recent(hist: PaddedHistories, max_len: int) -> PaddedHistories:
    """The last ``max_len`` items of each padded history (left-aligned, as padded)."""
    if hist.items.shape[1] <= max_len:
        return hist
    start = np.maximum(hist.lengths - max_len, 0)[:, None]
    cols = start + np.arange(max_len)
    ok = cols < hist.lengths[:, None]
    cols = np.minimum(cols, hist.items.shape[1] - 1)
    items = np.where(ok, np.take_along_axis(hist.items, cols, 1), -1)
    centred = np.where(ok, np.take_along_axis(hist.centred, cols, 1), np.float32(0.0))
    return PaddedHistories(items, centred)


def _rank_within(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """log1p of each entry's 0-based position by descending score within its row."""
    s = np.where(valid, scores, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    rank = np.empty(order.shape, np.float32)
    rank[np.arange(len(s))[:, None], order] = np.log1p(np.arange(s.shape[1])).astype(np.float32)
    return rank


def _z_within(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Standardise each row over its valid entries.

    Raw item-item sums grow with history length and two-tower scores shift when the user vector
    pools a longer history; the ranker is trained on a shorter "past" snapshot than it serves
    from, so within-list standardised values keep train and serve features on one scale.
    """
    n = np.maximum(valid.sum(1, keepdims=True), 1)
    v = np.where(valid, values, 0.0)
    mean = v.sum(1, keepdims=True) / n
    var = (np.where(valid, values - mean, 0.0) ** 2).sum(1, keepdims=True) / n
    return np.where(valid, (values - mean) / np.sqrt(var + 1e-12), 0.0).astype(np.float32)


def _gather(values: np.ndarray, idx: np.ndarray, default: float) -> np.ndarray:
    """values[idx] where 0 <= idx < len(values), else ``default`` (padding, run-time items)."""
    ok = (idx >= 0) & (idx < len(values))
    out = np.full(idx.shape, default, dtype=np.float32)
    out[ok] = values[idx[ok]]
    return out


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
    # per entry a column read costs ~2x a row entry of the sparse product (measured on ML-100K);
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
    """

    cov: Covered
    plain: np.ndarray
    liked: np.ndarray

    @classmethod
    def of(cls, ctx: FeatureContext, hist: PaddedHistories, n_cand: int) -> CollabRows | None:
        """The rows of a batch's users, or None where :func:`compute_features` would not sum
        whole rows for ``n_cand`` candidates per user (a request, or candidate columns being
        cheaper): the features then keep their own path, so answers never depend on this."""
        n = len(hist.items)
        cov = ctx.collab_covered
        if n <= SMALL_BATCH or cov.m == 0:
            return None
        items = cov.map(hist.items)
        if _collab_plan(ctx, items, n_cand)[1]:
            return None
        plain, liked = _collab_dense(cov.matrix, items, hist.centred)
        return cls(cov, plain, liked)

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


def _content_scores(content: np.ndarray, hidx: np.ndarray, centred: np.ndarray, cidx: np.ndarray, chunk: int = 16) -> tuple[np.ndarray, ...]:
    """Mean, max and rating-weighted mean cosine of each candidate to the history items.

    ``content`` has a zero last row that ``hidx`` / ``cidx`` point at for padding and unknown
    items (see :class:`ItemTables`), so a padded history slot adds 0 and an unknown candidate
    scores 0. Numpy around one torch ``bmm``: a request pays a few microseconds per operation.
    """
    n, c = cidx.shape
    outs = [np.zeros((n, c), np.float32) for _ in range(3)]
    if n == 0:
        return tuple(outs)
    none = len(content) - 1
    filled = hidx != none
    # users in order of history extent, so each chunk is cut to its own longest history
    # instead of the batch's: fewer cosines of padding; small chunks keep the (chunk, C, L)
    # similarity block, which four reductions read, near the core's cache
    extent = np.where(filled.any(1), filled.shape[1] - np.argmax(filled[:, ::-1], 1), 0)
    by_len = np.argsort(extent, kind="stable") if n > chunk else None
    for s in range(0, n, chunk):
        rows = by_len[s : s + chunk] if by_len is not None else slice(None)
        width = int(extent[rows].max())
        hmask = filled[rows, :width]
        cnt = np.maximum(hmask.sum(1), 1).astype(np.float32)[:, None]
        cv, hv = torch.from_numpy(content[cidx[rows]]), torch.from_numpy(content[hidx[rows, :width]])
        sim = torch.bmm(cv, hv.transpose(1, 2)).numpy()  # (b, C, L); numpy's stacked matmul skips BLAS
        outs[0][rows] = sim.sum(2) / cnt
        if width:
            mx = np.where(hmask[:, None, :], sim, np.float32(-1.0)).max(2)
            outs[1][rows] = np.where(hmask.any(1)[:, None], mx, np.float32(0.0))
        outs[2][rows] = (sim * centred[rows, None, :width]).sum(2) / cnt
    return tuple(outs)


def compute_features(
    ctx: FeatureContext,
    users: np.ndarray,
    hist: PaddedHistories,
    cand: np.ndarray,
    cand_scores: np.ndarray,
    collab: CollabRows | None = None,
    active: np.ndarray | None = None,
) -> np.ndarray:
    """Dense features of every (user, candidate) pair of a batch.

    Args:
        ctx: arrays of the snapshot the features describe.
        users: (n,) user_idx; -1 (or beyond ``ctx``) is a user the model has not seen.
        hist: the users' padded histories (see :func:`pad_histories`).
        cand: (n, C) candidate item_idx, -1 = padding.
        cand_scores: (n, C) two-tower scores of the candidates.
        collab: these users' item-item rows when already computed (:meth:`CollabRows.of` with
            ``hist`` and ``C``); the same numbers as without.
        active: (n,) True where the user has rated since the snapshot (live feedback): their
            last rating day is then the snapshot's newest day, not the one it recorded.

    Returns:
        (n, C, len(FEATURES) + F) float32 in :data:`FEATURES` order then user features; padding
        rows hold zeros. Raw values (normalisation is the ranker's job); NaN is possible only
        when an input carries NaN, and the ranker replaces it.
    """
    users = np.asarray(users, dtype=np.int64)
    cand = np.asarray(cand, dtype=np.int64)
    n, c = cand.shape
    valid = cand >= 0
    scores = np.where(valid, np.asarray(cand_scores, dtype=np.float32), 0.0)
    known = (users >= 0) & (users < len(ctx.user_mean))
    safe_users = np.where(known, users, 0)
    tab = ctx.item_tables
    none = tab.n_items  # the tables' extra row: padding and indices beyond the catalogue
    cidx = np.where(valid & (cand < none), cand, none)
    hidx = np.where((hist.items >= 0) & (hist.items < none), hist.items, none)

    tt_rank = _rank_within(scores, valid)
    recent = _most_recent(hist, MAX_HISTORY)
    ridx = np.where((recent.items >= 0) & (recent.items < none), recent.items, none)
    c_mean, c_max, c_liked = _content_scores(tab.content, ridx, recent.centred, cidx)

    # genre affinity: share of the user's history in each genre . candidate's genre shares
    hg = tab.genres[hidx].sum(1)
    hg /= np.maximum(hg.sum(1, keepdims=True), 1e-9)
    genre_aff = np.einsum("ncg,ng->nc", tab.genre_shares[cidx], hg)

    collab, collab_liked = collab.at(cand) if collab is not None else _collab_scores(ctx, hist, cand)
    collab_rank = _rank_within(collab, valid)
    finite = valid & np.isfinite(scores)
    tt_z = _z_within(np.where(finite, scores, 0.0), finite)

    years = tab.years[cidx]
    missing = np.isnan(years)
    hy = tab.years[hidx]
    hy_ok = ~np.isnan(hy)
    user_year = np.where(hy_ok.any(1), np.where(hy_ok, hy, 0.0).sum(1) / np.maximum(hy_ok.sum(1), 1), np.nan)
    year_gap = np.where(missing | np.isnan(user_year)[:, None], 0.0, years - user_year[:, None]).astype(np.float32)

    user_mean = np.where(known, ctx.user_mean[safe_users], ctx.global_mean).astype(np.float32)
    activity = np.log1p(hist.lengths).astype(np.float32)
    since_last, since_first, span = _time_features(ctx, tab, known, safe_users, cidx, active)
    adjacent = (
        adjacent_scores(adjacent_rows(ctx.adjacent), hist.items, cand)
        if ctx.adjacent is not None
        else np.zeros((n, c), np.float32)
    )

    static = tab.static[cidx]  # per-item columns, see ItemTables
    cols = {
        "tt_score": scores, "tt_rank": tt_rank, "content_mean": c_mean, "content_max": c_max, "content_liked": c_liked,
        "genre_affinity": genre_aff, "tt_z": tt_z, "collab_z": _z_within(collab, valid), "collab_rank": collab_rank,
        "collab_liked_z": _z_within(collab_liked, valid),
        "item_pop": static[..., 0], "item_mean": static[..., 1], "item_age": static[..., 2], "year_missing": static[..., 3],
        "year_gap": year_gap, "user_activity": activity[:, None], "user_mean": user_mean[:, None],
        "since_last": since_last, "since_first": since_first, "user_span": span[:, None],
        "adjacent_z": _z_within(adjacent, valid),
    }  # fmt: skip
    if len(cols) != len(FEATURES):
        raise RuntimeError(f"compute_features computes {sorted(cols)} but FEATURES lists {sorted(FEATURES)}")
    out = np.empty((n, c, len(FEATURES) + ctx.n_user_features), dtype=np.float32)
    uf = np.where(known[:, None], ctx.user_features[safe_users], 0.0) if ctx.n_user_features else None
    # filled a block of users at a time: each column write is strided over the whole block, so
    # a block that stays in cache is written once to memory instead of once per column
    step = max(1, (1 << 18) // max(c * out.shape[2], 1))
    for s in range(0, n, step):
        e = min(n, s + step)
        block = out[s:e]
        for j, name in enumerate(FEATURES):
            block[:, :, j] = cols[name][s:e]
        if uf is not None:
            block[:, :, len(FEATURES) :] = uf[s:e, None, :]
        block[~valid[s:e]] = 0.0
    return out


def _signed_log_days(days: np.ndarray) -> np.ndarray:
    return (np.sign(days) * np.log1p(np.abs(days))).astype(np.float32)


def _time_features(
    ctx: FeatureContext, tab: ItemTables, known: np.ndarray, safe_users: np.ndarray, cidx: np.ndarray, active: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The user's timeline against the candidate's: days from the user's last and first rating to
    the candidate's first rating (a movie first rated after the user's last rating was likely
    not around while the user was), and the user's span of days. Days, not ranks: the same
    gap means the same on every catalogue. Zeros when the ratings carry no timestamps."""
    n, c = cidx.shape
    if ctx.item_first_day is None or ctx.user_first_day is None or ctx.user_last_day is None:
        return np.zeros((n, c), np.float32), np.zeros((n, c), np.float32), np.zeros(n, np.float32)
    first = np.where(known, ctx.user_first_day[safe_users], ctx.ref_day)
    last = np.where(known, ctx.user_last_day[safe_users], ctx.ref_day)
    if active is not None:
        last = np.where(active, ctx.ref_day, last)
    item_first = tab.first_day[cidx]
    return (
        _signed_log_days(item_first - last[:, None]),
        _signed_log_days(item_first - first[:, None]),
        np.log1p(np.maximum(last - first, 0.0)).astype(np.float32),
    )


def feature_names(n_user_features: int) -> list[str]:
    return list(FEATURES) + [f"user_feature_{i}" for i in range(n_user_features)]


def damped_means(
    idx: np.ndarray, ratings: np.ndarray, n: int, global_mean: float, damping: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """(counts, damped mean) per index: ``(sum + damping * global_mean) / (count + damping)``."""
    counts = np.bincount(idx, minlength=n).astype(np.float64)
    sums = np.bincount(idx, weights=ratings.astype(np.float64), minlength=n)
    return counts, ((sums + damping * global_mean) / (counts + damping)).astype(np.float32)
