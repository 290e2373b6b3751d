"""The ranker's lists are padded to the widest one; batches drop the padding none of their lists
uses, and that changes neither the losses, their gradients nor the scores."""

from __future__ import annotations

import numpy as np
import torch

from ranking.lists import Lists
from ranking.member import RankerModule, _tensors, _trimmed_batch, net_scores


def _lists(widths: list[int], full: int, n_feat: int = 5, seed: int = 0) -> tuple[Lists, np.ndarray]:
    """Lists packed to the left as build_lists packs them, ``full`` columns wide."""
    rng = np.random.default_rng(seed)
    n = len(widths)
    cand = np.full((n, full), -1, np.int64)
    label = np.zeros((n, full), bool)
    rating = np.full((n, full), np.nan, np.float32)
    in_loss = np.zeros((n, full), bool)
    x = np.zeros((n, full, n_feat), np.float32)
    for r, w in enumerate(widths):
        cand[r, :w] = rng.choice(50, w, replace=False)
        in_loss[r, : w - 2] = True  # the last two: held-out items outside the pool (rating loss only)
        label[r, rng.choice(w, 3, replace=False)] = True
        rating[r, label[r]] = rng.integers(1, 6, 3)
        x[r, :w] = rng.normal(size=(w, n_feat))
    return Lists(np.arange(n, dtype=np.int64), cand, np.zeros((n, full), np.float32), in_loss, label, rating), x


def _module(n_feat: int) -> RankerModule:
    torch.manual_seed(0)
    # no dropout: the same weights must see the same numbers with and without the padding
    return RankerModule(n_dense=n_feat, n_users=8, n_items=50, emb_dim=4, hidden=[16, 8], cross_layers=1, dropout=0.0,
                        id_dropout=0.0, base_column=0)


def test_a_batch_drops_only_the_padding_its_lists_do_not_use() -> None:
    lists, x = _lists([12, 7, 9], full=40)
    rows = [t for t in _tensors(x, lists, np.arange(3))]
    batch = _trimmed_batch(rows)
    assert [tuple(t.shape) for t in batch] == [(3, 12, 5), (3,), (3, 12), (3, 12), (3, 12), (3, 12)]
    assert _trimmed_batch(rows[1:])[2].shape == (2, 9)


def test_trimmed_batches_give_the_full_batches_losses_and_gradients() -> None:
    lists, x = _lists([12, 7, 9, 20], full=40)
    rows = [t for t in _tensors(x, lists, np.arange(4))]
    full = [torch.stack([r[i] for r in rows]) for i in range(6)]
    trimmed = _trimmed_batch(rows)
    grads = []
    for batch in (full, trimmed):
        module = _module(x.shape[2])
        loss, rank_loss, mse, _ = module._losses(batch, train=True)
        loss.backward()
        grads.append((loss.item(), rank_loss.item(), mse.item(), [p.grad.clone() for p in module.net.parameters() if p.grad is not None]))
    (l0, r0, m0, g0), (l1, r1, m1, g1) = grads
    assert np.isclose(l0, l1, rtol=1e-5) and np.isclose(r0, r1, rtol=1e-5) and np.isclose(m0, m1, rtol=1e-5)
    assert len(g0) == len(g1) > 0
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_scores_of_padded_lists_match_the_full_width_scores() -> None:
    lists, x = _lists([12, 7, 9, 20, 5], full=40)
    net = _module(x.shape[2]).net.eval()
    rows = np.arange(5)
    got = net_scores(net, x, lists, rows)
    want = net.score(torch.from_numpy(x), torch.from_numpy(lists.users), torch.from_numpy(lists.cand)).numpy()
    valid = lists.cand >= 0
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5, atol=1e-6)
    assert got.shape == want.shape


def test_batches_read_by_gather_are_the_row_by_row_batches_in_the_same_order() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    lists, x = _lists([12, 7, 9, 20, 5, 3, 11], full=40)
    rows = np.array([6, 0, 3, 2, 5, 1])
    data = _tensors(x, lists, rows)
    plain = TensorDataset(*data.tensors)  # one row at a time, stacked by the default collation
    for shuffle in (True, False):
        got = list(DataLoader(data, batch_size=4, shuffle=shuffle, generator=torch.Generator().manual_seed(3), collate_fn=_trimmed_batch))
        want = list(DataLoader(plain, batch_size=4, shuffle=shuffle, generator=torch.Generator().manual_seed(3), collate_fn=_trimmed_batch))
        assert len(got) == len(want) == 2
        for a, b in zip(got, want):
            for u, v in zip(a, b):
                assert torch.equal(u, v) or (u.dtype.is_floating_point and torch.equal(torch.nan_to_num(u), torch.nan_to_num(v)) and torch.equal(u.isnan(), v.isnan()))
