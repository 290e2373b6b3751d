"""The final recommender that a bundle loads into: retrieval, content, ranker and catalogue.

:class:`HybridRecommender` is the one object the CLI queries, the batch candidate job and the
HTTP service share. It speaks outside ids (as in the data) at its surface and internal indices
inside. It imports only plain modules (no Lightning, no scikit-learn fitting), so serving can
load it.

Every recommendation it gives is answered by the one query path, :func:`recommender.query.recommend`
(a single request is a batch of one). The stages below it (retrieval, content, ranker) are
read, never rewritten: the live histories and query vectors are this object's own.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from content import ContentSimilarity
from movierec.core.artifacts import Bundle, load_bundle
from recommender import query
from recommender.cache import AnswerCache
from recommender.encoder import NewUserEncoder
from recommender.ids import IdSpace
from recommender.live import LiveHistories
from recommender.online import OnlineUpdates
from recommender.query import Filters, Recommendations
from retrieval.candidates import RetrievalModel

if TYPE_CHECKING:
    from ranking.rating import RatingModel
    from ranking.runtime import RankInputs, Ranker

log = logging.getLogger(__name__)



class HybridRecommender(OnlineUpdates):
    """Everything needed to answer recommendation and similarity queries for one bundle."""

    def __init__(
        self,
        bundle: Bundle,
        items: pd.DataFrame,
        user_ids: np.ndarray,
        content: ContentSimilarity,
        retrieval: RetrievalModel,
        item_counts: np.ndarray,
        ranker: Ranker | None = None,
        rating_model: RatingModel | None = None,
        hist_ratings: np.ndarray | None = None,
    ) -> None:
        self.bundle = bundle
        self.items = items.reset_index(drop=True)
        self.users = IdSpace(np.asarray(user_ids), "user_id")
        self.item_ids = IdSpace(self.items["item_id"].to_numpy(), "item_id")
        self.content = content
        self.retrieval = retrieval
        # live histories, ratings and query vectors overlay the trained ones; the retrieval
        # model's arrays stay as trained (the vectors are copied on the first write)
        self.histories = LiveHistories(retrieval.histories, hist_ratings)
        self.user_vectors: np.ndarray = retrieval.user_vectors
        """(n_users, d) query vector of every user, live feedback included."""
        self._vectors = retrieval.user_vectors  # grown by doubling when users are added
        self._rank_inputs: RankInputs | None = None
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
        self.rating_model = rating_model
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
    def lock(self) -> threading.RLock:
        """Held by writes, and by the short reads that snapshot users' live state."""
        return self._lock

    def rank_inputs(self) -> RankInputs:
        """What the ranker's features read of the current catalogue (rebuilt when movies are
        added or the history bound changes)."""
        from ranking.runtime import RankInputs

        cached = self._rank_inputs
        if cached is None or cached.n_items != self.n_items or cached.history_limit != self.history_limit:
            years = self.items["year"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
            cached = self._rank_inputs = RankInputs(
                content=self.content.item_vectors, genres=self.retrieval.item_genres, years=years,
                user_features=self.retrieval.user_features, history_limit=self.history_limit,
            )
        return cached

    def user_history(self, u: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(item_idx, ratings or None) of user row ``u``, live feedback included."""
        return self.histories.of(u), self.histories.ratings_of(u)

    # ---- recommendations -----------------------------------------------------------------------
    def predict_ratings(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray | None:
        """Ratings for (user_idx, item_idx) pairs on the data's scale: the dedicated rating model
        when the bundle has one (the P1 model), else the ranker's rating head, else None."""
        if self.rating_model is not None:
            return self.rating_model.predict(np.asarray(user_idx, np.int64), np.asarray(item_idx, np.int64))
        if self.ranker is not None:
            return query.rate_pairs(self, user_idx, item_idx)
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
        with self._lock:  # the stamp before the snapshot of the user: a later write outdates this answer
            stamp = self.cache.stamp(u)
            queries = query.user_queries(self, np.array([u]), exclude_seen, filters)
        recs = query.recommend(self, queries, k, rank).row(0)
        self.cache.put(u, key, recs.item_idx, recs.scores, stamp)
        return Recommendations(recs.item_idx.copy(), recs.scores.copy())

    @staticmethod
    def answer_key(k: int, exclude_seen: bool = True, filters: Filters | None = None, rank: bool = True) -> tuple:
        """The answer cache's key of a :meth:`recommend_user` request (beside the user row)."""
        return (k, exclude_seen, rank, filters.key() if filters is not None else ())

    def cached_answer(self, u: int, key: tuple) -> Recommendations | None:
        """The cached answer of user row ``u`` for ``key`` (:meth:`answer_key`), or None: a
        dictionary lookup, cheap enough for an event loop."""
        cached = self.cache.get(u, key)
        if cached is None:
            return None
        return Recommendations(cached[0].copy(), cached[1].copy())

    def recommend_batch(
        self, users: np.ndarray, k: int, rank: bool = True, exclude_seen: bool = True, filters: Filters | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k for many known users at once (batch candidates, evaluation).

        Args:
            users: (n,) user_idx.
        Returns:
            (item_idx, scores), each (n, min(k, n_items)), padded with -1 / -inf.
        """
        answer = query.recommend(self, query.user_queries(self, users, exclude_seen, filters), k, rank)
        return answer.item_idx, answer.scores

    def recommend_from_items(
        self, liked_item_ids: list[Any], k: int = 10, filters: Filters | None = None, rank: bool = True
    ) -> Recommendations:
        """Top-k for a new user described only by a few liked movies (no retraining)."""
        if not liked_item_ids:
            raise ValueError("liked_items must name at least one movie")
        liked = np.array([self.item_idx(i) for i in liked_item_ids], dtype=np.int64)
        return query.recommend(self, query.liked_queries(self, [liked], filters), k, rank).row(0)

    def encode_liked(self, liked: np.ndarray) -> np.ndarray:
        """The query vector of a new user who liked ``liked`` (item rows):
        :class:`~recommender.encoder.NewUserEncoder` when it reproduces the user tower (checked
        once, on first use), else ``encode_histories``."""
        if self._new_user_encoder is None:
            self._new_user_encoder = NewUserEncoder.build(self.retrieval) or False
        if self._new_user_encoder:
            return self._new_user_encoder(liked)
        return self.retrieval.encode_histories([liked])[0]

def _serving_config(bundle: Bundle) -> Any:
    """The bundle's ``serving`` config section (defaults for bundles trained without it)."""
    from movierec.core.config import ServingConfig

    section = ((bundle.manifest.get("config") or {}).get("serving")) or {}
    try:
        return ServingConfig.model_validate(section)
    except ValueError as e:
        log.warning("%s: serving config ignored, defaults used (%s)", bundle.path, str(e).splitlines()[0])
        return ServingConfig()
