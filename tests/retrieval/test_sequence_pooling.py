"""``retrieval.sequential``: the user tower's recency pooling (``recent_len``) and causal training
windows (``causal_share``): order counts when on and not when off, padding never counts, the fast
new-user encoder and a bundle round trip keep it, training uses it, ``auto`` follows the job."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from movierec.core.config import TrainerConfig
from retrieval.inputs import Histories, user_batch
from retrieval.towers import UserTower, recency_weights
from retrieval.two_tower_data import TwoTowerData

N_ITEMS, CONTENT = 12, 5


def _tower(recent_len: int, seed: int = 0, decay: float = 0.5) -> UserTower:
    torch.manual_seed(seed)
    return UserTower(n_users=4, n_items=N_ITEMS, content_dim=CONTENT, n_user_features=0, dim=8, hidden=16,
                     recent_len=recent_len, recent_decay=decay).eval()


def _content() -> np.ndarray:
    return np.random.default_rng(1).random((N_ITEMS, CONTENT)).astype(np.float32)


def _query(tower: UserTower, rows: list[list[int]], length: int = 8) -> torch.Tensor:
    hist = np.full((len(rows), length), -1, np.int64)
    for r, items in enumerate(rows):
        hist[r, : len(items)] = items
    b = user_batch(np.zeros(len(rows), np.int64), hist, _content(), None, np.zeros(len(rows)), N_ITEMS)
    with torch.no_grad():
        return tower(**b)


def test_recency_weights_count_places_from_the_newest_valid_entry():
    items = torch.tensor([[3, -1, 5, 7, -1, -1], [-1, -1, -1, -1, -1, -1], [1, 2, 3, 4, 5, 6]])
    w = recency_weights(items, (items >= 0).float(), length=2, decay=0.5)
    # row 0: 7 is the newest (weight 1), 5 the one before (0.5), 3 is beyond the last two; padding 0
    np.testing.assert_allclose(w[0].numpy(), [0, 0, 1 / 3, 2 / 3, 0, 0], rtol=1e-6)
    assert float(w[1].abs().sum()) == 0.0  # an empty history pools to zeros, not NaN
    np.testing.assert_allclose(w[2].numpy(), [0, 0, 0, 0, 1 / 3, 2 / 3], rtol=1e-6)


def test_reversing_a_history_changes_the_query_only_with_recency_pooling():
    history = [0, 3, 5, 8, 2, 9]
    on = _query(_tower(4), [history, history[::-1]])
    assert not torch.allclose(on[0], on[1], atol=1e-4)
    off = _query(_tower(0), [history, history[::-1]])
    torch.testing.assert_close(off[0], off[1], rtol=1e-5, atol=1e-6)


def test_padding_and_its_place_do_not_count():
    """The same items with padding after them, or a dropped entry (-1) between them, give the
    query of the unpadded row; a row longer than recent_len differs only through the newest."""
    tower = _tower(3)
    a = _query(tower, [[4, 6, 1, 7]], length=4)
    b = _query(tower, [[4, 6, 1, 7]], length=10)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a -1 hole (a training target dropped from its own row) is skipped, not counted as a place
    holed = np.array([[4, 6, -1, 1, 7, -1]])
    bh = user_batch(np.zeros(1, np.int64), holed, _content(), None, np.zeros(1), N_ITEMS)
    with torch.no_grad():
        torch.testing.assert_close(tower(**bh), a, rtol=1e-5, atol=1e-6)


def test_new_user_encoder_reproduces_the_tower_with_recency_pooling(trained, synth_split):
    """The fast single-user path (POST /recommendations) pools the recent movies as the tower
    does, so it is built (not dropped for disagreeing) and equals encode_histories."""
    from recommender.encoder import NewUserEncoder
    from retrieval.candidates import RetrievalModel

    train, _ = synth_split
    tower = UserTower(**_tower_args(trained), recent_len=5, recent_decay=0.6).eval()
    model = RetrievalModel(
        tower, trained.item_tower, trained.item_vectors, trained.user_vectors,
        Histories.from_ratings(train.ratings, train.n_users), trained.items.genres, trained.items.content,
        trained.items.has_id, trained.user_features, trained.feature_encoder,
        {**trained.hparams, "history_len": 30, "recent_len": 5, "recent_decay": 0.6},
    )
    enc = NewUserEncoder.build(model)
    assert enc is not None
    liked = np.array([5, 17, 3, 40, 22, 9, 11])
    np.testing.assert_allclose(enc(liked), model.encode_histories([liked])[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(enc(liked), enc(liked[::-1]), atol=1e-4)


def _tower_args(trained) -> dict:
    hp = trained.hparams
    return dict(n_users=hp["n_users"], n_items=hp["n_items"], content_dim=hp["content_dim"], n_user_features=hp["n_user_features"],
                dim=hp["dim"], hidden=hp["hidden"])


def test_bundle_round_trip_keeps_the_recency_pooling(synth_split, content_vectors, small_config, tmp_path):
    from movierec.core.artifacts import BundleWriter, load_bundle
    from retrieval.candidates import RetrievalModel
    from retrieval.two_tower import fit_two_tower

    train, _ = synth_split
    cfg = small_config.model_copy(update={"epochs": 1, "sequential": True, "recent_len": 4, "recent_decay": 0.7, "causal_share": 0.5})
    tt = fit_two_tower(train, content_vectors, cfg, TrainerConfig(progress=False), seed=2)
    assert tt.user_tower.recent_len == 4 and tt.hparams["recent_len"] == 4
    model = RetrievalModel(
        tt.user_tower, tt.item_tower, tt.item_vectors, tt.user_vectors, Histories.from_ratings(train.ratings, train.n_users),
        tt.items.genres, tt.items.content, tt.items.has_id, tt.user_features, tt.feature_encoder, {**tt.hparams, "history_len": 30},
    )
    with BundleWriter(tmp_path / "b") as w:
        model.save(w)
    loaded = RetrievalModel.load(load_bundle(tmp_path / "b", verify=False))
    assert loaded.user_tower.recent_len == 4 and loaded.user_tower.recent_decay == 0.7
    rows = [model.histories.of(u) for u in range(5)]
    np.testing.assert_allclose(loaded.encode_histories(rows, np.arange(5)), model.encode_histories(rows, np.arange(5)), rtol=1e-5, atol=1e-6)
    # the served user vectors are the tower's pooling of the time-ordered histories
    np.testing.assert_allclose(model.encode_histories(rows, np.arange(5)), tt.user_vectors[:5], rtol=1e-4, atol=1e-5)


def test_preceding_windows_hold_the_movies_rated_just_before():
    hist = Histories(np.array([0, 4, 6]), np.array([10, 11, 12, 13, 20, 21]))
    rows = hist.preceding(np.array([0, 0, 0, 1, 1]), np.array([0, 2, 3, 4, 5]), 2)
    assert rows.tolist() == [[-1, -1], [10, 11], [11, 12], [-1, -1], [20, -1]]


def test_causal_training_rows_are_the_history_before_the_target():
    """With causal_share 1 every training row is the user's movies rated before the positive,
    in time order, whatever order the ratings frame lists them in."""
    from movierec.core.config import RetrievalConfig

    ratings = pd.DataFrame({
        "user_idx": [0, 0, 0, 0, 1, 1, 1],
        "item_idx": [3, 1, 2, 0, 4, 5, 6],
        "timestamp": [40, 10, 30, 20, 7, 5, 6],
        "rating": [4.0] * 7,
    })

    class _Fit:  # the three fields TwoTowerData reads of a Dataset
        n_users, n_items = 2, 7

    _Fit.ratings = ratings
    data = TwoTowerData(_Fit, None, RetrievalConfig(history_len=3, causal_share=1.0), seed=0)
    data.attach(np.zeros((7, 2), np.float32), np.zeros((2, 0), np.float32))
    idx = torch.arange(len(ratings))
    batch = data._collate((torch.from_numpy(data.pos_users)[idx], torch.from_numpy(data.pos_items)[idx], torch.from_numpy(data.pos_slots)[idx]))
    got = {(int(u), int(i)): [x for x in row.tolist() if x >= 0] for u, i, row in zip(data.pos_users, batch["item_idx"], batch["hist_items"])}
    # user 0 in time order: 1 (t10), 0 (t20), 2 (t30), 3 (t40); user 1: 5, 6, 4
    assert got == {(0, 1): [], (0, 0): [1], (0, 2): [1, 0], (0, 3): [1, 0, 2], (1, 5): [], (1, 6): [5], (1, 4): [5, 6]}


def test_sequential_off_trains_the_plain_model_and_auto_follows_the_rankers_hold_out(synth_data):
    from movierec.core.config import Config, RetrievalConfig
    from movierec.pipeline import resolve_sequential as for_pipeline
    from retrieval.two_tower import resolve_sequential

    off = resolve_sequential(RetrievalConfig(sequential=False, recent_len=10, causal_share=1.0), synth_data.ratings)
    assert (off.recent_len, off.causal_share) == (0, 0.0)
    on = resolve_sequential(RetrievalConfig(sequential=True, recent_len=10, causal_share=0.5), synth_data.ratings)
    assert (on.sequential, on.recent_len, on.causal_share) == (True, 10, 0.5)
    assert synth_data.ratings["timestamp"].nunique() > 1
    flat = synth_data.ratings.assign(timestamp=0)  # no real timestamps: "before" would be row order
    assert resolve_sequential(RetrievalConfig(sequential="auto"), flat).sequential is False
    assert resolve_sequential(RetrievalConfig(sequential="auto"), synth_data.ratings).sequential is True
    for holdout, want in (("temporal", True), ("random", False), ("auto", True)):
        cfg = Config.model_validate({"retrieval": {"sequential": "auto"}, "ranking": {"holdout": holdout}})
        resolved, why = for_pipeline(synth_data, cfg)
        assert resolved.retrieval.sequential is want and ("on" if want else "off") in why
