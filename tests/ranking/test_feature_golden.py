"""The fast feature paths compute what the plain implementation computed.

``data/feature_golden.npz`` holds a fixed batch with every awkward case (see
``data/make_feature_golden.py``) and the features the pre-optimisation code gave for it. Columns
are matched by name, so adding a feature later does not invalidate the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import load_script

from ranking.features import FEATURES, MAX_HISTORY, compute_features, pad_histories

DATA = Path(__file__).resolve().parent / "data"


def _golden_module():
    return load_script(DATA / "make_feature_golden.py")


@pytest.fixture(scope="module")
def golden():
    mod = _golden_module()
    stored = dict(np.load(DATA / "feature_golden.npz"))
    return mod, stored


FULL_HISTORY = ("collab_z", "collab_rank", "collab_liked_z", "genre_affinity", "year_gap", "user_activity")
"""Features that read the whole history (the reference implementation cut every history to
its last 256 items): compared with the reference only for rows whose history is not longer."""


def _compare(new: np.ndarray, old: np.ndarray, old_names: list[str], lengths: list[int] | None = None) -> None:
    assert new.shape[:2] == old.shape[:2]
    short = np.array([n <= MAX_HISTORY for n in lengths]) if lengths is not None else np.ones(len(new), bool)
    for j, name in enumerate(old_names):
        if name in FEATURES:
            rows = short if name in FULL_HISTORY else slice(None)
            np.testing.assert_allclose(new[rows][..., FEATURES.index(name)], old[rows][..., j], rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=name)
    n_uf = old.shape[2] - len(old_names)
    np.testing.assert_allclose(new[..., len(FEATURES) :], old[..., len(old_names) :], rtol=1e-6, atol=1e-6)
    assert new.shape[2] - len(FEATURES) == n_uf


def test_batch_matches_reference(golden) -> None:
    mod, stored = golden
    ctx, users, histories, ratings, cand, scores = mod.build(stored)
    hist = pad_histories(histories, ratings, mod.user_means(ctx, users))
    new = compute_features(ctx, users, hist, cand, scores)
    _compare(new, stored["features"], [str(s) for s in stored["feature_names"]], [len(h) for h in histories])


def test_item_item_features_read_the_whole_history(golden) -> None:
    """A history longer than MAX_HISTORY: the item-item scores sum W over every history item
    (as EASE scores), while the content features still see the reference's last 256."""
    from ranking.features import _z_within

    mod, stored = golden
    ctx, users, histories, ratings, cand, scores = mod.build(stored)
    row = next(i for i, h in enumerate(histories) if len(h) > MAX_HISTORY)
    hist = pad_histories(histories[row : row + 1], ratings[row : row + 1], mod.user_means(ctx, users[row : row + 1]))
    new = compute_features(ctx, users[row : row + 1], hist, cand[row : row + 1], scores[row : row + 1])[0]
    dense, i0 = ctx.collab.toarray(), ctx.collab.shape[0]
    h = histories[row][histories[row] < i0]
    c = cand[row]
    ok = (c >= 0) & (c < i0)
    plain = np.where(ok, dense[h][:, np.where(ok, c, 0)].sum(0), 0.0)
    want = _z_within(plain[None, :], (c >= 0)[None, :])[0]
    np.testing.assert_allclose(new[:, FEATURES.index("collab_z")], want, rtol=1e-4, atol=1e-4)
    for name in ("content_mean", "content_max", "content_liked"):
        j = [str(s) for s in stored["feature_names"]].index(name)
        np.testing.assert_allclose(new[:, FEATURES.index(name)], stored["features"][row, :, j], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("row", range(9))
def test_single_user_matches_reference(golden, row: int) -> None:
    """One user per call (the request path) gives the same numbers as the batch."""
    mod, stored = golden
    ctx, users, histories, ratings, cand, scores = mod.build(stored)
    u = users[row : row + 1]
    hist = pad_histories(histories[row : row + 1], ratings[row : row + 1], mod.user_means(ctx, u))
    new = compute_features(ctx, u, hist, cand[row : row + 1], scores[row : row + 1])
    _compare(new, stored["features"][row : row + 1], [str(s) for s in stored["feature_names"]], [len(histories[row])])


def test_reference_covers_the_awkward_cases(golden) -> None:
    """The stored batch really has the cases the fast paths special-case."""
    mod, stored = golden
    ctx, users, histories, ratings, cand, scores = mod.build(stored)
    i0 = ctx.collab.shape[0]
    assert (cand < 0).any() and (cand >= i0).any() and any(h.size and (h >= i0).any() for h in histories)
    assert any(len(h) == 0 for h in histories) and any(len(h) > 256 for h in histories)
    assert any(len(np.unique(h)) < len(h) for h in histories) and any(r is None for r in ratings)
    assert (users < 0).any() and (users >= len(ctx.user_mean)).any() and np.isnan(scores).any()
    assert np.nansum(np.abs(stored["features"])) > 0


@pytest.mark.parametrize("rows", [slice(0, 9), slice(3, 4), slice(4, 6)])
def test_whole_row_item_item_path_matches_reference(golden, monkeypatch: pytest.MonkeyPatch, rows: slice) -> None:
    """Without the column table (a matrix too dense to pad) the features sum whole rows: numpy
    for a few users, a sparse product for more; both give the reference values."""
    from ranking.features import FeatureContext

    monkeypatch.setattr(FeatureContext, "collab_columns", property(lambda self: None))
    mod, stored = golden
    ctx, users, histories, ratings, cand, scores = mod.build(stored)
    u = users[rows]
    hist = pad_histories(histories[rows], ratings[rows], mod.user_means(ctx, u))
    new = compute_features(ctx, u, hist, cand[rows], scores[rows])
    _compare(new, stored["features"][rows], [str(s) for s in stored["feature_names"]], [len(h) for h in histories[rows]])


def test_collab_top_paths_agree(golden) -> None:
    """The candidate generator gives the same items one user at a time and as a batch."""
    from ranking.features import SMALL_BATCH, collab_top

    mod, stored = golden
    ctx, users, histories, ratings, cand, scores = mod.build(stored)
    assert len(histories) > SMALL_BATCH
    batch = collab_top(ctx.collab, histories, histories, 20)
    single = np.concatenate([collab_top(ctx.collab, [h], [h], 20) for h in histories])
    np.testing.assert_array_equal(batch, single)
    assert (batch >= 0).sum() > 50


def test_large_batch_matches_reference(golden) -> None:
    """A batch over several chunks (users regrouped by history length, sparse products for
    whole rows) gives each row's reference values."""
    mod, stored = golden
    ctx, users, histories, ratings, cand, scores = mod.build(stored)
    rep = np.random.default_rng(0).integers(0, len(users), size=300)
    u = users[rep]
    hist = pad_histories([histories[i] for i in rep], [ratings[i] for i in rep], mod.user_means(ctx, u))
    new = compute_features(ctx, u, hist, cand[rep], scores[rep])
    _compare(new, stored["features"][rep], [str(s) for s in stored["feature_names"]], [len(histories[i]) for i in rep])


def test_merge_candidates_matches_per_row_reference() -> None:
    from ranking.features import merge_candidates

    rng = np.random.default_rng(1)
    ids = rng.integers(-1, 30, size=(40, 12))
    extra = rng.integers(-1, 30, size=(40, 6))
    got = merge_candidates(ids, extra, 30)
    for r in range(len(ids)):
        keep = [int(x) for x in extra[r] if x >= 0 and x not in ids[r]]
        row = [int(x) for x in ids[r] if x >= 0] + keep
        assert list(got[r][got[r] >= 0]) == row
        assert (got[r][len(row) :] == -1).all()


@pytest.mark.parametrize("columns", [True, False])
def test_sparse_request_paths_match_reference_for_large_catalogues(golden, monkeypatch: pytest.MonkeyPatch, columns: bool) -> None:
    """A request over a catalogue too large to keep the item-item matrix dense reads candidate
    columns (or, without them, whole sparse rows): the same values as the dense block path."""
    import ranking.features as F

    monkeypatch.setattr(F, "DENSE_PRODUCT_CELLS", 0)
    if not columns:
        monkeypatch.setattr(F.FeatureContext, "collab_columns", property(lambda self: None))
    mod, stored = golden
    ctx, users, histories, ratings, cand, scores = mod.build(stored)
    for row in range(len(users)):
        u = users[row : row + 1]
        hist = pad_histories(histories[row : row + 1], ratings[row : row + 1], mod.user_means(ctx, u))
        new = compute_features(ctx, u, hist, cand[row : row + 1], scores[row : row + 1])
        _compare(new, stored["features"][row : row + 1], [str(s) for s in stored["feature_names"]], [len(histories[row])])
    batch = F.collab_top(ctx.collab, histories, histories, 20)
    single = np.concatenate([F.collab_top(ctx.collab, [h], [h], 20) for h in histories])
    np.testing.assert_array_equal(batch, single)
