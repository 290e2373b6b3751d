"""Settings picked from the data's size, so one default configuration trains MovieLens 100K in
seconds and a million ratings over 100k movies in minutes.

Each rule only changes a setting the configuration left at its default (a value given in a
YAML file or with ``--set`` always wins), and every change is returned with its reason, logged
by the pipeline and written to the bundle's manifest. Work that grows faster than the data is
what these rules bound: per-epoch validation scores users x items, the ranker's training lists
and the rating model's I-AutoRec are users x items wide, and two-tower epochs grow with ratings.
One rule looks at the data's kind instead: implicit feedback (every rating the same value)
trains no rating model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from movierec.core.config import Config

VAL_USERS = 2_000
"""Two-tower validation users per epoch once there are more than ``VAL_USERS_ABOVE``."""
VAL_USERS_ABOVE = 5_000
STEPS_PER_EPOCH = 400
"""Two-tower batches per epoch once an epoch would be longer (a fresh random subset each epoch)."""
RANKER_LISTS = 3_000
"""Users whose held-out ratings become ranker training lists: past a few thousand lists the
ranker's validation order stops improving while its cost keeps growing with them."""
AUTOREC_CELLS = 50_000_000
"""I-AutoRec (users x items wide layers) is left out of the rating model past this many cells."""
TWO_TOWER_PASSES = 1.0
"""Once epochs are capped at ``STEPS_PER_EPOCH`` batches, the two-tower model trains for about
this many passes over the positives (at least ``MIN_EPOCHS`` epochs) with patience
``LARGE_PATIENCE``: on large data validation recall@50 barely moves after the first capped
epoch while every epoch costs a full budget of steps (benchmarks/RESULTS.md, "Scaling")."""
MIN_EPOCHS = 3
LARGE_PATIENCE = 1
LARGE_TABLES = 20_000
"""Users + items past which a step's optimizer update over the id tables dominates its cost
(the dense update touches every row, whatever the batch): the two-tower epoch budget
and the rating model's sparse MF apply only past it, so dense data with small tables (MovieLens
1M: 6,040 + 3,706) keeps its epochs."""
MF_SPARSE_ROWS = LARGE_TABLES
"""Past this many users + items the rating model's biased MF updates only each batch's rows
(sparse gradients, lazy Adam): the dense optimizer step costs the whole factor tables."""
MF_BATCH = 1_024
"""The rating model's MF batch (ranking/_rating_train.py)."""
MF_STEPS = 12_000
"""Upper bound on the rating model's MF steps (epochs x batches), sparse or dense: past it (about
340,000 ratings at 40 epochs) the epochs are capped."""
MF_PATIENCE = 3


@dataclass(frozen=True)
class Choice:
    key: str
    value: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.key}={self.value} ({self.reason})"


def _is_default(section: Any, field: str) -> bool:
    return field not in section.model_fields_set


