"""Serve-time re-ranking with known answers: MMR order and explanations."""

from __future__ import annotations

import numpy as np

from recommender import HybridRecommender
from recommender.diversity import mmr
from recommender.explain import explain
from tests.serving.conftest import bundle_path  # noqa: F401  (fixture)


def test_mmr_zero_diversity_keeps_relevance_order() -> None:
    vecs = np.eye(4, dtype=np.float32)
    assert mmr(np.arange(4), np.array([4.0, 3, 2, 1]), vecs, 3, 0.0).tolist() == [0, 1, 2]


def test_mmr_skips_near_duplicates() -> None:
    # items 0 and 1 are the same direction; 2 is orthogonal but slightly less relevant
    vecs = np.array([[1, 0], [1, 0.01], [0, 1]], dtype=np.float32)
    scores = np.array([1.0, 0.95, 0.9])
    assert mmr(np.arange(3), scores, vecs, 2, 0.0).tolist() == [0, 1]
    assert mmr(np.arange(3), scores, vecs, 2, 0.5).tolist() == [0, 2]


def test_explain_picks_the_most_similar_history_items(bundle_path) -> None:  # noqa: F811
    model = HybridRecommender.load(bundle_path)
    history = np.arange(10, 30)
    ratings = np.linspace(1, 5, 20).astype(np.float32)
    target = np.array([12, 50])  # 12 is in the history: it must explain itself first
    out = explain(model, history, ratings, target)
    assert len(out) == 2 and all(len(b) == 3 for b in out)
    assert out[0][0]["item_id"] == model.items["item_id"].iat[12]
    assert out[0][0]["similarity"] > 0.99 and out[0][0]["title"] in out[0][0]["reason"]
    rated = [b["reason"] for row in out for b in row if b["reason"].startswith("similar to")]
    assert all(" you rated " in r for r in rated)  # content matches quote the user's rating
    ids = model.items["item_id"].to_numpy()
    assert all(b["item_id"] in set(ids[history].tolist()) for row in out for b in row)
    sims = [b["similarity"] for b in out[1]]
    assert sims == sorted(sims, reverse=True)
