"""Messy item tables: empty titles, missing genres, accents and latin-1, huge text, duplicates."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from content import ContentModel, ContentSimilarity
from content.tfidf import field_documents
from movierec.core.config import ContentConfig


def assert_unit(v: np.ndarray) -> None:
    assert np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_empty_and_missing_titles(items: pd.DataFrame, small_config: ContentConfig) -> None:
    items = items.copy()
    items.loc[[0, 1, 2], "title"] = ["", None, np.nan]
    model = ContentModel.fit(items, small_config)
    assert_unit(model.vectors)
    only_titles_empty = pd.DataFrame({"item_id": [1, 2, 3], "title": ["", "", ""], "genres": [["Drama"], ["Comedy"], ["Drama"]]})
    m2 = ContentModel.fit(only_titles_empty, ContentConfig(dim=4))
    assert [e.name for e in m2.encoders] == ["genres"]  # empty title field skipped, no error
    assert_unit(m2.vectors)
    assert ContentSimilarity(m2).similar_items(0, 1)[0][0] == 2


def test_catalogue_without_any_text_gives_every_movie_one_vector(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """A ratings file without an item file: content carries no signal, but it fits, saves, loads
    and places movies added later, so the collaborative stages can train."""
    from movierec.core.artifacts import BundleWriter, load_bundle

    bare = pd.DataFrame({"item_id": [1, 2, 3], "title": ["", "  ", ""]})
    with caplog.at_level("WARNING", logger="content.tfidf"):
        model = ContentModel.fit(bare, ContentConfig(dim=4))
    assert "none of the 3 items" in caplog.text
    assert_unit(model.vectors)
    assert model.vectors.shape == (3, 1) and model.sparse.shape == (3, 0) and np.all(model.vectors == model.vectors[0])
    with BundleWriter(tmp_path / "b") as w:
        model.save(w)
    loaded = ContentModel.load(load_bundle(tmp_path / "b"))
    new = pd.DataFrame({"item_id": [9], "title": ["Robot Dog"], "genres": [["Comedy"]]})  # words it never saw
    assert np.array_equal(loaded.transform(new), model.vectors[:1]) and np.array_equal(loaded.vectors, model.vectors)
    sim = ContentSimilarity(loaded)
    (idx,) = sim.add_items(new)
    assert idx == 3 and sorted(sim.similar_items(0, 3)[0].tolist()) == [1, 2, 3]
    with pytest.raises(ValueError, match="DataFrame"):
        ContentModel.fit(["Toy Story"], ContentConfig(dim=4))  # type: ignore[arg-type]


def test_missing_genres_column_nan_cells_and_string_genres(small_config: ContentConfig) -> None:
    no_genres = pd.DataFrame({"item_id": [1, 2, 3], "title": ["Dark Night", "Dark City", "Sunny Beach"], "year": [1990, None, 2001]})
    model = ContentModel.fit(no_genres, ContentConfig(dim=4))
    assert_unit(model.vectors)
    mixed = pd.DataFrame(
        {"item_id": [1, 2, 3], "title": ["A Film", "B Film", "C Film"], "genres": [None, np.nan, "Action|Sci-Fi"], "year": [pd.NA, 1999, "n/a"]}
    )
    m2 = ContentModel.fit(mixed, ContentConfig(dim=4))
    assert_unit(m2.vectors)
    genres = next(e for e in m2.encoders if e.name == "genres")
    assert genres.vocabulary == ["genre:action", "genre:sci-fi"]
    # transforming rows that lack columns the model was fitted with
    assert_unit(model.transform(pd.DataFrame({"title": ["Dark Matter"]})))
    assert model.transform(pd.DataFrame({"title": []})).shape == (0, model.dim)


def test_accents_latin1_bytes_and_non_latin_scripts(small_config: ContentConfig) -> None:
    df = pd.DataFrame(
        {
            "item_id": [1, 2, 3, 4, 5],
            "title": ["Amélie", "Jour de fête", "卧虎藏龙", "Crouching Tiger", "Señor Café 🎬"],
            "year": [2001, 1949, 2000, 2000, 1990],
            "genres": [["Comedy"], ["Comedy"], ["Action"], ["Action"], ["Drama"]],
        }
    )
    model = ContentModel.fit(df, ContentConfig(dim=8))
    assert_unit(model.vectors)
    title = next(e for e in model.encoders if e.name == "title")
    assert {"amelie", "fete", "卧虎藏龙", "senor", "cafe"} <= set(title.vocabulary)
    # ASCII spelling, the latin-1 bytes of u.item and the UTF-8 bytes all land on the same words
    queries = pd.DataFrame({"title": ["Amelie", "Am\xe9lie".encode("latin-1"), "Amélie".encode("utf-8")], "year": [2001] * 3, "genres": [["Comedy"]] * 3})
    v = model.transform(queries)
    np.testing.assert_allclose(v[0], v[1], atol=1e-7)
    np.testing.assert_allclose(v[0], v[2], atol=1e-7)
    np.testing.assert_allclose(v[0], model.vectors[0], atol=1e-6)
    sim = ContentSimilarity(model)
    (idx,) = sim.add_items(queries.iloc[[1]])
    assert sim.similar_items(int(idx), 1)[0][0] == 0


def test_100kb_description_is_cut_and_fast(items: pd.DataFrame, small_config: ContentConfig) -> None:
    items = items.copy()
    rng = np.random.default_rng(0)
    huge = " ".join(rng.choice(["robot", "space", "lorem", "ipsum", "dolor"], size=20_000))[:99_990] + " zebra"
    assert len(huge) >= 99_000
    items.loc[0, "description"] = huge
    t0 = time.perf_counter()
    model = ContentModel.fit(items, small_config)
    v = model.transform(pd.DataFrame({"title": ["X"], "description": [huge * 3]}))
    assert time.perf_counter() - t0 < 10
    assert_unit(model.vectors)
    assert_unit(v)
    # only the first max_text_chars are read: the word at the very end never entered the vocabulary
    desc = next(e for e in model.encoders if e.name == "description")
    assert "lorem" in desc.vocabulary and "zebra" not in desc.vocabulary
    assert len(field_documents(items, small_config.max_text_chars)["description"][0]) == small_config.max_text_chars

def test_duplicate_titles_are_distinct_items_and_each_others_neighbours() -> None:
    df = pd.DataFrame(
        {
            "item_id": [10, 11, 12, 13],
            "title": ["Hamlet", "Hamlet", "Hamlet", "Laser Sharks"],
            "year": [1990, 1996, 1990, 2010],
            "genres": [["Drama"], ["Drama"], ["Drama"], ["Action"]],
        }
    )
    model = ContentModel.fit(df, ContentConfig(dim=4))
    sim = ContentSimilarity(model)
    ids, scores = sim.similar_items(0, 3)
    assert list(ids[:2]) == [2, 1]  # same title and year first, then the other Hamlet
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
