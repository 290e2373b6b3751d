"""Size-dependent defaults: small data keeps the configuration as it is, large data gets bounded
work, and a value the user set is never changed."""

from __future__ import annotations

from movierec.core.config import load_config
import pytest

from movierec.core.sizing import (
    AUTOREC_CELLS,
    LARGE_PATIENCE,
    MF_PATIENCE,
    MF_STEPS,
    RANKER_LISTS,
    STEPS_PER_EPOCH,
    VAL_USERS,
    size_to_data,
)


@pytest.mark.parametrize(
    "n_users, n_items, n_ratings",
    [
        (943, 1682, 80_000),  # MovieLens 100K, a P2 training part
        (943, 1682, 100_000),  # MovieLens 100K, whole
        (610, 9742, 100_836),  # ml-latest-small, whole
        (610, 9742, 80_669),  # ml-latest-small, a training part
    ],
)
def test_small_data_keeps_every_default(n_users: int, n_items: int, n_ratings: int) -> None:
    """The size rules never fire at the sizes the quality protocols run on."""
    config = load_config()
    sized, choices = size_to_data(config, n_users, n_items, n_ratings)
    assert choices == []
    assert sized == config


def test_large_data_bounds_validation_epochs_lists_and_the_rating_model() -> None:
    sized, choices = size_to_data(load_config(), 20_000, 100_000, 1_000_000)
    keys = {c.key for c in choices}
    assert keys == {
        "retrieval.val_max_users", "retrieval.max_steps_per_epoch", "retrieval.epochs", "retrieval.patience",
        "retrieval.refit_epochs", "ranking.max_users", "ranking.rating.autorec_hidden", "ranking.rating.mf_sparse", "ranking.rating.mf_epochs",
        "ranking.rating.patience", "ranking.rating.mf_patience",
    }
    assert sized.retrieval.val_max_users == VAL_USERS
    assert sized.retrieval.max_steps_per_epoch == STEPS_PER_EPOCH
    # 1M ratings: ~879 batches of 1,024 per pass, one pass in 400-batch epochs
    assert sized.retrieval.epochs == 3 and sized.retrieval.patience == LARGE_PATIENCE
    assert load_config().retrieval.refit_epochs > 0 and sized.retrieval.refit_epochs == 0
    assert sized.ranking.rating.mf_sparse is True
    mf_batches = -(-900_000 // 1024)
    assert sized.ranking.rating.mf_epochs == MF_STEPS // mf_batches and sized.ranking.rating.patience == MF_PATIENCE
    assert sized.ranking.rating.mf_patience == MF_PATIENCE
    assert sized.ranking.max_users == RANKER_LISTS
    assert sized.ranking.rating.autorec_hidden == 0 and 20_000 * 100_000 > AUTOREC_CELLS
    assert all(c.reason for c in choices)


def test_values_the_user_set_are_kept() -> None:
    config = load_config(overrides=[
        "retrieval.max_steps_per_epoch=50", "ranking.max_users=10000", "ranking.rating.autorec_hidden=100",
        "ranking.rating.mf_sparse=false", "ranking.rating.mf_epochs=40",
    ])
    sized, choices = size_to_data(config, 20_000, 100_000, 1_000_000)
    assert sized.retrieval.max_steps_per_epoch == 50
    assert sized.ranking.max_users == 10_000
    assert sized.ranking.rating.autorec_hidden == 100
    assert sized.ranking.rating.mf_sparse is False and sized.ranking.rating.mf_epochs == 40
    assert sized.retrieval.epochs == load_config().retrieval.epochs  # no epoch budget: the user chose the epoch length
    assert {c.key for c in choices} == {"retrieval.val_max_users"}


def test_a_refit_the_user_set_survives_the_epoch_budget() -> None:
    sized, choices = size_to_data(load_config(overrides=["retrieval.refit_epochs=2"]), 20_000, 100_000, 1_000_000)
    assert sized.retrieval.epochs == 3  # the budget still applies
    assert sized.retrieval.refit_epochs == 2 and "retrieval.refit_epochs" not in {c.key for c in choices}


def test_epoch_budgets_only_lower_and_grow_with_the_ratings() -> None:
    """The two-tower budget is passes over the data (linear in ratings), never above the
    configured maximum; the MF budget is a step count."""
    epochs = [size_to_data(load_config(), 20_000, 100_000, n)[0].retrieval.epochs for n in (1_000_000, 4_000_000, 20_000_000)]
    assert epochs[0] < epochs[1] <= epochs[2] == load_config().retrieval.epochs
    mf = [size_to_data(load_config(), 20_000, 100_000, n)[0].ranking.rating.mf_epochs for n in (1_000_000, 4_000_000, 20_000_000)]
    assert mf[0] > mf[1] >= mf[2] >= 3


def test_the_mf_step_budget_holds_past_the_fewest_epochs() -> None:
    """20M ratings: three full MF passes would be 52,000+ steps, so the epochs get shorter (a
    random subset each) and epochs x batches stays within the budget; 1M keeps full passes."""
    sized, choices = size_to_data(load_config(), 200_000, 100_000, 20_000_000)
    rating = sized.ranking.rating
    assert "ranking.rating.mf_max_steps_per_epoch" in {c.key for c in choices}
    assert rating.mf_epochs * rating.mf_max_steps_per_epoch <= MF_STEPS
    small, _ = size_to_data(load_config(), 20_000, 100_000, 1_000_000)
    assert small.ranking.rating.mf_max_steps_per_epoch is None
    assert small.ranking.rating.mf_epochs * -(-900_000 // 1024) <= MF_STEPS


def test_dense_data_with_small_tables_keeps_its_two_tower_epochs_and_budgets_mf_steps() -> None:
    """MovieLens 1M (6,040 users, 3,706 items, 1M ratings): epochs are capped at 400 batches,
    but the two-tower epoch budget and sparse MF are for large id tables only. The MF step
    budget holds for dense MF too (40 full passes would be 35,000 steps), and I-AutoRec keeps
    its patience."""
    config = load_config()
    sized, choices = size_to_data(config, 6_040, 3_706, 1_000_209)
    keys = {c.key for c in choices}
    assert "retrieval.max_steps_per_epoch" in keys
    assert not keys & {"retrieval.epochs", "retrieval.patience", "ranking.rating.mf_sparse", "ranking.rating.patience"}
    assert sized.retrieval.epochs == config.retrieval.epochs
    rating = sized.ranking.rating
    mf_batches = -(-int(1_000_209 * 0.9) // 1024)
    assert rating.mf_sparse is False and rating.mf_epochs == MF_STEPS // mf_batches < config.ranking.rating.mf_epochs
    assert rating.mf_epochs * mf_batches <= MF_STEPS and rating.mf_max_steps_per_epoch is None
    assert rating.mf_patience == MF_PATIENCE and rating.patience == config.ranking.rating.patience


def test_constant_ratings_leave_the_rating_model_out() -> None:
    """Implicit feedback (every rating the same value) has nothing for a rating model to predict."""
    sized, choices = size_to_data(load_config(), 943, 1682, 100_000, constant_rating=1.0)
    assert [c.key for c in choices] == ["ranking.rating.enabled"] and sized.ranking.rating.enabled is False
    assert "every rating is 1" in choices[0].reason
    # at a large size the rating model's own rules no longer fire: it is not trained
    _, large = size_to_data(load_config(), 20_000, 100_000, 1_000_000, constant_rating=1.0)
    assert not any(c.key.startswith("ranking.rating.") and c.key != "ranking.rating.enabled" for c in large)
    assert "ranking.rating.enabled" in {c.key for c in large}
    kept, chosen = size_to_data(load_config(overrides=["ranking.rating.enabled=true"]), 943, 1682, 100_000, constant_rating=1.0)
    assert kept.ranking.rating.enabled is True and chosen == []  # a value the user set wins


def test_movies_without_content_keep_their_ids() -> None:
    """Every movie with the same content: an item trained without its id would be the same vector
    as all the others, so id dropout is turned off, unless the user set it."""
    sized, choices = size_to_data(load_config(), 943, 1_682, 100_000, content=False)
    assert sized.retrieval.id_dropout == 0.0 and "retrieval.id_dropout" in {c.key for c in choices}
    assert size_to_data(load_config(), 943, 1_682, 100_000)[0].retrieval.id_dropout == load_config().retrieval.id_dropout
    mine, choices = size_to_data(load_config(overrides=["retrieval.id_dropout=0.2"]), 943, 1_682, 100_000, content=False)
    assert mine.retrieval.id_dropout == 0.2 and not choices
