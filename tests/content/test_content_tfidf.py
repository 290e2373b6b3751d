"""ContentModel: the tokenisation matches scikit-learn, vectors are unit length, persistence is
bit-identical and needs no scikit-learn objects."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from content import ContentModel
from content.tfidf import field_documents
from movierec.core.artifacts import BundleWriter, load_bundle
from movierec.core.config import ContentConfig


def three_docs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [1, 2, 3],
            "title": ["Space Robot Adventure", "Robot Space Mission", "Love in Paris"],
            "year": [1999, 2001, 1960],
            "genres": [["Sci-Fi", "Action"], ["Sci-Fi"], ["Romance"]],
        }
    )


def test_three_documents_have_the_obvious_nearest_neighbour() -> None:
    model = ContentModel.fit(three_docs(), ContentConfig(dim=8))
    v = model.vectors
    sims = v @ v.T
    off = sims - 2 * np.eye(3)
    assert list(off.argmax(axis=1)[:2]) == [1, 0]  # the two robot films pick each other
    assert sims[0, 1] > 0.3 and abs(sims[0, 2]) < 1e-6  # and share nothing with the romance
    # three independent documents: the exact SVD keeps all three directions, so dense cosine
    # equals sparse cosine
    assert model.dim == 3
    sparse_sims = (model.sparse @ model.sparse.T).toarray()
    np.testing.assert_allclose(sims, sparse_sims, atol=1e-5)


def test_vectors_are_unit_float32_and_dim_is_capped(items: pd.DataFrame, small_config: ContentConfig) -> None:
    model = ContentModel.fit(items, small_config)
    assert model.vectors.dtype == np.float32
    assert model.vectors.shape == (len(items), 16)
    np.testing.assert_allclose(np.linalg.norm(model.vectors, axis=1), 1.0, atol=1e-5)
    big = ContentModel.fit(items, ContentConfig(dim=4096))
    assert big.dim <= min(len(items), big.n_features)


def test_field_tokens_match_sklearn_and_genres_stay_whole(items: pd.DataFrame) -> None:
    model = ContentModel.fit(items, ContentConfig(dim=16))
    docs = field_documents(items, 20_000)
    odd = ["Amélie: Le Fabuleux Destin", "naïve CAFÉ café  über-cool 2 x", "Star Wars: Episode IV", ""]
    for enc in model.encoders:
        sk = enc.sklearn_vectorizer()
        x = sk.fit_transform(docs[enc.name])
        np.testing.assert_allclose(enc.transform(docs[enc.name]).toarray(), x.toarray() * enc.weight, atol=1e-12)
        assert enc.vocabulary == sorted(sk.vocabulary_, key=sk.vocabulary_.get)
        if enc.kind == "words":
            for doc in odd:
                assert enc.analyze(doc) == sk.build_analyzer()(doc)
    genres = next(e for e in model.encoders if e.name == "genres")
    assert "genre:sci-fi" in genres.vocabulary and "genre:children's" in genres.vocabulary
    title = next(e for e in model.encoders if e.name == "title")
    assert not any(t.startswith("genre:") for t in title.vocabulary)


def test_weights_change_what_counts() -> None:
    df = pd.DataFrame(
        {
            "item_id": [1, 2, 3],
            "title": ["Night City", "Night City", "Blue Ocean"],
            "year": [2000, 2000, 2000],
            "genres": [["Horror"], ["Comedy"], ["Horror"]],
        }
    )
    by_title = ContentModel.fit(df, ContentConfig(dim=8, title_weight=3.0, genre_weight=0.1, year_weight=0))
    by_genre = ContentModel.fit(df, ContentConfig(dim=8, title_weight=0.1, genre_weight=3.0, year_weight=0))
    s_t, s_g = by_title.vectors @ by_title.vectors.T, by_genre.vectors @ by_genre.vectors.T
    assert s_t[0, 1] > s_t[0, 2]
    assert s_g[0, 2] > s_g[0, 1]


def test_transform_of_fitted_items_reproduces_vectors(items: pd.DataFrame, small_config: ContentConfig) -> None:
    model = ContentModel.fit(items, small_config)
    assert np.array_equal(model.transform(items), model.vectors)
    assert np.array_equal(model.transform(items.iloc[[5, 2]]), model.vectors[[5, 2]])


def test_save_load_is_bit_identical_without_sklearn_objects(tmp_path, items: pd.DataFrame, small_config: ContentConfig) -> None:
    model = ContentModel.fit(items, small_config)
    with BundleWriter(tmp_path / "b") as w:
        model.save(w)
    bundle = load_bundle(tmp_path / "b")
    assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in bundle.manifest["files"])
    loaded = ContentModel.load(bundle)
    assert np.array_equal(loaded.vectors, model.vectors)
    assert np.array_equal(loaded.transform(items), model.vectors)
    new = pd.DataFrame({"item_id": [9], "title": ["Robot Dog"], "year": [1990], "genres": [["Comedy"]]})
    assert np.array_equal(loaded.transform(new), model.transform(new))
    assert (loaded.sparse != model.sparse).nnz == 0
    assert "sklearn" not in type(loaded.encoders[0]).__module__


def test_load_runs_in_a_process_that_never_imports_sklearn(tmp_path, items: pd.DataFrame, small_config: ContentConfig) -> None:
    """Serving loads plain arrays: a fresh interpreter loads and transforms with sklearn unimportable."""
    import subprocess

    model = ContentModel.fit(items, small_config)
    with BundleWriter(tmp_path / "b") as w:
        model.save(w)
    np.save(tmp_path / "expected.npy", model.vectors)
    items.to_json(tmp_path / "items.json")
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import numpy as np, pandas as pd\n"
        "from content.tfidf import ContentModel\n"
        "from movierec.core.artifacts import load_bundle\n"
        f"m = ContentModel.load(load_bundle({str(tmp_path / 'b')!r}))\n"
        f"items = pd.read_json({str(tmp_path / 'items.json')!r})\n"
        f"assert np.array_equal(m.transform(items), np.load({str(tmp_path / 'expected.npy')!r}))\n"
        "assert 'sklearn.feature_extraction' not in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_unknown_words_get_a_valid_vector(items: pd.DataFrame, small_config: ContentConfig) -> None:
    model = ContentModel.fit(items, small_config)
    new = pd.DataFrame(
        {
            "item_id": [1, 2],
            "title": ["Qwzx Vrrp", "Zzyzx"],
            "year": [None, None],
            "genres": [[], ["Comedy"]],
        }
    )
    v = model.transform(new)
    assert np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v[0], model.centroid, atol=1e-6)  # nothing known: the centroid
    assert not np.array_equal(v[1], model.centroid)  # the genre is known: a genre vector
