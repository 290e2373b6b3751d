"""Features on a hand-built example whose every value can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ranking.features import FEATURES, FeatureContext, compute_features
from ranking.padding import pad_histories
from ranking.item_item import item_item_matrix


def col(name: str) -> int:
    return FEATURES.index(name)


@pytest.fixture()
def ctx() -> FeatureContext:
    # 5 items in the catalogue; the training arrays know only items 0..3 (item 4 was added later)
    content = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32)
    genres = np.array([[1, 0], [1, 0], [0, 1], [1, 1], [0, 1]], dtype=np.float32)
    years = np.array([1990, 2000, np.nan, 1995, 2001], dtype=np.float64)
    collab = sp.csr_matrix(np.array([[0, 0, 0.5, 0.1], [0, 0, 0.2, -0.3], [0.5, 0.2, 0, 0], [0.1, -0.3, 0, 0]], np.float32))
    return FeatureContext(
        content=content,
        genres=genres,
        years=years,
        item_counts=np.array([10, 4, 0, 2]),
        item_mean=np.array([4.0, 3.0, 3.5, 2.5], np.float32),
        collab=collab,
        user_mean=np.array([3.0, 4.0], np.float32),
        user_features=np.array([[1.0, 0.0], [0.0, 1.0]], np.float32),
        global_mean=3.5,
        ref_year=2001.0,
    )


def test_features_match_hand_computation(ctx: FeatureContext) -> None:
    # user 0 rated item 0 (5 stars) then item 1 (1 star); mean 3 -> centred +2, -2
    hist = pad_histories([np.array([0, 1])], [np.array([5.0, 1.0])], np.array([3.0]))
    cand = np.array([[3, 2, 4, -1]])
    tt = np.array([[0.1, 0.9, 0.5, 0.0]], np.float32)
    f = compute_features(ctx, np.array([0]), hist, cand, tt)
    assert f.shape == (1, 4, len(FEATURES) + 2)
    c3, c2, c4 = f[0, 0], f[0, 1], f[0, 2]
    # two-tower score and its rank within the list (log1p of the 0-based position)
    assert c3[col("tt_score")] == pytest.approx(0.1)
    assert c2[col("tt_rank")] == pytest.approx(0.0) and c4[col("tt_rank")] == pytest.approx(np.log1p(1))
    assert c3[col("tt_rank")] == pytest.approx(np.log1p(2))
    # content: item 3 = (0.6, 0.8): cosines 0.6 to item 0 and 0.8 to item 1
    assert c3[col("content_mean")] == pytest.approx(0.7)
    assert c3[col("content_max")] == pytest.approx(0.8)
    assert c3[col("content_liked")] == pytest.approx((0.6 * 2 + 0.8 * -2) / 2)
    # genres: the history is all genre 0; item 3 is half genre 0, item 2 none of it
    assert c3[col("genre_affinity")] == pytest.approx(0.5)
    assert c2[col("genre_affinity")] == pytest.approx(0.0)
    # collab: column j of W summed over history rows 0 and 1 (and weighted by centred ratings),
    # standardised over the list's three valid candidates
    def z(values: list[float]) -> np.ndarray:
        v = np.array(values)
        return (v - v.mean()) / v.std()

    np.testing.assert_allclose(f[0, :3, col("collab_z")], z([0.1 - 0.3, 0.5 + 0.2, 0.0]), rtol=1e-5)
    np.testing.assert_allclose(f[0, :3, col("collab_liked_z")], z([0.1 * 2 + -0.3 * -2, 0.5 * 2 + 0.2 * -2, 0.0]), rtol=1e-5)
    np.testing.assert_allclose(f[0, :3, col("tt_z")], z([0.1, 0.9, 0.5]), rtol=1e-5)
    assert c2[col("collab_rank")] == pytest.approx(0.0)  # highest collab score in the list
    # item statistics; item 2 has no year
    assert c3[col("item_pop")] == pytest.approx(np.log1p(2))
    assert c3[col("item_mean")] == pytest.approx(2.5)
    assert c3[col("item_age")] == pytest.approx(6.0)
    assert c2[col("year_missing")] == 1.0 and c2[col("item_age")] == 0.0 and c2[col("year_gap")] == 0.0
    assert c3[col("year_gap")] == pytest.approx(1995 - 1995)  # history years 1990 and 2000
    # user side, broadcast over candidates
    assert c3[col("user_activity")] == pytest.approx(np.log1p(2))
    assert c3[col("user_mean")] == pytest.approx(3.0)
    assert list(c3[len(FEATURES):]) == [1.0, 0.0]
    # item 4 was added after training: content and genres known, no popularity or neighbours
    assert c4[col("item_pop")] == 0.0 and c4[col("item_mean")] == pytest.approx(3.5)
    assert c4[col("content_max")] == pytest.approx(1.0)
    # padding is all zeros
    assert not f[0, 3].any()


def test_a_lists_features_do_not_depend_on_the_padding_after_it(ctx: FeatureContext) -> None:
    # the ranker computes each chunk of training lists only as wide as its widest list
    hist = pad_histories([np.array([0, 1]), np.array([3])], [np.array([5.0, 1.0]), np.array([2.0])], np.array([3.0, 4.0]))
    cand = np.array([[3, 2, 4, -1, -1, -1], [1, 0, -1, -1, -1, -1]])
    tt = np.array([[0.1, 0.9, 0.5, 0, 0, 0], [0.4, -0.2, 0, 0, 0, 0]], np.float32)
    wide = compute_features(ctx, np.array([0, 1]), hist, cand, tt)
    narrow = compute_features(ctx, np.array([0, 1]), hist, cand[:, :3], tt[:, :3])
    np.testing.assert_allclose(narrow, wide[:, :3], rtol=1e-6, atol=1e-6)  # sums over shorter rows may round differently
    assert not wide[:, 3:].any()


def test_unknown_user_and_empty_history_give_finite_defaults(ctx: FeatureContext) -> None:
    hist = pad_histories([np.zeros(0, np.int64)], [None], np.array([3.5]))
    f = compute_features(ctx, np.array([-1]), hist, np.array([[0, 1]]), np.array([[0.3, 0.2]], np.float32))
    assert np.isfinite(f).all()
    assert f[0, 0, col("user_mean")] == pytest.approx(3.5)
    assert f[0, 0, col("content_mean")] == 0.0 and f[0, 0, col("user_activity")] == 0.0
    assert not f[0, 0, len(FEATURES):].any()  # unknown user: no user features


def test_pad_histories_keeps_most_recent_items_and_centres_ratings() -> None:
    hist = pad_histories([np.arange(5), np.array([7])], [np.array([1.0, 2, 3, 4, 5]), None], np.array([3.0, 4.0]), max_len=3)
    assert hist.items.tolist() == [[2, 3, 4], [7, -1, -1]]
    assert hist.centred.tolist() == [[0.0, 1.0, 2.0], [0.0, 0.0, 0.0]]
    assert hist.lengths.tolist() == [3, 1]


def _ease(x: np.ndarray, lam: float) -> np.ndarray:
    g = x.T @ x + lam * np.eye(x.shape[1])
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def test_item_item_matrix_is_ease_when_small_and_ease_over_the_most_rated_items_when_large() -> None:
    rng = np.random.default_rng(0)
    dense = (rng.random((60, 12)) < np.linspace(0.1, 0.6, 12)).astype(np.float64)
    x = sp.csr_matrix(dense.astype(np.float32))
    w = item_item_matrix(x, lam=5.0, neighbors=12).toarray()
    np.testing.assert_allclose(w, _ease(dense, 5.0), rtol=1e-4, atol=1e-5)

    # past dense_max_items: EASE over the most-rated items only, the rest have no weights at all
    big = item_item_matrix(x, lam=5.0, neighbors=3, dense_max_items=5).toarray()
    top = np.sort(np.argsort(-dense.sum(0), kind="stable")[:5])
    rest = np.setdiff1d(np.arange(12), top)
    assert not big[rest].any() and not big[:, rest].any()
    assert (np.count_nonzero(big, axis=0) <= 3).all()
    assert not np.diag(big).any()
    sub = _ease(dense[:, top], 5.0)
    for j, col in enumerate(top):
        kept = np.flatnonzero(big[:, col])
        np.testing.assert_allclose(big[kept, col], sub[np.searchsorted(top, kept), j], rtol=1e-4, atol=1e-5)
        assert set(np.searchsorted(top, kept)) <= set(np.argsort(-np.abs(sub[:, j]))[:4])  # the largest ones (ties allowed)

def test_item_item_lambda_is_chosen_on_the_held_out_ratings() -> None:
    """``collab_lambda: auto`` picks the weight whose EASE ranks the held-out ratings best
    (recomputed here with a plain float64 EASE and full ranking), and hands back EASE at it."""
    from movierec.core.metrics import topn_metrics
    from movierec.core.splits import holdout_per_user
    from ranking.item_item import choose_lambda

    rng = np.random.default_rng(3)
    n_users, n_items = 400, 60
    # four taste groups, each liking its own 15 items, plus popularity falling across items
    group = rng.integers(0, 4, n_users)
    like = (np.arange(n_items)[None, :] // 15) == group[:, None]
    x = rng.random((n_users, n_items)) < np.where(like, 0.5, 0.2 * np.linspace(0.35, 0.05, n_items))
    ds = _dataset_from_pairs(*np.nonzero(x), n_users, n_items)
    past, held_out = holdout_per_user(ds, 0.2, seed=1)
    grid = (0.5, 20.0, 1e6)
    lam, weights, curve = choose_lambda(past.to_csr(), held_out.to_csr(), neighbors=60, dense_max_items=60, lambdas=grid)

    xp = (past.to_csr().toarray() > 0).astype(np.float64)
    rel = held_out.to_csr().tocsr()
    users = np.flatnonzero(np.diff(rel.indptr) > 0)
    want = {}
    for g in grid:
        scores = xp[users] @ _ease(xp, g)
        scores[xp[users] > 0] = -np.inf
        want[g] = topn_metrics(np.argsort(-scores, axis=1, kind="stable")[:, :10], rel[users], 10)["ndcg@10"]
    assert curve == pytest.approx(want, abs=1e-3)
    assert max(want.values()) - min(want.values()) > 0.01  # the choice matters on this data
    assert lam == max(want, key=want.get)
    np.testing.assert_allclose(weights.toarray(), _ease(xp, lam), rtol=1e-3, atol=1e-4)


def _dataset_from_pairs(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int):
    import pandas as pd

    from movierec.core.data import Dataset

    ratings = pd.DataFrame({"user_id": users, "item_id": items, "rating": 4.0, "timestamp": np.arange(len(users))})
    catalogue = pd.DataFrame({"item_id": np.arange(n_items), "title": [f"m{j}" for j in range(n_items)]})
    return Dataset(ratings, catalogue)


def test_timeline_features_match_hand_computation(ctx: FeatureContext) -> None:
    # first rating days: item 0 day 100, item 1 day 200, item 2 never rated, item 3 day 150; user 0
    # rated from day 50 to day 160; the snapshot's newest day is 300
    ctx.item_first_day = np.array([100.0, 200.0, np.nan, 150.0])
    ctx.user_first_day = np.array([50.0, 120.0])
    ctx.user_last_day = np.array([160.0, 300.0])
    ctx.ref_day = 300.0
    hist = pad_histories([np.array([0, 1])], [np.array([5.0, 1.0])], np.array([3.0]))
    cand = np.array([[3, 2, 4, 1]])
    f = compute_features(ctx, np.array([0]), hist, cand, np.zeros((1, 4), np.float32))
    # item 3 was first rated 10 days before the user's last rating, 100 days after the first
    assert f[0, 0, col("since_last")] == pytest.approx(-np.log1p(10))
    assert f[0, 0, col("since_first")] == pytest.approx(np.log1p(100))
    # item 1: 40 days after the user's last rating; items never rated (2) or added after
    # training (4) count as first rated on the newest day
    assert f[0, 3, col("since_last")] == pytest.approx(np.log1p(40))
    assert f[0, 1, col("since_last")] == f[0, 2, col("since_last")] == pytest.approx(np.log1p(140))
    assert f[0, :, col("user_span")] == pytest.approx(np.log1p(110))
    # a user who rated since training is active now: last day = newest day
    g = compute_features(ctx, np.array([0]), hist, cand, np.zeros((1, 4), np.float32), active=np.array([True]))
    assert g[0, 0, col("since_last")] == pytest.approx(-np.log1p(150))
    assert g[0, 0, col("since_first")] == f[0, 0, col("since_first")]
    # an unknown user is placed on the newest day, with no span
    u = compute_features(ctx, np.array([-1]), hist, cand, np.zeros((1, 4), np.float32))
    assert u[0, 0, col("since_last")] == pytest.approx(-np.log1p(150)) and u[0, 0, col("user_span")] == 0.0


def test_an_unrated_movie_counts_as_first_rated_at_its_release(ctx: FeatureContext) -> None:
    from ranking.features import DAYS_PER_YEAR

    # days since 1970: the snapshot runs from day 10,000 (1997-05) to day 10,500 (1998-10). Item 2
    # (1980) and item 4 (1998, added after training) have no rating; item 3 has no known year.
    ctx.years = np.array([1990, 2000, 1980, np.nan, 1998], dtype=np.float64)
    ctx.item_first_day = np.array([10_000.0, 10_100.0, np.nan, np.nan])
    ctx.user_first_day, ctx.user_last_day, ctx.ref_day = np.array([10_000.0, 10_000.0]), np.array([10_400.0, 10_400.0]), 10_500.0
    hist = pad_histories([np.array([0])], [np.array([4.0])], np.array([3.0]))
    f = compute_features(ctx, np.array([0]), hist, np.array([[1, 2, 3, 4]]), np.zeros((1, 4), np.float32))
    since_first = f[0, :, col("since_first")]
    # rated: its own first day; old and unrated: the snapshot's first day (not its newest, which
    # made old movies stripped of their ratings look brand new); year unknown: the newest day;
    # released inside the snapshot: January 1 of its year
    assert since_first[0] == pytest.approx(np.log1p(100))
    assert since_first[1] == pytest.approx(0.0)
    assert since_first[2] == pytest.approx(np.log1p(500))
    assert since_first[3] == pytest.approx(np.log1p((1998 - 1970) * DAYS_PER_YEAR - 10_000.0))


def test_timeline_features_are_zero_without_timestamps(ctx: FeatureContext) -> None:
    from ranking.lists import timeline_days

    assert timeline_days(np.array([0, 1]), np.array([0, 1]), np.zeros(2, np.int64), 2, 4) == {}
    days = timeline_days(np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([86_400, 3 * 86_400, 2 * 86_400]), 3, 3)
    assert days["item_first_day"][:2].tolist() == [1.0, 2.0] and np.isnan(days["item_first_day"][2])
    assert days["user_first_day"].tolist() == [1.0, 2.0, 3.0] and days["user_last_day"].tolist() == [3.0, 2.0, 3.0]
    hist = pad_histories([np.array([0, 1])], [None], np.array([3.0]))
    f = compute_features(ctx, np.array([0]), hist, np.array([[2, 3]]), np.zeros((1, 2), np.float32))
    assert not f[0, :, [col("since_last"), col("since_first"), col("user_span")]].any()
