"""The final recommender that a bundle loads into: retrieval, content, ranker and catalogue.

:class:`HybridRecommender` is the one object the CLI queries, the batch candidate job and the
HTTP service share. It speaks outside ids (as in the data) at its surface and internal indices
inside. It imports only plain modules (no Lightning, no scikit-learn fitting), so serving can
load it.

Order of a recommendation: two-tower retrieval (filters applied before the cut, so a strict
filter still yields ``k`` items when ``k`` qualify) -> the ranker re-scores the candidates when
the bundle has one -> optional diversity re-ranking.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from content import ContentSimilarity
from movierec.artifacts import Bundle, load_bundle
from movierec.data import to_plain
from movierec.index import normalize
from ranking.features import merge_candidates
from retrieval.candidates import RetrievalModel

log = logging.getLogger(__name__)

SimilarBy = Literal["hybrid", "content", "collaborative"]


class UnknownIdError(KeyError):
    """An outside user or item id the model does not know (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown id"


@dataclass
class Filters:
    """Restrictions on what may be recommended; ``None`` fields do not restrict."""

    genres: list[str] | None = None
    year_min: int | None = None
    year_max: int | None = None
    exclude_items: list[Any] | None = None

    def active(self) -> bool:
        return bool(self.genres) or self.year_min is not None or self.year_max is not None


@dataclass
class Recommendations:
    """Ranked item_idx and scores for one query, best first."""

    item_idx: np.ndarray
    scores: np.ndarray


class HybridRecommender:
    """Everything needed to answer recommendation and similarity queries for one bundle."""

    def __init__(
        self,
        bundle: Bundle,
        items: pd.DataFrame,
        user_ids: np.ndarray,
        content: ContentSimilarity,
        retrieval: RetrievalModel,
        item_counts: np.ndarray,
        ranker: Any | None = None,
        rating_model: Any | None = None,
    ) -> None:
        self.bundle = bundle
        self.items = items.reset_index(drop=True)
        self.user_ids = np.asarray(user_ids)
        self._user_pos = pd.Index(self.user_ids)
        self._item_pos = pd.Index(self.items["item_id"].to_numpy())
        self.content = content
        self.retrieval = retrieval
        self.item_counts = np.asarray(item_counts, dtype=np.int64)
        self.ranker = ranker
        self.rating_model = rating_model  # ranking.rating.RatingModel: P1 rating predictions
        self.genre_vocab: list[str] = list(retrieval.hparams.get("genres", []))
        self._lock = threading.RLock()
        self.cache_users = 50_000
        self._cache: dict[int, dict[tuple, Recommendations]] = {}
        self._title_lower = self.items["title"].str.lower().to_numpy()
        if len(self.items) != retrieval.n_items or len(self.items) != content.n_items:
            raise ValueError(
                f"{bundle.path}: item table has {len(self.items)} rows but retrieval has {retrieval.n_items} "
                f"and content {content.n_items} items"
            )

    # ---- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "HybridRecommender":
        """Load and verify a bundle (checksums, shapes); executes nothing from it."""
        bundle = load_bundle(path, verify=verify)
        items = bundle.frame("items.parquet")
        items["genres"] = [list(g) if g is not None else [] for g in items["genres"]]
        items["year"] = pd.to_numeric(items["year"], errors="coerce").astype("Int64")
        users = bundle.frame("users.parquet")
        content = ContentSimilarity.load(bundle)
        retrieval = RetrievalModel.load(bundle)
        ranker = None
        if bundle.has("ranking/meta.json"):
            from ranking.runtime import load_ranker

            ranker = load_ranker(bundle)
        rating_model = None
        if bundle.has("rating/meta.json"):
            from ranking.rating import load_rating_model

            rating_model = load_rating_model(bundle)
        return cls(bundle, items, users["user_id"].to_numpy(), content, retrieval, bundle.array("item_counts.npy"), ranker,
                   rating_model)

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    @property
    def n_items(self) -> int:
        return len(self.items)

    # ---- id maps ----------------------------------------------------------------------------------
    def user_idx(self, user_id: Any) -> int:
        pos = self._user_pos.get_indexer([_coerce_id(user_id, self.user_ids)])[0]
        if pos < 0:
            raise UnknownIdError(f"unknown user_id {user_id!r}")
        return int(pos)

    def item_idx(self, item_id: Any) -> int:
        pos = self._item_pos.get_indexer([_coerce_id(item_id, self._item_pos.to_numpy())])[0]
        if pos < 0:
            raise UnknownIdError(f"unknown item_id {item_id!r}")
        return int(pos)

    def item_records(self, idx: np.ndarray, scores: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Rows of the item table as plain dicts (for JSON)."""
        out = []
        for j, i in enumerate(np.asarray(idx)):
            if i < 0:
                continue
            row = self.items.iloc[int(i)]
            rec = {
                "item_id": to_plain(row["item_id"]),
                "title": row["title"],
                "year": None if pd.isna(row["year"]) else int(row["year"]),
                "genres": list(row["genres"]),
            }
            if scores is not None:
                rec["score"] = float(scores[j])
            out.append(rec)
        return out

    # ---- recommendations -----------------------------------------------------------------------
    def _allowed(self, filters: Filters | None) -> np.ndarray | None:
        """Boolean mask of items that pass the filters, or None when nothing is filtered."""
        if filters is None or not filters.active():
            return None
        mask = np.ones(self.n_items, dtype=bool)
        if filters.genres:
            wanted = set(filters.genres)
            mask &= np.fromiter((bool(wanted.intersection(g)) for g in self.items["genres"]), bool, self.n_items)
        years = self.items["year"]
        if filters.year_min is not None:
            mask &= (years >= filters.year_min).fillna(False).to_numpy(bool)
        if filters.year_max is not None:
            mask &= (years <= filters.year_max).fillna(False).to_numpy(bool)
        return mask

    def _exclusions(self, seen: np.ndarray, filters: Filters | None) -> np.ndarray:
        extra = []
        if filters is not None and filters.exclude_items:
            for item_id in filters.exclude_items:
                try:
                    extra.append(self.item_idx(item_id))
                except UnknownIdError:
                    continue
        return np.unique(np.concatenate([seen, np.asarray(extra, dtype=np.int64)])) if extra else seen

    def _retrieve(self, query: np.ndarray, k: int, exclude: np.ndarray, allowed: np.ndarray | None) -> Recommendations:
        """Top-k by the two-tower score among allowed, non-excluded items."""
        if allowed is None:
            ids, s = self.retrieval.search(query[None, :], k, [exclude])
            return Recommendations(ids[0][ids[0] >= 0], s[0][ids[0] >= 0])
        # strict filters: score only the qualifying items, so k come back whenever k qualify
        cand = np.flatnonzero(allowed)
        cand = cand[~np.isin(cand, exclude)]
        scores = self.retrieval.item_vectors[cand] @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return Recommendations(cand[order], scores[order].astype(np.float32))

    def _finish(
        self,
        user: int,
        history: np.ndarray,
        query: np.ndarray,
        k: int,
        exclude: np.ndarray,
        allowed: np.ndarray | None,
        rank: bool,
    ) -> Recommendations:
        use_ranker = rank and self.ranker is not None
        pool = k if not use_ranker else max(k, self.ranker.n_candidates)
        recs = self._retrieve(query, pool, exclude, allowed)
        if use_ranker:
            recs = self._add_collab_candidates(recs, history, exclude, allowed, query)
        if use_ranker and len(recs.item_idx):
            scores = self.ranker.rerank(self, np.array([user]), [history], recs.item_idx[None, :], recs.scores[None, :])[0]
            order = np.argsort(-scores, kind="stable")
            recs = Recommendations(recs.item_idx[order], scores[order].astype(np.float32))
        if len(recs.item_idx) == 0 and (allowed is None or allowed.any()):
            recs = self._popular(k, exclude, allowed)
        return Recommendations(recs.item_idx[:k], recs.scores[:k])

    def _add_collab_candidates(
        self, recs: Recommendations, history: np.ndarray, exclude: np.ndarray, allowed: np.ndarray | None, query: np.ndarray
    ) -> Recommendations:
        """Merge the ranker's item-item candidates into the two-tower pool (as in its training)."""
        if not getattr(self.ranker, "n_collab_candidates", 0) or not len(history):
            return recs
        extra = self.ranker.collab_candidates([history], [exclude])[0]
        extra = extra[extra >= 0]
        if allowed is not None:
            extra = extra[allowed[extra]]
        extra = extra[~np.isin(extra, recs.item_idx)]
        if not len(extra):
            return recs
        scores = self.retrieval.item_vectors[extra] @ query
        return Recommendations(np.concatenate([recs.item_idx, extra]), np.concatenate([recs.scores, scores.astype(np.float32)]))

    def _popular(self, k: int, exclude: np.ndarray, allowed: np.ndarray | None) -> Recommendations:
        """Fallback order when a query carries no signal: most rated first."""
        score = self.item_counts.astype(np.float32)
        score = np.concatenate([score, np.zeros(self.n_items - len(score), np.float32)])
        ok = np.ones(self.n_items, bool) if allowed is None else allowed.copy()
        ok[exclude] = False
        cand = np.flatnonzero(ok)
        order = np.argsort(-score[cand], kind="stable")[:k]
        return Recommendations(cand[order], score[cand][order])

    def predict_ratings(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray | None:
        """Ratings for (user_idx, item_idx) pairs on the data's scale: the dedicated rating model
        when the bundle has one (the P1 model), else the ranker's rating head, else None."""
        if self.rating_model is not None:
            return self.rating_model.predict(np.asarray(user_idx, np.int64), np.asarray(item_idx, np.int64))
        if self.ranker is not None:
            return self.ranker.predict_ratings(self, np.asarray(user_idx, np.int64), np.asarray(item_idx, np.int64))
        return None

    def recommend_user(
        self, user_id: Any, k: int = 10, exclude_seen: bool = True, filters: Filters | None = None, rank: bool = True
    ) -> Recommendations:
        """Top-k for a known user."""
        with self._lock:
            u = self.user_idx(user_id)
            key = (k, exclude_seen, rank, _filters_key(filters))
            cached = self._cache.get(u, {}).get(key)
            if cached is not None:
                return Recommendations(cached.item_idx.copy(), cached.scores.copy())
            history = self.retrieval.histories.of(u)
            exclude = self._exclusions(history if exclude_seen else np.zeros(0, np.int64), filters)
            recs = self._finish(u, history, self.retrieval.user_vectors[u], k, exclude, self._allowed(filters), rank)
            self._remember(u, key, recs)
            return Recommendations(recs.item_idx.copy(), recs.scores.copy())

    def _remember(self, user: int, key: tuple, recs: Recommendations) -> None:
        """Keep a user's finished list until their history, the catalogue or the model changes.

        Ranking a user's candidates costs milliseconds; returning users ask again and again
        (paging, refreshes), so answers are kept per user, bounded in users (oldest dropped).
        """
        if self.cache_users <= 0:
            return
        entry = self._cache.pop(user, {})
        entry[key] = recs
        self._cache[user] = entry
        while len(self._cache) > self.cache_users:
            self._cache.pop(next(iter(self._cache)))

    def forget(self, user: int | None = None) -> None:
        """Drop cached answers for one user (new ratings) or everyone (catalogue change)."""
        with self._lock:
            if user is None:
                self._cache.clear()
            else:
                self._cache.pop(user, None)

    def recommend_batch(
        self, users: np.ndarray, k: int, rank: bool = True, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for many known users at once (batch candidates, evaluation).

        Args:
            users: (n,) user_idx.
        Returns:
            (item_idx, scores), each (n, k), padded with -1 / -inf.
        """
        users = np.asarray(users, dtype=np.int64)
        hist = self.retrieval.histories
        histories = [hist.of(u) for u in users]
        exclude = histories if exclude_seen else None
        use_ranker = rank and self.ranker is not None
        pool = max(k, self.ranker.n_candidates) if use_ranker else k
        queries = self.retrieval.user_vectors[users]
        ids, scores = self.retrieval.search(queries, min(pool, self.n_items), exclude)
        if use_ranker:
            if getattr(self.ranker, "n_collab_candidates", 0):
                banned = exclude if exclude is not None else [np.zeros(0, np.int64)] * len(users)
                ids = merge_candidates(ids, self.ranker.collab_candidates(histories, banned), self.n_items)
                safe = np.where(ids >= 0, ids, 0)
                scores = np.einsum("nkd,nd->nk", self.retrieval.item_vectors[safe], queries).astype(np.float32)
                scores[ids < 0] = -np.inf
            ranked = self.ranker.rerank(self, users, histories, ids, scores)
            ranked = np.where(ids >= 0, ranked, -np.inf)
            order = np.argsort(-ranked, axis=1, kind="stable")
            ids = np.take_along_axis(ids, order, 1)
            scores = np.take_along_axis(ranked, order, 1).astype(np.float32)
        return ids[:, :k], scores[:, :k]

    def recommend_from_items(
        self, liked_item_ids: list[Any], k: int = 10, filters: Filters | None = None, rank: bool = True
    ) -> Recommendations:
        """Top-k for a new user described only by a few liked movies (no retraining)."""
        if not liked_item_ids:
            raise ValueError("liked_items must name at least one movie")
        with self._lock:
            liked = np.array([self.item_idx(i) for i in liked_item_ids], dtype=np.int64)
            query = self.retrieval.encode_histories([liked])[0]
            exclude = self._exclusions(np.unique(liked), filters)
            return self._finish(-1, liked, query, k, exclude, self._allowed(filters), rank)

    def similar(self, item_id: Any, k: int = 10, by: SimilarBy = "hybrid") -> Recommendations:
        """Movies like ``item_id`` by content vectors, two-tower item vectors, or both."""
        with self._lock:
            i = self.item_idx(item_id)
            if by == "content":
                ids, s = self.content.similar_items(i, k)
            elif by == "collaborative":
                ids, s = self.retrieval.similar_items(i, k)
            elif by == "hybrid":
                ids, s = self._similar_hybrid(i, k)
            else:
                raise ValueError(f"by must be hybrid, content or collaborative, not {by!r}")
            keep = ids >= 0
            return Recommendations(ids[keep], s[keep])

    def _similar_hybrid(self, i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean of content cosine and two-tower cosine over the union of both top lists.

        A movie with no ratings (no id embedding) leans on content, which is all it has.
        """
        pool = max(4 * k, 50)
        c_ids, _ = self.content.similar_items(i, pool)
        r_ids, _ = self.retrieval.similar_items(i, pool)
        cand = np.unique(np.concatenate([c_ids[c_ids >= 0], r_ids[r_ids >= 0]]))
        cand = cand[cand != i]
        cv = self.content.item_vectors
        rv = normalize(self.retrieval.item_vectors[np.append(cand, i)])
        c_sim = cv[cand] @ cv[i]
        r_sim = rv[:-1] @ rv[-1]
        w = 0.5 if self.retrieval.item_has_id[i] > 0 else 0.2
        score = (1 - w) * c_sim + w * r_sim
        order = np.argsort(-score, kind="stable")[:k]
        return cand[order], score[order].astype(np.float32)

    # ---- catalogue -----------------------------------------------------------------------------------
    def search_titles(self, query: str, limit: int = 10) -> list[dict[str, Any]]:
        """Case-insensitive title search: prefix matches first, then by popularity."""
        q = query.strip().lower()
        if not q:
            return []
        hits = np.flatnonzero(np.char.find(self._title_lower.astype(str), q) >= 0)
        if not len(hits):
            return []
        counts = np.concatenate([self.item_counts, np.zeros(self.n_items - len(self.item_counts), np.int64)])
        prefix = np.char.startswith(self._title_lower[hits].astype(str), q)
        order = np.lexsort((-counts[hits], ~prefix))[:limit]
        return self.item_records(hits[order])

    def add_item(
        self, title: str, genres: list[str], description: str = "", item_id: Any | None = None, year: int | None = None
    ) -> dict[str, Any]:
        """Add a movie at run time: content vector, two-tower vector (from content and genres),
        both indexes. It is found by ``similar`` and can be recommended at once."""
        with self._lock:
            if item_id is None:
                ids = self._item_pos.to_numpy()
                numeric = pd.api.types.is_integer_dtype(ids.dtype)
                item_id = int(ids.max()) + 1 if numeric and len(ids) else f"new-{len(ids) + 1}"
            else:
                item_id = _coerce_id(item_id, self._item_pos.to_numpy())
                if self._item_pos.get_indexer([item_id])[0] >= 0:
                    raise ValueError(f"item_id {item_id!r} already exists")
            row = pd.DataFrame(
                {
                    "item_id": [item_id],
                    "title": [title],
                    "year": pd.array([year], dtype="Int64"),
                    "genres": [list(genres)],
                    "tags": [""],
                    "description": [description or ""],
                }
            )
            self.content.add_items(row)
            content_vec = self.content.item_vectors[-1:]
            g = np.zeros((1, self.retrieval.item_genres.shape[1]), np.float32)
            for name in genres:
                if name in self.genre_vocab:
                    g[0, self.genre_vocab.index(name)] = 1.0
            self.retrieval.add_items(g, content_vec)
            extra = [c for c in self.items.columns if c not in row.columns]
            for c in extra:
                row[c] = None
            self.items = pd.concat([self.items, row[self.items.columns]], ignore_index=True)
            self._item_pos = pd.Index(self.items["item_id"].to_numpy())
            self._title_lower = self.items["title"].str.lower().to_numpy()
            self.forget()  # the new movie can be recommended at once
            log.info("added item %r (%s) as item_idx %d", item_id, title, self.n_items - 1)
            return self.item_records(np.array([self.n_items - 1]))[0]

    # ---- live feedback ---------------------------------------------------------------------------------
    def record_ratings(self, user_id: Any, item_ids: list[Any], ratings: list[float]) -> dict[str, Any]:
        """Fold new ratings into one user's history and query vector, effective at once.

        The user tower pools a user's history, so re-encoding the updated history
        (``retrieval.encode_histories``) moves the query vector without retraining; the next
        ``recommend_user`` retrieves with it and excludes the newly rated movies. Re-rated movies
        move to the most recent end of the history (the tower pools the latest ``history_len``).
        An unknown user is created: a new row in the id map, a vector from the rated movies
        alone (no id embedding, no user features). Everything is swapped in under the model's
        lock, so a concurrent recommendation sees the old or the new state, never a mix.
        Durability (the feedback log) is the caller's job; this changes memory only.

        Args:
            user_id: outside user id (known or new).
            item_ids: outside ids of the rated movies (all must exist).
            ratings: one rating per movie, same order; a repeated movie keeps its last rating.
        Returns:
            ``{"user_idx", "created", "history", "kept", "ratings"}``: the user's row, whether
            it was created, the new history (item_idx, oldest first), a mask over the old history
            row of the entries that stayed (in order, before the new ones) and the ratings of the
            new entries (after de-duplication) -- serving uses the last two to keep per-entry
            ratings aligned with the history.
        Raises:
            UnknownIdError: an item id the model does not know.
            ValueError: lengths differ, nothing to record, or a new user id that does not fit
                the model's id type (e.g. text where user ids are integers).
        """
        from retrieval.inputs import Histories

        if len(item_ids) != len(ratings):
            raise ValueError(f"{len(item_ids)} item ids but {len(ratings)} ratings")
        if not item_ids:
            raise ValueError("no ratings to record")
        with self._lock:
            items = np.array([self.item_idx(i) for i in item_ids], dtype=np.int64)
            # a movie rated twice in one call counts once, at its last position, with its last rating
            first_rev = np.sort(np.unique(items[::-1], return_index=True)[1])
            new = items[::-1][first_rev][::-1]
            new_ratings = np.asarray(ratings, dtype=np.float32)[::-1][first_rev][::-1]
            hist = self.retrieval.histories
            try:
                u = self.user_idx(user_id)
                created = False
            except UnknownIdError:
                new_id = _coerce_id(user_id, self.user_ids)
                if pd.api.types.is_integer_dtype(self.user_ids.dtype) and not isinstance(new_id, (int, np.integer)):
                    raise ValueError(f"user_id {user_id!r} is not an integer like this model's user ids") from None
                u, created = len(self.user_ids), True
            old = hist.of(u) if u < hist.n_users else np.zeros(0, np.int64)
            kept = ~np.isin(old, new)
            row = np.concatenate([old[kept], new])
            query = self.retrieval.encode_histories([row], np.array([-1 if created else u]))[0]
            if created:
                # keep integer/object id arrays as they are; fixed-width text widens instead of truncating
                same = self.user_ids.dtype if self.user_ids.dtype.kind in "iuO" else None
                self.user_ids = np.append(self.user_ids, np.asarray([new_id], dtype=same))
                self._user_pos = pd.Index(self.user_ids)
                self.retrieval.user_vectors = np.vstack([self.retrieval.user_vectors, query[None, :].astype(np.float32)])
                indptr = np.append(hist.indptr, hist.indptr[-1] + len(row))
                self.retrieval.histories = Histories(indptr, np.concatenate([hist.items, row]))
            else:
                lo, hi = hist.indptr[u], hist.indptr[u + 1]
                indptr = hist.indptr.copy()
                indptr[u + 1 :] += len(row) - (hi - lo)
                self.retrieval.histories = Histories(indptr, np.concatenate([hist.items[:lo], row, hist.items[hi:]]))
                # in place (readers of one user hold the lock; a batch job at worst sees this row
                # before or after): no copy of every user's vector per call
                self.retrieval.user_vectors[u] = query
            self.forget(u)
            log.info("recorded %d ratings for user %r (%s); history now %d", len(new), user_id, "new" if created else "known", len(row))
            return {"user_idx": u, "created": created, "history": row, "kept": kept, "ratings": new_ratings}


def _filters_key(filters: Filters | None) -> tuple:
    if filters is None or (not filters.active() and not filters.exclude_items):
        return ()
    return (
        tuple(filters.genres or ()),
        filters.year_min,
        filters.year_max,
        tuple(str(i) for i in filters.exclude_items or ()),
    )


def _coerce_id(value: Any, ids: np.ndarray) -> Any:
    """Ids arrive as strings from URLs; match the dtype of the model's ids."""
    if pd.api.types.is_integer_dtype(np.asarray(ids).dtype):
        try:
            return int(value)
        except (TypeError, ValueError):
            return value
    return str(value)
