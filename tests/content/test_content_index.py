"""What the content stage needs of movierec.core.index: IVF reconstruct and add-while-searching."""

from __future__ import annotations

import threading

import numpy as np

from movierec.core.config import IndexConfig
from movierec.core.index import build_index


def test_ivf_reconstruct_works_before_and_after_add() -> None:
    v = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    index = build_index(v, IndexConfig(kind="ivf"))
    np.testing.assert_allclose(index.reconstruct(np.array([1, 2])), v[[1, 2]])
    rows = index.add(v[:3] * 2)
    np.testing.assert_allclose(index.reconstruct(rows), v[:3] * 2)


def test_adding_while_other_threads_search_is_safe() -> None:
    """Movies arrive while serving answers queries (FAISS searches without the GIL)."""
    v = np.random.default_rng(1).standard_normal((1200, 16)).astype(np.float32)
    index = build_index(v[:100], IndexConfig(kind="flat"))
    stop = threading.Event()
    bad: list[str] = []

    def search() -> None:
        while not stop.is_set():
            ids, scores = index.search(v[:20], 5)
            if ids.max() >= len(v) or not np.isfinite(scores[ids >= 0]).all():
                bad.append("corrupt result")

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(100, 1200):
        index.add(v[i : i + 1])
    stop.set()
    for t in threads:
        t.join()
    assert len(index) == 1200 and not bad
    ids, _ = index.search(v[1199], 1)
    assert ids[0, 0] == 1199
