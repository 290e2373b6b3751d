"""Small generated catalogues for the content tests (known answers, no files needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from movierec.core.config import ContentConfig

GENRES = ["Action", "Comedy", "Drama", "Sci-Fi", "Horror", "Romance", "Animation", "Children's"]
WORDS = "space ship alien love heart ghost night dark city king war robot dog cat island river".split()


def make_items(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Random movies with titles, years, genres, tags and descriptions."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        title = " ".join(rng.choice(WORDS, size=rng.integers(1, 4), replace=False))
        rows.append(
            {
                "item_id": 1000 + i,
                "title": title.title(),
                "year": int(rng.integers(1950, 2020)),
                "genres": list(rng.choice(GENRES, size=rng.integers(1, 3), replace=False)),
                "tags": " ".join(rng.choice(WORDS, size=3)),
                "description": " ".join(rng.choice(WORDS, size=12)),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def small_config() -> ContentConfig:
    return ContentConfig(dim=16)


@pytest.fixture
def items() -> pd.DataFrame:
    return make_items()


@pytest.fixture
def item_factory():
    """``make_items(n, seed)`` for tests that need another size."""
    return make_items
