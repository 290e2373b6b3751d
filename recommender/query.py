"""The one query path: every recommendation is a batch of queries answered by :func:`recommend`.

An HTTP request is a batch of one; batch candidates, evaluation, tuning, comparisons, the demo
and the report send many. Each query is a query vector plus what the ranker and the
explanations read about the user (history, ratings) and what must not come back (exclusions,
filters). The order of an answer:

1. retrieval: the top of the two-tower scores among allowed, non-excluded movies (the filters
   apply before the cut, so a strict filter still yields ``k`` movies when ``k`` qualify);
2. when the ranker runs: the item-item candidates merged in, then the ranker's order;
3. a query left with nothing while movies remain gets the most-rated ones;
4. optional diversity (MMR over a larger pool) and explanations.

Retrieval is exact over a flat index of up to :data:`EXACT_SCAN_ITEMS` movies (a batch of one is
scanned here, a larger batch by the index's blocked product); an approximate index, and the
IVF index big batches over a large catalogue use (``RetrievalModel.search``), can differ from
the exact top-k.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from movierec.core.popularity import most_popular
from ranking.collab_scores import merge_candidates
from recommender.diversity import mmr
from recommender.explain import explain as explain_items

if TYPE_CHECKING:
    from ranking.runtime import Ranker
    from recommender.model import HybridRecommender

EXACT_SCAN_ITEMS = 20_000
"""Up to this many movies, one query over an exact (flat) index is a product with the item
vectors and a partial sort here: the same top-k as the index's search without the search
call's set-up, exclusion and compaction."""

_NO_ITEMS = np.zeros(0, np.int64)


@dataclass
class Filters:
    """Restrictions on what may be recommended; ``None`` fields do not restrict."""

    genres: list[str] | None = None
    year_min: int | None = None
    year_max: int | None = None
    exclude_items: list[Any] | None = None

    def active(self) -> bool:
        return bool(self.genres) or self.year_min is not None or self.year_max is not None

    def key(self) -> tuple:
        """A hashable form (the answer cache's key)."""
        if not self.active() and not self.exclude_items:
            return ()
        return (tuple(self.genres or ()), self.year_min, self.year_max, tuple(str(i) for i in self.exclude_items or ()))


@dataclass
class Recommendations:
    """Ranked item_idx and scores for one query, best first."""

    item_idx: np.ndarray
    scores: np.ndarray


@dataclass
class Queries:
    """A batch of queries.

    Attributes:
        users: (n,) user rows; -1 for a query described only by liked movies.
        histories: each query's movies, oldest first: the user's history or the liked movies
            (what the ranker's features, the item-item candidates and explanations read).
        ratings: the ratings of each history when known (live feedback included), else None.
        vectors: (n, d) query vectors.
        exclude: each query's item rows that never come back (seen movies, excluded ids).
        allowed: boolean mask over the catalogue of what the filters let through (None: all).
        liked: the histories are liked-movie lists rather than rated histories.
    """

    users: np.ndarray
    histories: list[np.ndarray]
    ratings: list[np.ndarray | None]
    vectors: np.ndarray
    exclude: list[np.ndarray]
    allowed: np.ndarray | None = None
    liked: bool = False

    def __len__(self) -> int:
        return len(self.users)

    def part(self, start: int, stop: int) -> Queries:
        s = slice(start, stop)
        return Queries(self.users[s], self.histories[s], self.ratings[s], self.vectors[s], self.exclude[s], self.allowed, self.liked)


@dataclass
class Answer:
    """Answers to a batch of queries, best first: (n, w) item rows and scores, padded with -1 and
    -inf (``w`` is at most ``k``), and the explanations when asked for."""

    item_idx: np.ndarray
    scores: np.ndarray
    because: list[list[list[dict[str, object]]]] | None = field(default=None)

    def row(self, i: int) -> Recommendations:
        """Query ``i``'s answer without the padding."""
        ids, scores = self.item_idx[i], self.scores[i]
        n = int((ids >= 0).sum())  # valid entries come first
        return Recommendations(ids[:n], scores[:n])