def size_to_data(
    config: Config, n_users: int, n_items: int, n_ratings: int, constant_rating: float | None = None, content: bool = True
) -> tuple[Config, list[Choice]]:
    """A copy of ``config`` with the size-dependent defaults filled in, and what was chosen.

    ``constant_rating``: the one value every rating has (implicit feedback, e.g. all 1), if so.
    ``content``: False when every movie has the same content (no item text, genres or years).
    """
    config = config.model_copy(deep=True)
    choices: list[Choice] = []

    def choose(key: str, value: Any, reason: str) -> bool:
        *path, field = key.split(".")
        section: Any = config
        for part in path:
            section = getattr(section, part)
        if _is_default(section, field) and getattr(section, field) != value:
            setattr(section, field, value)
            section.model_fields_set.discard(field)  # still a default: a re-sizing may change it again
            choices.append(Choice(key, value, reason))
            return True
        return False

    r = config.retrieval
    if n_users > VAL_USERS_ABOVE and r.val_max_users is None:
        choose("retrieval.val_max_users", VAL_USERS, f"{n_users:,} users: validation scores a fixed sample each epoch")
    batches = n_ratings * (1 - r.val_fraction) / r.batch_size
    if batches > STEPS_PER_EPOCH and r.max_steps_per_epoch is None:
        choose("retrieval.max_steps_per_epoch", STEPS_PER_EPOCH, f"{batches:,.0f} batches per full pass: shorter epochs, checked more often")
    if n_users > RANKER_LISTS and config.ranking.max_users > RANKER_LISTS:
        choose("ranking.max_users", RANKER_LISTS, f"{n_users:,} users: ranker training lists sampled to a budget")
    if batches > STEPS_PER_EPOCH and r.max_steps_per_epoch == STEPS_PER_EPOCH and n_users + n_items > LARGE_TABLES:
        # epochs are random 400-batch subsets now: budget them by passes over the data
        epochs = max(MIN_EPOCHS, math.ceil(TWO_TOWER_PASSES * batches / STEPS_PER_EPOCH))
        if epochs < r.epochs and choose("retrieval.epochs", epochs, f"about {TWO_TOWER_PASSES:g} passes over {batches:,.0f} batches"):
            choose("retrieval.patience", min(r.patience, LARGE_PATIENCE), "capped epochs: stop at the first epoch without a better validation recall")
        # each refit epoch would be one more capped epoch, and the refit's gain was measured at
        # MovieLens sizes only
        choose("retrieval.refit_epochs", 0, "capped epochs: the served vectors are the early-stopped model's")
    if not content and r.id_dropout > 0:
        # a movie trained without its id is then the same vector as every other one
        choose("retrieval.id_dropout", 0.0, "every movie has the same content: ids are all the item tower can tell apart")
    rating = config.ranking.rating
    if constant_rating is not None and rating.enabled:
        choose("ranking.rating.enabled", False, f"every rating is {constant_rating:g}: no rating model, nothing to predict")
    if rating.enabled and rating.autorec_hidden > 0 and n_users * n_items > AUTOREC_CELLS:
        choose("ranking.rating.autorec_hidden", 0, f"{n_users:,} x {n_items:,} users x items: I-AutoRec left out of the rating model")
    if rating.enabled and rating.mf_dim > 0:
        sparse = n_users + n_items > MF_SPARSE_ROWS
        if sparse:
            choose("ranking.rating.mf_sparse", True, f"{n_users + n_items:,} users + items: MF steps update the batch's rows only (lazy Adam)")
        # the step budget holds for dense MF too: with small tables (MovieLens 1M's shape) a step
        # is cheaper, but 40 full passes over a million ratings are tens of thousands of steps
        mf_batches = math.ceil(n_ratings * (1 - rating.val_fraction) / MF_BATCH)
        epochs = max(MIN_EPOCHS, MF_STEPS // max(mf_batches, 1))
        if epochs * mf_batches > MF_STEPS and rating.mf_max_steps_per_epoch is None:
            # even the fewest epochs would overrun the step budget: shorter epochs instead
            per_epoch = MF_STEPS // MIN_EPOCHS
            choose("ranking.rating.mf_max_steps_per_epoch", per_epoch,
                   f"{mf_batches:,} MF batches per full pass: epochs of {per_epoch:,} batches, a fresh random subset each")
        steps = epochs * min(mf_batches, rating.mf_max_steps_per_epoch or mf_batches)
        if epochs < rating.mf_epochs and choose("ranking.rating.mf_epochs", epochs, f"{mf_batches:,} MF batches per pass: {steps:,} steps at most"):
            choose("ranking.rating.mf_patience", min(rating.mf_patience, MF_PATIENCE), "capped MF epochs: stop sooner once validation RMSE stalls")
            if sparse:
                choose("ranking.rating.patience", min(rating.patience, MF_PATIENCE), "capped MF epochs: I-AutoRec, if kept, stops as soon")
    return config, choices
