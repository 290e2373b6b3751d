"""The dataset schema and the one container every stage shares.

The :class:`Dataset` is the only place outside ids (as given in the files) become internal
contiguous indices (``user_idx`` / ``item_idx``). Splits derive new datasets that keep the same
id maps, so indices agree between train and test. The files are read by
:mod:`movierec.core.loaders`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "year", "genres", "tags", "description"]


class DataError(ValueError):
    """Bad input data. The message names the file, line and column where known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.reason = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


def _normalise_items(items: pd.DataFrame) -> pd.DataFrame:
    """Give the item table every schema column with a consistent dtype."""
    items = items.copy()
    if "title" not in items:
        items["title"] = ""
    items["title"] = items["title"].fillna("").astype(str)
    if "year" not in items:
        items["year"] = pd.array([pd.NA] * len(items), dtype="Int64")
    items["year"] = pd.to_numeric(items["year"], errors="coerce").astype("Int64")
    if "genres" not in items:
        items["genres"] = [[] for _ in range(len(items))]
    items["genres"] = [
        list(g) if isinstance(g, (list, tuple, np.ndarray)) else [] for g in items["genres"]
    ]
    for col in ("tags", "description"):
        if col not in items:
            items[col] = ""
        items[col] = items[col].fillna("").astype(str)
    extra = [c for c in items.columns if c not in ITEM_COLUMNS]
    return items[ITEM_COLUMNS + extra].reset_index(drop=True)


