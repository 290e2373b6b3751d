"""Two-tower training: it learns, it is deterministic, cold items get useful vectors."""

from __future__ import annotations

import numpy as np
import torch

from movierec.core.baselines import make_baseline
from movierec.core.config import TrainerConfig
from movierec.core.metrics import evaluate_topn
from retrieval.inputs import Histories, user_batch
from retrieval.towers import ItemTower, UserTower
from retrieval.two_tower import fit_two_tower



def test_training_learns_far_above_random_and_popularity(trained, synth_split):
    train, test = synth_split
    uv, iv = trained.user_vectors, trained.item_vectors
    ours = evaluate_topn(lambda u: uv[u] @ iv.T, train, test, ks=(10,))
    rng = np.random.default_rng(0)
    rand = evaluate_topn(lambda u: rng.random((len(u), train.n_items)), train, test, ks=(10,))
    pop = evaluate_topn(make_baseline("popular").fit(train).score_users, train, test, ks=(10,))
    assert ours["recall@10"] > 3 * rand["recall@10"]
    assert ours["recall@10"] > 1.1 * pop["recall@10"]
    assert trained.metrics["val_recall@50"] > 0.2


def test_training_curves_are_logged(trained):
    import pandas as pd
    from pathlib import Path

    frame = pd.read_csv(Path(trained.log_dir) / "two_tower" / "metrics.csv")
    assert "train/loss" in frame.columns and "val/recall@50" in frame.columns
    losses = frame["train/loss"].dropna().to_numpy()
    assert len(losses) >= 2 and losses[-1] < losses[0]


def test_same_seed_gives_same_vectors(synth_split, content_vectors, small_config):
    train, _ = synth_split
    cfg = small_config.model_copy(update={"epochs": 2})
    a = fit_two_tower(train, content_vectors, cfg, TrainerConfig(progress=False), seed=11)
    b = fit_two_tower(train, content_vectors, cfg, TrainerConfig(progress=False), seed=11)
    np.testing.assert_allclose(a.item_vectors, b.item_vectors, atol=1e-5)
    np.testing.assert_allclose(a.user_vectors, b.user_vectors, atol=1e-5)


def test_cold_items_rank_by_content_above_random(synth_data, content_vectors, small_config):
    """Items with no training ratings get vectors from content that still match user tastes."""
    from movierec.core.splits import cold_items

    train, test, cold = cold_items(synth_data, 0.2, seed=42)
    res = fit_two_tower(train, content_vectors, small_config, TrainerConfig(progress=False), seed=5)
    assert (res.items.has_id[cold] == 0).all()
    uv, iv = res.user_vectors, res.item_vectors
    ours = evaluate_topn(lambda u: uv[u] @ iv.T, train, test, ks=(10,), candidate_items=cold)
    rng = np.random.default_rng(0)
    rand = evaluate_topn(lambda u: rng.random((len(u), train.n_items)), train, test, ks=(10,), candidate_items=cold)
    assert np.isfinite(iv[cold]).all()
    assert ours["ndcg@10"] > 1.3 * rand["ndcg@10"]


def test_history_never_contains_the_target_item():
    hist = Histories(np.array([0, 3, 5]), np.array([4, 5, 6, 1, 2]))
    rows = hist.padded(np.array([0, 0, 1]), 4, drop_items=np.array([5, 6, 2]), rng=np.random.default_rng(0))
    assert 5 not in rows[0] and 6 not in rows[1] and 2 not in rows[2]
    latest = hist.padded(np.array([0, 1]), 2)
    assert latest.tolist() == [[5, 6], [1, 2]]


def test_items_added_after_training_pass_through_the_user_tower():
    """A history naming an item beyond the id table uses its content only (no index error)."""
    tower = UserTower(n_users=3, n_items=4, content_dim=5, n_user_features=0, dim=8, hidden=8).eval()
    content = np.random.default_rng(0).random((6, 5)).astype(np.float32)
    hist = np.array([[0, 5, -1]])
    b = user_batch(np.array([0]), hist, content, None, np.array([0.0]), n_model_items=4)
    assert b["hist_items"].tolist() == [[0, -1, -1]]
    out = tower(**b)
    assert torch.isfinite(out).all() and abs(float(out.norm()) - 1) < 1e-5


def test_item_tower_without_id_uses_content():
    tower = ItemTower(n_items=2, n_genres=3, content_dim=4, dim=8, hidden=8).eval()
    idx = torch.tensor([0, 1])
    g = torch.zeros(2, 3)
    c = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    out = tower(idx, torch.zeros(2), g, c)
    assert not torch.allclose(out[0], out[1])


