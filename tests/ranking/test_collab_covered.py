"""The item-item computations over the covered items only (``ranking.features.Covered``).

EASE covers only the most-rated movies of a large catalogue; the scores, the item-item candidate
generator and the features run on that block. Every path (a request or a batch, dense block,
candidate columns or whole rows) must give what the plain dense computation over the whole
catalogue gives, and a catalogue of only the covered movies must give the same answers as the
large one that embeds them.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import ranking.collab_matrix as M
import ranking.collab_scores as S
from ranking.collab_matrix import covered
from ranking.collab_scores import collab_top
from ranking.features import FEATURES, FeatureContext, compute_features
from ranking.padding import pad_histories

N_ITEMS = 300  # catalogue
N_COVERED = 60  # items the item-item block covers


def _block(rng: np.random.Generator, n: int) -> np.ndarray:
    w = rng.normal(size=(n, n)) * (rng.random((n, n)) < 0.3)
    np.fill_diagonal(w, 0.0)
    return w.astype(np.float32)


@pytest.fixture(scope="module")
def case() -> dict:
    rng = np.random.default_rng(5)
    kept = np.sort(rng.choice(N_ITEMS, N_COVERED, replace=False))
    block = _block(rng, N_COVERED)
    full = np.zeros((N_ITEMS, N_ITEMS), np.float32)
    full[np.ix_(kept, kept)] = block
    lengths = [0, 1, 3, 7, 25, 80, 12, 5, 40, 2, 9, 17]
    histories = [rng.integers(0, N_ITEMS, size=n) for n in lengths]
    histories[3][:3] = kept[:3]  # some covered, some not
    histories[6][2:5] = histories[6][1]  # duplicates
    ratings = [rng.integers(1, 6, size=len(h)).astype(np.float32) for h in histories]
    ratings[2] = None
    cand = np.stack([rng.choice(N_ITEMS + 20, size=30, replace=False) for _ in histories])  # run-time items too
    cand[1, 20:] = -1
    cand[4, :10] = kept[:10]
    return {"kept": kept, "block": block, "full": full, "histories": histories, "ratings": ratings, "cand": cand}


def _context(collab: sp.csr_matrix, n_items: int) -> FeatureContext:
    rng = np.random.default_rng(0)
    content = rng.normal(size=(n_items, 8)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    i0 = collab.shape[0]
    return FeatureContext(
        content=content,
        genres=(rng.random((n_items, 4)) < 0.4).astype(np.float32),
        years=rng.integers(1950, 2000, size=n_items).astype(np.float64),
        item_counts=np.arange(i0),
        item_mean=np.full(i0, 3.5, np.float32),
        collab=collab,
        user_mean=np.full(20, 3.0, np.float32),
        user_features=np.zeros((20, 0), np.float32),
        global_mean=3.5,
        ref_year=2000.0,
    )


def _plain_sums(full: np.ndarray, histories: list, ratings: list, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward item-item sums: W[history, candidate] over the whole dense matrix."""
    i0 = len(full)
    plain = np.zeros(cand.shape)
    liked = np.zeros(cand.shape)
    for r, (h, rt) in enumerate(zip(histories, ratings)):
        centred = np.zeros(len(h)) if rt is None else rt - 3.0
        ok_h = h < i0
        for j, c in enumerate(cand[r]):
            if 0 <= c < i0:
                col = full[h[ok_h], c].astype(np.float64)
                plain[r, j] = col.sum()
                liked[r, j] = centred[ok_h] @ col
    return plain, liked


def _plain_top(full: np.ndarray, histories: list, k: int) -> np.ndarray:
    """The straightforward item-item top-k: dense row sums, no evidence or seen -> out, stable sort."""
    out = np.full((len(histories), k), -1, np.int64)
    for r, h in enumerate(histories):
        s = full[h[h < len(full)]].astype(np.float64).sum(0)
        s[s <= 0] = -np.inf
        s[h[h < len(full)]] = -np.inf
        order = np.argsort(-s, kind="stable")[:k]
        order = order[np.isfinite(s[order])]
        out[r, : len(order)] = order
    return out


def test_covered_items_and_positions(case) -> None:
    cov = covered(sp.csr_matrix(case["full"]))
    kept = case["kept"]
    used = (case["full"] != 0).any(0) | (case["full"] != 0).any(1)
    np.testing.assert_array_equal(cov.items, np.flatnonzero(used))
    assert set(cov.items) <= set(kept)
    np.testing.assert_array_equal(cov.map(cov.items), np.arange(cov.m))
    assert (cov.map(np.array([-1, N_ITEMS, N_ITEMS + 7])) == cov.m).all()
    np.testing.assert_array_equal(cov.matrix.toarray(), case["full"][np.ix_(cov.items, cov.items)])
    whole = sp.csr_matrix(np.roll(np.eye(N_COVERED, dtype=np.float32), 1, axis=1))  # covers every item
    assert covered(whole).matrix is whole and covered(whole).m == N_COVERED