@dataclass(eq=False)
class Dataset:
    """Ratings, the item catalogue, optional user features, and the id maps between them.

    Args:
        ratings: columns ``user_id, item_id, rating, timestamp`` (outside ids as given).
        items: the catalogue: ``item_id, title, year, genres (list[str]), tags, description``.
            Every item in ``ratings`` must be in ``items``; items may have no ratings (cold).
        users: optional ``user_id`` plus feature columns.
        name: a short label for logs and the manifest.
        user_ids: the user id map (row ``i`` is user_idx ``i``); derived from ratings and users
            when not given. Splits pass the parent's map so indices stay aligned.

    After construction ``ratings`` also carries ``user_idx`` and ``item_idx`` (int64).
    """

    ratings: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    name: str = "dataset"
    user_ids: np.ndarray | None = None
    _user_index: pd.Index = field(init=False, repr=False)
    _item_index: pd.Index = field(init=False, repr=False)

    def __post_init__(self) -> None:
        missing = [c for c in ("user_id", "item_id", "rating") if c not in self.ratings.columns]
        if missing:
            raise DataError(f"ratings lack column(s) {missing}", column=missing[0])
        ratings = self.ratings.copy()
        if "timestamp" not in ratings:
            ratings["timestamp"] = 0
        ratings["rating"] = ratings["rating"].astype("float32")
        ratings["timestamp"] = ratings["timestamp"].fillna(0).astype("int64")
        if ratings["rating"].isna().any():
            raise DataError("ratings contain missing values", column="rating")
        self.items = _normalise_items(self.items)
        if self.items["item_id"].duplicated().any():
            dup = self.items.loc[self.items["item_id"].duplicated(), "item_id"].iloc[0]
            raise DataError(f"item table has duplicate item_id {dup!r}", column="item_id")
        self._item_index = pd.Index(self.items["item_id"].to_numpy())
        item_idx = self._item_index.get_indexer(ratings["item_id"].to_numpy())
        if (item_idx < 0).any():
            unknown = ratings.loc[item_idx < 0, "item_id"].iloc[0]
            raise DataError(
                f"rating refers to item_id {unknown!r} that is not in the item table",
                column="item_id",
            )
        if self.user_ids is None:
            ids = pd.unique(ratings["user_id"].to_numpy())
            if self.users is not None and "user_id" in self.users:
                ids = pd.unique(np.concatenate([ids, self.users["user_id"].to_numpy()]))
            self.user_ids = np.sort(ids) if _sortable(ids) else ids
        self._user_index = pd.Index(self.user_ids)
        user_idx = self._user_index.get_indexer(ratings["user_id"].to_numpy())
        if (user_idx < 0).any():
            unknown = ratings.loc[user_idx < 0, "user_id"].iloc[0]
            raise DataError(f"user_id {unknown!r} is not in the user id map", column="user_id")
        ratings["user_idx"] = user_idx.astype("int64")
        ratings["item_idx"] = item_idx.astype("int64")
        self.ratings = ratings.reset_index(drop=True)

    # ---- sizes and maps -------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self._user_index)

    @property
    def n_items(self) -> int:
        return len(self._item_index)

    @property
    def item_ids(self) -> np.ndarray:
        return self._item_index.to_numpy()

    @property
    def rating_scale(self) -> tuple[float, float]:
        """(min, max) rating seen in the data: the scale is read, never assumed."""
        if len(self.ratings) == 0:
            return (0.0, 1.0)
        r = self.ratings["rating"]
        return (float(r.min()), float(r.max()))

    def user_index(self, user_ids: object) -> np.ndarray:
        """Internal indices of outside user ids; -1 where unknown."""
        return self._user_index.get_indexer(np.atleast_1d(np.asarray(user_ids)))

    def item_index(self, item_ids: object) -> np.ndarray:
        """Internal indices of outside item ids; -1 where unknown."""
        return self._item_index.get_indexer(np.atleast_1d(np.asarray(item_ids)))

    # ---- derived views ----------------------------------------------------------------
    def with_ratings(self, ratings: pd.DataFrame, name: str | None = None) -> "Dataset":
        """A dataset over a subset of the ratings that keeps this one's id maps."""
        cols = [c for c in RATING_COLUMNS if c in ratings.columns]
        return Dataset(
            ratings[cols],
            self.items,
            self.users,
            name=name or self.name,
            user_ids=self.user_ids,
        )

    def to_csr(self, values: str | None = None) -> sp.csr_matrix:
        """User x item sparse matrix (1.0 per rating, or the given column's values)."""
        data = (
            np.ones(len(self.ratings), dtype=np.float32)
            if values is None
            else self.ratings[values].to_numpy(np.float32)
        )
        return sp.csr_matrix(
            (data, (self.ratings["user_idx"].to_numpy(), self.ratings["item_idx"].to_numpy())),
            shape=(self.n_users, self.n_items),
        )

    def genre_vocabulary(self) -> list[str]:
        """Sorted distinct genres of the catalogue."""
        return sorted({g for gs in self.items["genres"] for g in gs})

    def fingerprint(self) -> str:
        """sha256 over ratings and item ids: identifies the data a model was trained on."""
        h = hashlib.sha256()
        h.update(pd.util.hash_pandas_object(self.ratings[RATING_COLUMNS], index=False).to_numpy().tobytes())
        h.update(pd.util.hash_pandas_object(self.items["item_id"], index=False).to_numpy().tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        lo, hi = self.rating_scale
        return (
            f"Dataset({self.name!r}: {len(self.ratings):,} ratings, {self.n_users:,} users, "
            f"{self.n_items:,} items, ratings {lo:g}..{hi:g})"
        )


def _sortable(values: np.ndarray) -> bool:
    try:
        np.sort(values)
        return True
    except TypeError:
        return False


def to_plain(value: Any) -> Any:
    """numpy scalars as plain Python values (JSON, messages that read 'duplicate item_id 1')."""
    return value.item() if isinstance(value, np.generic) else value


def describe(ds: Dataset) -> dict[str, Any]:
    """A JSON-friendly summary: sizes, rating scale, sparsity, time span and genres."""
    n_r = len(ds.ratings)
    lo, hi = ds.rating_scale
    rated_items = int(ds.ratings["item_idx"].nunique())
    ts = ds.ratings["timestamp"]
    known = ts[ts > 0]
    genres = pd.Series([g for gs in ds.items["genres"] for g in gs], dtype=object).value_counts()
    return {
        "name": ds.name,
        "ratings": n_r,
        "users": ds.n_users,
        "items": ds.n_items,
        "rated_items": rated_items,
        "cold_items": ds.n_items - rated_items,
        "rating_min": lo,
        "rating_max": hi,
        "rating_mean": float(ds.ratings["rating"].mean()) if n_r else None,
        "density": n_r / max(1, ds.n_users * ds.n_items),
        "sparsity": 1.0 - n_r / max(1, ds.n_users * ds.n_items),
        "first_rating": int(known.min()) if len(known) else None,
        "last_rating": int(known.max()) if len(known) else None,
        "items_with_tags": int((ds.items["tags"].str.len() > 0).sum()),
        "items_with_description": int((ds.items["description"].str.len() > 0).sum()),
        "user_features": [c for c in (ds.users.columns if ds.users is not None else []) if c != "user_id"],
        "genres": {str(g): int(n) for g, n in genres.items()},
    }
