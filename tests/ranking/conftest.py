"""One small generated data set and one trained bundle (with ranker) shared by the ranking tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from movierec.core.config import Config
from movierec.core.data import Dataset
from movierec.core.loaders import load_dataset
from movierec.core.splits import holdout_per_user
from movierec.core.synthetic import SynthSpec, write_synthetic


@dataclass
class Trained:
    ds: Dataset
    train: Dataset
    test: Dataset
    config: Config
    bundle: Path
    model: object  # recommender.HybridRecommender


def small_config() -> Config:
    c = Config()
    c.trainer.progress = False
    c.retrieval.epochs = 3
    c.retrieval.batch_size = 512
    c.ranking.epochs = 8
    c.ranking.patience = 3
    c.ranking.candidates = 50
    c.ranking.hidden = [32, 16]
    c.ranking.holdout = "random"  # the tests score random hold-outs (holdout_per_user): train for them
    return c


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from movierec.pipeline import train as train_pipeline
    from recommender import HybridRecommender

    root = tmp_path_factory.mktemp("ranking")
    write_synthetic(root / "data", SynthSpec(n_users=250, n_items=300, n_ratings=12_000, seed=3))
    ds = load_dataset(root / "data")
    train, test = holdout_per_user(ds, 0.2, seed=42)
    config = small_config()
    bundle = train_pipeline(train, root / "bundle", config)
    return Trained(ds, train, test, config, bundle, HybridRecommender.load(bundle))


def ndcg10(recs: np.ndarray, test: Dataset, users: np.ndarray) -> float:
    from movierec.core.metrics import topn_metrics

    rel = test.to_csr().tocsr()[users]
    return topn_metrics(recs, rel, 10)["ndcg@10"]
