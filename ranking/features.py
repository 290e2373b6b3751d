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
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ranking.collab_matrix import Covered, _padded_columns, _per_matrix, adjacent_rows, covered
from ranking.collab_scores import CollabRows, _collab_scores
from ranking.padding import PaddedHistories, _most_recent
from ranking.sequence import adjacent_scores

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

PER_USER: tuple[str, ...] = ("user_activity", "user_mean", "user_span")
"""Dense features with one value per user, the same for all of the user's candidates (as are
the user features after them)."""


def user_columns(columns: np.ndarray) -> list[int]:
    """Positions in ``columns`` (indices into :func:`feature_names`) of the per-user features."""
    return [j for j, c in enumerate(np.asarray(columns).tolist()) if c >= len(FEATURES) or FEATURES[c] in PER_USER]


GROUPS: dict[str, tuple[str, ...]] = {
    "content": ("content_mean", "content_max", "content_liked", "genre_affinity", "year_gap"),
    "collab": ("collab_z", "collab_rank", "collab_liked_z"),
    "time": ("since_last", "since_first", "user_span", "adjacent_z"),
}
"""Named feature groups that an ablation can leave out (``RankingConfig.exclude``)."""

MAX_HISTORY = 256
"""Most recent history items the content features look at (their work is history x candidates x
content dimensions). The item-item scores read the whole history, as EASE does: cut short, they
scored users with thousands of ratings below EASE itself."""


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
    if valid.all():  # a request's list (compacted, no padding): the same operations less the masks
        n = np.full((len(values), 1), values.shape[1])
        mean = values.sum(1, keepdims=True) / n
        d = values - mean
        return (d / np.sqrt((d**2).sum(1, keepdims=True) / n + 1e-12)).astype(np.float32)
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
    if n == 1:  # a request: one plain matrix product (BLAS), no stacking
        width = int(np.flatnonzero(filled[0])[-1]) + 1 if filled[0].any() else 0
        if width == 0:
            return tuple(outs)
        hmask = filled[0, :width]
        cnt = np.float32(max(int(hmask.sum()), 1))
        sim = content[cidx[0]] @ content[hidx[0, :width]].T  # (C, L)
        outs[0][0] = sim.sum(1) / cnt
        outs[1][0] = (sim if hmask.all() else np.where(hmask, sim, np.float32(-1.0))).max(1)
        outs[2][0] = (sim * centred[0, :width]).sum(1) / cnt
        return tuple(outs)
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
    adjacent = _adjacent(ctx.adjacent, hist.items, cand) if ctx.adjacent is not None else np.zeros((n, c), np.float32)

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


ADJACENT_COLUMNS_MAX = 1 << 22
"""Adjacency weights up to which a by-column copy is kept for requests (:func:`_adjacent`); a
larger matrix is read by rows only, so a large catalogue does not hold the weights twice in
every worker."""


def adjacent_columns(adjacent: sp.csr_matrix) -> sp.csc_matrix | None:
    """The rating-order adjacency by column (history movie), made once per matrix; None past
    :data:`ADJACENT_COLUMNS_MAX` weights."""
    if adjacent.nnz > ADJACENT_COLUMNS_MAX:
        return None
    return _per_matrix(adjacent, "adjacent_columns", sp.csc_matrix)


def _adjacent(adjacent: sp.csr_matrix, hist_items: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """:func:`~ranking.sequence.adjacent_scores` of the padded histories; for a request whose
    history's columns hold fewer weights than its candidates' rows (a few liked movies against
    a list of candidates), the sums are read from those columns: the same weights, a fraction
    of the memory read."""
    padded = adjacent_rows(adjacent)
    n, c = cand.shape
    cols = adjacent_columns(adjacent) if n == 1 and c else None
    if cols is not None:
        i0 = adjacent.shape[0]
        h = hist_items[0]
        h = np.unique(h[(h >= 0) & (h < i0)])  # a movie held twice counts once, as in adjacent_scores
        starts = cols.indptr[h]
        lengths = cols.indptr[h + 1] - starts
        total = int(lengths.sum())
        if total <= c * padded[0].shape[1]:
            pos = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths - starts, lengths)
            # (astype: bincount returns int64 for empty input even with weights)
            dense = np.bincount(cols.indices[pos], weights=cols.data[pos], minlength=i0 + 1).astype(np.float32)
            return dense[np.where((cand >= 0) & (cand < i0), cand, i0)]
    return adjacent_scores(padded, hist_items, cand)


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
