"""The ranker is never worse than its best input: when the features carry nothing beyond the base
(EASE) score, training keeps the base order; when they do, it uses them."""

from __future__ import annotations

import numpy as np
import torch

from movierec.core.config import RankingConfig, TrainerConfig
from ranking.net import GuardedRanker, RankerNet
from ranking.ensemble import _list_ndcg, choose_alpha, fit_guarded
from ranking.lists import Lists


def _planted(n: int, width: int, n_feat: int, signal_in_noise: float, seed: int) -> tuple[Lists, np.ndarray]:
    """Lists whose labels follow a latent score; column 0 (the base) sees it with noise, the other
    columns are noise plus ``signal_in_noise`` times what the base missed."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, width))
    base = latent + rng.normal(scale=1.0, size=(n, width))
    x = rng.normal(size=(n, width, n_feat)).astype(np.float32)
    x[..., 0] = (base - base.mean(1, keepdims=True)) / base.std(1, keepdims=True)
    x[..., 1] += signal_in_noise * (latent - base)
    label = latent >= np.sort(latent, axis=1)[:, -3][:, None]  # three relevant items per list
    lists = Lists(
        users=np.arange(n, dtype=np.int64),
        cand=np.tile(np.arange(width, dtype=np.int64), (n, 1)),
        scores=np.zeros((n, width), np.float32),
        in_loss=np.ones((n, width), bool),
        label=label,
        rating=np.full((n, width), np.nan, np.float32),
    )
    return lists, x


def _fit(lists: Lists, x: np.ndarray) -> tuple[GuardedRanker, dict[float, float]]:
    config = RankingConfig(hidden=[16], epochs=6, patience=2, batch_size=32, refit_rating_head=False, ensemble=3)
    hparams = dict(n_dense=x.shape[2], n_users=len(lists.users), n_items=x.shape[1], emb_dim=0, hidden=[16], cross_layers=0,
                   dropout=0.0, rating_center=3.0, rating_scale=2.0, lr=3e-3, weight_decay=0.0, rating_weight=0.0,
                   id_dropout=0.0, base_column=-1)
    net, curve, _ = fit_guarded(x, lists, hparams, 0, config, TrainerConfig(progress=False), seed=1)
    return net, curve


def _ndcg(net: GuardedRanker, lists: Lists, x: np.ndarray) -> float:
    s = net.score(torch.from_numpy(x), torch.from_numpy(lists.users), torch.from_numpy(lists.cand)).numpy()
    return float(np.nanmean(_list_ndcg(s, lists, np.arange(len(lists.users)))))


def test_features_without_extra_signal_keep_the_base_order() -> None:
    lists, x = _planted(600, 40, 6, signal_in_noise=0.0, seed=0)
    net, curve = _fit(lists, x)
    fresh, fx = _planted(600, 40, 6, signal_in_noise=0.0, seed=1)
    base = float(np.nanmean(_list_ndcg(fx[..., 0], fresh, np.arange(600))))
    assert net.alpha <= 0.3, curve
    assert _ndcg(net, fresh, fx) >= base - 0.01  # within noise of the base scorer on unseen lists


def test_features_with_extra_signal_are_used() -> None:
    lists, x = _planted(600, 40, 6, signal_in_noise=1.0, seed=0)
    net, curve = _fit(lists, x)
    fresh, fx = _planted(600, 40, 6, signal_in_noise=1.0, seed=1)
    base = float(np.nanmean(_list_ndcg(fx[..., 0], fresh, np.arange(600))))
    assert net.alpha >= 0.5, curve
    assert _ndcg(net, fresh, fx) > base + 0.05


def test_alpha_zero_is_the_base_order_with_the_nets_breaking_only_its_ties() -> None:
    lists, x = _planted(50, 20, 3, signal_in_noise=0.0, seed=2)
    # net scores equal to the base: every weight gives the same lists, so the base's weight wins
    alpha, curve = choose_alpha(x[..., 0].copy(), x[..., 0], lists, np.arange(50))
    assert alpha == 0.0 and len(set(np.round(list(curve.values()), 9))) == 1
    x[:, 15:, 0] = x[..., 0].min(1, keepdims=True) - 1.0  # five candidates the base cannot tell apart, below the rest
    nets = [RankerNet(3, 50, 20, emb_dim=0, hidden=[4], cross_layers=0)]
    guarded = GuardedRanker(nets, 0.0, 0).eval()
    s = guarded.score(torch.from_numpy(x), torch.from_numpy(lists.users), torch.from_numpy(lists.cand)).numpy()
    b = x[:, :15, 0]
    apart = b[:, :, None] - b[:, None, :] > 0.01  # pairs the base tells apart by more than a hair
    assert ((s[:, :15, None] > s[:, None, :15]) | ~apart).all()
    assert (s[:, :15].min(1) > s[:, 15:].max(1)).all()  # tied candidates stay below the rest
    net = nets[0].score(torch.from_numpy(x), torch.from_numpy(lists.users), torch.from_numpy(lists.cand)).numpy()
    n = net[:, 15:]
    apart = n[:, :, None] - n[:, None, :] > 1e-3 * n.std(1, keepdims=True)[..., None]
    assert apart.any() and ((s[:, 15:, None] > s[:, None, 15:]) | ~apart).all()  # the ties follow the net


def test_weight_is_chosen_on_the_pool_a_request_ranks() -> None:
    """Random negatives are in the training lists but never in a served pool: a learned order
    that only beats the base at pushing them down must not win the weight. Each list's pool
    holds one held-out movie that the base puts first and the nets third; one more held-out
    movie was not retrieved (it counts in the ideal, unreachable by either); the base scores
    two random negatives at the top, the nets put them last."""
    n, pool, rand = 200, 8, 4
    width = pool + 1 + rand
    cand = np.tile(np.arange(width, dtype=np.int64), (n, 1))
    label = np.zeros((n, width), bool)
    label[:, 0] = True  # the pool's held-out movie
    label[:, pool] = True  # held out but not retrieved
    in_loss = np.ones((n, width), bool)
    in_loss[:, pool] = False
    retrieved = np.zeros((n, width), bool)
    retrieved[:, :pool] = True
    lists = Lists(np.arange(n, dtype=np.int64), cand, np.zeros((n, width), np.float32), in_loss, label,
                  np.full((n, width), np.nan, np.float32), retrieved)
    base = np.tile(np.r_[9.0, np.arange(pool - 1, 0, -1), 0.0, 20.0, 19.0, 0.0, 0.0], (n, 1))
    nets = np.tile(np.r_[7.0, 9.0, 8.0, np.arange(pool - 3, 0, -1), 0.0, -9.0, -9.0, -9.0, -9.0], (n, 1))
    rows = np.arange(n)
    alpha, curve = choose_alpha(nets, base, lists, rows)
    assert alpha == 0.0 and curve[0.0] > curve[1.0], curve
    # the control: choosing on whole lists, random negatives ranked too, prefers the nets
    old = Lists(lists.users, cand, lists.scores, in_loss, label, lists.rating)
    alpha_old, _ = choose_alpha(nets, base, old, rows)
    assert alpha_old > 0.5
