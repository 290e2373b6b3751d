"""The runtime ranker a bundle loads: feature arrays, normalisation and the plain net.

Retrieval proposes ``C`` candidates per user; :class:`Ranker` re-scores them from the features
of :func:`ranking.features.compute_features`, the same function training uses. Nothing here
imports Lightning: a bundle's ranker loads from safetensors weights plus plain JSON and ``.npy``
arrays (:func:`load_ranker`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from movierec.core.artifacts import Bundle, BundleWriter
from movierec.core.popularity import item_popularity
from ranking.collab_matrix import adjacent_rows, covered, prepare_collab
from ranking.collab_scores import SMALL_BATCH, CollabRows, collab_top
from ranking.features import FEATURES, PREFIX, FeatureContext, adjacent_columns, compute_features, feature_names, user_columns
from ranking.padding import PaddedHistories, pad_histories
from ranking.net import FusedScorer, GuardedRanker, RankerNet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankInputs:
    """What the features read besides the ranker's own statistics: the current catalogue's
    per-item arrays (they grow when movies are added at run time) and the users' encoded features.

    Args:
        content: (n_items, d) unit content vectors.
        genres: (n_items, G) genre indicators.
        years: (n_items,) release years, NaN when unknown.
        user_features: (n_users, F) encoded user features of the training users.
        history_limit: most recent history entries the features read (None: all of them), so
            a request's cost stays bounded however many movies a user rated.
    """

    content: np.ndarray
    genres: np.ndarray
    years: np.ndarray
    user_features: np.ndarray
    history_limit: int | None = None

    @property
    def n_items(self) -> int:
        return len(self.years)


class Ranker:
    """The runtime ranker a bundle loads: feature arrays, normalisation and the plain net.

    Args:
        net: the trained nets (:class:`~ranking.net.GuardedRanker`).
        meta: JSON-able settings: feature columns kept, normalisation mean/std, rating scale,
            candidate pool size.
        arrays: per-item and per-user statistics of the full training data (see ``save``).
        collab: (I0, I0) sparse item-item weights from the full training data.
        adjacent: (I0, I0) sparse rating-order adjacency from the full training data (None:
            trained without timestamps).
    """

    def __init__(
        self, net: GuardedRanker, meta: dict[str, Any], arrays: dict[str, np.ndarray], collab: sp.csr_matrix,
        adjacent: sp.csr_matrix | None = None,
    ) -> None:
        self.net = net.eval()
        self.meta = meta
        self.arrays = arrays
        self.collab = collab.tocsr()
        self.adjacent = adjacent.tocsr() if adjacent is not None else None
        self.columns = np.asarray(meta["columns"], dtype=np.int64)
        self.mean = np.asarray(meta["mean"], dtype=np.float32)
        self.std = np.asarray(meta["std"], dtype=np.float32)
        self.rating_min, self.rating_max = (float(v) for v in meta["rating_scale"])
        self._cached: tuple[int, FeatureContext] | None = None
        self._scorer: tuple[tuple[int, int], FusedScorer | None] | None = None
        self._params: tuple[Any, tuple[torch.Tensor, ...]] | None = None
        self.chunk_pairs = 16_384
        """(user, candidate) pairs re-ranked per step of a batch: the net's intermediates of a
        step stay in cache, faster than one step over the whole batch."""
        prepare_collab(self.collab)  # item-item tables built at load, not in the first request
        if self.adjacent is not None:
            adjacent_rows(self.adjacent)  # the same for the adjacency
            adjacent_columns(self.adjacent)

    @property
    def n_candidates(self) -> int:
        return int(self.meta["candidates"])

    @property
    def n_collab_candidates(self) -> int:
        return int(self.meta.get("collab_candidates", 0))

    def collab_candidates(self, histories: list[np.ndarray], exclude: list[np.ndarray]) -> np.ndarray:
        """(n, n_collab_candidates) extra candidates from the item-item model (-1 padded)."""
        return collab_top(self.collab, histories, exclude, self.n_collab_candidates)

    # ---- features --------------------------------------------------------------------------
    def context(self, inputs: RankInputs) -> FeatureContext:
        """Feature arrays for the current catalogue (rebuilt when items were added)."""
        n_items = inputs.n_items
        if self._cached is None or self._cached[0] != n_items:
            ctx = FeatureContext(
                content=np.asarray(inputs.content),
                genres=np.asarray(inputs.genres, np.float32),
                years=np.asarray(inputs.years, np.float64),
                item_counts=self.arrays["item_counts"],
                item_mean=self.arrays["item_mean"],
                collab=self.collab,
                user_mean=self.arrays["user_mean"],
                user_features=np.asarray(inputs.user_features, np.float32),
                global_mean=float(self.meta["global_mean"]),
                ref_year=float(self.meta["ref_year"]),
                **{name: self.arrays.get(name) for name in TIME_ARRAYS},
                ref_day=float(self.meta.get("ref_day", 0.0)),
                adjacent=self.adjacent,
            )
            self._cached = (n_items, ctx)
        return self._cached[1]

    def prepare(self, inputs: RankInputs) -> None:
        """Build the per-catalogue tables a batch reads (feature context, item tables), e.g.
        before forking workers, which then share them instead of each building its own."""
        _ = self.context(inputs).item_tables
        prepare_collab(self.collab, batch=True)

    def _ratings_of(
        self, users: np.ndarray, histories: list[np.ndarray], ratings: list[np.ndarray | None] | None = None,
        stored: np.ndarray | None = None,
    ) -> list[np.ndarray | None]:
        """Ratings of each user's history: the caller's (``ratings``: live feedback included)
        when they match the history, else the ratings stored at training when the history is
        the stored one (``stored``: :meth:`_stored`'s mask when known), else None."""
        indptr, vals = self.arrays["hist_indptr"], self.arrays["hist_ratings"]
        if stored is None:
            _, stored = self._stored(users, histories)
        given = ratings if ratings is not None else [None] * len(histories)
        out: list[np.ndarray | None] = []
        for u, h, r, same in zip(users, histories, given, stored):
            if r is not None and u >= 0 and len(r) == len(h):
                out.append(r)
            elif same:
                out.append(vals[indptr[u] : indptr[u + 1]])
            else:
                out.append(None)  # live feedback or a new user: ratings unknown, centred to 0
        return out

    def _padded(
        self, ctx: FeatureContext, inputs: RankInputs, users: np.ndarray, histories: list[np.ndarray],
        ratings: list[np.ndarray | None] | None = None, stored: np.ndarray | None = None,
    ) -> PaddedHistories:
        users = np.asarray(users, dtype=np.int64)
        known = (users >= 0) & (users < len(ctx.user_mean))
        mu = np.where(known, ctx.user_mean[np.where(known, users, 0)], ctx.global_mean)
        return pad_histories(histories, self._ratings_of(users, histories, ratings, stored), mu, inputs.history_limit)

    @property
    def batch_users(self) -> int:
        """Users per step of a ranked batch with item-item candidates (see :meth:`collab_rows`):
        their item-item rows over the covered items stay near 32 MB per array."""
        return max(SMALL_BATCH + 1, (1 << 22) // max(covered(self.collab).m, 1))

    def collab_rows(
        self, inputs: RankInputs, users: np.ndarray, histories: list[np.ndarray], n_cand: int,
        ratings: list[np.ndarray | None] | None = None,
    ) -> CollabRows | None:
        """The batch's item-item rows, read by both the item-item candidates (``.top``) and the
        features of the merged lists of ``n_cand`` candidates (``rerank(..., collab=...)``), or
        None where the features would not read whole rows (see :meth:`CollabRows.of`)."""
        ctx = self.context(inputs)
        return CollabRows.of(ctx, self._padded(ctx, inputs, users, histories, ratings), n_cand)

    def features(
        self, inputs: RankInputs, users: np.ndarray, histories: list[np.ndarray], cand: np.ndarray, cand_scores: np.ndarray,
        ratings: list[np.ndarray | None] | None = None, collab: CollabRows | None = None,
    ) -> np.ndarray:
        """Normalised net input (n, C, F'), NaN replaced by 0 (the training mean).

        Args:
            users: (n,) user rows (-1: a user the training data does not have).
            histories: each user's items, oldest first.
            cand, cand_scores: (n, C) candidates (-1 padded) and their retrieval scores.
            ratings: each history's ratings when the caller knows them (live feedback).
            collab: the users' item-item rows when already computed (:meth:`collab_rows`).
        """
        ctx = self.context(inputs)
        users = np.asarray(users, dtype=np.int64)
        known, stored = self._stored(users, histories)
        hist = collab.hist if collab is not None and collab.hist is not None else None
        if hist is None:
            hist = self._padded(ctx, inputs, users, histories, ratings, stored)
        # a known user whose history is not the stored one rated since training: active now
        raw = compute_features(ctx, users, hist, cand, cand_scores, collab, active=known & ~stored)
        return self.normalise(raw, overwrite=True)

    def _stored(self, users: np.ndarray, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(known, stored): users the training data has, and those of them whose history is the
        one stored at training (same length: no live feedback since)."""
        users = np.asarray(users, dtype=np.int64)
        indptr = self.arrays["hist_indptr"]
        known = (users >= 0) & (users < len(indptr) - 1)
        safe = np.where(known, users, 0)
        lengths = np.fromiter((len(h) for h in histories), np.int64, len(histories))
        return known, known & (lengths == indptr[safe + 1] - indptr[safe])

    def normalise(self, raw: np.ndarray, overwrite: bool = False) -> np.ndarray:
        """``(raw[..., columns] - mean) / std`` as float32, NaN and infinities set to 0.

        ``overwrite=True`` lets it reuse ``raw`` (a fresh float32 array the caller drops) when
        every column is kept, saving the copies a request would otherwise make.
        """
        c = self.columns
        same = raw.dtype == np.float32 and raw.shape[-1] == len(c) and bool((c == np.arange(len(c))).all())
        x = raw if (overwrite and same) else raw[..., c]
        x = np.subtract(x, self.mean, out=x if x.dtype == np.float32 else None, dtype=np.float32)
        np.divide(x, self.std, out=x)
        x[~np.isfinite(x)] = 0.0  # what nan_to_num(nan=0, posinf=0, neginf=0) does, in one pass
        return x

    # ---- scoring ---------------------------------------------------------------------------
    def _fused(self) -> FusedScorer | None:
        """The NumPy scorer of the current net, rebuilt when the net or its weights change
        (a parameter's ``_version`` counts its in-place updates); None keeps torch."""
        net = self.net
        params = self._params
        if params is None or params[0] is not net:  # the parameter list once per net: walking the modules every request costs more than the check
            params = self._params = (net, tuple(net.parameters()))
        key = (id(net), sum(p._version for p in params[1]))
        cached = self._scorer
        if cached is None or cached[0] != key:
            n_dense = len(self.columns)
            user = user_columns(self.columns)
            cached = self._scorer = (key, FusedScorer.build(net, n_dense, user) if not net.training else None)
        return cached[1]

    FUSED_MAX_PAIRS = 512
    """Up to this many (user, candidate) pairs (a request's list) the members run fused; larger
    batches run member by member, where per-call overhead no longer counts and the fused
    layout's reshapes cost more (benchmarks/ranking_speed.py)."""

    def score_net(self, x: np.ndarray, users: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """The net's ranking scores (n, C) of normalised features ``x`` (n, C, F): for a request's
        list the fused scorer when it reproduces the net, else the torch net."""
        fused = self._fused() if x.shape[0] * x.shape[1] <= self.FUSED_MAX_PAIRS else None
        if fused is not None:
            return fused(x, users, cand)
        return self.net.score(torch.from_numpy(x), torch.from_numpy(users), torch.from_numpy(cand)).numpy()

    @torch.inference_mode()
    def _net(self, x: np.ndarray, users: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, rating = self.net(torch.from_numpy(x), torch.from_numpy(np.asarray(users, np.int64)), torch.from_numpy(cand))
        return score.numpy(), rating.numpy()

    def rerank(
        self, inputs: RankInputs, users: np.ndarray, histories: list[np.ndarray], cand: np.ndarray, cand_scores: np.ndarray,
        ratings: list[np.ndarray | None] | None = None, collab: CollabRows | None = None,
    ) -> np.ndarray:
        """Scores (n, C), higher is better; -inf at padding (arguments as in :meth:`features`).

        Fallbacks, so a request never fails here: a row whose net scores are not finite keeps
        the two-tower order; a user with no history and no id (nothing personal to rank on)
        gets popularity order with the two-tower score breaking ties.
        """
        cand = np.asarray(cand, dtype=np.int64)
        cand_scores = np.asarray(cand_scores, dtype=np.float32)
        users = np.ascontiguousarray(users, dtype=np.int64)  # reversed/strided views break torch.from_numpy
        n, c = cand.shape
        valid = cand >= 0
        if n == 0 or c == 0 or not valid.any():
            return np.full((n, c), -np.inf, dtype=np.float32)
        x = self.features(inputs, users, histories, cand, cand_scores, ratings, collab)
        score = np.empty((n, c), np.float32)
        step = max(1, self.chunk_pairs // c)
        for s in range(0, n, step):  # the net per chunk of users: its intermediates stay in cache
            e = min(n, s + step)
            score[s:e] = self.score_net(x[s:e], users[s:e], cand[s:e])
        lengths = np.fromiter((len(h) for h in histories), np.int64, n)
        cold = (lengths == 0) & ~((users >= 0) & (users < len(self.arrays["user_mean"])))
        bad = ~np.isfinite(np.where(valid, score, 0.0)).all(1) | cold
        if bad.any():
            log.debug("ranker fallback for %d of %d rows", int(bad.sum()), n)
            score = np.where(bad[:, None], _fallback_scores(cand, cand_scores, self.arrays["item_counts"]), score)
        return np.where(valid, score, np.float32(-np.inf)).astype(np.float32, copy=False)

    def rate(
        self, inputs: RankInputs, users: np.ndarray, histories: list[np.ndarray], cand: np.ndarray, cand_scores: np.ndarray,
        ratings: list[np.ndarray | None] | None = None,
    ) -> np.ndarray:
        """Rating-head predictions (n, C) for each user's candidates, on the data's rating scale
        (arguments as in :meth:`features`). The rank features are relative to the list, so a
        pair is rated inside the user's retrieval candidate list, as the head was trained."""
        cand = np.asarray(cand, dtype=np.int64)
        users = np.asarray(users, dtype=np.int64)
        x = self.features(inputs, users, histories, cand, np.asarray(cand_scores, np.float32), ratings)
        _, rating = self._net(x, users, cand)
        return np.clip(rating, self.rating_min, self.rating_max)

    # ---- persistence -----------------------------------------------------------------------
    def save(self, writer: BundleWriter) -> None:
        writer.save_tensors(f"{PREFIX}net.safetensors", self.net.state_dict())
        writer.save_json(f"{PREFIX}meta.json", self.meta)
        for name, arr in self.arrays.items():
            writer.save_array(f"{PREFIX}{name}.npy", arr)
        _save_csr(writer, "collab", self.collab)
        if self.adjacent is not None:
            _save_csr(writer, "adjacent", self.adjacent)


def _save_csr(writer: BundleWriter, name: str, m: sp.csr_matrix) -> None:
    writer.save_array(f"{PREFIX}{name}_indptr.npy", m.indptr.astype(np.int64))
    writer.save_array(f"{PREFIX}{name}_indices.npy", m.indices.astype(np.int32))
    writer.save_array(f"{PREFIX}{name}_data.npy", m.data.astype(np.float32))


def _load_csr(bundle: Bundle, name: str, n: int) -> sp.csr_matrix:
    """The (n, n) matrix :func:`_save_csr` wrote as ``name``."""
    arrays = (bundle.array(f"{PREFIX}{name}_{part}.npy") for part in ("data", "indices", "indptr"))
    return sp.csr_matrix(tuple(arrays), shape=(n, n))


ARRAYS = ("item_counts", "item_mean", "user_mean", "hist_indptr", "hist_ratings")
TIME_ARRAYS = ("item_first_day", "user_first_day", "user_last_day")
"""Written when the training ratings carry timestamps (the time features read them)."""


def _fallback_scores(cand: np.ndarray, cand_scores: np.ndarray, item_counts: np.ndarray) -> np.ndarray:
    """Popularity order, two-tower score breaking ties (and ordering run-time items, count 0)."""
    pop = np.log1p(item_popularity(item_counts, cand))
    tt = np.nan_to_num(cand_scores, nan=0.0, posinf=0.0, neginf=0.0)
    span = np.abs(tt).max() + 1.0
    return (pop + 1e-3 * tt / span).astype(np.float32)


def load_ranker(bundle: Bundle) -> Ranker:
    """Load the ranker of a bundle (plain module + arrays; no Lightning, no pickle)."""
    meta = bundle.json(f"{PREFIX}meta.json")
    columns = [int(i) for i in meta["columns"]]
    names = feature_names(max(max(columns, default=0) + 1 - len(FEATURES), 0))
    expected = [names[i] for i in columns]
    if list(meta["feature_names"]) != expected:  # a bundle from an older feature layout
        raise ValueError(
            f"{bundle.path}: the ranker was trained on features {meta['feature_names']} but this version "
            f"computes {expected} in those columns; retrain the bundle"
        )
    ensemble = meta.get("ensemble")
    if not ensemble:
        raise ValueError(f"{bundle.path}: the ranker is a single net, not a guarded ensemble; retrain the bundle")
    net = GuardedRanker(
        [RankerNet(**meta["net"]) for _ in range(int(ensemble["members"]))], float(ensemble["alpha"]), int(ensemble["base_column"])
    )
    net.load_state_dict(bundle.tensors(f"{PREFIX}net.safetensors"))
    arrays = {name: bundle.array(f"{PREFIX}{name}.npy") for name in ARRAYS}
    arrays.update({name: bundle.array(f"{PREFIX}{name}.npy") for name in TIME_ARRAYS if bundle.has(f"{PREFIX}{name}.npy")})
    collab = _load_csr(bundle, "collab", int(meta["collab_items"]))
    adjacent = _load_csr(bundle, "adjacent", int(meta["adjacent_items"])) if "adjacent_items" in meta else None
    return Ranker(net, meta, arrays, collab, adjacent)
