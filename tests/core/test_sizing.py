"""Size-dependent defaults: small data keeps the configuration as it is, large data gets bounded
work, and a value the user set is never changed."""

from __future__ import annotations

from movierec.config import load_config
from movierec.sizing import AUTOREC_CELLS, RANKER_LISTS, STEPS_PER_EPOCH, VAL_USERS, size_to_data


def test_small_data_keeps_every_default() -> None:
    config = load_config()
    sized, choices = size_to_data(config, 943, 1682, 80_000)
    assert choices == []
    assert sized == config


def test_large_data_bounds_validation_epochs_lists_and_the_rating_model() -> None:
    sized, choices = size_to_data(load_config(), 20_000, 100_000, 1_000_000)
    keys = {c.key for c in choices}
    assert keys == {"retrieval.val_max_users", "retrieval.max_steps_per_epoch", "ranking.max_users", "ranking.rating.autorec_hidden"}
    assert sized.retrieval.val_max_users == VAL_USERS
    assert sized.retrieval.max_steps_per_epoch == STEPS_PER_EPOCH
    assert sized.ranking.max_users == RANKER_LISTS
    assert sized.ranking.rating.autorec_hidden == 0 and 20_000 * 100_000 > AUTOREC_CELLS
    assert all(c.reason for c in choices)


def test_values_the_user_set_are_kept() -> None:
    config = load_config(overrides=["retrieval.max_steps_per_epoch=50", "ranking.max_users=10000", "ranking.rating.autorec_hidden=100"])
    sized, choices = size_to_data(config, 20_000, 100_000, 1_000_000)
    assert sized.retrieval.max_steps_per_epoch == 50
    assert sized.ranking.max_users == 10_000
    assert sized.ranking.rating.autorec_hidden == 100
    assert {c.key for c in choices} == {"retrieval.val_max_users"}
