"""What a request asks of the serve-time layer, in the catalogue's terms (``recommender.requests``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recommender import HybridRecommender
from recommender.requests import canonical_genres, pool_size, split_list
from tests.serving.conftest import bundle_path  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def model(bundle_path: Path) -> HybridRecommender:  # noqa: F811
    return HybridRecommender.load(bundle_path)


def test_genres_id_lists_and_pool_size_in_the_catalogue_terms(model: HybridRecommender) -> None:
    genre = model.genre_vocab[0]
    assert canonical_genres(model, [genre.upper(), " ", genre.lower()]) == [genre, genre]
    assert canonical_genres(model, None) is None and canonical_genres(model, [" "]) is None
    with pytest.raises(ValueError, match="unknown genre 'Nope'"):
        canonical_genres(model, ["Nope"])
    assert split_list(None) is None and split_list("") is None
    assert split_list(" 1, ,2 ") == ["1", "2"] and split_list(",") == []
    assert pool_size(model, 10, 0.0) == 10
    assert pool_size(model, 10, 0.5) == min(50, model.n_items)
