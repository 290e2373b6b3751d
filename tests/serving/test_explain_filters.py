"""Explanations and filters through the API and ``movierec recommend``: the movies named in
``because`` are the user's own and the most similar ones; strict filters still return k items
whenever k qualify; genres, years, the exclude list and exclude-seen combine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from movierec.core.index import normalize
from recommender import HybridRecommender
from cli_helpers import run_cli


@pytest.fixture(scope="module")
def model(bundle_path: Path) -> HybridRecommender:
    return HybridRecommender.load(bundle_path)


def _top_similar(model: HybridRecommender, history: np.ndarray, item: int, top: int = 3) -> list[int]:
    """Reference: the ``top`` history movies by mean of two-tower and content cosine."""
    rv = normalize(model.retrieval.item_vectors[np.append(history, item)])
    collab = rv[:-1] @ rv[-1]
    content = model.content.item_vectors[history] @ model.content.item_vectors[item]
    sim = 0.5 * collab + 0.5 * content
    return history[np.argsort(-sim, kind="stable")[:top]].tolist()


def _qualifying(model: HybridRecommender, u: int, genres: set[str], year_min: int, year_max: int, exclude: set[int]) -> set[int]:
    seen = set(model.retrieval.histories.of(u).tolist())
    ids = model.items["item_id"].to_numpy()
    out = set()
    for i, (g, y) in enumerate(zip(model.items["genres"], model.items["year"])):
        if i in seen or int(ids[i]) in exclude or pd.isna(y):  # NA year never qualifies
            continue
        if genres & set(g) and year_min <= int(y) <= year_max:
            out.add(int(ids[i]))
    return out


def test_because_names_the_users_most_similar_rated_movies(client: TestClient, model: HybridRecommender) -> None:
    user = int(model.user_ids[6])
    history = np.unique(model.retrieval.histories.of(6))
    ids = model.items["item_id"].to_numpy()
    body = client.get(f"/users/{user}/recommendations", params={"k": 8, "explain": "true"}).json()
    assert len(body["items"]) == 8
    for item in body["items"]:
        expected = ids[_top_similar(model, history, model.item_idx(item["item_id"]))].tolist()
        assert [b["item_id"] for b in item["because"]] == expected
        sims = [b["similarity"] for b in item["because"]]
        assert sims == sorted(sims, reverse=True)
        for b in item["because"]:
            assert b["title"] in b["reason"]
            assert b["reason"].startswith(("similar to", "popular with people who liked"))


@pytest.mark.parametrize(
    ("genres", "year_min", "year_max"),
    [("Documentary,Film-Noir", 0, 3000), ("Horror", 1990, 2005), ("Drama,Comedy,Action", 1950, 2020)],
)
def test_strict_filters_return_k_whenever_k_qualify(
    client: TestClient, model: HybridRecommender, genres: str, year_min: int, year_max: int
) -> None:
    u = 11
    user = int(model.user_ids[u])
    exclude: set[int] = set()
    qualifying = _qualifying(model, u, set(genres.split(",")), year_min, year_max, exclude)
    assert qualifying, "the case must have qualifying movies"
    for k in (1, len(qualifying), len(qualifying) + 5):
        k = min(k, 1000)
        r = client.get(
            f"/users/{user}/recommendations", params={"k": k, "genres": genres, "year_min": year_min, "year_max": year_max}
        )
        assert r.status_code == 200
        got = [i["item_id"] for i in r.json()["items"]]
        assert len(got) == min(k, len(qualifying)) and len(set(got)) == len(got)
        assert set(got) <= qualifying


def test_exclude_list_combines_with_exclude_seen_and_filters(client: TestClient, model: HybridRecommender) -> None:
    u = 13
    user = int(model.user_ids[u])
    params = {"k": 10, "genres": "Drama,Comedy"}
    first = [i["item_id"] for i in client.get(f"/users/{user}/recommendations", params=params).json()["items"]]
    exclude = set(first[:4])
    r = client.get(f"/users/{user}/recommendations", params={**params, "exclude": ",".join(map(str, exclude))})
    got = [i["item_id"] for i in r.json()["items"]]
    assert len(got) == 10 and not exclude & set(got)
    assert set(got) <= _qualifying(model, u, {"Drama", "Comedy"}, 0, 3000, exclude)
    # unknown ids in the exclude list are ignored, not an error
    assert client.get(f"/users/{user}/recommendations", params={"exclude": "999999,abc"}).status_code == 200




def test_cli_recommend_explains_and_filters(bundle_path: Path, model: HybridRecommender, monkeypatch, capsys) -> None:
    args = ["recommend", "--model", str(bundle_path), "--user", str(int(model.user_ids[6])), "--k", "4"]
    code, out, _ = run_cli(monkeypatch, capsys, *args, "--json", "--explain", "--genres", "horror", "--year-min", "1990", "--year-max", "2010")
    assert code == 0
    items = json.loads(out)["items"]
    assert len(items) == 4
    history = np.unique(model.retrieval.histories.of(6))
    ids = model.items["item_id"].to_numpy()
    for item in items:
        i = model.item_idx(item["item_id"])
        assert "Horror" in model.items["genres"].iat[i] and 1990 <= int(model.items["year"].iat[i]) <= 2010
        assert [b["item_id"] for b in item["because"]] == ids[_top_similar(model, history, i)].tolist()
    code, out, _ = run_cli(monkeypatch, capsys, *args, "--explain")
    assert code == 0 and out.count("because: ") == 12
    code, _, err = run_cli(monkeypatch, capsys, *args, "--genres", "Cowboys")
    assert code == 2 and "unknown genre 'Cowboys'" in err
    code, _, err = run_cli(monkeypatch, capsys, *args, "--year-min", "2000", "--year-max", "1990")
    assert code == 2 and "--year-min" in err
