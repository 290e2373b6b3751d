"""The item-item rows that pick a training list's item-item candidates also give its item-item
features: :func:`build_lists` keeps the sums, :func:`list_features` reads them instead of
summing the rows again, and the features are the ones it computes without them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ranking.collab_scores as collab_scores
from movierec.core.config import RankingConfig
from movierec.core.loaders import load_dataset
from movierec.core.splits import holdout_per_user
from movierec.core.synthetic import SynthSpec, write_synthetic
from ranking.collab_scores import collab_top, collab_top_rows
from ranking.lists import build_lists, list_features, snapshot
from ranking.padding import pad_histories


@pytest.fixture(scope="module")
def lists_setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sums")
    write_synthetic(root / "data", SynthSpec(n_users=90, n_items=160, n_ratings=4_000, seed=5))
    ds = load_dataset(root / "data")
    past, held = holdout_per_user(ds, 0.2, seed=1)
    rng = np.random.default_rng(0)
    config = RankingConfig(collab_lambda=20.0, collab_candidates=15, candidates=25, collab_neighbors=30, negatives=5)
    snap = snapshot(
        past, rng.standard_normal((ds.n_items, 8)).astype(np.float32), (rng.random((ds.n_items, 3)) < 0.4).astype(np.float32),
        np.zeros((ds.n_users, 1), np.float32), config,
    )
    uv, iv = rng.standard_normal((ds.n_users, 6)).astype(np.float32), rng.standard_normal((ds.n_items, 6)).astype(np.float32)
    return snap, held, uv, iv, config


def test_list_features_read_the_kept_sums_and_equal_the_features_summed_afresh(lists_setup, monkeypatch) -> None:
    snap, held, uv, iv, config = lists_setup
    lists = build_lists(snap, held, uv, iv, config, seed=0)
    assert lists.collab is not None and lists.collab[2].all()
    calls = []
    real = collab_scores._collab_dense
    monkeypatch.setattr(collab_scores, "_collab_dense", lambda *a, **k: calls.append(1) or real(*a, **k))
    kept = list_features(snap, lists)
    assert not calls  # the kept sums were read, no row summed again
    fresh = list_features(snap, dataclasses.replace(lists, collab=None))
    assert calls
    np.testing.assert_array_equal(kept, fresh)


def test_candidates_from_the_kept_rows_are_collab_top_and_small_chunks_fall_back(lists_setup) -> None:
    snap, _, _, _, _ = lists_setup
    users = np.arange(40)
    hist = [snap.hist_items[snap.hist_indptr[u] : snap.hist_indptr[u + 1]] for u in users]
    rated = [snap.hist_ratings[snap.hist_indptr[u] : snap.hist_indptr[u + 1]] for u in users]
    padded = pad_histories(hist, rated, snap.ctx.user_mean[users])
    m = snap.ctx.collab_covered.m
    for chunk_cells, shared in ((1 << 22, True), (m * 10, True), (m * 12, False)):  # 40 users: chunks of 10, of 12 (the last 4)
        top, rows = collab_top_rows(snap.ctx, hist, padded, 10, chunk_cells)
        np.testing.assert_array_equal(top, collab_top(snap.ctx.collab, hist, hist, 10, chunk_cells))
        assert (rows is not None) == shared