# ---- building queries -------------------------------------------------------------------------
def allowed_items(model: HybridRecommender, filters: Filters | None) -> np.ndarray | None:
    """Boolean mask of items that pass the filters, or None when nothing is filtered."""
    if filters is None or not filters.active():
        return None
    n = model.n_items
    mask = np.ones(n, dtype=bool)
    if filters.genres:
        vocab = model.genre_vocab
        wanted = [vocab.index(g) for g in filters.genres if g in vocab]
        genres = model.retrieval.item_genres  # (n_items, G) genre indicators: one vectorised test
        if len(wanted) == len(filters.genres) and len(genres) == n:
            mask &= np.asarray(genres[:, wanted] > 0).any(axis=1)
        else:  # a genre outside the vocabulary: read the item table
            named = set(filters.genres)
            mask &= np.fromiter((bool(named.intersection(g)) for g in model.items["genres"]), bool, n)
    years = model.items["year"]
    if filters.year_min is not None:
        mask &= (years >= filters.year_min).fillna(False).to_numpy(bool)
    if filters.year_max is not None:
        mask &= (years <= filters.year_max).fillna(False).to_numpy(bool)
    return mask


def exclusions(model: HybridRecommender, seen: np.ndarray, filters: Filters | None) -> np.ndarray:
    """``seen`` plus the filters' excluded ids (unknown or mistyped ids exclude nothing)."""
    extra = []
    if filters is not None and filters.exclude_items:
        for item_id in filters.exclude_items:
            pos = model.item_ids.get(item_id)
            if pos >= 0:
                extra.append(pos)
    return np.unique(np.concatenate([seen, np.asarray(extra, dtype=np.int64)])) if extra else seen


def user_queries(
    model: HybridRecommender, users: np.ndarray, exclude_seen: bool = True, filters: Filters | None = None
) -> Queries:
    """Queries of known users (rows), from one consistent snapshot of their live state."""
    users = np.asarray(users, dtype=np.int64)
    with model.lock:
        histories = [model.histories.of(int(u)) for u in users]
        ratings = [model.histories.ratings_of(int(u)) for u in users]
        vectors = np.array(model.user_vectors[users], dtype=np.float32)
        allowed = allowed_items(model, filters)
    exclude = [exclusions(model, h if exclude_seen else _NO_ITEMS, filters) for h in histories]
    return Queries(users, histories, ratings, vectors, exclude, allowed)


def liked_queries(model: HybridRecommender, liked: list[np.ndarray], filters: Filters | None = None) -> Queries:
    """Queries of new users described by liked movies (item rows, repeats allowed): the user
    tower pools them, nothing is trained; the liked movies never come back."""
    liked = [np.asarray(x, dtype=np.int64) for x in liked]
    d = model.user_vectors.shape[1]
    vectors = np.stack([model.encode_liked(x) for x in liked]).astype(np.float32) if liked else np.zeros((0, d), np.float32)
    exclude = [exclusions(model, np.unique(x), filters) for x in liked]
    users = np.full(len(liked), -1, dtype=np.int64)
    return Queries(users, liked, [None] * len(liked), vectors, exclude, allowed_items(model, filters), liked=True)


# ---- answering ----------------------------------------------------------------------------------
def diversity_pool(k: int, diversity: float, n_items: int) -> int:
    """How many to rank: ``k``, or a larger pool when diversity re-ranking picks from it."""
    return k if diversity <= 0 else min(max(3 * k, 50), n_items)


