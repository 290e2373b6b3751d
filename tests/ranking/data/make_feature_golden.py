"""Write ``feature_golden.npz``: a fixed feature batch and the values ``compute_features`` gave.

The stored values come from the plain implementation of commit a386500 (dense item-item rows
over the whole catalogue), so ``test_feature_golden.py`` checks that the fast paths compute the
same features. Re-running this script with a later version would overwrite that reference; only
do it when a feature's meaning changes on purpose.

    python tests/ranking/data/make_feature_golden.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from ranking.features import FEATURES, FeatureContext, compute_features, pad_histories  # noqa: E402


def example(seed: int = 7) -> dict[str, np.ndarray]:
    """Inputs with the awkward cases: padding inside and at the end of lists, run-time items
    (beyond the training arrays), unknown users, empty, duplicated, truncated and unrated
    histories, missing years, items without genres, a NaN two-tower score."""
    rng = np.random.default_rng(seed)
    n_items, i0, n_users, d, g = 140, 110, 9, 16, 6
    content = rng.normal(size=(n_items, d)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    genres = (rng.random((n_items, g)) < 0.3).astype(np.float32)
    genres[:5] = 0.0
    years = rng.integers(1930, 2000, size=n_items).astype(np.float64)
    years[rng.random(n_items) < 0.1] = np.nan
    dense = rng.normal(size=(i0, i0)).astype(np.float32) * (rng.random((i0, i0)) < 0.15)
    np.fill_diagonal(dense, 0.0)
    collab = sp.csr_matrix(dense)
    lengths = [0, 1, 5, 40, 300, 12, 8, 60, 3]
    histories, ratings = [], []
    for u, m in enumerate(lengths):
        h = rng.integers(0, n_items, size=m)
        if u == 5:
            h[3:6] = h[0]  # duplicates
        histories.append(h)
        ratings.append(None if u in (6, 8) else rng.integers(1, 6, size=m).astype(np.float32))
    users = np.array([0, 1, -1, 3, 4, 5, 6, 50, -1])
    c = 35
    cand = np.stack([rng.choice(n_items, size=c, replace=False) for _ in range(len(users))])
    cand[2, 30:] = -1
    cand[4, 7] = -1
    cand[8, 1:] = -1
    scores = rng.normal(size=cand.shape).astype(np.float32)
    scores[3, 4] = np.nan
    return {
        "content": content,
        "genres": genres,
        "years": years,
        "item_counts": rng.integers(0, 50, size=i0),
        "item_mean": rng.uniform(1, 5, size=i0).astype(np.float32),
        "collab_data": collab.data,
        "collab_indices": collab.indices,
        "collab_indptr": collab.indptr,
        "user_mean": rng.uniform(2, 4.5, size=n_users - 2).astype(np.float32),
        "user_features": rng.normal(size=(n_users - 2, 3)).astype(np.float32),
        "global_mean": np.float64(3.5),
        "ref_year": np.float64(np.nanmax(years)),
        "hist_items": np.concatenate(histories).astype(np.int64),
        "hist_indptr": np.cumsum([0] + lengths),
        "hist_rated": np.array([r is not None for r in ratings]),
        "hist_ratings": np.concatenate([r if r is not None else np.zeros(len(h), np.float32) for h, r in zip(histories, ratings)]),
        "users": users,
        "cand": cand,
        "scores": scores,
    }


def build(arrays: dict[str, np.ndarray]) -> tuple[FeatureContext, np.ndarray, list, list, np.ndarray, np.ndarray]:
    """The context and batch of ``arrays`` (also used by the test)."""
    i0 = len(arrays["item_counts"])
    ctx = FeatureContext(
        content=arrays["content"],
        genres=arrays["genres"],
        years=arrays["years"],
        item_counts=arrays["item_counts"],
        item_mean=arrays["item_mean"],
        collab=sp.csr_matrix((arrays["collab_data"], arrays["collab_indices"], arrays["collab_indptr"]), shape=(i0, i0)),
        user_mean=arrays["user_mean"],
        user_features=arrays["user_features"],
        global_mean=float(arrays["global_mean"]),
        ref_year=float(arrays["ref_year"]),
    )
    ptr = arrays["hist_indptr"]
    histories = [arrays["hist_items"][ptr[i] : ptr[i + 1]] for i in range(len(ptr) - 1)]
    ratings = [arrays["hist_ratings"][ptr[i] : ptr[i + 1]] if ok else None for i, ok in enumerate(arrays["hist_rated"])]
    return ctx, arrays["users"], histories, ratings, arrays["cand"], arrays["scores"]


def user_means(ctx: FeatureContext, users: np.ndarray) -> np.ndarray:
    known = (users >= 0) & (users < len(ctx.user_mean))
    return np.where(known, ctx.user_mean[np.where(known, users, 0)], ctx.global_mean)


def main() -> None:
    arrays = example()
    ctx, users, histories, ratings, cand, scores = build(arrays)
    hist = pad_histories(histories, ratings, user_means(ctx, users))
    out = compute_features(ctx, users, hist, cand, scores)
    np.savez_compressed(HERE / "feature_golden.npz", features=out, feature_names=np.array(FEATURES), **arrays)
    print(f"wrote {HERE / 'feature_golden.npz'}: features {out.shape}")


if __name__ == "__main__":
    main()