def test_epoch_cap_and_validation_sample_bound_the_work(synth_split, content_vectors, small_config, tmp_path):
    """``max_steps_per_epoch`` stops each epoch after that many batches and ``val_max_users``
    scores a fixed sample of the validation users (the big-data knobs of configs/synthetic-large.yaml)."""
    import pandas as pd

    from retrieval.two_tower import build_two_tower

    train, _ = synth_split
    cfg = small_config.model_copy(update={"epochs": 2, "patience": 2, "max_steps_per_epoch": 3, "val_max_users": 50})
    res = fit_two_tower(train, content_vectors, cfg, TrainerConfig(progress=False), seed=1, log_dir=tmp_path)
    frame = pd.read_csv(tmp_path / "two_tower" / "metrics.csv")
    assert frame["step"].max() == 2 * 3 - 1 and res.metrics["epochs"] == 2
    data = build_two_tower(train, content_vectors, cfg, seed=1).data
    users = data.val_users()
    assert len(users) == 50 and (np.diff(users) > 0).all()
    assert (users == build_two_tower(train, content_vectors, cfg, seed=1).data.val_users()).all()
    full = build_two_tower(train, content_vectors, small_config, seed=1).data.val_users()
    assert len(full) > 50 and np.isin(users, full).all()


def test_duplicate_pairs_are_exactly_the_repeated_positives() -> None:
    from retrieval.loss import duplicate_pairs

    rng = np.random.default_rng(0)
    for _ in range(100):
        items = rng.integers(0, 30, size=40)
        offset, n = int(rng.integers(0, 3)) * 10, 10
        rows, cols = duplicate_pairs(items, offset, n)
        same = items[offset : offset + n, None] == items[None, :]
        same[np.arange(n), np.arange(n) + offset] = False  # a query's own positive stays
        assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(zip(*(a.tolist() for a in np.nonzero(same))))


def test_refit_learns_from_the_ratings_early_stopping_and_the_ranker_held_out(synth_data, content_vectors, small_config):
    """The served vectors learn from every training rating: a movie rated only in the part the
    first fit never saw gets its id embedding, the refit model fits the whole set better than
    the early-stopped one, and the early-stopped result is left as it was."""
    from movierec.core.splits import cold_items
    from retrieval.two_tower import refit_two_tower

    past, _, cold = cold_items(synth_data, 0.2, seed=3)  # ``cold`` movies: no rating in ``past``
    cfg = small_config.model_copy(update={"epochs": 3, "refit_epochs": 2})
    first = fit_two_tower(past, content_vectors, cfg, TrainerConfig(progress=False), seed=4)
    before = first.item_vectors.copy()
    refit = refit_two_tower(first, synth_data, content_vectors, cfg, TrainerConfig(progress=False), seed=4)

    np.testing.assert_array_equal(first.item_vectors, before)
    assert (first.items.has_id[cold] == 0).all() and (refit.items.has_id[cold] == 1).all()
    assert refit.item_vectors.shape == before.shape and refit.user_vectors.shape == first.user_vectors.shape
    assert refit.metrics["refit_epochs"] == 2
    # the cold movies' ratings rank higher under the model that learnt from them (both models'
    # users pooled from the same full histories, so only the training differs)
    from retrieval.towers import encode_all_users

    full = Histories.from_ratings(synth_data.ratings, synth_data.n_users)
    uv_first = encode_all_users(first.user_tower, full, first.items.content, first.user_features, synth_data.n_items, cfg.history_len)
    seen = synth_data.to_csr().tocsr()
    users, items = seen.nonzero()
    on_cold = np.isin(items, cold)

    def mean_rank(uv: np.ndarray, iv: np.ndarray) -> float:
        ranks = (-(uv @ iv.T)).argsort(1).argsort(1)
        return float(ranks[users[on_cold], items[on_cold]].mean())

    assert mean_rank(refit.user_vectors, refit.item_vectors) < 0.9 * mean_rank(uv_first, first.item_vectors)


