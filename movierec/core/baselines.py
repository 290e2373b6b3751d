"""Baselines every later model has to beat: most-popular, biased MF, TruncatedSVD, item-kNN, RP3beta, EASE.

Each baseline is a :class:`~movierec.core.sources.DenseScorer`: ``fit(train)`` learns from a
:class:`~movierec.core.data.Dataset`, ``score_users(user_idx)`` gives ``(n, n_items)`` scores, and the
mixin supplies ``recommend`` / ``similar_items``. Rating models (biased MF, SVD with
``target="rating"``) also ``predict(user_idx, item_idx)`` ratings clipped to the training scale.

Default hyper-parameters were chosen on a validation split carved from the *training* part of
MovieLens 100K (``movierec.core.splits.validation_split(train, 0.1, seed=0)`` of the P2 train side,
scored by NDCG@10, and of ``u1.base`` for the rating models, scored by RMSE), never on a test
split: ``python benchmarks/quality.py --data ../shared/data/ml-100k --tune`` reruns that grid
search and prints the winners:

==========  ==========================================
model       chosen
==========  ==========================================
bias        damping=5
mf          dim=64, lr=5e-3, reg=0.1
svd-rating  n_components=8, damping=5
mf-bpr      dim=32, reg=0.01
svd         n_components=16
item-knn    k_neighbors=10, shrinkage=10
rp3beta     alpha=1, beta=0.5, k_neighbors=100
ease        lam=500
==========  ==========================================
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader

from movierec.core.data import Dataset
from movierec.core.ease import ease_weights
from movierec.core.metrics import top_positive
from movierec.core.mf import MFModule, pair_loader
from movierec.core.popularity import rating_counts
from movierec.core.sources import DenseScorer

log = logging.getLogger(__name__)


class NotFittedError(RuntimeError):
    """A model was asked to score before ``fit``."""


class _Baseline(DenseScorer):
    """Shared checks: fitted state, index ranges, ``k``. Subclasses implement ``_fit``/``_score``."""

    name: str = "baseline"
    n_users: int = 0
    n_items: int = 0
    _fitted: bool = False
    threads: int = 1
    """BLAS threads for fit and scoring. One by default: on a small shared machine a second
    BLAS thread spinning against a busy core made SVD/EASE several times slower, not faster."""

    def fit(self, train: Dataset) -> "_Baseline":
        """Learn from ``train``; returns ``self`` so calls chain."""
        if len(train.ratings) == 0:
            raise ValueError(f"{self.name}: cannot fit on a dataset without ratings")
        self.n_users, self.n_items = train.n_users, train.n_items
        self.rating_scale = train.rating_scale
        with threadpool_limits(limits=self.threads):
            self._fit(train)
        self._fitted = True
        return self

    def _fit(self, train: Dataset) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, users: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(f"{self.name}: call fit() before scoring")

    def _check_idx(self, idx: np.ndarray | int, n: int, what: str) -> np.ndarray:
        """``idx`` as int64 of shape (n,), every value in ``0..n-1``; ``what`` names it in errors."""
        arr = np.atleast_1d(np.asarray(idx))
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{self.name}: {what} must be integers of shape (n,), got {arr.dtype} {arr.shape}")
        bad = (arr < 0) | (arr >= n)
        if bad.any():
            raise IndexError(f"{self.name}: {what} {int(arr[bad][0])} outside 0..{n - 1}")
        return arr.astype(np.int64)

    def _check_users(self, user_idx: np.ndarray | int) -> np.ndarray:
        self._check_fitted()
        return self._check_idx(user_idx, self.n_users, "user_idx")

    def _check_items(self, item_idx: np.ndarray | int) -> np.ndarray:
        return self._check_idx(item_idx, self.n_items, "item_idx")

    def score_users(self, user_idx: np.ndarray) -> np.ndarray:
        """(n,) user_idx -> (n, n_items) float32 scores, higher is better."""
        users = self._check_users(user_idx)
        with threadpool_limits(limits=self.threads):
            return np.asarray(self._score(users), dtype=np.float32)

    def recommend(
        self, user_idx: np.ndarray | int, k: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item_idx and scores per user, best first, ``exclude[user]`` items skipped."""
        if int(k) < 1:
            raise ValueError(f"{self.name}: k must be >= 1, got {k}")
        self._check_users(user_idx)
        return super().recommend(user_idx, int(k), exclude)

    def similar_items(self, item_idx: np.ndarray | int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` most similar item_idx per item (the item itself excluded)."""
        self._check_fitted()
        if int(k) < 1:
            raise ValueError(f"{self.name}: k must be >= 1, got {k}")
        self._check_items(item_idx)
        return super().similar_items(item_idx, int(k))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters (constructor arguments), for logs and result tables."""
        return {}


# ---- most popular ------------------------------------------------------------------------------
class MostPopular(_Baseline):
    """Score = how many training users rated the item: the floor every personalised model must clear."""

    name = "popular"

    def _fit(self, train: Dataset) -> None:
        self.popularity = rating_counts(train.ratings["item_idx"].to_numpy(), train.n_items).astype(np.float32)

    def _score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(users), self.n_items)).copy()

    def similar_items(self, item_idx: np.ndarray | int, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError("popular: has no notion of item similarity")


# ---- biased matrix factorisation (Lightning) ---------------------------------------------------
def _batches(ds: Dataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    r = ds.ratings
    return pair_loader(r["user_idx"].to_numpy(), r["item_idx"].to_numpy(), r["rating"].to_numpy(), batch_size, shuffle, seed)


class BiasedMF(_Baseline):
    """Biased matrix factorisation trained with Lightning's Trainer.

    ``objective="rating"``: MSE on observed ratings (the P1 rating model; top-N ranks by predicted
    rating, which ignores *what* users choose to rate and so ranks poorly).
    ``objective="bpr"``: Bayesian personalised ranking against uniformly sampled negatives, the
    same factorisation aimed at top-N.

    Early stopping: with ``val_fraction > 0`` a validation split is carved from the training data
    (``movierec.core.splits.validation_split``), training stops after ``patience`` epochs without
    improvement and the best epoch's weights are kept.
    """

    def __init__(
        self,
        dim: int = 64,
        lr: float = 5e-3,
        reg: float = 0.1,
        epochs: int = 40,
        batch_size: int = 1024,
        objective: Literal["rating", "bpr"] = "rating",
        val_fraction: float = 0.1,
        patience: int = 3,
        seed: int = 42,
        threads: int = 1,
        show_progress: bool = False,
    ) -> None:
        if objective not in ("rating", "bpr"):
            raise ValueError(f"objective must be 'rating' or 'bpr', got {objective!r}")
        self.dim, self.lr, self.reg, self.epochs = dim, lr, reg, epochs
        self.batch_size, self.objective, self.val_fraction = batch_size, objective, val_fraction
        self.patience, self.seed, self.threads, self.show_progress = patience, seed, threads, show_progress
        self.name = "mf" if objective == "rating" else "mf-bpr"

    def get_params(self) -> dict[str, Any]:
        return {"dim": self.dim, "lr": self.lr, "reg": self.reg, "epochs": self.epochs,
                "batch_size": self.batch_size, "objective": self.objective}

    def _fit(self, train: Dataset) -> None:
        from lightning.pytorch.callbacks import EarlyStopping

        from movierec.core.splits import validation_split

        torch.set_num_threads(self.threads)
        L.seed_everything(self.seed, workers=True, verbose=False)
        fit_ds, val_ds = (validation_split(train, self.val_fraction, seed=self.seed)
                          if self.val_fraction > 0 else (train, None))
        mu = float(fit_ds.ratings["rating"].mean())
        self.module = MFModule(train.n_users, train.n_items, self.dim, mu, self.lr, self.reg, self.objective)
        monitor = "val/rmse" if self.objective == "rating" else "val/loss"
        callbacks = [EarlyStopping(monitor, patience=self.patience, mode="min")] if val_ds is not None else []
        trainer = L.Trainer(
            max_epochs=self.epochs, accelerator="cpu", devices=1, logger=False,
            enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=self.show_progress, callbacks=callbacks,
            num_sanity_val_steps=0, deterministic=True,
        )
        val_loader = _batches(val_ds, 8192, False, self.seed) if val_ds is not None else None
        trainer.fit(self.module, _batches(fit_ds, self.batch_size, True, self.seed), val_loader)
        if self.module.best_state is not None:
            self.module.net.load_state_dict(self.module.best_state)
            log.info("%s: best %s %.4f after %d epochs", self.name, monitor,
                     self.module.best_score, trainer.current_epoch)
        self.module.net.eval()
        self.item_vectors = self.module.net.item.weight.detach().numpy().copy()

    @torch.no_grad()
    def _score(self, users: np.ndarray) -> np.ndarray:
        return self.module.net.all_scores(torch.as_tensor(users)).numpy()

    @torch.no_grad()
    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Predicted ratings for (user, item) pairs, clipped to the training rating scale."""
        users, items = self._check_users(user_idx), self._check_items(item_idx)
        if users.shape != items.shape:
            raise ValueError(f"{self.name}: user_idx {users.shape} and item_idx {items.shape} differ in shape")
        out = self.module.net(torch.as_tensor(users), torch.as_tensor(items)).numpy()
        return np.clip(out, *self.rating_scale)


# ---- truncated SVD -------------------------------------------------------------------------------
class SVDRecommender(_Baseline):
    """TruncatedSVD (scikit-learn) of the user-item matrix.

    ``target="implicit"`` (PureSVD): factorise the 0/1 matrix and score by folding each user's
    row into the item space, ``x_u V^T V``; a strong, cheap top-N baseline.
    ``target="rating"``: factorise ratings minus the damped baseline ``mu + b_u + b_i`` (missing
    entries count as 0 residual) and predict ``baseline + reconstruction``.
    """

    def __init__(self, n_components: int = 16, target: Literal["implicit", "rating"] = "implicit",
                 damping: float = 5.0, seed: int = 42) -> None:
        if target not in ("implicit", "rating"):
            raise ValueError(f"target must be 'implicit' or 'rating', got {target!r}")
        self.n_components, self.target, self.damping, self.seed = n_components, target, damping, seed
        self.name = "svd" if target == "implicit" else "svd-rating"

    def get_params(self) -> dict[str, Any]:
        return {"n_components": self.n_components, "target": self.target, "damping": self.damping}

    def _fit(self, train: Dataset) -> None:
        from sklearn.decomposition import TruncatedSVD

        k = min(self.n_components, min(train.n_users, train.n_items) - 1)
        if k < 1:
            raise ValueError(f"{self.name}: need at least 2 users and 2 items")
        if self.target == "implicit":
            self.matrix = train.to_csr()
        else:
            self.mu, self.b_user, self.b_item = _damped_biases(train, self.damping)
            r = train.ratings
            resid = (r["rating"].to_numpy(np.float64) - self.mu - self.b_user[r["user_idx"].to_numpy()]
                     - self.b_item[r["item_idx"].to_numpy()])
            self.matrix = sp.csr_matrix((resid.astype(np.float32), (r["user_idx"], r["item_idx"])),
                                        shape=(train.n_users, train.n_items))
        svd = TruncatedSVD(n_components=k, random_state=self.seed, algorithm="randomized", n_iter=7)
        svd.fit(self.matrix)
        self.components = svd.components_.astype(np.float32)  # (k, n_items)
        self.item_vectors = (self.components.T * svd.singular_values_[None, :]).astype(np.float32)

    def _score(self, users: np.ndarray) -> np.ndarray:
        recon = (self.matrix[users] @ self.components.T) @ self.components
        if self.target == "implicit":
            return recon
        return recon + self.mu + self.b_user[users][:, None] + self.b_item[None, :]

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Predicted ratings (``target="rating"`` only), clipped to the training rating scale."""
        if self.target != "rating":
            raise ValueError(f"{self.name}: predict needs target='rating'")
        users, items = self._check_users(user_idx), self._check_items(item_idx)
        if users.shape != items.shape:
            raise ValueError(f"{self.name}: user_idx {users.shape} and item_idx {items.shape} differ in shape")
        user_vec = self.matrix[users] @ self.components.T  # (n, k)
        resid = np.einsum("nk,kn->n", user_vec, self.components[:, items])
        out = self.mu + self.b_user[users] + self.b_item[items] + resid
        return np.clip(out, *self.rating_scale)


def _damped_biases(train: Dataset, damping: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Global mean plus item then user biases, each shrunk towards 0 by ``damping`` pseudo-counts."""
    r = train.ratings
    rating = r["rating"].to_numpy(np.float64)
    u, i = r["user_idx"].to_numpy(), r["item_idx"].to_numpy()
    mu = float(rating.mean())
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")

    def _ratio(num: np.ndarray, count: np.ndarray) -> np.ndarray:
        den = count + damping
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)  # unrated -> 0

    b_item = _ratio(np.bincount(i, rating - mu, train.n_items), np.bincount(i, minlength=train.n_items))
    b_user = _ratio(np.bincount(u, rating - mu - b_item[i], train.n_users), np.bincount(u, minlength=train.n_users))
    return mu, b_user.astype(np.float32), b_item.astype(np.float32)


class BiasBaseline(_Baseline):
    """Rating predictor ``mu + b_u + b_i`` with damped biases (``damping=inf`` gives the global mean).

    The reference row of the P1 table: a rating model that does not beat it has learnt nothing
    personal.
    """

    def __init__(self, damping: float = 5.0, use_biases: bool = True) -> None:
        self.damping, self.use_biases = damping, use_biases
        self.name = "bias" if use_biases else "global-mean"

    def get_params(self) -> dict[str, Any]:
        return {"damping": self.damping, "use_biases": self.use_biases}

    def _fit(self, train: Dataset) -> None:
        self.mu, self.b_user, self.b_item = _damped_biases(train, self.damping)
        if not self.use_biases:
            self.b_user[:] = 0
            self.b_item[:] = 0

    def _score(self, users: np.ndarray) -> np.ndarray:
        return self.mu + self.b_user[users][:, None] + self.b_item[None, :]

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        """Predicted ratings, clipped to the training rating scale."""
        users, items = self._check_users(user_idx), self._check_items(item_idx)
        if users.shape != items.shape:
            raise ValueError(f"{self.name}: user_idx {users.shape} and item_idx {items.shape} differ in shape")
        return np.clip(self.mu + self.b_user[users] + self.b_item[items], *self.rating_scale)

    def similar_items(self, item_idx: np.ndarray | int, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError(f"{self.name}: has no notion of item similarity")


# ---- item-kNN ----------------------------------------------------------------------------------
def _top_neighbours(n: int, block: int, k: int, slab: Any) -> sp.csr_matrix:
    """(n, n) sparse item-item weights keeping each row's ``k`` largest positive entries;
    ``slab(lo, hi)`` gives rows ``lo:hi`` dense (blocks keep the slab at block x n_items), the
    diagonal is dropped."""
    rows, cols, vals = [], [], []
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        w = slab(lo, hi)
        w[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        for part, piece in zip((rows, cols, vals), top_positive(w, lo, k)):
            part.append(piece)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


class ItemKNN(_Baseline):
    """Item-based collaborative filtering: cosine between item columns of the 0/1 user-item
    matrix, keeping each item's ``k_neighbors`` most similar items; a user's score for an item is
    the summed similarity to the items they rated.

    ``shrinkage`` damps similarities supported by few co-raters (``sim * n / (n + shrinkage)`` is
    approximated by adding it to the cosine denominator, as in common item-kNN implementations).
    """

    def __init__(self, k_neighbors: int = 10, shrinkage: float = 10.0, block: int = 2048) -> None:
        if k_neighbors < 1:
            raise ValueError(f"k_neighbors must be >= 1, got {k_neighbors}")
        self.k_neighbors, self.shrinkage, self.block = k_neighbors, shrinkage, block
        self.name = "item-knn"

    def get_params(self) -> dict[str, Any]:
        return {"k_neighbors": self.k_neighbors, "shrinkage": self.shrinkage}

    def _fit(self, train: Dataset) -> None:
        x = train.to_csr()
        x.data[:] = 1.0
        self.matrix = x
        xt = x.T.tocsr().astype(np.float32)  # (n_items, n_users)
        norms = np.sqrt(np.asarray(xt.multiply(xt).sum(1)).ravel())
        n = train.n_items
        k = min(self.k_neighbors, n - 1)

        def cosine(lo: int, hi: int) -> np.ndarray:
            sim = np.asarray((xt[lo:hi] @ xt.T).todense(), dtype=np.float32)
            sim /= norms[lo:hi, None] * norms[None, :] + self.shrinkage + 1e-9
            return sim

        self.similarity = _top_neighbours(n, self.block, k, cosine)

    def _score(self, users: np.ndarray) -> np.ndarray:
        # score[u, j] = sum_i x[u, i] * sim[i, j]
        return np.asarray((self.matrix[users] @ self.similarity).todense())

    def similar_items(self, item_idx: np.ndarray | int, k: int) -> tuple[np.ndarray, np.ndarray]:
        from movierec.core.sources import rank_scores

        self._check_fitted()
        if int(k) < 1:
            raise ValueError(f"{self.name}: k must be >= 1, got {k}")
        items = self._check_items(item_idx)
        scores = np.asarray(self.similarity[items].todense(), dtype=np.float32)
        scores[scores == 0] = -np.inf  # only actual neighbours qualify
        ids, s = rank_scores(scores, int(k))
        return (ids[0], s[0]) if np.ndim(item_idx) == 0 else (ids, s)


# ---- RP3beta ------------------------------------------------------------------------------------
class RP3beta(_Baseline):
    """RP3beta (Paudel et al. 2017; Dacrema et al. 2019's strong graph baseline): the
    probability of a 3-step random walk item -> user -> item on the 0/1 user-item graph, each
    transition probability raised to ``alpha``, divided by the target item's popularity to the
    power ``beta``; each item keeps its ``k_neighbors`` largest weights, and a user's score for an
    item is the summed weight from the items they rated.

    Defaults (alpha=1.0, beta=0.5, k_neighbors=100) are common literature values, checked on the
    validation split of the table above.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, k_neighbors: int = 100, block: int = 2048) -> None:
        if k_neighbors < 1:
            raise ValueError(f"k_neighbors must be >= 1, got {k_neighbors}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha, self.beta, self.k_neighbors, self.block = alpha, beta, k_neighbors, block
        self.name = "rp3beta"

    def get_params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "k_neighbors": self.k_neighbors}

    def _fit(self, train: Dataset) -> None:
        x = train.to_csr().astype(np.float32)
        x.data[:] = 1.0
        self.matrix = x
        user_deg = np.asarray(x.sum(1)).ravel()
        item_deg = np.asarray(x.sum(0)).ravel()
        # P(user -> item) and P(item -> user): rows of the graph normalised to sum to one.
        p_ui = sp.diags(1.0 / np.maximum(user_deg, 1.0)).astype(np.float32) @ x
        p_iu = (sp.diags(1.0 / np.maximum(item_deg, 1.0)).astype(np.float32) @ x.T.tocsr()).tocsr()
        if self.alpha != 1.0:
            p_ui.data **= self.alpha
            p_iu.data **= self.alpha
        p_ui = p_ui.tocsc()
        penalty = (1.0 / np.maximum(item_deg, 1.0) ** self.beta).astype(np.float32)
        n = train.n_items
        k = min(self.k_neighbors, max(n - 1, 1))
        self.similarity = _top_neighbours(
            n, self.block, k, lambda lo, hi: np.asarray((p_iu[lo:hi] @ p_ui).todense(), dtype=np.float32) * penalty[None, :]
        )

    def _score(self, users: np.ndarray) -> np.ndarray:
        return np.asarray((self.matrix[users] @ self.similarity).todense())

    similar_items = ItemKNN.similar_items


# ---- EASE ---------------------------------------------------------------------------------------
class EASE(_Baseline):
    """EASE (Steck 2019): closed-form item-item weights ``B = I - P / diag(P)``, ``P = (X^T X +
    lambda I)^-1``, zero diagonal. Dense ``n_items^2``, so refused above ``max_items``.
    """

    def __init__(self, lam: float = 500.0, max_items: int = 30_000) -> None:
        if lam <= 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        self.lam, self.max_items = lam, max_items
        self.name = "ease"

    def get_params(self) -> dict[str, Any]:
        return {"lam": self.lam}

    def _fit(self, train: Dataset) -> None:
        if train.n_items > self.max_items:
            raise ValueError(
                f"ease: {train.n_items:,} items need a dense {train.n_items}^2 matrix; "
                f"max_items={self.max_items:,} (raise it if you have the memory)"
            )
        x = train.to_csr()
        x.data[:] = 1.0
        self.matrix = x
        self.weights = ease_weights(x, self.lam)

    def _score(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.matrix[users] @ self.weights)

    def similar_items(self, item_idx: np.ndarray | int, k: int) -> tuple[np.ndarray, np.ndarray]:
        from movierec.core.sources import rank_scores

        self._check_fitted()
        if int(k) < 1:
            raise ValueError(f"{self.name}: k must be >= 1, got {k}")
        items = self._check_items(item_idx)
        # Row i of B: how much having item i raises each other item's score.
        scores = self.weights[items].copy()
        scores[np.arange(len(items)), items] = -np.inf
        ids, s = rank_scores(scores, int(k))
        return (ids[0], s[0]) if np.ndim(item_idx) == 0 else (ids, s)


# ---- factory ------------------------------------------------------------------------------------
_REGISTRY: dict[str, tuple[type[_Baseline], dict[str, Any]]] = {
    "popular": (MostPopular, {}),
    "bias": (BiasBaseline, {}),
    "global-mean": (BiasBaseline, {"use_biases": False}),
    "mf": (BiasedMF, {"objective": "rating"}),
    "mf-bpr": (BiasedMF, {"objective": "bpr", "dim": 32, "reg": 0.01}),
    "svd": (SVDRecommender, {"target": "implicit"}),
    "svd-rating": (SVDRecommender, {"target": "rating", "n_components": 8}),
    "item-knn": (ItemKNN, {}),
    "rp3beta": (RP3beta, {}),
    "ease": (EASE, {}),
}

BASELINES = tuple(_REGISTRY)
"""Names accepted by :func:`make_baseline`."""


def make_baseline(name: str, **params: Any) -> _Baseline:
    """Build a baseline by name (see :data:`BASELINES`); ``params`` override its defaults.

    Raises:
        ValueError: unknown name or parameter.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    cls, fixed = _REGISTRY[name]
    try:
        return cls(**{**fixed, **params})
    except TypeError as e:
        raise ValueError(f"baseline {name!r}: {e}") from None