def diversify(
    model: HybridRecommender, item_idx: np.ndarray, scores: np.ndarray, k: int, diversity: float
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` of one ranked list (from a pool of :func:`diversity_pool` items), picked by
    MMR when ``diversity`` > 0; scores made finite (NaN and infinities become 0)."""
    idx, s = item_idx, np.where(np.isfinite(scores), scores, np.zeros((), scores.dtype))  # nan_to_num's result, at a fraction of its cost
    if diversity > 0 and len(idx) > 1:
        order = mmr(idx, s, model.retrieval.item_vectors[idx], k, diversity)
        idx, s = idx[order], s[order]
    return idx[:k], s[:k]


def recommend(
    model: HybridRecommender,
    queries: Queries,
    k: int,
    rank: bool = True,
    diversity: float = 0.0,
    explain: bool = False,
) -> Answer:
    """Top-``k`` for every query of the batch (see the module's description for the order).

    Args:
        k: list length.
        rank: let the bundle's ranker re-order the candidates (when it has one).
        diversity: 0 keeps the ranked order; above, MMR picks ``k`` of a larger pool
            (:func:`recommender.diversity.mmr`), scores made finite.
        explain: add, per recommended movie, the history movies most like it.
    """
    if diversity > 0:
        ans = _ranked(model, queries, diversity_pool(k, diversity, model.n_items), rank)
        ids = np.full((len(queries), min(k, ans.item_idx.shape[1])), -1, np.int64)
        scores = np.full(ids.shape, -np.inf, np.float32)
        for r in range(len(queries)):
            row = ans.row(r)
            idx, s = diversify(model, row.item_idx, row.scores, k, diversity)
            ids[r, : len(idx)], scores[r, : len(idx)] = idx, s
        ans = Answer(ids, scores)
    else:
        ans = _ranked(model, queries, k, rank)
    if explain:
        verb = "liked" if queries.liked else "rated"
        ans.because = [
            explain_items(model, h, r, ans.row(i).item_idx, verb=verb)
            for i, (h, r) in enumerate(zip(queries.histories, queries.ratings))
        ]
    return ans


def _ranked(model: HybridRecommender, queries: Queries, k: int, rank: bool) -> Answer:
    """Retrieval, item-item merge, rerank and the popularity fallback, in steps of a bounded size."""
    ranker = model.ranker if rank else None
    n = len(queries)
    step = ranker.batch_users if ranker is not None else max(n, 1)
    if n > step:  # ranked steps of a bounded size (their item-item rows are dense)
        parts = [_ranked(model, queries.part(s, s + step), k, rank) for s in range(0, n, step)]
        return Answer(np.concatenate([p.item_idx for p in parts]), np.concatenate([p.scores for p in parts]))
    pool = k if ranker is None else max(k, ranker.n_candidates)
    ids, scores = retrieve(model, queries.vectors, pool, queries.exclude, queries.allowed)
    if ranker is not None:
        inputs = model.rank_inputs()
        rows = None
        n_extra = ranker.n_collab_candidates
        if n_extra:
            # one item-item product for both the extra candidates and the features, when the
            # features would sum whole rows anyway
            rows = ranker.collab_rows(inputs, queries.users, queries.histories, ids.shape[1] + n_extra, queries.ratings)
            if rows is not None:
                extra = rows.top(queries.exclude, n_extra)
            else:
                recent = [h[-model.history_limit :] for h in queries.histories]
                extra = ranker.collab_candidates(recent, queries.exclude)
            if queries.allowed is not None:
                extra = np.where((extra >= 0) & queries.allowed[np.maximum(extra, 0)], extra, -1)
            ids, scores = _merged(model, queries.vectors, ids, scores, extra)
            width = int((ids >= 0).sum(1).max()) if len(ids) else 0  # valid entries are compacted to the front
            ids, scores = ids[:, :width], scores[:, :width]
        ranked = ranker.rerank(inputs, queries.users, queries.histories, ids, scores, queries.ratings, rows)
        ranked = np.where(ids >= 0, ranked, -np.inf)
        order = np.argsort(-ranked, axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, 1)
        scores = np.take_along_axis(ranked, order, 1).astype(np.float32)
    ids, scores = ids[:, :k], scores[:, :k]
    empty = np.flatnonzero(~(ids >= 0).any(1))  # nothing left while movies may remain
    if len(empty) and (queries.allowed is None or queries.allowed.any()):
        width = min(k, model.n_items)
        if ids.shape[1] < width:
            ids = np.pad(ids, ((0, 0), (0, width - ids.shape[1])), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, width - scores.shape[1])), constant_values=-np.inf)
        for r in empty:
            fallback = _popular(model, width, queries.exclude[r], queries.allowed)
            n = len(fallback.item_idx)
            ids[r, :n], scores[r, :n] = fallback.item_idx, fallback.scores
    return Answer(ids, scores)


def _merged(
    model: HybridRecommender, vectors: np.ndarray, ids: np.ndarray, scores: np.ndarray, extra: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The retrieved lists with the item-item candidates appended (as in the ranker's training);
    the appended ones get their two-tower score."""
    merged = merge_candidates(ids, extra, model.n_items)
    safe = np.where(merged >= 0, merged, 0)
    out = np.einsum("nkd,nd->nk", model.retrieval.item_vectors[safe], vectors).astype(np.float32)
    w = ids.shape[1]
    out[:, :w] = np.where(ids >= 0, scores, out[:, :w])  # the retrieved lists stay in front, as retrieved
    out[merged < 0] = -np.inf
    return merged, out


def retrieve(
    model: HybridRecommender, vectors: np.ndarray, k: int, exclude: list[np.ndarray], allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(n, w) top two-tower items among allowed, non-excluded ones, best first, -1 / -inf padded
    (``w`` at most ``min(k, n_items)``)."""
    retrieval = model.retrieval
    item_vectors = retrieval.item_vectors
    n, width = len(vectors), min(k, model.n_items)
    exact = n == 1 and retrieval.index.kind == "flat" and len(item_vectors) <= EXACT_SCAN_ITEMS
    if allowed is None and not exact:
        return retrieval.search(vectors, width, exclude)
    if allowed is None:  # one query: no padding to add
        got = _exact_scan(item_vectors, vectors[0], width, exclude[0])
        return got.item_idx[None, :], got.scores[None, :]
    ids = np.full((n, width), -1, dtype=np.int64)
    scores = np.full((n, width), -np.inf, dtype=np.float32)
    allowed_rows = np.flatnonzero(allowed)
    for r in range(n):  # strict filters: score only the qualifying items, so k come back whenever k qualify
        cand = allowed_rows[~np.isin(allowed_rows, exclude[r])]
        s = item_vectors[cand] @ vectors[r]
        order = np.argsort(-s, kind="stable")[:width]
        ids[r, : len(order)], scores[r, : len(order)] = cand[order], s[order]
    return ids, scores


def _exact_scan(item_vectors: np.ndarray, query: np.ndarray, k: int, exclude: np.ndarray) -> Recommendations:
    scores = item_vectors @ query
    scores[exclude] = -np.inf
    n = min(k, len(scores) - len(np.unique(exclude)) if len(exclude) else len(scores))
    if n <= 0:
        return Recommendations(_NO_ITEMS, np.zeros(0, np.float32))
    top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return Recommendations(top.astype(np.int64), scores[top].astype(np.float32))


def _popular(model: HybridRecommender, k: int, exclude: np.ndarray, allowed: np.ndarray | None) -> Recommendations:
    """Fallback order when a query carries no signal: most rated first."""
    idx, score = most_popular(model.item_counts, model.n_items, k, exclude, allowed)
    return Recommendations(idx, score)


# ---- ratings ----------------------------------------------------------------------------------
RATE_USERS = 256
"""Users whose pairs the ranker's rating head rates per step."""


def rate_pairs(model: HybridRecommender, users: np.ndarray, items: np.ndarray, ranker: Ranker | None = None) -> np.ndarray:
    """The ranker's rating-head predictions for (user row, item row) pairs, on the data's scale.

    Each user's pairs are rated inside the user's retrieval candidate list (the pairs first,
    then the top of the retrieval order without them), the context the head was trained in.
    A user row the model does not have is rated with an empty history. ``ranker``: another
    ranker than the model's own (comparisons).
    """
    ranker = ranker if ranker is not None else model.ranker
    if ranker is None:
        raise ValueError("this bundle has no ranker")
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    out = np.full(len(users), float(ranker.meta["global_mean"]), dtype=np.float32)
    if not len(users):
        return out
    order = np.argsort(users, kind="stable")
    su, si = users[order], items[order]
    bounds = np.flatnonzero(np.diff(su)) + 1
    groups = np.split(np.arange(len(su)), bounds)
    uniq = su[np.r_[0, bounds]]
    inputs = model.rank_inputs()
    item_vectors = model.retrieval.item_vectors
    for s in range(0, len(uniq), RATE_USERS):
        ub, gb = uniq[s : s + RATE_USERS], groups[s : s + RATE_USERS]
        known = (ub >= 0) & (ub < len(model.user_vectors))
        hists = [model.histories.of(int(u)) if kn else _NO_ITEMS for u, kn in zip(ub, known)]
        ratings = [model.histories.ratings_of(int(u)) if u >= 0 else None for u in ub]
        qv = model.user_vectors[np.where(known, ub, 0)]
        ids, _ = retrieve(model, qv, ranker.n_candidates, hists, None)
        rows = []
        for r, g in enumerate(gb):
            pairs = si[g]
            base = ids[r][(ids[r] >= 0) & ~np.isin(ids[r], pairs)]
            rows.append(np.concatenate([pairs, base]))
        cand = np.full((len(ub), max(len(x) for x in rows)), -1, dtype=np.int64)
        for r, x in enumerate(rows):
            cand[r, : len(x)] = x
        cs = np.einsum("nd,ncd->nc", qv, item_vectors[np.where(cand >= 0, cand, 0)]).astype(np.float32)
        rating = ranker.rate(inputs, ub, hists, cand, cs, ratings)
        for r, g in enumerate(gb):
            out[order[g]] = rating[r, : len(g)]
    return out
