"""The two towers' closed-form start: a truncated SVD of the training users x movies matrix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from movierec.core.config import TrainerConfig
from retrieval.svd_init import INIT_STD, svd_factors
from retrieval.two_tower import build_two_tower, fit_two_tower


def test_factors_reproduce_the_best_low_rank_approximation() -> None:
    """U sqrt(S) (V sqrt(S))^T is the rank-k truncated SVD of the 0/1 matrix, up to the one scale
    both tables share: on an exactly rank-2 matrix it rebuilds the matrix."""
    rng = np.random.default_rng(0)
    groups_u, groups_i = rng.integers(0, 2, 60), rng.integers(0, 2, 40)
    dense = (groups_u[:, None] == groups_i[None, :]).astype(np.float32)
    users, items = svd_factors(sp.csr_matrix(dense * 5.0), 8, seed=1)  # rating values count as 1
    assert users.shape == (60, 8) and items.shape == (40, 8)
    rebuilt = users @ items.T
    scale = float((rebuilt * dense).sum() / (dense * dense).sum())
    np.testing.assert_allclose(rebuilt / scale, dense, atol=1e-4)
    assert abs(users.std() - INIT_STD) < 1e-6 and abs(items.std() - INIT_STD) < 1e-6


def test_svd_start_writes_the_factors_into_the_id_tables(synth_split, content_vectors, small_config) -> None:
    train, _ = synth_split
    setup = build_two_tower(train, content_vectors, small_config.model_copy(update={"init": "svd"}), seed=3)
    fit_matrix = setup.data.fit_ds.to_csr()
    users, items = svd_factors(fit_matrix, small_config.dim, seed=3)
    ut, it = setup.module.user_tower, setup.module.item_tower
    np.testing.assert_allclose(ut.id_emb.weight.detach().numpy(), users, atol=1e-6)
    np.testing.assert_allclose(it.id_emb.weight.detach().numpy(), items, atol=1e-6)
    np.testing.assert_allclose(ut.hist_emb.weight.detach().numpy()[1:], items, atol=1e-6)
    assert not ut.hist_emb.weight[0].any()  # the padding row stays zero
    random = build_two_tower(train, content_vectors, small_config.model_copy(update={"init": "random"}), seed=3).module
    assert not np.allclose(random.item_tower.id_emb.weight.detach().numpy(), items)


def test_svd_start_learns_faster_than_a_random_start(synth_split, content_vectors, small_config) -> None:
    """After two epochs the SVD start has the higher validation recall (the metric early stopping
    watches), averaged over two seeds with the same constant learning rate."""
    train, _ = synth_split
    cfg = small_config.model_copy(update={"epochs": 2, "patience": 2, "lr_decay": "none"})
    trainer = TrainerConfig(progress=False)

    def recall(init: str) -> float:
        fits = [fit_two_tower(train, content_vectors, cfg.model_copy(update={"init": init}), trainer, seed=s) for s in (4, 5)]
        return float(np.mean([f.metrics["val_recall@50"] for f in fits]))

    assert recall("svd") > recall("random")
