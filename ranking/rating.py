"""Dedicated rating model (P1): damped biases, item kNN-baseline, biased MF and I-AutoRec,
blended by a linear stacker.

The ranker's rating head shares a trunk with the ordering loss and sees each pair only inside a
candidate list; predicting explicit ratings well is a different job, so this model does only that.

Training (:func:`fit_rating_model`): the training ratings are split once more
(``validation_split``, carved from training only); every component is trained on the larger
part, early-stopped on the smaller one, and the stacker (ridge least squares of the validation
ratings on the components' predictions) is fitted on that smaller part. Then, with ``refit``,
the components are trained again on all training ratings for the number of epochs found, and the
stacker's weights are kept.

Prediction (:class:`RatingModel`) is plain numpy over saved arrays: no torch or Lightning, so
serving can load it. A user or item with no training rating (or an index beyond the trained
ones, or -1) gets the bias prediction; every output is clipped to the training rating scale.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from movierec.core.artifacts import Bundle, BundleWriter
from movierec.core.data import Dataset
from movierec.core.metrics import top_positive
from ranking.background import BackgroundWorker

log = logging.getLogger(__name__)

PREFIX = "rating/"
FORMAT = 1


# ---- biases and the neighbourhood model (numpy) ------------------------------------------------
def damped_biases(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int,
                  damping: float, sweeps: int = 3) -> tuple[float, np.ndarray, np.ndarray]:
    """Global mean plus item and user biases, each shrunk by ``damping`` pseudo-counts;
    a few alternating sweeps (item, then user) so neither absorbs the other's effect."""
    mu = float(ratings.mean())
    nu = np.bincount(users, minlength=n_users).astype(np.float64)
    ni = np.bincount(items, minlength=n_items).astype(np.float64)
    bu = np.zeros(n_users)
    bi = np.zeros(n_items)
    for _ in range(max(1, sweeps)):
        bi = np.bincount(items, ratings - mu - bu[users], n_items) / (ni + damping + 1e-12)
        bu = np.bincount(users, ratings - mu - bi[items], n_users) / (nu + damping + 1e-12)
    return mu, bu.astype(np.float32), bi.astype(np.float32)


