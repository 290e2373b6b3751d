"""The embedded synthetic data set: determinism, chunking, layout, and learnable planted structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from movierec.core.baselines import make_baseline
from movierec.core.data import Dataset, DataError
from movierec.core.loaders import load_dataset
from movierec.core.metrics import evaluate_topn
from movierec.core.splits import holdout_per_user
from movierec.core.synthetic import SynthSpec, write_synthetic

SMALL = SynthSpec(n_users=300, n_items=250, n_ratings=9_000, seed=5)


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def learn_set(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, SynthSpec(n_users=800, n_items=600, n_ratings=40_000, seed=11))
    return load_dataset(out)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "a", SMALL)
    write_synthetic(tmp_path / "b", SMALL)
    write_synthetic(tmp_path / "c", SynthSpec(n_users=300, n_items=250, n_ratings=9_000, seed=6))
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")
    assert (tmp_path / "a" / "ratings.csv").read_bytes() != (tmp_path / "c" / "ratings.csv").read_bytes()


def test_chunk_size_does_not_change_the_output(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "one", SMALL, chunk_users=SMALL.n_users)
    write_synthetic(tmp_path / "many", SMALL, chunk_users=7)
    assert _bytes(tmp_path / "one") == _bytes(tmp_path / "many")


def test_sizes_layout_and_loader(tmp_path: Path) -> None:
    summary = write_synthetic(tmp_path / "d", SMALL)
    assert (summary["ratings"], summary["users"], summary["items"]) == (9_000, 300, 250)
    assert {p.name for p in (tmp_path / "d").iterdir()} >= {"ratings.csv", "movies.csv", "tags.csv", "users.csv"}
    header = (tmp_path / "d" / "ratings.csv").read_text().splitlines()[0]
    assert header.replace('"', "") == "userId,movieId,rating,timestamp"
    ds = load_dataset(tmp_path / "d")
    assert len(ds.ratings) == 9_000 and ds.n_users == 300 and ds.n_items == 250
    assert not ds.ratings.duplicated(["user_id", "item_id"]).any()
    # half stars from 0.5 to 5 by default
    r = ds.ratings["rating"].to_numpy()
    assert r.min() >= 0.5 and r.max() <= 5.0 and np.all((r * 2) == np.round(r * 2))
    assert 3.0 < r.mean() < 4.0 and len(np.unique(r)) >= 8
    it = ds.items
    assert it["year"].notna().all() and it["genres"].map(len).ge(1).all()
    assert it["description"].str.len().gt(10).all() and it["tags"].str.len().gt(0).mean() > 0.3
    assert not it["title"].str.contains(r"\(\d{4}\)").any()  # the year was parsed off the title
    assert set(ds.users.columns) >= {"user_id", "age", "gender", "occupation"}
    assert (ds.ratings["timestamp"] > 0).all()
    # cold items: present in the catalogue, never rated
    n_rated = ds.ratings["item_id"].nunique()
    assert ds.n_items - n_rated >= SMALL.n_cold_items > 0


def test_rating_scale_is_an_option(tmp_path: Path) -> None:
    spec = SynthSpec(n_users=100, n_items=80, n_ratings=2_000, seed=1, rating_min=1, rating_max=10, rating_step=1)
    write_synthetic(tmp_path / "ten", spec)
    ds = load_dataset(tmp_path / "ten")
    r = ds.ratings["rating"].to_numpy()
    assert r.min() >= 1 and r.max() <= 10 and np.all(r == np.round(r)) and r.max() > 5


def test_overwrites_previous_data_but_refuses_other_folders(tmp_path: Path) -> None:
    out = tmp_path / "d"
    write_synthetic(out, SMALL)
    write_synthetic(out, SynthSpec(n_users=50, n_items=40, n_ratings=500, seed=2))
    assert load_dataset(out).n_users == 50
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing"):
        write_synthetic(other, SMALL)
    assert (other / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


def test_impossible_spec_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        write_synthetic(tmp_path / "x", SynthSpec(n_users=10, n_items=10, n_ratings=1_000))
    assert not (tmp_path / "x").exists()


def test_planted_structure_beats_popularity(learn_set: Dataset) -> None:
    train, test = holdout_per_user(learn_set, 0.2, seed=42)
    pop = evaluate_topn(make_baseline("popular").fit(train).score_users, train, test, ks=(10,))
    for name in ("svd", "ease"):
        res = evaluate_topn(make_baseline(name).fit(train).score_users, train, test, ks=(10,))
        assert res["recall@10"] > 1.3 * pop["recall@10"], (name, res["recall@10"], pop["recall@10"])
        assert res["ndcg@10"] > 1.3 * pop["ndcg@10"]


def test_movies_sharing_genres_and_words_are_co_rated_more(learn_set: Dataset) -> None:
    x = learn_set.to_csr()
    x.data[:] = 1
    co = (x.T @ x).toarray()
    n = np.diag(co).copy()
    cos = co / np.sqrt(np.outer(n, n) + 1e-9)  # co-rating normalised for popularity
    items = learn_set.items
    genres = [set(g) for g in items["genres"]]
    words = [set(f"{t} {tags}".lower().split()) - {"the", "of", "and"} for t, tags in zip(items["title"], items["tags"])]
    rng = np.random.default_rng(0)
    warm = np.flatnonzero(n >= 5)
    a, b = rng.choice(warm, 20_000), rng.choice(warm, 20_000)
    keep = a != b
    a, b = a[keep], b[keep]
    related = np.array([bool(genres[i] & genres[j]) and bool(words[i] & words[j]) for i, j in zip(a, b)])
    assert related.sum() > 100
    assert cos[a[related], b[related]].mean() > 1.5 * cos[a[~related], b[~related]].mean()


def test_users_features_are_written(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "u", SMALL)
    ds = load_dataset(tmp_path / "u")
    u = ds.users
    assert len(u) == 300 and u["age"].between(7, 75).all() and set(u["gender"]) <= {"M", "F"}
    assert sp.issparse(ds.to_csr())

