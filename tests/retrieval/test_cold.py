"""Cold items land where their ratings would put them.

Planted data: every movie belongs to one of a few hidden topics, and users rate almost only
movies of their own topic, so a movie's collaborative place is its topic. Its text names the
topic through one signal word (several signal words per topic) among many noise words that are
shared at random across topics, so raw TF-IDF similarity is dominated by noise while the content
still *determines* the collaborative place for a model that learns which words matter.

A fifth of the rated movies lose every training rating. After training, their vectors (and a
movie added at run time with the same kind of text) must have neighbours from their own topic,
and neighbours that their withheld ratings would give them, far more often than raw content
similarity does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from movierec.core.config import Config
from movierec.core.data import Dataset
from movierec.core.splits import cold_items

TOPICS = 6
SIGNAL_PER_TOPIC = 5
NOISE_WORDS = 40
NOISE_PER_ITEM = 6
K = 10


def planted(n_users: int = 360, n_items: int = 240, per_user: int = 40, seed: int = 0) -> tuple[Dataset, np.ndarray]:
    """(data set, topic of every item): item text = one topic word + noise words; users rate
    (95%) movies of their own topic."""
    rng = np.random.default_rng(seed)
    topic = np.arange(n_items) % TOPICS
    rng.shuffle(topic)
    words = []
    for t in topic:
        signal = f"sig{t}w{rng.integers(SIGNAL_PER_TOPIC)}"
        noise = [f"noise{j}" for j in rng.choice(NOISE_WORDS, NOISE_PER_ITEM, replace=False)]
        words.append(" ".join([signal, *noise]))
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "title": [f"Film {i}" for i in range(n_items)],
                          "genres": [[] for _ in range(n_items)], "description": words})
    rows = []
    for u in range(n_users):
        mine = np.flatnonzero(topic == u % TOPICS)
        n_own = int(per_user * 0.95)
        chosen = np.concatenate([rng.choice(mine, n_own, replace=False), rng.choice(n_items, per_user - n_own, replace=False)])
        for i in np.unique(chosen):
            rows.append((u + 1, int(i) + 1, 5.0, int(rng.integers(1_000_000))))
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    return Dataset(ratings, items, name="planted-topics"), topic


def _config() -> Config:
    c = Config()
    c.trainer.progress = False
    c.ranking.enabled = False  # only content, the two towers and the cold map are under test
    c.retrieval.dim = 32
    c.retrieval.hidden = 64
    c.retrieval.epochs = 12
    c.retrieval.batch_size = 256
    c.retrieval.lr = 0.01
    c.content.dim = 32
    return c


@pytest.fixture(scope="module")
def cold_world(tmp_path_factory: pytest.TempPathFactory):
    from movierec.pipeline import train as train_pipeline
    from recommender import HybridRecommender

    ds, topic = planted()
    train, _, cold = cold_items(ds, 0.2, seed=5)
    bundle = train_pipeline(train, tmp_path_factory.mktemp("cold") / "bundle", _config())
    return ds, topic, cold, HybridRecommender.load(bundle), bundle


def _neighbours(sim: np.ndarray, cold: np.ndarray, k: int = K) -> np.ndarray:
    """(len(cold), k) warm item_idx closest by ``sim`` rows (cold items never count)."""
    s = np.array(sim, dtype=np.float64, copy=True)
    s[:, cold] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _withheld_neighbours(ds: Dataset, cold: np.ndarray, k: int = 20) -> np.ndarray:
    """Where the withheld ratings put each cold movie: its top warm items by cosine of rating
    columns over the whole data set (the cold movie's withheld ratings included)."""
    x = _unit(ds.to_csr().T.toarray().astype(np.float64))
    return _neighbours(x[cold] @ x.T, cold, k)


def test_cold_movies_land_with_their_topic_far_more_often_than_content_says(cold_world):
    ds, topic, cold, model, _ = cold_world
    assert model.retrieval.cold_map is not None
    v = _unit(model.retrieval.item_vectors)
    c = model.content.item_vectors
    mapped = (topic[_neighbours(v[cold] @ v.T, cold)] == topic[cold, None]).mean()
    content = (topic[_neighbours(c[cold] @ c.T, cold)] == topic[cold, None]).mean()
    assert mapped >= 0.65, mapped
    assert mapped >= content + 0.3, (mapped, content)


def test_cold_movies_get_the_neighbours_their_withheld_ratings_give_them(cold_world):
    ds, _, cold, model, _ = cold_world
    truth = _withheld_neighbours(ds, cold)
    v = _unit(model.retrieval.item_vectors)
    c = model.content.item_vectors

    def hits(pred: np.ndarray) -> float:
        return float(np.mean([len(np.intersect1d(p, t)) / K for p, t in zip(pred, truth)]))

    mapped, content = hits(_neighbours(v[cold] @ v.T, cold)), hits(_neighbours(c[cold] @ c.T, cold))
    assert mapped >= 2 * content, (mapped, content)


def test_cold_map_beats_the_item_tower_alone_on_planted_topics(cold_world):
    """The tower's id-dropout path sees the SVD-blurred content; the map sees every term."""
    _, topic, cold, model, _ = cold_world
    r = model.retrieval
    import torch

    with torch.no_grad():
        tower = r.item_tower(torch.zeros(len(cold), dtype=torch.long), torch.zeros(len(cold)),
                             torch.from_numpy(r.item_genres[cold]), torch.from_numpy(r.item_content[cold])).numpy()
    v = _unit(r.item_vectors)
    by_tower = (topic[_neighbours(tower @ v.T, cold)] == topic[cold, None]).mean()
    by_map = (topic[_neighbours(v[cold] @ v.T, cold)] == topic[cold, None]).mean()
    assert by_map >= by_tower - 0.02, (by_map, by_tower)


def test_a_movie_added_at_run_time_is_placed_by_the_map(cold_world):
    ds, topic, cold, model, bundle = cold_world
    from recommender import HybridRecommender

    fresh = HybridRecommender.load(bundle)  # the shared model stays unchanged for other tests
    t = 2
    text = f"sig{t}w0 " + " ".join(f"noise{j}" for j in range(6))
    rec = fresh.add_item("Brand new film", [], description=text)
    new = fresh.item_idx(rec["item_id"])
    expected = fresh.retrieval.cold_map.transform(fresh.content.model.transform_sparse(fresh.items.iloc[[new]]),
                                                  np.zeros((1, fresh.retrieval.item_genres.shape[1]), np.float32))
    np.testing.assert_allclose(fresh.retrieval.item_vectors[new], expected[0], atol=1e-6)
    got = fresh.similar(rec["item_id"], k=K, by="collaborative").item_idx
    assert len(got) == K and not np.isin(got, cold).any() and (got < len(topic)).all()  # rated movies only
    by_text = fresh.similar(rec["item_id"], k=K, by="content").item_idx
    by_text = by_text[by_text < len(topic)]
    assert np.mean(topic[got] == t) >= 0.6, topic[got]
    assert np.mean(topic[got] == t) >= np.mean(topic[by_text] == t) + 0.2, (topic[got], topic[by_text])


def test_bundle_keeps_the_map_and_old_bundles_load_without_it(cold_world, tmp_path: Path):
    from movierec.core.artifacts import BundleWriter, load_bundle
    from retrieval.candidates import RetrievalModel

    _, _, _, model, _ = cold_world
    loaded = RetrievalModel.load(load_bundle(model.bundle.path))
    np.testing.assert_array_equal(loaded.cold_map.weights, model.retrieval.cold_map.weights)
    r = model.retrieval
    plain = RetrievalModel(r.user_tower, r.item_tower, r.item_vectors, r.user_vectors, r.histories, r.item_genres,
                           r.item_content, r.item_has_id, r.user_features, r.encoder, r.hparams)
    with BundleWriter(tmp_path / "b") as w:
        plain.save(w)
    assert RetrievalModel.load(load_bundle(tmp_path / "b")).cold_map is None


def test_ridge_block_cg_matches_the_closed_form():
    from retrieval.cold import ridge_block_cg

    rng = np.random.default_rng(0)
    x = sp.random(300, 40, density=0.2, random_state=1, format="csr")
    y = rng.normal(size=(300, 5))
    w, _ = ridge_block_cg(x, y, lam=0.5, iters=200, tol=1e-10)
    a = x.toarray()
    exact = np.linalg.solve(a.T @ a + 0.5 * np.eye(40), a.T @ y)
    np.testing.assert_allclose(w, exact, atol=1e-6)


def test_cold_map_rejects_mismatched_shapes():
    from retrieval.cold import ColdMap

    x = sp.random(20, 8, density=0.5, random_state=0, format="csr")
    with pytest.raises(ValueError, match="content rows"):
        ColdMap.fit(x, np.zeros((19, 2)), np.ones((20, 4)), np.ones(20))
    with pytest.raises(ValueError, match="no item has training ratings"):
        ColdMap.fit(x, np.zeros((20, 2)), np.ones((20, 4)), np.zeros(20))
    m = ColdMap.fit(x, np.zeros((20, 2)), np.random.default_rng(0).normal(size=(20, 4)), np.ones(20))
    with pytest.raises(ValueError, match="fitted on 8 terms"):
        m.transform(sp.csr_matrix((1, 9)), np.zeros((1, 2)))