def knn_similarity(resid: sp.csr_matrix, shrinkage: float, keep: int, block: int | None = None) -> sp.csr_matrix:
    """Item-item Pearson correlation of baseline residuals over co-raters, shrunk by
    ``(n - 1) / (n - 1 + shrinkage)`` (n co-raters), keeping each item's ``keep`` largest
    positive similarities (Koren's kNN-baseline / Surprise ``pearson_baseline``).

    Args:
        resid: (n_users, n_items) residuals ``r - b_ui`` at the rated entries.
    """
    n_items = resid.shape[1]
    e = resid.tocsc().astype(np.float64)
    x = e.copy()
    x.data[:] = 1.0
    e2 = e.multiply(e).tocsc()
    et, xt, e2t = e.T.tocsr(), x.T.tocsr(), e2.T.tocsr()
    keep = max(1, min(keep, n_items - 1))
    block = block or max(16, min(1024, 5_000_000 // max(n_items, 1)))  # five dense (block, n_items) slabs
    rows, cols, vals = [], [], []
    for lo in range(0, n_items, block):
        hi = min(lo + block, n_items)
        num = (et[lo:hi] @ e).toarray()
        n = (xt[lo:hi] @ x).toarray()
        d1 = (e2t[lo:hi] @ x).toarray()  # sum of e_ui^2 over users who also rated j
        d2 = (xt[lo:hi] @ e2).toarray()  # sum of e_uj^2 over users who also rated i
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = num / np.sqrt(d1 * d2)
        sim = np.nan_to_num(sim, nan=0.0, posinf=0.0, neginf=0.0)
        sim *= np.maximum(n - 1, 0) / (np.maximum(n - 1, 0) + shrinkage + 1e-12)
        sim[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        r, c, v = top_positive(sim, lo, keep)
        rows.append(r)
        cols.append(c)
        vals.append(v.astype(np.float32))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items))


def knn_residual(sim: sp.csr_matrix, resid: sp.csr_matrix, users: np.ndarray, items: np.ndarray, k: int,
                 block: int = 8192) -> np.ndarray:
    """Weighted mean residual of the ``k`` most similar items each user rated: sum s_ij e_uj / sum s_ij
    (0 where the user rated no neighbour of the item). ``users``/``items`` must be in range."""
    out = np.zeros(len(users), dtype=np.float64)
    rated = resid.copy()
    rated.data[:] = 1.0
    for lo in range(0, len(users), block):
        u, i = users[lo : lo + block], items[lo : lo + block]
        p = sim[i].multiply(rated[u]).tocoo()  # similarities to items the user rated
        if p.nnz == 0:
            continue
        order = np.lexsort((-p.data, p.row))
        row, col, s = p.row[order], p.col[order], p.data[order]
        start = np.searchsorted(row, row, side="left")
        top = (np.arange(len(row)) - start) < k
        row, col, s = row[top], col[top], s[top].astype(np.float64)
        e = np.asarray(resid[u[row], col]).ravel()
        num = np.bincount(row, s * e, len(u))
        den = np.bincount(row, s, len(u))
        out[lo : lo + len(u)] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return out


# ---- the fitted model (numpy only: what serving loads) -----------------------------------------
class RatingModel:
    """Predicts ratings for (user_idx, item_idx) pairs from saved arrays.

    Args:
        meta: JSON-able settings: rating scale, global mean, components used, stacker weights.
        arrays: per-component arrays (see :meth:`save`).
    """

    def __init__(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.meta = meta
        self.arrays = arrays
        self.components: list[str] = list(meta["components"])
        self.weights = np.asarray(meta["weights"], dtype=np.float64)  # see stack_design
        self.rating_min, self.rating_max = (float(v) for v in meta["rating_scale"])
        self.mu = float(meta["mu"])
        self.n_users, self.n_items = int(meta["n_users"]), int(meta["n_items"])
        self._knn: tuple[sp.csr_matrix, sp.csr_matrix] | None = None
        if "knn" in self.components:
            a = arrays
            self._knn = (
                sp.csr_matrix((a["knn_sim_data"], a["knn_sim_indices"], a["knn_sim_indptr"]), shape=(self.n_items, self.n_items)),
                sp.csr_matrix((a["knn_res_data"], a["knn_res_indices"], a["knn_res_indptr"]), shape=(self.n_users, self.n_items)),
            )
        n_support = 3 if meta.get("stack_support") else 1
        if len(self.weights) != (len(self.components) + 1) * n_support:
            raise ValueError(f"rating model: {len(self.weights)} stacker weights for {len(self.components)} components")

    def __repr__(self) -> str:
        return f"RatingModel(components={self.components}, users={self.n_users}, items={self.n_items})"

    def _known(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ku = (users >= 0) & (users < self.n_users)
        ki = (items >= 0) & (items < self.n_items)
        ku[ku] = self.arrays["user_counts"][users[ku]] > 0
        ki[ki] = self.arrays["item_counts"][items[ki]] > 0
        return ku, ki

    def component_predictions(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, n_components) unclipped predictions of each component; pairs must be known."""
        a = self.arrays
        cols = []
        base = self.mu + a["b_user"][users].astype(np.float64) + a["b_item"][items]
        for name in self.components:
            if name == "bias":
                cols.append(base)
            elif name == "knn":
                assert self._knn is not None
                cols.append(base + knn_residual(*self._knn, users, items, int(self.meta["knn_k"])))
            elif name == "mf":
                dot = np.einsum("nd,nd->n", a["mf_user"][users], a["mf_item"][items], dtype=np.float64)
                cols.append(float(self.meta["mf_mu"]) + a["mf_user_bias"][users] + a["mf_item_bias"][items] + dot)
            elif name == "autorec":
                z = a["ar_dec_b"][users] + np.einsum("nd,nd->n", a["ar_codes"][items], a["ar_dec_w"][users], dtype=np.float64)
                cols.append(float(self.meta["ar_lo"]) + (z - 1) * float(self.meta["ar_span"]) / 4)
            else:  # pragma: no cover - meta is written by this module
                raise ValueError(f"rating model: unknown component {name!r}")
        return np.stack(cols, 1) if cols else np.zeros((len(users), 0))

    def support(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, S) stacker gates: a constant, and with ``stack_support`` the centred log rating
        counts of the user and the item (components differ in how they cope with little data)."""
        ones = np.ones((len(users), 1))
        if not self.meta.get("stack_support"):
            return ones
        cu, ci = self.meta["support_center"]
        su = np.log1p(self.arrays["user_counts"][users]) - cu
        si = np.log1p(self.arrays["item_counts"][items]) - ci
        return np.column_stack([ones, su, si])

    def stack_design(self, comp: np.ndarray, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Stacker inputs: each component's prediction minus the global mean times each gate, then
        the gates themselves; the blend is ``mu + design @ weights`` (feature-weighted linear
        stacking, Sill et al. 2009, reduced to a plain linear blend without support gates)."""
        g = self.support(users, items)
        c = comp - self.mu
        return np.column_stack([(c[:, :, None] * g[:, None, :]).reshape(len(c), -1), g])

    def predict(self, user_idx: np.ndarray | int, item_idx: np.ndarray | int) -> np.ndarray:
        """Predicted ratings (float32, clipped to the training scale) for (user, item) pairs.

        Unknown users or items (index -1, beyond the trained range, or without training
        ratings) fall back to ``mu + b_u + b_i`` with the unknown side's bias at 0.
        """
        users = np.atleast_1d(np.asarray(user_idx))
        items = np.atleast_1d(np.asarray(item_idx))
        for name, arr in (("user_idx", users), ("item_idx", items)):
            if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
                raise ValueError(f"rating model: {name} must be integers of shape (n,), got {arr.dtype} {arr.shape}")
        if users.shape != items.shape:
            raise ValueError(f"rating model: user_idx {users.shape} and item_idx {items.shape} differ in shape")
        users, items = users.astype(np.int64), items.astype(np.int64)
        ku, ki = self._known(users, items)
        a = self.arrays
        out = np.full(len(users), self.mu, dtype=np.float64)
        out[ku] += a["b_user"][users[ku]]
        out[ki] += a["b_item"][items[ki]]
        both = ku & ki
        if both.any():
            comp = self.component_predictions(users[both], items[both])
            out[both] = self.mu + self.stack_design(comp, users[both], items[both]) @ self.weights
        out = np.nan_to_num(out, nan=self.mu, posinf=self.rating_max, neginf=self.rating_min)
        return np.clip(out, self.rating_min, self.rating_max).astype(np.float32)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, writer: BundleWriter) -> None:
        writer.save_json(f"{PREFIX}meta.json", self.meta)
        for name, arr in self.arrays.items():
            writer.save_array(f"{PREFIX}{name}.npy", arr)


def load_rating_model(bundle: Bundle) -> RatingModel:
    """Load the rating model of a bundle (plain arrays and JSON; no torch, no pickle)."""
    meta = bundle.json(f"{PREFIX}meta.json")
    if int(meta.get("format", -1)) != FORMAT:
        raise ValueError(f"{bundle.path}: rating model format {meta.get('format')!r} is not {FORMAT}; retrain the bundle")
    arrays = {name: bundle.array(f"{PREFIX}{name}.npy") for name in meta["arrays"]}
    return RatingModel(meta, arrays)


# ---- training ----------------------------------------------------------------------------------
@dataclass
class RatingFit:
    model: RatingModel
    metrics: dict[str, Any] = field(default_factory=dict)


def _triples(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = ds.ratings
    return r["user_idx"].to_numpy(np.int64), r["item_idx"].to_numpy(np.int64), r["rating"].to_numpy(np.float64)


def _components(cfg: Any, n_users: int, n_items: int) -> list[str]:
    out = ["bias"]
    if cfg.knn_k > 0 and n_items <= cfg.knn_max_items:
        out.append("knn")
    if cfg.mf_dim > 0:
        out.append("mf")
    if cfg.autorec_hidden > 0 and n_users <= cfg.autorec_max_users:
        out.append("autorec")
    return out


def _fit_parts(data: tuple[np.ndarray, np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
               n_users: int, n_items: int, scale: tuple[float, float], cfg: Any, components: list[str],
               epochs: dict[str, int], seed: int, log_dir: Path | None) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Train every component on ``data``; returns (meta, arrays, per-component record)."""
    import torch

    from ranking import _rating_train as T

    torch.set_num_threads(cfg.threads)
    u, i, r = data
    mu, bu, bi = damped_biases(u, i, r, n_users, n_items, cfg.bias_damping)
    meta: dict[str, Any] = {"format": FORMAT, "mu": mu, "rating_scale": list(scale), "n_users": n_users, "n_items": n_items,
                            "components": components, "weights": [1.0] + [0.0] * len(components), "stack_support": False}
    arrays: dict[str, np.ndarray] = {
        "b_user": bu, "b_item": bi,
        "user_counts": np.bincount(u, minlength=n_users).astype(np.int64),
        "item_counts": np.bincount(i, minlength=n_items).astype(np.int64),
    }
    record: dict[str, Any] = {}
    if "knn" in components:
        t = time.perf_counter()
        res = sp.csr_matrix(((r - mu - bu[u] - bi[i]).astype(np.float32), (u, i)), shape=(n_users, n_items))
        sim = knn_similarity(res, cfg.knn_shrinkage, cfg.knn_keep)
        arrays.update({
            "knn_sim_indptr": sim.indptr.astype(np.int64), "knn_sim_indices": sim.indices.astype(np.int32), "knn_sim_data": sim.data.astype(np.float32),
            "knn_res_indptr": res.indptr.astype(np.int64), "knn_res_indices": res.indices.astype(np.int32), "knn_res_data": res.data.astype(np.float32),
        })
        meta["knn_k"] = cfg.knn_k
        record["knn"] = {"seconds": time.perf_counter() - t, "similarities": int(sim.nnz)}
    if "mf" in components:
        t = time.perf_counter()
        out = T.fit_mf(data, val, n_users, n_items, cfg, epochs.get("mf", cfg.mf_epochs), seed, log_dir)
        arrays.update({"mf_user": out["user"], "mf_item": out["item"], "mf_user_bias": out["user_bias"], "mf_item_bias": out["item_bias"]})
        meta["mf_mu"] = out["mu"]
        record["mf"] = {"seconds": time.perf_counter() - t, "epochs": out["epochs"], "val_rmse": out["val_rmse"], "history": out["history"]}
    if "autorec" in components:
        t = time.perf_counter()
        out = T.fit_autorec(data, val, n_users, n_items, scale, cfg, epochs.get("autorec", cfg.autorec_epochs), seed, log_dir)
        arrays.update({"ar_codes": out["codes"], "ar_dec_w": out["dec_w"], "ar_dec_b": out["dec_b"]})
        meta.update({"ar_lo": out["lo"], "ar_span": out["span"]})
        record["autorec"] = {"seconds": time.perf_counter() - t, "epochs": out["epochs"], "val_rmse": out["val_rmse"], "history": out["history"]}
    meta["arrays"] = sorted(arrays)
    return meta, arrays, record


def fit_stacker(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge least squares ``y ~ x @ w``, the ridge scaled by the number of rows."""
    return np.linalg.solve(x.T @ x + ridge * len(y) * np.eye(x.shape[1]), x.T @ y)


def fit_rating_model(train: Dataset, cfg: Any, seed: int = 42, log_dir: str | Path | None = None) -> RatingFit:
    """Train the rating model on ``train`` (see the module docstring for the protocol).

    Args:
        cfg: a :class:`movierec.core.config.RatingConfig`.
    """
    from movierec.core.splits import validation_split

    if len(train.ratings) == 0:
        raise ValueError("rating model: cannot fit on a dataset without ratings")
    t0 = time.perf_counter()
    log_dir = Path(log_dir) if log_dir is not None else None
    n_users, n_items, scale = train.n_users, train.n_items, train.rating_scale
    components = _components(cfg, n_users, n_items)
    fit_ds, val_ds = validation_split(train, cfg.val_fraction, seed=seed)
    metrics: dict[str, Any] = {"components": components}
    if len(val_ds.ratings) == 0:  # too few ratings per user to hold any out: biases only
        meta, arrays, _ = _fit_parts(_triples(train), None, n_users, n_items, scale, cfg, ["bias"], {}, seed, None)
        metrics["note"] = "no validation ratings could be held out; bias model only"
        return RatingFit(RatingModel(meta, arrays), metrics)
    val = _triples(val_ds)
    meta, arrays, record = _fit_parts(_triples(fit_ds), val, n_users, n_items, scale, cfg, components, {}, seed, log_dir)
    stage = RatingModel(meta, arrays)
    vu, vi, vr = val
    ku, ki = stage._known(vu, vi)
    both = ku & ki
    comp = stage.component_predictions(vu[both], vi[both])
    stage.meta["stack_support"] = bool(cfg.stack_support)
    stage.meta["support_center"] = [float(np.log1p(arrays["user_counts"][vu[both]]).mean()),
                                    float(np.log1p(arrays["item_counts"][vi[both]]).mean())]
    weights = fit_stacker(stage.stack_design(comp, vu[both], vi[both]), vr[both] - stage.mu, cfg.stack_ridge)
    val_rmse = {name: float(np.sqrt(np.mean((np.clip(comp[:, j], *scale) - vr[both]) ** 2))) for j, name in enumerate(components)}
    stage.meta["weights"] = weights.tolist()
    stage.weights = weights
    blend = stage.predict(vu, vi)
    val_rmse["blend"] = float(np.sqrt(np.mean((blend - vr) ** 2)))
    metrics.update({"val_rmse": val_rmse, "weights": weights.tolist(),
                    "train": record, "val_pairs": int(len(vr))})
    log.info("rating model: validation RMSE %s", {k: round(v, 4) for k, v in val_rmse.items()})
    model = stage
    if cfg.refit:
        epochs = {name: max(1, int(rec["epochs"])) for name, rec in record.items() if "epochs" in rec}
        meta, arrays, refit_record = _fit_parts(_triples(train), None, n_users, n_items, scale, cfg, components, epochs, seed, None)
        meta.update({k: stage.meta[k] for k in ("weights", "stack_support", "support_center")})
        model = RatingModel(meta, arrays)
        metrics["refit"] = {name: {"seconds": rec["seconds"]} for name, rec in refit_record.items()}
    metrics["seconds"] = time.perf_counter() - t0
    return RatingFit(model, metrics)


# ---- training beside the rest of the pipeline ----------------------------------------------------
def _fit_in_child(train: Dataset, cfg: Any, seed: int, log_dir: str | None) -> RatingFit:
    import torch

    torch.set_num_threads(cfg.threads)
    return fit_rating_model(train, cfg, seed=seed, log_dir=log_dir)


class BackgroundRatingFit(BackgroundWorker):
    """:func:`fit_rating_model` as the first job of a :class:`~ranking.background.BackgroundWorker`,
    so it trains on the second core while the caller trains the two-tower model and the ranker on
    the first (each with one torch thread); the worker then takes the two-tower refit and ranker
    members. :meth:`result` waits for the model (raising the child's error, or a clear one when
    the child died) and stops the worker."""

    def __init__(self, train: Dataset, cfg: Any, seed: int = 42, log_dir: str | Path | None = None) -> None:
        super().__init__((_fit_in_child, (train, cfg, seed, None if log_dir is None else str(log_dir))), name="movierec-rating-fit")

    @staticmethod
    def worthwhile(n_ratings: int, cfg: Any, single_process: bool) -> bool:  # type: ignore[override]
        """Whether a background fit pays: enabled, a spare core, one training process, enough data."""
        return bool(cfg.background) and BackgroundWorker.worthwhile(n_ratings, single_process)

    def result(self) -> RatingFit:
        try:
            value = self.first_result("rating model")
        finally:
            self.close()
        log.info("rating model (trained in the background): validation RMSE %s",
                 {k: round(v, 4) for k, v in value.metrics.get("val_rmse", {}).items()})
        return value
