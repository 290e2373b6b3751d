"""A small synthetic data set and one trained two-tower model shared by the retrieval tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from movierec.core.config import RetrievalConfig, TrainerConfig
from movierec.core.data import Dataset
from movierec.core.loaders import load_dataset
from movierec.core.splits import holdout_per_user
from movierec.core.synthetic import SynthSpec, write_synthetic

# the random-window model: these tests score random hold-outs (the sequential training, which
# ``sequential=auto`` picks for timestamped data, is tested in test_sequence_pooling.py)
SMALL = RetrievalConfig(dim=32, hidden=64, epochs=8, patience=3, batch_size=256, lr=0.01, history_len=30, sequential=False)


@pytest.fixture(scope="session")
def small_config() -> RetrievalConfig:
    return SMALL


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(out, SynthSpec(n_users=300, n_items=200, n_ratings=12_000, seed=7))
    return load_dataset(out)


@pytest.fixture(scope="session")
def synth_split(synth_data: Dataset) -> tuple[Dataset, Dataset]:
    return holdout_per_user(synth_data, 0.2, seed=42)


@pytest.fixture(scope="session")
def content_vectors(synth_data: Dataset) -> np.ndarray:
    from content import ContentModel
    from movierec.core.config import ContentConfig

    return ContentModel.fit(synth_data.items, ContentConfig(dim=32)).vectors


@pytest.fixture(scope="session")
def trained(synth_split: tuple[Dataset, Dataset], content_vectors: np.ndarray, tmp_path_factory: pytest.TempPathFactory):
    from retrieval.two_tower import fit_two_tower

    train, _ = synth_split
    return fit_two_tower(train, content_vectors, SMALL, TrainerConfig(progress=False), seed=3, log_dir=tmp_path_factory.mktemp("logs"))
