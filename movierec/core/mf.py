"""Biased matrix factorisation: the plain net, its Lightning module (MSE on ratings or BPR on
implicit feedback) and the loader of (user, item, rating) batches. The MF baseline
(:class:`~movierec.core.baselines.BiasedMF`) and the rating model's MF (:mod:`ranking._rating_train`)
both train it."""

from __future__ import annotations

import copy

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset


class BiasedMFNet(nn.Module):
    """Plain module: ``mu + b_u + b_i + p_u . q_i`` (Lightning-free so serving could load it)."""

    def __init__(self, n_users: int, n_items: int, dim: int, mu: float = 0.0) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.mu = nn.Parameter(torch.tensor(float(mu)))
        for emb in (self.user, self.item):
            nn.init.normal_(emb.weight, std=0.05)
        for emb in (self.user_bias, self.item_bias):
            nn.init.zeros_(emb.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(b,), (b,) -> (b,) scores."""
        dot = (self.user(users) * self.item(items)).sum(-1)
        return self.mu + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1) + dot

    def all_scores(self, users: torch.Tensor) -> torch.Tensor:
        """(b,) -> (b, n_items) scores against every item."""
        return (
            self.mu
            + self.user_bias(users)
            + self.item_bias.weight.squeeze(-1)[None, :]
            + self.user(users) @ self.item.weight.T
        )


class MFModule(L.LightningModule):
    """Wraps :class:`BiasedMFNet` with the loss: MSE on ratings, or BPR on implicit feedback.

    The L2 penalty is applied to the embeddings touched by each batch (the classic SGD-MF
    regulariser) rather than as optimizer weight decay, so rarely seen users and items are not
    shrunk on every step.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, mu: float, lr: float, reg: float,
                 objective: str) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = BiasedMFNet(n_users, n_items, dim, mu if objective == "rating" else 0.0)
        self.best_score = float("inf")
        self.best_state: dict[str, torch.Tensor] | None = None

    def _penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        n = self.net
        return self.hparams.reg * (
            n.user(users).pow(2).sum(-1) + n.item(items).pow(2).sum(-1)
            + n.user_bias(users).pow(2).squeeze(-1) + n.item_bias(items).pow(2).squeeze(-1)
        ).mean()

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        users, items, ratings = batch
        if self.hparams.objective == "rating":
            loss = torch.mean((self.net(users, items) - ratings) ** 2)
            total = loss + self._penalty(users, items)
        else:
            neg = torch.randint(0, self.hparams.n_items, items.shape, device=items.device)
            diff = self.net(users, items) - self.net(users, neg)
            loss = -torch.nn.functional.logsigmoid(diff).mean()
            n = self.net
            neg_pen = (n.item(neg).pow(2).sum(-1) + n.item_bias(neg).pow(2).squeeze(-1)).mean()
            total = loss + self._penalty(users, items) + self.hparams.reg * neg_pen
        if not torch.isfinite(total):
            raise FloatingPointError(f"MF loss became {total.item()} at step {self.global_step}; lower lr")
        self.log("train/loss", loss, prog_bar=True)
        return total

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        users, items, ratings = batch
        if self.hparams.objective == "rating":
            self.log("val/rmse", torch.sqrt(torch.mean((self.net(users, items) - ratings) ** 2)),
                     prog_bar=True, reduce_fx="mean")
        else:
            neg = torch.randint(0, self.hparams.n_items, items.shape, device=items.device)
            self.log("val/loss", -torch.nn.functional.logsigmoid(
                self.net(users, items) - self.net(users, neg)).mean(), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        key = "val/rmse" if self.hparams.objective == "rating" else "val/loss"
        score = self.trainer.callback_metrics.get(key)
        if score is not None and float(score) < self.best_score and not self.trainer.sanity_checking:
            self.best_score = float(score)
            self.best_state = copy.deepcopy(self.net.state_dict())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def pair_loader(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """Whole-batch indexing of (user, item, rating) tensors (no per-sample collate): much faster
    for tiny rows."""
    data = TensorDataset(torch.from_numpy(np.array(users, dtype=np.int64)), torch.from_numpy(np.array(items, dtype=np.int64)),
                         torch.from_numpy(np.array(ratings, dtype=np.float32)))
    base = RandomSampler(data, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(data)
    return DataLoader(data, batch_size=None, sampler=BatchSampler(base, batch_size, drop_last=False))
