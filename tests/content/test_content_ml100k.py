"""Content model on the real MovieLens 100K catalogue (skipped when ../shared/data is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from content import ContentModel, ContentSimilarity
from movierec.core.data import Dataset
from movierec.core.loaders import load_dataset
from movierec.core.metrics import evaluate_topn
from movierec.core.splits import cold_items

pytestmark = pytest.mark.mldata


@pytest.fixture(scope="module")
def ml100k(ml100k_path) -> Dataset:
    return load_dataset(ml100k_path)


@pytest.fixture(scope="module")
def sim(ml100k: Dataset) -> ContentSimilarity:
    return ContentSimilarity(ContentModel.fit(ml100k.items))


def item(ds: Dataset, title: str, year: int) -> int:
    rows = np.flatnonzero((ds.items["title"] == title).to_numpy() & (ds.items["year"] == year).fillna(False).to_numpy())
    assert len(rows), f"{title} ({year}) not in the catalogue"
    return int(rows[0])


@pytest.mark.parametrize("exact", [True, False])
def test_toy_story_neighbours_are_animated_or_childrens_films(ml100k: Dataset, sim: ContentSimilarity, exact: bool) -> None:
    ids, _ = sim.similar_items(item(ml100k, "Toy Story", 1995), 10, exact=exact)
    genres = ml100k.items["genres"]
    assert all({"Animation", "Children's"} & set(genres[j]) for j in ids)


def test_sequels_come_first(ml100k: Dataset, sim: ContentSimilarity) -> None:
    titles = ml100k.items["title"]
    ids, _ = sim.similar_items(item(ml100k, "Star Wars", 1977), 3)
    assert {"Return of the Jedi", "Empire Strikes Back, The"} <= set(titles[ids])
    ids, _ = sim.similar_items(item(ml100k, "Scream", 1996), 1)
    assert titles[ids[0]] == "Scream 2"


def test_latin1_titles_are_encoded(ml100k: Dataset, sim: ContentSimilarity) -> None:
    accented = [i for i, t in enumerate(ml100k.items["title"]) if any(ord(c) > 127 for c in t)]
    assert accented  # u.item is latin-1 with a few accented titles
    assert np.isfinite(sim.item_vectors[accented]).all()
    title = next(e for e in sim.model.encoders if e.name == "title")
    # accents are folded, so the accented spelling and the plain one are the same word
    words = {w for i in accented for w in title.analyze(ml100k.items["title"][i])}
    assert words and all(w.isascii() for w in words if " " not in w) and words <= set(title.vocabulary)
    v = sim.model.transform(ml100k.items.iloc[accented])
    assert np.array_equal(v, sim.item_vectors[accented])


def test_content_beats_random_on_cold_items(ml100k: Dataset, sim: ContentSimilarity) -> None:
    """P3 with the default config: content alone must clearly beat random ranking of cold items."""
    train, test, cold = cold_items(ml100k, 0.2, 42)
    sim.fit_users(train)
    content = evaluate_topn(sim.score_users, train, test, (10,), candidate_items=cold)
    rng = np.random.default_rng(0)
    rand = evaluate_topn(lambda u: rng.random((len(u), ml100k.n_items)), train, test, (10,), candidate_items=cold)
    assert content["ndcg@10"] > 1.4 * rand["ndcg@10"]
