"""A bundle trained with recency pooling (``retrieval.recent_len``) keeps it at serve time: live
ratings re-encode the query through the same tower, so their order moves the query vector, and a
new user's liked list reads its last movie as the latest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recommender import HybridRecommender


@pytest.fixture(scope="module")
def seq_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from movierec.core.config import load_config
    from movierec.core.loaders import load_dataset
    from movierec.pipeline import train
    from movierec.core.synthetic import SynthSpec, write_synthetic

    root = tmp_path_factory.mktemp("seq-bundle")
    write_synthetic(root / "data", SynthSpec(n_users=120, n_items=100, n_ratings=3000, seed=4))
    cfg = load_config(None, {
        "retrieval.epochs": 2, "retrieval.dim": 16, "retrieval.hidden": 32, "retrieval.sequential": "on", "retrieval.recent_len": 5,
        "retrieval.recent_decay": 0.6, "retrieval.causal_share": 0.5, "content.dim": 16, "trainer.progress": False,
        "ranking.epochs": 1, "ranking.candidates": 30, "ranking.rating.enabled": False,
    })
    train(load_dataset(root / "data"), root / "model", cfg)
    return root / "model"


def test_live_ratings_in_another_order_give_another_query(seq_bundle: Path) -> None:
    a, b = HybridRecommender.load(seq_bundle), HybridRecommender.load(seq_bundle)
    assert a.retrieval.user_tower.recent_len == 5
    u, user = 3, a.user_ids[3]
    seen = set(a.retrieval.histories.of(u).tolist())
    new = [int(x) for x in a.items["item_id"].to_numpy()[[i for i in range(a.n_items) if i not in seen][:3]]]
    a.apply_ratings([user] * 3, new, [5.0] * 3)
    b.apply_ratings([user] * 3, new[::-1], [5.0] * 3)
    assert a.retrieval.histories.of(u)[-3:].tolist() == [a.item_idx(i) for i in new]
    # each is the tower's pooling of the updated time-ordered history
    for m in (a, b):
        want = m.retrieval.encode_histories([m.retrieval.histories.of(u)], np.array([u]))[0]
        np.testing.assert_allclose(m.retrieval.user_vectors[u], want, rtol=1e-5, atol=1e-6)
    # the same movies, rated in the other order: the newest differs, so does the query
    assert not np.allclose(a.retrieval.user_vectors[u], b.retrieval.user_vectors[u], atol=1e-4)


def test_a_new_users_liked_list_is_read_in_order(seq_bundle: Path) -> None:
    m = HybridRecommender.load(seq_bundle)
    liked = np.array([4, 18, 33, 7, 52, 61])
    first = m._encode_new_user(liked)
    np.testing.assert_allclose(first, m.retrieval.encode_histories([liked])[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(first, m._encode_new_user(liked[::-1]), atol=1e-4)
