"""The shortcuts one request (a list of one user's candidates) takes through the features and the
nets give what the batch computations give: the content cosines, the rating-order adjacency, the
within-list standardisation, the item-item rows shared by the candidates and the features, and
the first layer of the fused nets with the per-user columns entered once."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ranking.features import _adjacent, _content_scores, _z_within, user_columns
from ranking.net import FusedScorer, GuardedRanker, RankerNet
from ranking.sequence import adjacent_scores, padded_rows
from tests.ranking.conftest import Trained


def _adjacency(rng: np.random.Generator, n: int) -> sp.csr_matrix:
    m = sp.random(n, n, density=0.08, random_state=np.random.RandomState(3), dtype=np.float32, format="csr")
    m.data = np.abs(m.data)
    return m


@pytest.mark.parametrize("hist", [[3, 7, 7, 11], [], [5], list(range(0, 40, 2)), [-1, 2, 9]])
def test_a_request_reads_the_adjacency_by_column_as_the_rows_give_it(hist: list[int]) -> None:
    """Few liked movies: the weights are read from the history's columns (duplicates once,
    padding and movies beyond the matrix ignored), the same sums as the candidates' rows."""
    rng = np.random.default_rng(1)
    adj = _adjacency(rng, 60)
    h = np.full((1, max(len(hist), 1) + 2), -1, np.int64)
    h[0, : len(hist)] = hist
    h[0, -1] = 75  # an item added at run time (beyond the matrix)
    cand = rng.choice(70, size=(1, 25), replace=False).astype(np.int64)  # some beyond the matrix too
    cand[0, -3:] = -1
    want = adjacent_scores(padded_rows(adj), h, cand)
    np.testing.assert_allclose(_adjacent(adj, h, cand), want, rtol=1e-6, atol=1e-7)


def test_a_long_history_or_a_large_matrix_keeps_the_rows(monkeypatch) -> None:
    """When the history's columns hold more weights than the candidates' rows, or the matrix is
    too large for a second copy by column, the rows are read (the column path is only a
    shortcut); the result is the same either way."""
    import ranking.features as features

    rng = np.random.default_rng(2)
    adj = _adjacency(rng, 60)
    h = np.arange(60)[None, :]
    cand = np.array([[1, 2]], np.int64)
    np.testing.assert_allclose(_adjacent(adj, h, cand), adjacent_scores(padded_rows(adj), h, cand), rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(features, "ADJACENT_COLUMNS_MAX", adj.nnz - 1)
    assert features.adjacent_columns(adj) is None
    h = np.array([[3, 9]])
    cand = np.arange(30)[None, :]
    np.testing.assert_allclose(_adjacent(adj, h, cand), adjacent_scores(padded_rows(adj), h, cand), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("length", [0, 1, 4, 9])
def test_one_users_content_scores_equal_the_batch_computation(length: int) -> None:
    rng = np.random.default_rng(3)
    content = rng.normal(size=(40, 8)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    content = np.vstack([content, np.zeros((1, 8), np.float32)])  # the "no item" row
    none = len(content) - 1
    hidx = np.full((2, 12), none, np.int64)
    hidx[:, :length] = rng.integers(0, none, size=length)
    if length > 2:
        hidx[0, 1] = none  # an unknown item inside the history
    centred = rng.normal(size=(2, 12)).astype(np.float32)
    cidx = rng.integers(0, none + 1, size=(2, 15))
    batch = _content_scores(content, hidx, centred, cidx)  # two users: the batched product
    one = _content_scores(content, hidx[:1], centred[:1], cidx[:1])
    for got, want in zip(one, batch):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)


def test_standardising_a_full_list_equals_the_masked_computation() -> None:
    rng = np.random.default_rng(4)
    values = rng.normal(size=(3, 20)).astype(np.float32)
    padded = np.concatenate([values, np.zeros((3, 5), np.float32)], axis=1)
    valid = np.zeros(padded.shape, bool)
    valid[:, :20] = True
    full = _z_within(values, np.ones(values.shape, bool))
    np.testing.assert_allclose(full, _z_within(padded, valid)[:, :20], rtol=1e-6, atol=1e-6)
    assert full.dtype == np.float32


def test_the_first_layer_takes_the_per_user_columns_once() -> None:
    """One list whose per-user columns hold one value: the scores of the nets; a list where they
    differ (not a ranker's features) still gets the nets' scores, by the full product."""
    torch.manual_seed(0)
    f, user = 10, [6, 7, 8, 9]
    nets = [RankerNet(f, 50, 80, emb_dim=0, hidden=[32, 16], cross_layers=0).eval() for _ in range(3)]
    net = GuardedRanker(nets, 0.8, base_column=2).eval()
    scorer = FusedScorer.build(net, f, user)
    assert scorer is not None and scorer.user_first is not None
    rng = np.random.default_rng(5)
    dense = rng.normal(size=(1, 30, f)).astype(np.float32)
    items = rng.integers(0, 80, size=(1, 30)).astype(np.int64)
    users = np.array([-1])
    for same in (True, False):
        x = dense.copy()
        if same:
            x[..., user] = x[:, :1, user]
        want = net.score(torch.from_numpy(x), torch.from_numpy(users), torch.from_numpy(items)).numpy()
        np.testing.assert_allclose(scorer(x, users, items), want, rtol=1e-5, atol=1e-5)


def test_the_per_user_columns_are_named_by_the_features() -> None:
    from ranking.features import FEATURES

    columns = np.arange(len(FEATURES) + 3)
    got = [FEATURES[c] if c < len(FEATURES) else "user" for c in columns[user_columns(columns)]]
    assert got == ["user_activity", "user_mean", "user_span", "user", "user", "user"]


def test_a_request_reads_one_item_item_product(trained: Trained, monkeypatch) -> None:
    """A single request (a new user's liked movies, a known user) computes its item-item rows
    once for the extra candidates and the features: the same answers as computing them apart."""
    from ranking.runtime import Ranker
    from recommender import query

    model = trained.model
    assert model.ranker is not None and model.ranker.n_collab_candidates > 0
    liked = [np.array([3, 17, 40]), np.array([5]), np.array([8, 8, 2, 61, 90, 12, 7])]
    users = np.arange(6)
    shared = []
    real = Ranker.collab_rows

    def spy(self, *args, **kwargs):
        rows = real(self, *args, **kwargs)
        shared.append(rows is not None)
        return rows

    monkeypatch.setattr(Ranker, "collab_rows", spy)
    got = [query.recommend(model, query.liked_queries(model, [x]), 10) for x in liked]
    got += [query.recommend(model, query.user_queries(model, users[i : i + 1]), 10) for i in range(len(users))]
    assert shared == [True] * len(got)
    monkeypatch.setattr(Ranker, "collab_rows", lambda self, *a, **k: None)
    apart = [query.recommend(model, query.liked_queries(model, [x]), 10) for x in liked]
    apart += [query.recommend(model, query.user_queries(model, users[i : i + 1]), 10) for i in range(len(users))]
    for a, b in zip(got, apart):
        np.testing.assert_array_equal(a.item_idx, b.item_idx)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
