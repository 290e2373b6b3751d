"""Every route of the HTTP API through the real app (lifespan included), with body fields and
every error code checked."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recommender import HybridRecommender
from tests.serving.conftest import API_KEY


@pytest.fixture(scope="module")
def model(bundle_path) -> HybridRecommender:
    return HybridRecommender.load(bundle_path)


def test_health_and_ready_report_the_loaded_model(client: TestClient, model: HybridRecommender) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "model_version": model.model_version}


def test_ready_is_503_while_no_bundle_is_loaded(tmp_path) -> None:
    from serving.app import create_app
    from serving.settings import Settings

    with TestClient(create_app(Settings(model=tmp_path))) as c:  # empty serving directory
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503 and "no model" in r.json()["detail"]
        assert c.get("/users/1/recommendations").status_code == 503


def test_user_recommendations_match_the_model_and_exclude_seen(client: TestClient, model: HybridRecommender) -> None:
    user = int(model.user_ids[3])
    r = client.get(f"/users/{user}/recommendations", params={"k": 7})
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == user and body["model_version"] == model.model_version
    expected = model.recommend_user(user, 7)
    assert [i["item_id"] for i in body["items"]] == model.items["item_id"].to_numpy()[expected.item_idx].tolist()
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all({"item_id", "title", "genres", "score"} <= set(i) and "because" not in i for i in body["items"])
    seen = set(model.items["item_id"].to_numpy()[model.retrieval.histories.of(3)].tolist())
    assert not seen & {i["item_id"] for i in body["items"]}


def test_user_recommendations_apply_genre_and_year_filters(client: TestClient) -> None:
    r = client.get("/users/5/recommendations", params={"k": 5, "genres": "comedy, Horror", "year_min": 2000, "year_max": 2015})
    assert r.status_code == 200
    items = r.json()["items"]
    assert len(items) == 5
    for item in items:
        assert {"Comedy", "Horror"} & set(item["genres"]) and 2000 <= item["year"] <= 2015


def test_diversity_reranks_and_keeps_k(client: TestClient) -> None:
    plain = client.get("/users/8/recommendations", params={"k": 10}).json()["items"]
    diverse = client.get("/users/8/recommendations", params={"k": 10, "diversity": 1.0}).json()["items"]
    assert len(diverse) == 10
    assert diverse[0]["item_id"] == plain[0]["item_id"]  # the most relevant is always picked first
    assert [i["item_id"] for i in diverse] != [i["item_id"] for i in plain]


def test_explain_names_movies_from_the_users_history(client: TestClient, model: HybridRecommender) -> None:
    body = client.get("/users/4/recommendations", params={"k": 5, "explain": "true"}).json()
    history = set(model.items["item_id"].to_numpy()[model.retrieval.histories.of(model.user_idx(4))].tolist())
    for item in body["items"]:
        assert 1 <= len(item["because"]) <= 3
        for b in item["because"]:
            assert b["item_id"] in history and b["title"] in b["reason"]


def test_new_user_recommendations_exclude_the_liked_movies(client: TestClient) -> None:
    r = client.post("/recommendations", json={"liked_items": [1, 2, 3], "k": 6, "genres": ["Action"]})
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] is None and len(body["items"]) == 6
    assert not {1, 2, 3} & {i["item_id"] for i in body["items"]}
    assert all("Action" in i["genres"] for i in body["items"])


def test_item_lookup_and_title_search(client: TestClient, model: HybridRecommender) -> None:
    first = model.items.iloc[0]
    r = client.get(f"/items/{first['item_id']}")
    assert r.status_code == 200
    body = r.json()
    assert body["title"] == first["title"] and body["genres"] == list(first["genres"])
    assert body["popularity"] == int(model.item_counts[0])
    word = first["title"].split()[-1]
    hits = client.get("/items", params={"q": word.upper(), "limit": 5}).json()
    assert hits["query"] == word.upper() and 1 <= len(hits["items"]) <= 5
    assert all(word.lower() in i["title"].lower() for i in hits["items"])
    assert client.get("/items", params={"q": "zzqqxx-no-such-title"}).json()["items"] == []


@pytest.mark.parametrize("by", ["hybrid", "content", "collaborative"])
def test_similar_items_by_each_kind(client: TestClient, model: HybridRecommender, by: str) -> None:
    r = client.get("/items/1/similar", params={"k": 5, "by": by})
    assert r.status_code == 200
    body = r.json()
    assert body["item_id"] == 1 and body["by"] == by
    expected = model.similar(1, 5, by=by)
    assert [i["item_id"] for i in body["items"]] == model.items["item_id"].to_numpy()[expected.item_idx].tolist()
    assert 1 not in [i["item_id"] for i in body["items"]]


def test_added_movie_is_similar_and_recommendable_at_once(admin_client: TestClient) -> None:
    headers = {"X-API-Key": API_KEY}
    new = {"title": "Zorblax Returns", "genres": ["Sci-Fi", "Action"], "description": "alien robot space battle", "year": 2024}
    r = admin_client.post("/items", json=new, headers=headers)
    assert r.status_code == 201, r.text
    item = r.json()
    assert item["title"] == new["title"] and item["genres"] == new["genres"] and item["popularity"] == 0
    new_id = item["item_id"]
    assert admin_client.get(f"/items/{new_id}").json()["title"] == new["title"]
    assert admin_client.get("/items", params={"q": "zorblax"}).json()["items"][0]["item_id"] == new_id
    assert admin_client.get(f"/items/{new_id}/similar", params={"k": 5}).status_code == 200
    # found by /similar from an existing sci-fi movie's side, by content
    found = admin_client.get("/items/1/similar", params={"k": 150, "by": "content"}).json()["items"]
    assert new_id in [i["item_id"] for i in found]
    # recommendable: a sci-fi/action-only filter restricted to its year leaves it as a candidate
    recs = admin_client.post(
        "/recommendations", json={"liked_items": [1], "k": 50, "genres": ["Sci-Fi"], "year_min": 2024}
    ).json()["items"]
    assert new_id in [i["item_id"] for i in recs]
    # the same id again is a conflict
    dup = admin_client.post("/items", json={**new, "item_id": new_id}, headers=headers)
    assert dup.status_code == 409 and "already exists" in dup.json()["detail"]


def test_post_items_needs_the_key_when_one_is_configured(admin_client: TestClient) -> None:
    body = {"title": "Keyless", "genres": ["Drama"]}
    assert admin_client.post("/items", json=body).status_code == 401
    assert admin_client.post("/items", json=body, headers={"X-API-Key": "wrong"}).status_code == 401


def test_post_items_is_open_without_a_configured_key(bundle_path) -> None:
    from serving.app import create_app
    from serving.settings import Settings

    with TestClient(create_app(Settings(model=bundle_path))) as c:
        r = c.post("/items", json={"title": "Open Door", "genres": ["Drama"], "item_id": 100000})
        assert r.status_code == 201 and r.json()["item_id"] == 100000


@pytest.mark.parametrize(
    "method, url, body, fragment",
    [
        ("get", "/users/99999/recommendations", None, "unknown user_id"),
        ("get", "/items/99999", None, "unknown item_id"),
        ("get", "/items/99999/similar", None, "unknown item_id"),
        ("post", "/recommendations", {"liked_items": [1, 99999]}, "unknown item_id"),
        ("get", "/no/such/route", None, "Not Found"),
    ],
)
def test_unknown_ids_are_404_with_a_message(client: TestClient, method: str, url: str, body, fragment: str) -> None:
    r = client.request(method, url, json=body)
    assert r.status_code == 404
    assert fragment in r.json()["detail"]


@pytest.mark.parametrize(
    "method, url, body",
    [
        ("get", "/users/not-a-user/recommendations", None),
        ("get", "/items/abc", None),
        ("get", "/items/abc/similar", None),
        ("post", "/recommendations", {"liked_items": [1, "abc"]}),
        ("post", "/users/1/ratings", [{"item_id": "abc", "rating": 3}]),
    ],
)
def test_ids_of_the_wrong_type_are_422(client: TestClient, method: str, url: str, body) -> None:
    """Integer id spaces: a text id could never exist, so it is a client mistake, not a miss."""
    r = client.request(method, url, json=body)
    assert r.status_code == 422 and "integers" in r.json()["detail"], r.text


@pytest.mark.parametrize(
    "method, url, body, fragment",
    [
        ("get", "/users/1/recommendations?k=0", None, "k"),
        ("get", "/users/1/recommendations?k=1001", None, "k"),
        ("get", "/users/1/recommendations?k=ten", None, "k"),
        ("get", "/users/1/recommendations?genres=Cowboys", None, "unknown genre"),
        ("get", "/users/1/recommendations?diversity=1.5", None, "diversity"),
        ("get", "/users/1/recommendations?year_min=2010&year_max=2000", None, "year_min"),
        ("get", "/items/1/similar?by=vibes", None, "by"),
        ("get", "/items?q=", None, "q"),
        ("get", "/items?q=star&limit=0", None, "limit"),
        ("post", "/recommendations", {"liked_items": []}, "liked_items"),
        ("post", "/recommendations", {"liked_items": [1], "k": 5000}, "k"),
        ("post", "/recommendations", {"liked_items": [1], "genres": ["Cowboys"]}, "unknown genre"),
        ("post", "/recommendations", {"liked": [1]}, "liked_items"),
        ("post", "/items", {"genres": ["Drama"]}, "title"),
        ("post", "/items", {"title": "X", "genres": ["Cowboys"]}, "unknown genre"),
    ],
)
def test_bad_parameters_are_422_with_a_message(client: TestClient, method: str, url: str, body, fragment: str) -> None:
    r = client.request(method, url, json=body)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


def test_malformed_json_is_422_not_500(client: TestClient) -> None:
    r = client.post("/recommendations", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"]


def test_oversized_bodies_are_413(client: TestClient) -> None:
    big = {"liked_items": [1] * 40_000}  # 80 KB as compact JSON
    r = client.post("/recommendations", json=big)
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(70):
            yield b" " * 1024

    r = client.post("/recommendations", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    client.get("/items/1")
    client.get("/items/2")
    client.get("/items/99999")
    text = client.get("/metrics").text
    assert 'route="/items/{item_id}"' in text and 'route="/items/1"' not in text
    line = next(
        ln for ln in text.splitlines()
        if ln.startswith("movierec_http_requests_total") and 'route="/items/{item_id}"' in ln and 'status="404"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1
    assert "movierec_http_request_duration_seconds_bucket" in text


def test_docs_openapi_and_web_page_are_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/users/{user_id}/recommendations", "/recommendations", "/items", "/items/{item_id}", "/items/{item_id}/similar", "/admin/reload"]:
        assert path in paths
    page = client.get("/")
    assert page.status_code == 200 and "search-input" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_cors_is_off_unless_configured(client: TestClient, bundle_path) -> None:
    from serving.app import create_app
    from serving.settings import Settings

    origin = {"Origin": "http://example.test"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    with TestClient(create_app(Settings(model=bundle_path, cors_origins="http://example.test"))) as c:
        assert c.get("/health", headers=origin).headers["access-control-allow-origin"] == "http://example.test"


def test_scores_are_finite_json_numbers(client: TestClient) -> None:
    items = client.get("/users/1/recommendations", params={"k": 1000}).json()["items"]
    assert len(items) > 0 and np.isfinite([i["score"] for i in items]).all()


def test_rank_switch_serves_the_two_tower_order(bundle_path, model: HybridRecommender) -> None:
    from serving.app import create_app
    from serving.settings import Settings

    with TestClient(create_app(Settings(model=bundle_path, rank=False))) as c:
        body = c.get("/users/9/recommendations", params={"k": 5}).json()
    expected = model.recommend_user(9, 5, rank=False)
    assert [i["item_id"] for i in body["items"]] == model.items["item_id"].to_numpy()[expected.item_idx].tolist()
