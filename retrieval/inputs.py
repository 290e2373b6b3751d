"""Inputs of the two towers, built the same way in training, batch candidates and serving.

:class:`Histories` keeps every user's rated items (most recent last) as a CSR matrix and turns a
batch of users into padded tensors for :class:`~retrieval.towers.UserTower`.
:class:`UserFeatureEncoder` turns a users frame into a dense matrix and round-trips as JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.nn import functional as F


class Histories:
    """Per-user item histories in time order.

    Args:
        indptr, items: CSR layout: ``items[indptr[u]:indptr[u+1]]`` are user u's item_idx,
            oldest first.
    """

    def __init__(self, indptr: np.ndarray, items: np.ndarray) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.items = np.asarray(items, dtype=np.int64)

    @staticmethod
    def time_order(ratings: pd.DataFrame) -> np.ndarray:
        """Row positions of ``ratings`` by user, then time (ties keep their order): entry j of
        :meth:`from_ratings`'s ``items`` is row ``time_order(ratings)[j]``."""
        return np.lexsort((ratings["timestamp"].to_numpy(), ratings["user_idx"].to_numpy()))

    @classmethod
    def from_ratings(cls, ratings: pd.DataFrame, n_users: int) -> "Histories":
        order = cls.time_order(ratings)
        users = ratings["user_idx"].to_numpy()[order]
        counts = np.bincount(users, minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return cls(indptr, ratings["item_idx"].to_numpy()[order])

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def of(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def lengths(self, users: np.ndarray) -> np.ndarray:
        return self.indptr[users + 1] - self.indptr[users]

    def to_csr(self, n_items: int) -> sp.csr_matrix:
        """Users x items 0/1 matrix (for excluding seen items)."""
        data = np.ones(len(self.items), dtype=np.float32)
        return sp.csr_matrix((data, self.items, self.indptr), shape=(self.n_users, n_items))

    def padded(
        self,
        users: np.ndarray,
        length: int,
        drop_items: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """(B, length) item_idx, -1 padded: the most recent ``length`` items of each user, or a
        random sample of them when ``rng`` is given (training). ``drop_items`` (B,) removes the
        target item from its own row, so the model never sees the answer in the question."""
        users = np.asarray(users, dtype=np.int64)
        starts, ends = self.indptr[users], self.indptr[users + 1]
        n = ends - starts
        out = np.full((len(users), length), -1, dtype=np.int64)
        if rng is None:
            take = np.minimum(n, length)
            offs = np.arange(length)[None, :]
            pos = (ends - take)[:, None] + offs
            valid = offs < take[:, None]
        else:
            # a random window of the user's items (cheap, vectorised sampling without replacement)
            span = np.maximum(n - length, 0)
            first = starts + (rng.random(len(users)) * (span + 1)).astype(np.int64)
            offs = np.arange(length)[None, :]
            pos = first[:, None] + offs
            valid = offs < np.minimum(n, length)[:, None]
        out[valid] = self.items[pos[valid]]
        if drop_items is not None:
            out[out == np.asarray(drop_items)[:, None]] = -1
        return out


    def preceding(self, users: np.ndarray, slots: np.ndarray, length: int) -> np.ndarray:
        """(B, length) item_idx, -1 padded: the (at most) ``length`` items user ``users[b]`` rated
        just before the entry at ``slots[b]`` of ``items``, oldest first: the history a query for
        that user's next movie had at the time."""
        users, slots = np.asarray(users, dtype=np.int64), np.asarray(slots, dtype=np.int64)
        starts = np.maximum(self.indptr[users], slots - length)
        take = slots - starts
        offs = np.arange(length)[None, :]
        valid = offs < take[:, None]
        out = np.full((len(users), length), -1, dtype=np.int64)
        out[valid] = self.items[(starts[:, None] + offs)[valid]]
        return out


def pooled_content(hist: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Mean content vector of each padded history row (zeros for an empty row).

    One weighted embedding-bag sum over ``content`` as it is (no copy): it touches only the
    history entries, where a dense (rows, L, C) gather cost a third of a training step and a
    scipy averaging matrix most of the batch building.
    """
    if hist.shape[1] == 0:
        return np.zeros((len(hist), content.shape[1]), np.float32)
    valid = hist >= 0
    weights = valid / np.maximum(valid.sum(1, keepdims=True), 1)
    pooled = F.embedding_bag(
        torch.from_numpy(np.where(valid, hist, 0)),
        torch.from_numpy(np.ascontiguousarray(content, dtype=np.float32)),
        per_sample_weights=torch.from_numpy(weights.astype(np.float32)),
        mode="sum",
    )
    return pooled.numpy()


def user_batch(
    users: np.ndarray,
    hist: np.ndarray,
    content: np.ndarray,
    features: np.ndarray | None,
    has_id: np.ndarray,
    n_model_items: int,
) -> dict[str, torch.Tensor]:
    """Tensors for :meth:`UserTower.forward` from padded histories.

    Items beyond the id table (added after training) are left out of the id pooling but still
    count through their content vectors.
    """
    id_hist = np.where(hist < n_model_items, hist, -1)
    weights = (id_hist >= 0).astype(np.float32)
    batch = {
        "user_idx": torch.from_numpy(np.asarray(users, dtype=np.int64)),
        "has_id": torch.from_numpy(np.asarray(has_id, dtype=np.float32)),
        "hist_items": torch.from_numpy(id_hist),
        "hist_weights": torch.from_numpy(weights),
        "hist_content": torch.from_numpy(pooled_content(hist, content)),
    }
    if features is not None:
        batch["user_features"] = torch.from_numpy(np.asarray(features, dtype=np.float32))
    return batch


class UserFeatureEncoder:
    """One-hot for categorical columns, standardised numbers for numeric ones.

    Fitted on the users frame of the training data; unknown users and unseen categories encode as
    zeros. ``to_json``/``from_json`` keep the spec in the bundle without pickle.
    """

    def __init__(self, spec: list[dict[str, Any]]) -> None:
        self.spec = spec

    @property
    def dim(self) -> int:
        return sum(len(s["levels"]) if s["kind"] == "cat" else 1 for s in self.spec)

    @classmethod
    def fit(cls, users: pd.DataFrame | None, max_levels: int = 50) -> "UserFeatureEncoder":
        spec: list[dict[str, Any]] = []
        if users is None:
            return cls(spec)
        for col in users.columns:
            if col == "user_id":
                continue
            s = users[col]
            if pd.api.types.is_numeric_dtype(s):
                v = s.astype(float)
                spec.append({"name": col, "kind": "num", "mean": float(v.mean()), "std": float(v.std() or 1.0)})
            else:
                levels = s.astype(str).value_counts().index[:max_levels].tolist()
                spec.append({"name": col, "kind": "cat", "levels": levels})
        return cls(spec)

    def transform(self, users: pd.DataFrame) -> np.ndarray:
        cols = []
        for s in self.spec:
            col = users[s["name"]] if s["name"] in users else pd.Series([None] * len(users))
            if s["kind"] == "num":
                v = pd.to_numeric(col, errors="coerce").astype(float)
                cols.append(((v - s["mean"]) / s["std"]).fillna(0.0).to_numpy()[:, None])
            else:
                codes = pd.Categorical(col.astype(str), categories=s["levels"]).codes
                onehot = np.zeros((len(users), len(s["levels"])), dtype=np.float32)
                ok = codes >= 0
                onehot[np.flatnonzero(ok), codes[ok]] = 1.0
                cols.append(onehot)
        if not cols:
            return np.zeros((len(users), 0), dtype=np.float32)
        return np.hstack(cols).astype(np.float32)

    def encode_dataset_users(self, user_ids: np.ndarray, users: pd.DataFrame | None) -> np.ndarray:
        """(n_users, dim) features in user_idx order; zeros for users without a row."""
        if users is None or not self.spec:
            return np.zeros((len(user_ids), self.dim), dtype=np.float32)
        frame = users.drop_duplicates("user_id").set_index("user_id").reindex(user_ids).reset_index()
        return self.transform(frame)

    def to_json(self) -> list[dict[str, Any]]:
        return self.spec

    @classmethod
    def from_json(cls, spec: list[dict[str, Any]]) -> "UserFeatureEncoder":
        return cls(spec)
