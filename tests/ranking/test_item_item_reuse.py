"""The item-item model's shared work: one Gram matrix for every weight ``collab_lambda: auto``
tries, and the chosen pruned block reused for the past snapshot, give the arrays that computing
each of them afresh gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

import ranking.item_item as item_item
from movierec.core.data import Dataset
from movierec.core.ease import _mirror_lower, ease_from_gram, ease_weights, gram
from movierec.core.splits import holdout_per_user
from ranking.item_item import _prune_columns, choose_lambda, item_item_matrix


def _binary(rng: np.random.Generator, n_users: int, n_items: int) -> sp.csr_matrix:
    dense = rng.random((n_users, n_items)) < np.linspace(0.05, 0.5, n_items)
    return sp.csr_matrix(dense.astype(np.float32))


def _same_csr(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    assert a.shape == b.shape
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_ease_from_one_gram_matrix_is_ease_and_leaves_the_gram_matrix_as_it_was() -> None:
    x = _binary(np.random.default_rng(0), 80, 23)
    g = gram(x)
    before = g.copy()
    for lam in (0.5, 7.0, 300.0):
        np.testing.assert_array_equal(ease_from_gram(g, lam), ease_weights(x, lam))
        np.testing.assert_array_equal(g, before)
    dense = x.toarray().astype(np.float64)
    p = np.linalg.inv(dense.T @ dense + 7.0 * np.eye(23))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(ease_from_gram(g, 7.0), b, rtol=1e-4, atol=1e-5)


def test_mirror_lower_copies_the_lower_triangle_over_the_upper_one_across_tiles() -> None:
    rng = np.random.default_rng(1)
    for n, block in ((10, 3), (7, 7), (9, 256), (1, 2), (0, 4)):
        p = rng.standard_normal((n, n)).astype(np.float32)
        want = np.tril(p) + np.tril(p, -1).T
        _mirror_lower(p, block)
        np.testing.assert_array_equal(p, want)


def test_pruning_keeps_each_columns_largest_magnitudes_as_a_column_wise_partition_does() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((40, 31)).astype(np.float32)
    w[:, 3] = 0.0  # ties everywhere in one column
    w[5:9, 7] = 1.5  # and across the cut in another
    keep = 6
    top = np.argpartition(-np.abs(w), keep - 1, axis=0)[:keep]
    cols = np.broadcast_to(np.arange(w.shape[1]), top.shape)
    want = sp.csr_matrix((w[top, cols].ravel(), (top.ravel(), cols.ravel())), shape=w.shape)
    got = _prune_columns(w, keep)
    _same_csr(got, want)
    assert (np.diff(got.tocsc().indptr) == keep).all()


def test_the_chosen_pruned_block_is_the_one_a_fresh_fit_prunes_and_the_gram_matrix_is_built_once(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    n_users, n_items = 300, 50
    users, items = np.nonzero(_binary(rng, n_users, n_items).toarray())
    ratings = pd.DataFrame({"user_id": users, "item_id": items, "rating": 4.0, "timestamp": 0})
    ds = Dataset(ratings, pd.DataFrame({"item_id": np.arange(n_items), "title": [f"m{j}" for j in range(n_items)]}))
    past, held_out = holdout_per_user(ds, 0.2, seed=1)

    calls = {"gram": 0, "ease_weights": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(item_item, "gram", counted("gram", item_item.gram))
    monkeypatch.setattr(item_item, "ease_weights", counted("ease_weights", item_item.ease_weights))
    # 20 neighbours of 40 covered items: pruned, and over the most-rated items only
    lam, block, curve = choose_lambda(past.to_csr(), held_out.to_csr(), neighbors=20, dense_max_items=40, lambdas=(3.0, 30.0, 300.0))
    assert calls == {"gram": 1, "ease_weights": 0} and len(curve) == 3
    reused = item_item_matrix(past.to_csr(), lam, 20, 40, block=block)
    assert calls == {"gram": 1, "ease_weights": 0}
    fresh = item_item_matrix(past.to_csr(), lam, 20, 40)
    assert calls["ease_weights"] == 1
    _same_csr(reused, fresh)