def test_a_refit_in_the_background_process_equals_the_one_in_this_process(synth_data, content_vectors, small_config):
    """The pipeline hands the refit to its second training process while the ranker trains
    (``movierec.pipeline._refit_task``): what comes back must be what this process would train."""
    import os
    import time

    from movierec.pipeline import _refit_task
    from ranking.background import BackgroundWorker
    from retrieval.two_tower import refit_two_tower

    cfg = small_config.model_copy(update={"epochs": 2, "refit_epochs": 1})
    first = fit_two_tower(synth_data, content_vectors, cfg, TrainerConfig(progress=False), seed=4)
    here = refit_two_tower(first, synth_data, content_vectors, cfg, TrainerConfig(progress=False), seed=4)
    worker = BackgroundWorker((time.sleep, (0,)))
    try:
        worker.first_result()
        deadline = time.monotonic() + 30
        while not worker._idle and time.monotonic() < deadline:  # its "idle" follows the first result
            worker._pump(0.1)
        job = worker.submit(_refit_task, (first, synth_data, content_vectors, cfg, TrainerConfig(progress=False), 4))
        # the pipeline trains the ranker here; the worker (importing Lightning first) claims the refit
        while worker.claimed(job) == 0 and time.monotonic() < deadline + 60:
            time.sleep(0.1)
        (there,) = worker.gather(job)
        assert worker.last_shared == [0], "the refit should have run in the worker"
    finally:
        worker.close()
    np.testing.assert_array_equal(there.item_vectors, here.item_vectors)
    np.testing.assert_array_equal(there.user_vectors, here.user_vectors)


def test_in_batch_softmax_loss_matches_autograd_cross_entropy() -> None:
    """The fused loss equals ``cross_entropy`` of the masked, log-q shifted logits, value and
    gradients, also when the candidates are a gathered global batch (m > n, DDP)."""
    from torch.nn import functional as F

    from retrieval.loss import duplicate_pairs, in_batch_softmax_loss

    gen = torch.Generator().manual_seed(0)
    for n, world, rank in [(64, 1, 0), (32, 3, 1)]:
        items = torch.randint(0, 40, (n * world,), generator=gen)
        q = torch.randn(n, 8, generator=gen, requires_grad=True)
        c = torch.randn(n * world, 8, generator=gen, requires_grad=True)
        bias = torch.randn(40, generator=gen)[items]
        rows, cols = (torch.from_numpy(a) for a in duplicate_pairs(items.numpy(), rank * n, n))
        target = torch.arange(n) + rank * n
        assert len(rows) > 0
        logits = (q @ c.T - bias).index_put((rows, cols), torch.tensor(float("-inf")))
        ref = F.cross_entropy(logits, target)
        ref_q, ref_c = torch.autograd.grad(3.0 * ref, (q, c))
        ours = in_batch_softmax_loss(q, c, bias, rows, cols, target)
        got_q, got_c = torch.autograd.grad(3.0 * ours, (q, c))
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(got_q, ref_q)
        torch.testing.assert_close(got_c, ref_c)


def test_history_pooling_gradient_matches_the_embedding_bag() -> None:
    """The user tower's history pooling (scipy gradient) gives the embedding bag's output and
    gradients, the padding row's gradient included (zero)."""
    from retrieval.towers import _weighted_bag

    gen = torch.Generator().manual_seed(0)
    bag = torch.nn.EmbeddingBag(30, 8, mode="sum", padding_idx=0)
    items = torch.randint(1, 30, (16, 7), generator=gen)
    items[:, 5:] = 0  # padding
    items[3, 1] = items[3, 2]  # a repeated item in one bag
    weights = torch.rand(16, 7, generator=gen) * (items > 0)
    upstream = torch.randn(16, 8, generator=gen)
    ref = bag(items, per_sample_weights=weights)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), bag.weight)
    ours = _weighted_bag(bag, items, weights)
    (grad,) = torch.autograd.grad((ours * upstream).sum(), bag.weight)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad, ref_grad)
    assert grad[0].abs().sum() == 0


def test_history_pooling_without_gradient_matches_the_embedding_bag() -> None:
    """Inference pooling (the padding row skipped as a zero row) equals the module's, also when
    the padding row is not zero (then it is skipped by index)."""
    from retrieval.towers import _weighted_bag

    gen = torch.Generator().manual_seed(1)
    bag = torch.nn.EmbeddingBag(30, 8, mode="sum", padding_idx=0)
    items = torch.randint(0, 30, (16, 7), generator=gen)
    weights = torch.rand(16, 7, generator=gen)  # non-zero weights on padding too
    with torch.no_grad():
        torch.testing.assert_close(_weighted_bag(bag, items, weights), bag(items, per_sample_weights=weights))
        bag.weight[0] = 1.0
        torch.testing.assert_close(_weighted_bag(bag, items, weights), bag(items, per_sample_weights=weights))
