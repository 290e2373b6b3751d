"""The two-tower model's training data: item inputs, the positives and histories, and the loaders
(:class:`TwoTowerData`), with batches sharded across processes the way a single process would cut
them (:class:`ShardedBatches`)."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from movierec.core.config import RetrievalConfig
from movierec.core.data import Dataset
from retrieval.inputs import Histories, user_batch


def genre_matrix(ds: Dataset, vocabulary: list[str]) -> np.ndarray:
    """(n_items, n_genres) multi-hot in item_idx order."""
    pos = {g: i for i, g in enumerate(vocabulary)}
    out = np.zeros((ds.n_items, max(len(vocabulary), 1)), dtype=np.float32)
    for row, gs in enumerate(ds.items["genres"]):
        for g in gs:
            if g in pos:
                out[row, pos[g]] = 1.0
    return out


@dataclass
class ItemFeatures:
    """Item-side inputs of the towers, in item_idx order."""

    genres: np.ndarray  # (n_items, G)
    content: np.ndarray  # (n_items, C)
    has_id: np.ndarray  # (n_items,) 1 where the item has training interactions


class ShardedBatches(Sampler[torch.Tensor]):
    """Global batches of ``batch_size`` positives, each split into ``world`` equal slices.

    Rank ``r`` yields slice ``r`` of every global batch, so the union over ranks of one step is
    exactly the batch a single process would see with the same generator (one ``randperm`` of
    the positives, cut into batches). Batches are int64 index tensors (slices of the one
    permutation): a Python list of the permutation would cost a boxed integer per positive.
    Every rank gets the same number of equally sized slices: DDP needs the same number of steps on every rank, and the cross-rank gather of candidates in
    :meth:`TwoTowerModule.training_step` needs equal shapes. With ``world == 1`` this is
    ``BatchSampler(RandomSampler(..., generator), batch_size, drop_last)``.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of {world}")
        if batch_size < world:
            raise ValueError(f"batch_size {batch_size} is smaller than the {world} processes it is split across")
        self.n, self.batch_size, self.generator, self.rank, self.world = n, batch_size, generator, rank, world
        # the single-process loader drops the last partial batch unless it is the only one
        self.drop_last = n > batch_size

    def _global_batches(self) -> int:
        return self.n // self.batch_size if self.drop_last else (1 if self.n else 0)

    def __len__(self) -> int:
        return self._global_batches()

    def __iter__(self):
        perm = torch.randperm(self.n, generator=self.generator)
        for b in range(self._global_batches()):
            batch = perm[b * self.batch_size : (b + 1) * self.batch_size]
            share = len(batch) // self.world
            yield batch[self.rank * share : (self.rank + 1) * share]


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed training buffers for the next step (glibc only; a no-op
    returning False elsewhere). The setting holds for the whole process.

    A training step allocates and frees the same tensors every time (the (n, n) logits are 4 MB
    at a batch of 1,024). glibc adapts its thresholds to the largest buffer freed so far: after
    4 MB buffers it trims the heap's free top back to the kernel above 8 MB, and the next step
    page-faults the same memory back in on every step. This sets the two thresholds to where glibc's adaptation ends anyway once a 32 MB
    buffer has been freed (as happens early in a big run): buffers under 32 MB come from the
    heap, and up to 64 MB of free heap top stays with the process.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 64 << 20))
    except (OSError, AttributeError):
        return False


def rank_world(trainer: L.Trainer | None) -> tuple[int, int]:
    return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)


class TwoTowerData(L.LightningDataModule):
    """Positives (user, item) from the fit split; validation users scored against held-out items."""

    def __init__(
        self,
        fit: Dataset,
        val: Dataset | None,
        config: RetrievalConfig,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.fit_ds, self.val_ds, self.config, self.seed = fit, val, config, seed
        self.histories = Histories.from_ratings(fit.ratings, fit.n_users)
        r = fit.ratings
        # each rating's entry in the time-ordered histories (the causal windows start there)
        slots = np.empty(len(r), np.int64)
        slots[Histories.time_order(r)] = np.arange(len(r))
        if config.min_rating is not None:
            keep = (r["rating"] >= config.min_rating).to_numpy()
            r, slots = r[keep], slots[keep]
        self.pos_users = r["user_idx"].to_numpy(np.int64).copy()
        self.pos_items = r["item_idx"].to_numpy(np.int64).copy()
        self.pos_slots = slots
        counts = np.bincount(self.pos_items, minlength=fit.n_items).astype(np.float64)
        self.log_q = np.log((counts + 1.0) / (counts.sum() + fit.n_items)).astype(np.float32)
        self._rng = np.random.default_rng(seed)
        self.content: np.ndarray | None = None
        self.user_features: np.ndarray | None = None

    def attach(self, content: np.ndarray, user_features: np.ndarray) -> None:
        self.content, self.user_features = content, user_features

    def setup(self, stage: str) -> None:
        from retrieval.distributed import worker_threads

        # runs inside each DDP worker (see worker_threads for why one thread there)
        _, world = rank_world(self.trainer)
        torch.set_num_threads(worker_threads(self.config.threads, world))
        keep_freed_memory()

    def _collate(self, rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Build one training batch at once (the sampler yields whole batches of indices)."""
        users, items = rows[0].numpy(), rows[1].numpy()
        hist = self.histories.padded(users, self.config.history_len, drop_items=items, rng=self._rng)
        if self.config.causal_share > 0:
            causal = np.flatnonzero(self._rng.random(len(users)) < self.config.causal_share)
            hist[causal] = self.histories.preceding(users[causal], rows[2].numpy()[causal], self.config.history_len)
        batch = user_batch(users, hist, self.content, self.user_features[users], np.ones(len(users)), self.fit_ds.n_items)
        batch["item_idx"] = torch.from_numpy(items)
        return batch

    def train_dataloader(self) -> DataLoader:
        """Batches of positives; under DDP each rank gets its slice of every global batch
        (``config.batch_size`` stays the global batch, so results do not depend on the number of
        processes)."""
        ds = TensorDataset(torch.from_numpy(self.pos_users), torch.from_numpy(self.pos_items), torch.from_numpy(self.pos_slots))
        gen = torch.Generator().manual_seed(self.seed + self.trainer.current_epoch if self.trainer else self.seed)
        rank, world = rank_world(self.trainer)
        sampler = ShardedBatches(len(ds), self.config.batch_size, gen, rank, world)
        return DataLoader(ds, sampler=sampler, batch_size=None, collate_fn=self._collate)

    def val_users(self) -> np.ndarray:
        """The validation users (user_idx), sorted: all of them, or a seeded sample of
        ``config.val_max_users`` (scoring is users x items, which grows past an epoch's budget on
        large data)."""
        if self.val_ds is None:
            return np.zeros(0, np.int64)
        users = np.unique(self.val_ds.ratings["user_idx"].to_numpy())
        cap = self.config.val_max_users
        if cap is not None and len(users) > cap:
            users = np.sort(np.random.default_rng([self.seed, 7]).choice(users, cap, replace=False))
        return users

    def val_dataloader(self) -> DataLoader:
        """This rank's share of the validation users (every ``world``-th one); the module sums
        hits and user counts across ranks, so the metric is the single-process one."""
        rank, world = rank_world(self.trainer)
        users = self.val_users()[rank::world]
        return DataLoader(TensorDataset(torch.from_numpy(users)), batch_size=512, shuffle=False)
