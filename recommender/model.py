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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from content import ContentSimilarity
from movierec.core.artifacts import Bundle, load_bundle
from movierec.core.data import to_plain
from movierec.core.index import normalize
from ranking.features import merge_candidates
from recommender.cache import AnswerCache
from recommender.encoder import NewUserEncoder
from recommender.ids import IdSpace, IdTypeError
from recommender.live import LiveHistories
from retrieval.candidates import RetrievalModel

log = logging.getLogger(__name__)

SimilarBy = Literal["hybrid", "content", "collaborative"]


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
        hist_ratings: np.ndarray | None = None,
    ) -> None:
        self.bundle = bundle
        self.items = items.reset_index(drop=True)
        self.users = IdSpace(np.asarray(user_ids), "user_id")
        self.item_ids = IdSpace(self.items["item_id"].to_numpy(), "item_id")
        self.content = content
        self.retrieval = retrieval
        # live histories and ratings overlay the trained ones; the bundle's arrays stay as trained
        self.histories = LiveHistories(retrieval.histories, hist_ratings)
        retrieval.histories = self.histories
        self._vectors = retrieval.user_vectors  # grown by doubling when users are added
        self.applied_seq = int((bundle.manifest.get("state") or {}).get("seq", 0))
        """Sequence number of the last online-state event this model holds (the bundle's own
        point when trained with the state folded in, until :meth:`catch_up` first meets a state
        and decides where to start in it)."""
        self._start_decided = False
        serving = _serving_config(bundle)
        self.history_limit = serving.history_limit
        """Most recent entries of a history that explanations and the ranker's features read."""
        self.snapshot_every = serving.snapshot_every
        """A snapshot is written after a catch-up once more events than this were applied since the newest."""
        self.snapshot_seq: int | None = None  # point of the newest snapshot known (None: not looked yet)
        self._base_seq: int | None = None  # the point this model started replaying from
        self._snapshot_thread: threading.Thread | None = None
        self._snapshot_tried = -np.inf  # time.monotonic() of the last attempt
        self.item_counts = np.asarray(item_counts, dtype=np.int64)
        self.ranker = ranker
        self.rating_model = rating_model  # ranking.rating.RatingModel: P1 rating predictions
        self.genre_vocab: list[str] = list(retrieval.hparams.get("genres", []))
        self._lock = threading.RLock()  # writes, and the short reads that snapshot a user
        self._catch_up_lock = threading.Lock()
        self.cache = AnswerCache()
        self._new_user_encoder: NewUserEncoder | None | bool = None  # built on first use; False: none fits
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
        hist_ratings = None
        if bundle.has("hist_ratings.npy"):
            hist_ratings = bundle.array("hist_ratings.npy").astype(np.float32)
            if len(hist_ratings) != len(retrieval.histories.items):
                log.warning("%s: hist_ratings.npy does not match the histories; explanations omit ratings", path)
                hist_ratings = None
        return cls(bundle, items, users["user_id"].to_numpy(), content, retrieval, bundle.array("item_counts.npy"), ranker,
                   rating_model, hist_ratings)

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    @property
    def n_items(self) -> int:
        return len(self.items)

    # ---- id maps ----------------------------------------------------------------------------------
    @property
    def user_ids(self) -> np.ndarray:
        """Every user id, row order (a new array once users were added: offline jobs only)."""
        return self.users.all()

    def user_idx(self, user_id: Any) -> int:
        """Row of a user; :class:`IdTypeError` (422) for the wrong type, :class:`UnknownIdError` (404)."""
        return self.users.row(user_id)

    def item_idx(self, item_id: Any) -> int:
        """Row of a movie; :class:`IdTypeError` (422) for the wrong type, :class:`UnknownIdError` (404)."""
        return self.item_ids.row(item_id)

    def user_history(self, u: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(item_idx, ratings or None) of user row ``u``, live feedback included."""
        return self.histories.of(u), self.histories.ratings_of(u)

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
            wanted = [self.genre_vocab.index(g) for g in filters.genres if g in self.genre_vocab]
            genres = self.retrieval.item_genres  # (n_items, G) genre indicators: one vectorised test
            if len(wanted) == len(filters.genres) and len(genres) == self.n_items:
                mask &= np.asarray(genres[:, wanted] > 0).any(axis=1)
            else:  # a genre outside the vocabulary: read the item table
                named = set(filters.genres)
                mask &= np.fromiter((bool(named.intersection(g)) for g in self.items["genres"]), bool, self.n_items)
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
                pos = self.item_ids.get(item_id)  # unknown or mistyped ids exclude nothing
                if pos >= 0:
                    extra.append(pos)
        return np.unique(np.concatenate([seen, np.asarray(extra, dtype=np.int64)])) if extra else seen

    EXACT_SCAN_ITEMS = 20_000
    """Up to this many movies, one query over an exact (flat) index is a product with the item
    vectors and a partial sort here: the same top-k as the index's search, in ~0.05 ms instead
    of ~0.3 ms of search call, exclusion and compaction for a single query."""

    def _retrieve(self, query: np.ndarray, k: int, exclude: np.ndarray, allowed: np.ndarray | None) -> Recommendations:
        """Top-k by the two-tower score among allowed, non-excluded items."""
        vectors = self.retrieval.item_vectors
        if allowed is None:
            if getattr(self.retrieval.index, "kind", None) != "flat" or len(vectors) > self.EXACT_SCAN_ITEMS:
                ids, s = self.retrieval.search(query[None, :], k, [exclude])
                return Recommendations(ids[0][ids[0] >= 0], s[0][ids[0] >= 0])
            scores = vectors @ query
            scores[exclude] = -np.inf
            n = min(k, len(scores) - len(np.unique(exclude)) if len(exclude) else len(scores))
            if n <= 0:
                return Recommendations(np.zeros(0, np.int64), np.zeros(0, np.float32))
            top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            return Recommendations(top.astype(np.int64), scores[top].astype(np.float32))
        # strict filters: score only the qualifying items, so k come back whenever k qualify
        cand = np.flatnonzero(allowed)
        cand = cand[~np.isin(cand, exclude)]
        scores = vectors[cand] @ query
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
        extra = self.ranker.collab_candidates([history[-self.history_limit :]], [exclude])[0]
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
        u = self.user_idx(user_id)
        key = self.answer_key(k, exclude_seen, filters, rank)
        cached = self.cached_answer(u, key)
        if cached is not None:
            return cached
        with self._lock:  # a consistent snapshot of this user; the work below runs without it
            stamp = self.cache.stamp(u)
            history = self.histories.of(u)
            query = self.retrieval.user_vectors[u].copy()
            allowed = self._allowed(filters)
        exclude = self._exclusions(history if exclude_seen else np.zeros(0, np.int64), filters)
        recs = self._finish(u, history, query, k, exclude, allowed, rank)
        self.cache.put(u, key, recs.item_idx, recs.scores, stamp)
        return Recommendations(recs.item_idx.copy(), recs.scores.copy())

    @staticmethod
    def answer_key(k: int, exclude_seen: bool = True, filters: Filters | None = None, rank: bool = True) -> tuple:
        """The answer cache's key of a :meth:`recommend_user` request (beside the user row)."""
        return (k, exclude_seen, rank, _filters_key(filters))

    def cached_answer(self, u: int, key: tuple) -> Recommendations | None:
        """The cached answer of user row ``u`` for ``key`` (:meth:`answer_key`), or None: a
        dictionary lookup, cheap enough for an event loop."""
        cached = self.cache.get(u, key)
        if cached is None:
            return None
        return Recommendations(cached[0].copy(), cached[1].copy())

    def forget(self, user: int | None = None) -> None:
        """Drop cached answers for one user (new ratings) or everyone (catalogue change)."""
        self.cache.forget(user)

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
        use_ranker = rank and self.ranker is not None
        step = int(getattr(self.ranker, "batch_users", 0) or len(users)) if use_ranker else len(users)
        if len(users) > step:  # ranked steps of a bounded size (their item-item rows are dense)
            parts = [self.recommend_batch(users[s : s + step], k, rank, exclude_seen) for s in range(0, len(users), step)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        hist = self.histories
        histories = [hist.of(u) for u in users]
        exclude = histories if exclude_seen else None
        pool = max(k, self.ranker.n_candidates) if use_ranker else k
        queries = self.retrieval.user_vectors[users]
        ids, scores = self.retrieval.search(queries, min(pool, self.n_items), exclude)
        if use_ranker:
            rows = None
            n_extra = getattr(self.ranker, "n_collab_candidates", 0)
            if n_extra:
                banned = exclude if exclude is not None else [np.zeros(0, np.int64)] * len(users)
                # one item-item product for both the extra candidates and the features, when the
                # features would sum whole rows anyway
                rows = self.ranker.collab_rows(self, users, histories, ids.shape[1] + n_extra) if hasattr(self.ranker, "collab_rows") else None
                extra = rows.top(banned, n_extra) if rows is not None else self.ranker.collab_candidates(histories, banned)
                ids = merge_candidates(ids, extra, self.n_items)
                safe = np.where(ids >= 0, ids, 0)
                scores = np.einsum("nkd,nd->nk", self.retrieval.item_vectors[safe], queries).astype(np.float32)
                scores[ids < 0] = -np.inf
            ranked = self.ranker.rerank(self, users, histories, ids, scores, collab=rows) if rows is not None else self.ranker.rerank(self, users, histories, ids, scores)
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
        liked = np.array([self.item_idx(i) for i in liked_item_ids], dtype=np.int64)
        query = self._encode_new_user(liked)
        exclude = self._exclusions(np.unique(liked), filters)
        return self._finish(-1, liked, query, k, exclude, self._allowed(filters), rank)

    def _encode_new_user(self, liked: np.ndarray) -> np.ndarray:
        """The query vector of a new user: :class:`~recommender.encoder.NewUserEncoder` when it
        reproduces the user tower (checked once, on first use), else ``encode_histories``."""
        if self._new_user_encoder is None:
            self._new_user_encoder = NewUserEncoder.build(self.retrieval) or False
        if self._new_user_encoder:
            return self._new_user_encoder(liked)
        return self.retrieval.encode_histories([liked])[0]

    def similar(self, item_id: Any, k: int = 10, by: SimilarBy = "hybrid") -> Recommendations:
        """Movies like ``item_id`` by content vectors, two-tower item vectors, or both."""
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
        """Add a movie to this model's memory: content vector, two-tower vector (from content and
        genres), both indexes. It is found by ``similar`` and can be recommended at once.

        Durability and id generation across workers belong to the online state
        (:meth:`recommender.state.StateStore.add_item`); this is what applying its event does.

        Raises:
            IdTypeError: ``item_id`` of the wrong type for this catalogue.
            ValueError: ``item_id`` already exists, or none was given.
        """
        with self._lock:
            if item_id is None:  # memory only (no online state): the next free generated id
                from recommender.events import generated_id

                n = 1
                while self.item_ids.get(generated_id(n, self.item_ids.integer)) >= 0:
                    n += 1
                item_id = generated_id(n, self.item_ids.integer)
            item_id = self.item_ids.parse(item_id)
            if self.item_ids.get(item_id) >= 0:
                raise ValueError(f"item_id {item_id!r} already exists")
            row = pd.DataFrame(
                {
                    "item_id": pd.array([item_id], dtype=self.items["item_id"].dtype),
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
            self.retrieval.add_items(g, content_vec, self.content.model.transform_sparse(row))
            for c in [c for c in self.items.columns if c not in row.columns]:
                row[c] = None
            self.items = pd.concat([self.items, row[self.items.columns]], ignore_index=True)
            self.item_ids.add(item_id)
            self._title_lower = np.append(self._title_lower, title.lower())
            self.forget()  # the new movie can be recommended at once
            log.info("added item %r (%s) as item_idx %d", item_id, title, self.n_items - 1)
            return self.item_records(np.array([self.n_items - 1]))[0]

    def title_of(self, i: int) -> str:
        return str(self.items["title"].iat[i])

    # ---- online state ----------------------------------------------------------------------------------
    def catch_up(self, state: Any) -> int:
        """Apply the online-state events this model has not seen yet; returns how many.

        One indexed lookup when nothing is new (the per-request check); otherwise only the
        events after :attr:`applied_seq` are read, and all their ratings applied in one batch.
        The first call decides where to start: after the bundle's recorded point on the state
        it was folded from, from the start on any other (``StateStore.start_for``), since that
        point means nothing in another state's numbering. From there, the first catch-up of a
        freshly loaded model starts from the newest snapshot of this
        bundle's overlay (:mod:`recommender.snapshots`) when there is one, so it replays only
        the events after the snapshot; once more than :attr:`snapshot_every` events were
        applied since the newest snapshot, a new one is written in the background.
        """
        if not self._start_decided:
            with self._catch_up_lock:
                if not self._start_decided:
                    self.applied_seq = state.start_for(self.bundle.manifest.get("state"))
                    self._start_decided = True
        last = state.last_seq()
        if last <= self.applied_seq:
            return 0
        with self._catch_up_lock:  # one catch-up at a time; readers go on with the current state
            if last <= self.applied_seq:
                return 0
            if self._base_seq is None:  # a fresh model: nothing applied yet
                self._base_seq = self.applied_seq
                from recommender import snapshots

                restored = snapshots.restore(self, state, last)
                self.snapshot_seq = restored if restored is not None else self.applied_seq
                if last <= self.applied_seq:
                    return 0
            items, ratings = state.changes_after(self.applied_seq, last)
            self.apply_events(items)  # movies first: a rating always comes after its movie
            if ratings["rating"]:
                self.apply_ratings(ratings["user_id"], ratings["item_id"], ratings["rating"], ratings["title"])
            self.applied_seq = last
            if self.applied_seq - (self.snapshot_seq or 0) > self.snapshot_every:
                self._snapshot_in_background(state)
            return len(items) + len(ratings["rating"])

    SNAPSHOT_RETRY_S = 10.0
    """Seconds between snapshot attempts of one model (another worker may hold the claim)."""

    def _snapshot_in_background(self, state: Any) -> None:
        """Write a snapshot from a daemon thread (one at a time per model): requests never wait
        for it, and a worker killed while writing leaves the previous snapshot in place."""
        running = self._snapshot_thread
        now = time.monotonic()
        if (running is not None and running.is_alive()) or now - self._snapshot_tried < self.SNAPSHOT_RETRY_S:
            return
        self._snapshot_tried = now
        from recommender import snapshots

        def run() -> None:
            try:
                if snapshots.write(self, state) is not None:
                    self._snapshot_tried = -np.inf  # written: the next one is due after snapshot_every events
            except Exception as e:  # derived data: the events stay, the next catch-up tries again
                log.warning("snapshot of %s not written: %s: %s", self.model_version, e.__class__.__name__, e)

        self._snapshot_thread = threading.Thread(target=run, name="movierec-snapshot", daemon=True)
        self._snapshot_thread.start()

    # ---- snapshots of the overlay ------------------------------------------------------------------
    def overlay(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What the online state changed in this model, as of :attr:`applied_seq`: the ids of
        users added since training, every changed user's history, ratings and query vector.
        Taken under the catch-up lock, so it is exactly the events up to ``seq`` applied.

        Returns:
            (header, arrays): plain JSON-able fields and NumPy arrays (no objects).
        """
        with self._catch_up_lock, self._lock:
            rows = self.histories._rows
            users = np.fromiter(sorted(rows), np.int64, len(rows))
            hists = [rows[int(u)] for u in users]
            rats = [self.histories._ratings.get(int(u)) for u in users]
            lengths = np.fromiter((len(h) for h in hists), np.int64, len(hists))
            arrays = {
                "users": users,
                "indptr": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                "items": np.concatenate(hists).astype(np.int64) if hists else np.zeros(0, np.int64),
                "ratings": np.concatenate(
                    [r if r is not None else np.full(len(h), np.nan, np.float32) for r, h in zip(rats, hists)]
                ).astype(np.float32) if hists else np.zeros(0, np.float32),
                "has_ratings": np.fromiter((r is not None for r in rats), bool, len(rats)),
                "vectors": np.asarray(self.retrieval.user_vectors[users], np.float32),
            }
            header = {
                "seq": int(self.applied_seq),
                "base_seq": int(self._base_seq if self._base_seq is not None else self.applied_seq),
                "trained_users": len(self.users.trained),
                "new_users": [to_plain(v) for v in self.users._added_ids],
                "n_items": int(self.n_items),
            }
        return header, arrays

    def restore_overlay(self, header: dict[str, Any], arrays: dict[str, np.ndarray], items: list[Any]) -> bool:
        """Put a snapshot's overlay (:meth:`overlay`) onto this freshly loaded model.

        ``items`` are the added movies' events up to the snapshot, applied as a catch-up
        applies them. Everything else is checked before anything changes; when the movies do not
        come out as recorded, nothing but them is applied and False is returned, so the caller
        replays every event instead (re-adding a movie the model holds is skipped).
        """
        users, indptr, hist, rats = arrays["users"], arrays["indptr"], arrays["items"], arrays["ratings"]
        has_r, vectors = arrays["has_ratings"], arrays["vectors"]
        trained = len(self.users.trained)
        new_ids = [self.users.parse(v) for v in header["new_users"]]
        n_users = trained + len(new_ids)
        n_items_after = int(header["n_items"])
        d = self.retrieval.user_vectors.shape[1]
        problems = [
            name for name, bad in (
                ("trained_users", int(header["trained_users"]) != trained or len(self.users) != trained),
                ("indptr", len(indptr) != len(users) + 1 or (len(indptr) and (indptr[0] != 0 or indptr[-1] != len(hist)))
                 or bool((np.diff(indptr) < 0).any())),
                ("users", len(users) and (users.min() < 0 or users.max() >= n_users or bool((np.diff(users) <= 0).any()))),
                ("items", len(hist) and (hist.min() < 0 or hist.max() >= n_items_after)),
                ("ratings", len(rats) != len(hist) or len(has_r) != len(users)),
                ("vectors", vectors.shape != (len(users), d)),
                ("new_users", any(self.users.get(v) >= 0 for v in new_ids) or len(set(new_ids)) != len(new_ids)),
            ) if bad
        ]
        if problems:
            log.error("snapshot at event %s does not fit %s (%s); replaying the events instead",
                      header.get("seq"), self.model_version, ", ".join(problems))
            return False
        with self._lock:
            self.apply_events(items)
            if self.n_items != n_items_after:
                log.error("snapshot at event %s: added movies came out as %d items, not %d; replaying the events instead",
                          header.get("seq"), self.n_items, n_items_after)
                return False
            self._grow_vectors(n_users)
            self.retrieval.user_vectors[users] = vectors
            cuts = indptr[1:-1]
            for u, row, r, h in zip(users.tolist(), np.split(hist, cuts), np.split(rats, cuts), has_r.tolist()):
                self.histories.set(u, row, r if h else None)
            for key in new_ids:
                self.users.add(key, checked=True)
            self.applied_seq = int(header["seq"])
            self.forget()
        return True

    def apply_events(self, events: list[Any]) -> None:
        """Apply online-state events (:class:`recommender.state.Event`) in sequence order.

        Movies first, then every rating in one batch: a rating always comes after the movie it
        rates, and the ratings' own order is kept per user.
        """
        ratings = []
        for e in events:
            if e.kind == "item":
                rec = e.payload or {}
                try:
                    self.add_item(rec.get("title") or "", list(rec.get("genres") or []), rec.get("description") or "",
                                  item_id=e.item_id, year=rec.get("year"))
                except (ValueError, KeyError) as err:
                    pos = self.item_ids.get(e.item_id)
                    if pos >= 0 and self.title_of(pos) == rec.get("title"):
                        continue  # the bundle was trained with this movie folded in
                    log.warning("added movie %r (event %d) not applied to %s: %s", e.item_id, e.seq, self.model_version, err)
            elif e.kind == "rating":
                ratings.append(e)
        if ratings:
            self.apply_ratings(
                [e.user_id for e in ratings], [e.item_id for e in ratings], [e.rating for e in ratings], [e.title for e in ratings]
            )

    def apply_ratings(
        self, user_ids: list[Any], item_ids: list[Any], ratings: list[float], titles: list[str | None] | None = None
    ) -> dict[str, int]:
        """Fold ratings into users' histories and query vectors, in one batch.

        The user tower pools a user's history, so re-encoding the updated histories (one
        ``encode_histories`` call for every changed user) moves their query vectors without
        retraining. Re-rated movies move to the most recent end of the history; a movie rated
        several times keeps its last rating. Unknown users are created (the id must have this
        model's user-id type). A rating whose recorded title differs from the movie this
        catalogue holds under that id is skipped: feedback never lands on another movie.
        Only the changed users' rows are written (no copy of every user's history).

        Returns:
            ``{"applied", "skipped", "created"}`` counts.
        """
        with self._lock:
            item_rows = self.item_ids.rows(list(item_ids))
            ok = item_rows >= 0
            if titles is not None:  # never onto another movie: the recorded title must match
                recorded = np.asarray(titles, dtype=object)
                held = self.items["title"].to_numpy()[np.where(ok, item_rows, 0)]
                ok &= (recorded == None) | (held == recorded)  # noqa: E711 (elementwise)
            user_rows = self.users.rows(list(user_ids))
            # unknown users get the next rows, in order of first rating; they join the id map
            # only once their history and vector are in place, so a concurrent reader never
            # finds a user without them
            new_users: dict[Any, int] = {}
            for n in np.flatnonzero(ok & (user_rows < 0)):
                try:
                    key = self.users.parse(user_ids[n])
                except IdTypeError:
                    ok[n] = False
                    continue
                u = new_users.get(key, -1)
                if u < 0:
                    u = new_users[key] = len(self.users) + len(new_users)
                user_rows[n] = u
            skipped = int((~ok).sum())
            if skipped:
                log.warning("%d live ratings not applied to %s (unknown movie, another movie under that id, or a mistyped user id)",
                            skipped, self.model_version)
            if not ok.any():
                return {"applied": 0, "skipped": skipped, "created": 0}
            users, rows, row_ratings = self._merged_rows(
                user_rows[ok], item_rows[ok], np.asarray(ratings, dtype=np.float32)[ok]
            )
            known = np.where(users < self.retrieval.user_features.shape[0], users, -1)
            queries = self.retrieval.encode_histories(rows, known).astype(np.float32)
            self._grow_vectors(len(self.users) + len(new_users))
            self.retrieval.user_vectors[users] = queries
            for u, row, r in zip(users.tolist(), rows, row_ratings):
                self.histories.set(u, row, r)
                self.cache.forget(u)
            for key, u in new_users.items():  # now visible, with history and vector in place
                if self.users.add(key, checked=True) != u:
                    raise RuntimeError(f"user row {u} of {key!r} was taken meanwhile")
            created = len(new_users)
        applied = int(ok.sum())
        log.info("applied %d live ratings of %d users (%d new) to %s", applied, len(users), created, self.model_version)
        return {"applied": applied, "skipped": skipped, "created": created}

    def _merged_rows(
        self, u: np.ndarray, i: np.ndarray, r: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray | None]]:
        """Each changed user's new history: the old entries not rated again, in their order, then
        the new ones in the order of their last rating (a movie rated twice keeps its last
        rating). Vectorised over all users at once.

        Args:
            u, i, r: user row, item row and rating of each new rating, in sequence order.
        Returns:
            (users, rows, ratings): the changed users and, for each, the item row of its history
            and the ratings (None when the bundle carries no ratings for that user's old row).
        """
        n_items = np.int64(max(self.n_items, 1))
        keys = u.astype(np.int64) * n_items + i
        last = len(keys) - 1 - np.unique(keys[::-1], return_index=True)[1]  # last rating of each (user, item)
        last.sort()
        nu, ni, nr = u[last], i[last], r[last]
        users = np.unique(nu)
        olds = [self.histories.of(int(x)) for x in users]
        old_rs = [self.histories.ratings_of(int(x)) for x in users]
        has_r = np.fromiter((x is not None for x in old_rs), bool, len(users))
        lengths = np.fromiter((len(x) for x in olds), np.int64, len(users))
        ou = np.repeat(users, lengths)
        oi = np.concatenate(olds) if len(olds) else np.zeros(0, np.int64)
        orr = np.concatenate([x if x is not None else np.full(len(o), np.nan, np.float32) for x, o in zip(old_rs, olds)]).astype(np.float32) \
            if len(olds) else np.zeros(0, np.float32)
        kept = ~np.isin(ou * n_items + oi, nu.astype(np.int64) * n_items + ni)
        all_u = np.concatenate([ou[kept], nu])
        all_i = np.concatenate([oi[kept], ni])
        all_r = np.concatenate([orr[kept], nr])
        phase = np.concatenate([np.zeros(int(kept.sum()), np.int8), np.ones(len(nu), np.int8)])
        pos = np.arange(len(all_u))
        order = np.lexsort((pos, phase, all_u))
        all_i, all_r = all_i[order], all_r[order]
        counts = np.bincount(np.searchsorted(users, all_u[order]), minlength=len(users))
        cuts = np.cumsum(counts)[:-1]
        rows = np.split(all_i, cuts)
        ratings = [x if h else None for x, h in zip(np.split(all_r, cuts), has_r)]
        return users, rows, ratings

    def _grow_vectors(self, n_users: int) -> None:
        """Room for ``n_users`` query vectors; capacity doubles, so adding users costs O(1) amortised."""
        view = self.retrieval.user_vectors
        if len(view) >= n_users:
            return
        buf = self._vectors
        if len(buf) < n_users:
            grown = np.zeros((max(2 * len(buf), n_users, 16), buf.shape[1]), np.float32)
            grown[: len(view)] = view
            self._vectors = buf = grown
        self.retrieval.user_vectors = buf[:n_users]
        self.histories.n_users = n_users

    def record_ratings(self, user_id: Any, item_ids: list[Any], ratings: list[float]) -> dict[str, Any]:
        """Apply one user's ratings to memory only (no online state; offline tools and tests).

        Raises:
            UnknownIdError: an item id the model does not know.
            IdTypeError: a user or item id of the wrong type.
            ValueError: lengths differ or nothing to record.
        """
        if len(item_ids) != len(ratings):
            raise ValueError(f"{len(item_ids)} item ids but {len(ratings)} ratings")
        if not item_ids:
            raise ValueError("no ratings to record")
        for i in item_ids:
            self.item_idx(i)
        self.users.parse(user_id)
        created = self.users.get(user_id) < 0
        self.apply_ratings([user_id] * len(item_ids), list(item_ids), list(ratings))
        u = self.user_idx(user_id)
        return {"user_idx": u, "created": created, "history": self.histories.of(u)}


def _serving_config(bundle: Bundle) -> Any:
    """The bundle's ``serving`` config section (defaults for bundles trained without it)."""
    from movierec.core.config import ServingConfig

    section = ((bundle.manifest.get("config") or {}).get("serving")) or {}
    try:
        return ServingConfig.model_validate(section)
    except ValueError as e:
        log.warning("%s: serving config ignored, defaults used (%s)", bundle.path, str(e).splitlines()[0])
        return ServingConfig()


def _filters_key(filters: Filters | None) -> tuple:
    if filters is None or (not filters.active() and not filters.exclude_items):
        return ()
    return (
        tuple(filters.genres or ()),
        filters.year_min,
        filters.year_max,
        tuple(str(i) for i in filters.exclude_items or ()),
    )
