"""The request-time scorer: every member net at once gives the nets' own scores, for every layout
the ranker can be trained with, and a layout it does not know falls back to the nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ranking.net import FusedScorer, GuardedRanker, RankerNet
from tests.ranking.conftest import Trained


def _lists(rng: np.random.Generator, n: int, c: int, f: int, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dense = rng.normal(size=(n, c, f)).astype(np.float32)
    users = rng.integers(-1, 60, size=n).astype(np.int64)
    items = rng.integers(0, n_items + 5, size=(n, c)).astype(np.int64)  # some beyond the id table
    items[0, c // 2 :] = -1  # padding
    return dense, users, items


@pytest.mark.parametrize(
    "emb_dim, cross, hidden, base_column, members, alpha",
    [
        (0, 0, [128, 64], -1, 3, 0.9),  # the default bundle's layout
        (0, 0, [32, 16], -1, 3, 1.0),
        (8, 2, [32, 16], 4, 2, 0.3),  # id embeddings, cross layers, residual base
        (0, 1, [16], -1, 1, 0.0),  # alpha 0: the learned order only breaks the base's ties
    ],
)
def test_fused_scores_equal_the_nets(emb_dim: int, cross: int, hidden: list[int], base_column: int, members: int, alpha: float) -> None:
    torch.manual_seed(0)
    f = 12
    nets = [
        RankerNet(f, 50, 80, emb_dim=emb_dim, hidden=hidden, cross_layers=cross, base_column=base_column).eval() for _ in range(members)
    ]
    with torch.no_grad():  # residual nets start with a zero head: give every weight a value
        for net in nets:
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    for net in (GuardedRanker(nets, alpha, base_column=3).eval(), nets[0]):
        scorer = FusedScorer.build(net, f)
        assert scorer is not None
        dense, users, items = _lists(np.random.default_rng(1), 4, 37, f, 80)
        want = net.score(torch.from_numpy(dense), torch.from_numpy(users), torch.from_numpy(items)).numpy()
        np.testing.assert_allclose(scorer(dense, users, items), want, rtol=1e-5, atol=1e-5)


def test_an_unknown_layer_keeps_the_nets() -> None:
    net = RankerNet(6, 10, 10, emb_dim=0, hidden=[8], cross_layers=0).eval()
    net.mlp.append(nn.Tanh())
    assert FusedScorer.build(GuardedRanker([net], 1.0), 6) is None


def test_the_ranker_rescores_with_the_nets_current_weights(trained: Trained) -> None:
    """The fused copy is rebuilt when the net's weights change in place (or the net is replaced)."""
    import copy

    from ranking.runtime import Ranker

    model = trained.model
    ranker = model.ranker
    users = np.array([0, 1])
    hists = [model.retrieval.histories.of(u) for u in users]
    ids, s = model.retrieval.search(model.retrieval.user_vectors[users], 20, hists)
    own = Ranker(copy.deepcopy(ranker.net), ranker.meta, ranker.arrays, ranker.collab)
    x = own.features(model.rank_inputs(), users, hists, ids, s)
    before = own.score_net(x, users, ids)
    assert own._fused() is not None
    torch.testing.assert_close(
        torch.from_numpy(before), own.net.score(torch.from_numpy(x), torch.from_numpy(users), torch.from_numpy(ids)), rtol=1e-5, atol=1e-5
    )
    with torch.no_grad():
        for p in own.net.parameters():
            p.mul_(0.5)
    after = own.score_net(x, users, ids)
    want = own.net.score(torch.from_numpy(x), torch.from_numpy(users), torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(after, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(after, before)
