"""A batch's histories padded to one width, with each entry's centred rating."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

@dataclass
class PaddedHistories:
    """(n, L) history item_idx (-1 padded) and the user's centred rating of each (0 padded)."""

    items: np.ndarray
    centred: np.ndarray
    lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = (self.items >= 0).sum(1)


def pad_histories(
    histories: list[np.ndarray], ratings: list[np.ndarray | None], user_mean: np.ndarray, max_len: int | None = None
) -> PaddedHistories:
    """Pad the most recent ``max_len`` items of each history (all of them by default); ratings
    are centred on the user's mean (a history without ratings, e.g. a new user's liked movies,
    centres to 0)."""
    n = len(histories)
    lens = [len(h) if max_len is None else min(len(h), max_len) for h in histories]
    width = max(max(lens, default=0), 1)
    items = np.full((n, width), -1, dtype=np.int64)
    centred = np.zeros((n, width), dtype=np.float32)
    for i, (h, r, m, mu) in enumerate(zip(histories, ratings, lens, user_mean)):
        if m:  # one slice per user: cheaper than index arithmetic for a request, on par for a batch
            items[i, :m] = h[len(h) - m :]
            if r is not None:
                centred[i, :m] = np.asarray(r[len(h) - m :], np.float32) - mu
    return PaddedHistories(items, centred)


def _most_recent(hist: PaddedHistories, max_len: int) -> PaddedHistories:
    """The last ``max_len`` items of each padded history (left-aligned, as padded)."""
    if hist.items.shape[1] <= max_len:
        return hist
    start = np.maximum(hist.lengths - max_len, 0)[:, None]
    cols = start + np.arange(max_len)
    ok = cols < hist.lengths[:, None]
    cols = np.minimum(cols, hist.items.shape[1] - 1)
    items = np.where(ok, np.take_along_axis(hist.items, cols, 1), -1)
    centred = np.where(ok, np.take_along_axis(hist.centred, cols, 1), np.float32(0.0))
    return PaddedHistories(items, centred)
