"""The serve-time checks and records of writes (``recommender.writes``), on a real trained bundle
and a SQLite online state."""

from __future__ import annotations

from pathlib import Path

import pytest

from recommender import HybridRecommender, IdTypeError, UnknownIdError, writes
from recommender.events import GENERATED_INT_BASE
from recommender.state import IdConflict, StateError, open_state
from tests.serving.conftest import bundle_path  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def model(bundle_path: Path) -> HybridRecommender:  # noqa: F811
    return HybridRecommender.load(bundle_path)


def test_the_rating_scale_is_the_training_data_scale(model: HybridRecommender) -> None:
    lo, hi = writes.rating_scale(model)
    assert (lo, hi) == tuple(float(v) for v in model.bundle.manifest["dataset"]["rating_scale"]) and lo < hi


def test_rating_rows_resolve_ids_then_check_the_scale(model: HybridRecommender) -> None:
    item = model.item_ids.id_of(0)
    lo, hi = writes.rating_scale(model)
    rows = writes.rating_rows(model, [(str(item), hi), (item, lo)])
    assert rows == [(item, hi, model.title_of(0)), (item, lo, model.title_of(0))]  # "3" is item 3
    with pytest.raises(ValueError, match=rf"rating {hi + 1:g} for item {item!r} is outside this model's scale {lo:g}..{hi:g}"):
        writes.rating_rows(model, [(item, hi + 1)])
    with pytest.raises(UnknownIdError):  # an unknown item is 404 even when a rating is also out of scale
        writes.rating_rows(model, [(item, hi + 1), (10**9, lo)])
    with pytest.raises(IdTypeError):
        writes.rating_rows(model, [("abc", lo)])


def test_ratings_are_recorded_in_the_online_state(model: HybridRecommender, tmp_path: Path) -> None:
    item = model.item_ids.id_of(0)
    rows = writes.rating_rows(model, [(item, writes.rating_scale(model)[1])])
    with pytest.raises(StateError, match="no online state is configured; ratings not recorded"):
        writes.record_ratings(None, model, 10**6, rows)
    state = open_state(tmp_path / "state")
    before = state.last_seq()
    assert writes.record_ratings(state, model, 10**6, rows) == {"created": True, "recorded": 1}
    assert writes.record_ratings(state, model, model.users.id_of(0), rows) == {"created": False, "recorded": 1}
    assert state.last_seq() == before + 2


def test_a_new_movie_id_is_checked_before_it_is_added(model: HybridRecommender, tmp_path: Path) -> None:
    assert writes.new_item_id(model, None) is None
    assert writes.new_item_id(model, "123456789") == 123456789
    taken = model.item_ids.id_of(0)
    with pytest.raises(IdConflict, match=f"item_id {taken!r} already exists"):
        writes.new_item_id(model, taken)
    with pytest.raises(ValueError, match="range the service generates ids from"):
        writes.new_item_id(model, GENERATED_INT_BASE + 1)
    with pytest.raises(IdTypeError):
        writes.new_item_id(model, "not-a-number")
    record = {"title": "Brand New", "genres": [], "description": "", "year": None}
    with pytest.raises(StateError, match="no online state is configured; movie not added"):
        writes.add_item(None, model, record, None)
    assert writes.add_item(open_state(tmp_path / "state"), model, record, None) >= GENERATED_INT_BASE
