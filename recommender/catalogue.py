"""The catalogue side of the recommender: the item table, the id maps, title search, similar
movies and movies added at run time.

:class:`Catalogue` is a part of :class:`recommender.model.HybridRecommender`, which sets the
attributes declared here.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

import numpy as np
import pandas as pd

from content import ContentSimilarity
from movierec.core.artifacts import Bundle
from movierec.core.data import to_plain
from movierec.core.index import normalize
from movierec.core.popularity import item_popularity
from recommender.cache import AnswerCache
from recommender.ids import IdSpace
from recommender.query import Recommendations
from retrieval.candidates import RetrievalModel

log = logging.getLogger(__name__)

SimilarBy = Literal["hybrid", "content", "collaborative"]


class Catalogue:
    """Movies and users by outside id, and what is asked of the movies alone."""

    bundle: Bundle
    items: pd.DataFrame
    users: IdSpace
    item_ids: IdSpace
    content: ContentSimilarity
    retrieval: RetrievalModel
    item_counts: np.ndarray
    genre_vocab: list[str]
    cache: AnswerCache
    _title_lower: np.ndarray
    _lock: threading.RLock

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    def forget(self, user: int | None = None) -> None:
        """Drop cached answers for one user (new ratings) or everyone (catalogue change)."""
        self.cache.forget(user)

    @property
    def n_items(self) -> int:
        return len(self.items)

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
        counts = item_popularity(self.item_counts, np.arange(self.n_items))
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