@pytest.mark.parametrize("dense_cells", [M.DENSE_PRODUCT_CELLS, 0])
@pytest.mark.parametrize("columns", [True, False])
@pytest.mark.parametrize("rows", [slice(0, 12), slice(3, 4), slice(4, 7)])
def test_collab_features_equal_the_dense_computation(case, monkeypatch, dense_cells: int, columns: bool, rows: slice) -> None:
    """Requests and batches, dense block, candidate columns or whole rows: the plain sums."""
    monkeypatch.setattr(M, "DENSE_PRODUCT_CELLS", dense_cells)
    if not columns:
        monkeypatch.setattr(FeatureContext, "collab_columns", property(lambda self: None))
    ctx = _context(sp.csr_matrix(case["full"]), N_ITEMS + 20)
    hs, rs, cand = case["histories"][rows], case["ratings"][rows], case["cand"][rows]
    hist = pad_histories(hs, rs, np.full(len(hs), 3.0))
    plain, liked = S._collab_scores(ctx, hist, cand)
    want_plain, want_liked = _plain_sums(case["full"], hs, rs, cand)
    np.testing.assert_allclose(plain, want_plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(liked, want_liked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dense_cells", [M.DENSE_PRODUCT_CELLS, 0])
def test_collab_top_equals_the_dense_computation(case, monkeypatch, dense_cells: int) -> None:
    monkeypatch.setattr(M, "DENSE_PRODUCT_CELLS", dense_cells)
    collab = sp.csr_matrix(case["full"])
    hs = case["histories"]
    want = _plain_top(case["full"], hs, 15)
    np.testing.assert_array_equal(collab_top(collab, hs, hs, 15), want)
    single = np.concatenate([collab_top(collab, [h], [h], 15) for h in hs])
    np.testing.assert_array_equal(single, want)
    np.testing.assert_array_equal(collab_top(collab, hs, hs, 15, chunk_cells=N_COVERED * 2), want)  # several chunks
    assert (want >= 0).sum() > 20
    k = N_COVERED + 5  # more than the covered items: the rest is padding
    np.testing.assert_array_equal(collab_top(collab, hs, hs, k), _plain_top(case["full"], hs, k))


def test_small_and_large_catalogues_agree(case) -> None:
    """The covered block as a catalogue of its own, and the same block inside a large catalogue
    (every other movie uncovered): the same item-item candidates and collaborative features."""
    kept, block = case["kept"], case["block"]
    small = sp.csr_matrix(block)
    large = sp.csr_matrix(case["full"])
    to_small = np.full(N_ITEMS + 20, N_COVERED + 50, np.int64)  # uncovered -> an item beyond the small arrays
    to_small[kept] = np.arange(N_COVERED)
    hs_large = case["histories"]
    hs_small = [to_small[h] for h in hs_large]
    top_large = collab_top(large, hs_large, hs_large, 12)
    top_small = collab_top(small, hs_small, hs_small, 12)
    np.testing.assert_array_equal(top_large, np.where(top_small >= 0, kept[np.maximum(top_small, 0)], -1))
    cand_large = case["cand"]
    cand_small = np.where(cand_large >= 0, to_small[np.maximum(cand_large, 0)], -1)
    users = np.arange(len(hs_large))
    cols = [FEATURES.index(c) for c in ("collab_z", "collab_rank", "collab_liked_z")]
    for rows in (slice(0, 12), slice(5, 6)):
        f = []
        for ctx, hs, cand in ((_context(large, N_ITEMS + 20), hs_large, cand_large), (_context(small, N_ITEMS + 20), hs_small, cand_small)):
            hist = pad_histories(hs[rows], case["ratings"][rows], np.full(len(hs[rows]), 3.0))
            f.append(compute_features(ctx, users[rows], hist, cand[rows], np.zeros(cand[rows].shape, np.float32))[..., cols])
        np.testing.assert_allclose(f[0], f[1], rtol=1e-5, atol=1e-5)


def test_smallest_k_breaks_ties_like_a_stable_sort() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 6, size=(50, 40)).astype(np.float64)  # many ties at every cut
    keys[keys == 0] = np.inf
    for k in (1, 5, 17, 39, 40):
        want = np.argsort(keys, axis=1, kind="stable")[:, :k]
        got = S._smallest_k(keys, k)
        np.testing.assert_array_equal(np.take_along_axis(keys, got, 1), np.take_along_axis(keys, want, 1))
        finite = np.isfinite(np.take_along_axis(keys, want, 1))
        np.testing.assert_array_equal(np.where(finite, got, -1), np.where(finite, want, -1))


def test_ranked_batch_reads_one_item_item_product(trained, monkeypatch) -> None:
    """A ranked batch computes its users' item-item rows once for the extra candidates and the
    features (``Ranker.collab_rows``), in steps of ``batch_users``: the same candidates and
    order as the separate computations, and every user gets his own rows."""
    from ranking.runtime import Ranker

    model = trained.model
    users = np.arange(min(model.retrieval.n_users, 120))
    calls = []
    real = Ranker.collab_rows

    def spy(self, *args, **kwargs):
        rows = real(self, *args, **kwargs)
        calls.append(rows is not None)
        return rows

    monkeypatch.setattr(Ranker, "collab_rows", spy)
    ids, scores = model.recommend_batch(users, 20)
    assert calls == [True]  # the shared rows were used for this batch
    monkeypatch.setattr(Ranker, "batch_users", property(lambda self: 37))
    ids_steps, scores_steps = model.recommend_batch(users, 20)
    assert calls[1:] == [True] * 4
    monkeypatch.setattr(Ranker, "collab_rows", lambda self, *a, **k: None)
    ids_apart, scores_apart = model.recommend_batch(users, 20)
    for got_ids, got_scores in ((ids_steps, scores_steps), (ids_apart, scores_apart)):
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_allclose(got_scores, scores, rtol=1e-5, atol=1e-5)
