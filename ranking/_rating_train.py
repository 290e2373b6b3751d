"""Training side of the dedicated rating model (ranking/rating.py): Lightning modules and loops.

Kept apart so that loading and predicting (serving) never imports Lightning: the trained nets
are turned into plain arrays (item codes, decoder rows, factors) before they are saved.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from movierec.core.mf import MFModule, pair_loader

log = logging.getLogger(__name__)


class _Best(Callback):
    """Remembers the epoch and weights of the lowest ``val/rmse``; stops after ``patience`` worse epochs."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = float("inf")
        self.best_epoch = -1
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[float] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        score = float(trainer.callback_metrics["val/rmse"])
        self.history.append(score)
        if not np.isfinite(score):
            raise FloatingPointError(f"validation RMSE became {score} at epoch {trainer.current_epoch}; lower the learning rate")
        if score < self.best - 1e-5:
            self.best, self.best_epoch = score, trainer.current_epoch
            self.state = copy.deepcopy(module.net.state_dict())
        elif trainer.current_epoch - self.best_epoch >= self.patience:
            trainer.should_stop = True


def _trainer(epochs: int, callbacks: list[Callback], log_dir: Path | None, name: str, max_steps: int | None = None) -> L.Trainer:
    logger: Any = False
    if log_dir is not None:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(str(log_dir), name=name, version="")
    return L.Trainer(
        max_epochs=epochs, limit_train_batches=max_steps, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False, callbacks=callbacks,
        num_sanity_val_steps=0, deterministic=True, log_every_n_steps=1,
    )


def fit_loop(module: L.LightningModule, train: DataLoader, val: DataLoader | None, epochs: int, patience: int,
             log_dir: Path | None, name: str, max_steps: int | None = None) -> tuple[int, float, list[float]]:
    """Train (epochs of at most ``max_steps`` batches of a fresh shuffle); with ``val`` keep the
    best epoch's weights. Returns (epochs trained to the best, best val RMSE, history)."""
    if val is None:
        _trainer(epochs, [], log_dir, name, max_steps).fit(module, train)
        return epochs, float("nan"), []
    best = _Best(patience)
    _trainer(epochs, [best], log_dir, name, max_steps).fit(module, train, val)
    if best.state is not None:
        module.net.load_state_dict(best.state)
    return best.best_epoch + 1, best.best, best.history


# ---- I-AutoRec --------------------------------------------------------------------------------
class AutoRecNet(nn.Module):
    """Item-based AutoRec (Sedhain et al. 2015): an item's rating column over users, squeezed
    through a sigmoid layer and reconstructed; the reconstruction at user u is the prediction."""

    def __init__(self, n_users: int, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(n_users, hidden)
        self.decoder = nn.Linear(hidden, n_users)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))


class AutoRecModule(L.LightningModule):
    """Masked MSE on observed ratings plus ``reg / (2 N)`` times the squared weights (N observed
    ratings), i.e. the paper's objective divided by N so ``reg`` keeps its published meaning.

    Ratings are mapped to 1..5 whatever the data's scale (``z = 1 + 4 (r - lo) / span``), so a
    missing entry (0) stays distinct from every rating and ``reg`` means the same on any scale;
    on validation, centring the inputs instead (missing = average) was clearly worse.
    """

    def __init__(self, n_users: int, hidden: int, lr: float, reg: float, dropout: float, n_obs: int,
                 inputs: sp.csr_matrix, lo: float, span: float) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["inputs"])
        self.net = AutoRecNet(n_users, hidden)
        self.inputs = inputs  # (n_items, n_users) sparse training ratings on the 1..5 scale

    def rows(self, items: torch.Tensor) -> torch.Tensor:
        """Dense input rows of a batch of items (only a batch is ever dense: memory stays O(ratings))."""
        return torch.from_numpy(self.inputs[items.numpy()].toarray())

    @torch.no_grad()
    def codes(self, items: np.ndarray, block: int = 1024) -> torch.Tensor:
        """Hidden codes (n, hidden) of items, encoded a block at a time."""
        return torch.cat([self.net.encode(self.rows(torch.as_tensor(items[s : s + block])))
                          for s in range(0, len(items), block)]) if len(items) else torch.zeros(0, self.hparams.hidden)

    def _penalty(self) -> torch.Tensor:
        return self.hparams.reg / (2 * self.hparams.n_obs) * (
            self.net.encoder.weight.pow(2).sum() + self.net.decoder.weight.pow(2).sum()
        )

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (items,) = batch
        x = self.rows(items)
        m = x != 0
        h = nn.functional.dropout(self.net.encode(x), self.hparams.dropout, training=True)
        err = (self.net.decoder(h) - x)[m]
        mse = err.pow(2).mean() if err.numel() else torch.zeros((), requires_grad=True)
        loss = mse + self._penalty()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"AutoRec loss became {loss.item()} at step {self.global_step}; lower lr")
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        users, items, ratings = batch
        pred = self.predict_pairs(users, items)
        self.log("val/rmse", torch.sqrt(torch.mean((pred - ratings) ** 2)), on_epoch=True, batch_size=len(users))

    def predict_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        uniq, inv = torch.unique(items, return_inverse=True)
        code = self.codes(uniq.numpy())[inv]
        z = (code * self.net.decoder.weight[users]).sum(-1) + self.net.decoder.bias[users]
        return self.hparams.lo + (z - 1) * self.hparams.span / 4

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def item_matrix(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int, lo: float,
                span: float) -> sp.csr_matrix:
    """Sparse (n_items, n_users) float32 ratings mapped to 1..5 (missing entries are 0)."""
    vals = (1 + 4 * (ratings - lo) / span).astype(np.float32)
    return sp.csr_matrix((vals, (items, users)), shape=(n_items, n_users), dtype=np.float32)


def fit_autorec(fit: tuple[np.ndarray, np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                n_users: int, n_items: int, scale: tuple[float, float], cfg: Any, epochs: int, seed: int,
                log_dir: Path | None) -> dict[str, Any]:
    """Train I-AutoRec on ``fit`` (users, items, ratings); with ``val`` early-stop on its RMSE.

    Returns the plain arrays prediction needs (item codes, decoder rows and biases, scale) and
    the training record.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    lo, span = float(scale[0]), float(scale[1] - scale[0]) or 1.0
    inputs = item_matrix(fit[0], fit[1], fit[2], n_users, n_items, lo, span)
    module = AutoRecModule(n_users, cfg.autorec_hidden, cfg.autorec_lr, cfg.autorec_reg, cfg.autorec_dropout,
                           len(fit[2]), inputs, lo, span)
    items = TensorDataset(torch.arange(n_items))  # batches of item rows
    sampler = BatchSampler(RandomSampler(items, generator=torch.Generator().manual_seed(seed)), cfg.autorec_batch_items, drop_last=False)
    train_loader = DataLoader(items, batch_size=None, sampler=sampler)
    val_loader = pair_loader(*val, 65536, False, seed) if val is not None else None
    best_epochs, best, history = fit_loop(module, train_loader, val_loader, epochs, cfg.patience, log_dir, "rating_autorec")
    codes = module.codes(np.arange(n_items)).numpy()
    net = module.net
    return {
        "codes": codes.astype(np.float32),
        "dec_w": net.decoder.weight.detach().numpy().astype(np.float32).copy(),
        "dec_b": net.decoder.bias.detach().numpy().astype(np.float32).copy(),
        "lo": lo, "span": span, "epochs": best_epochs, "val_rmse": best, "history": history,
    }


class SparseMFModule(MFModule):
    """:class:`MFModule` with sparse embedding gradients and lazy Adam (``torch.optim.SparseAdam``).

    The dense form's optimizer step touches every row of the factor tables on every batch,
    whatever the batch, so with large tables the optimizer dominates an epoch. Here a step
    updates only the batch's rows, the classic SGD-MF update. The global mean stays fixed at the
    training mean (SparseAdam takes sparse gradients only; the biases absorb any offset).
    Same objective and penalty as the dense form; chosen by ``movierec/core/sizing.py`` when the
    tables are large.
    """

    def __init__(self, n_users: int, n_items: int, dim: int, mu: float, lr: float, reg: float) -> None:
        super().__init__(n_users, n_items, dim, mu, lr, reg, "rating")
        for emb in (self.net.user, self.net.item, self.net.user_bias, self.net.item_bias):
            emb.sparse = True
        self.net.mu.requires_grad_(False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SparseAdam([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr)


def fit_mf(fit: tuple[np.ndarray, np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
           n_users: int, n_items: int, cfg: Any, epochs: int, seed: int, log_dir: Path | None) -> dict[str, Any]:
    """Biased MF (the baselines' ``MFModule``, MSE objective; :class:`SparseMFModule` with
    ``cfg.mf_sparse``) with the same early stopping."""
    L.seed_everything(seed, workers=True, verbose=False)
    mu = float(np.mean(fit[2]))
    if getattr(cfg, "mf_sparse", False):
        module: MFModule = SparseMFModule(n_users, n_items, cfg.mf_dim, mu, cfg.mf_lr, cfg.mf_reg)
    else:
        module = MFModule(n_users, n_items, cfg.mf_dim, mu, cfg.mf_lr, cfg.mf_reg, "rating")
    train_loader = pair_loader(*fit, 1024, True, seed)
    val_loader = pair_loader(*val, 65536, False, seed) if val is not None else None
    best_epochs, best, history = fit_loop(
        module, train_loader, val_loader, epochs, cfg.mf_patience, log_dir, "rating_mf", getattr(cfg, "mf_max_steps_per_epoch", None)
    )
    net = module.net
    return {
        "user": net.user.weight.detach().numpy().astype(np.float32).copy(),
        "item": net.item.weight.detach().numpy().astype(np.float32).copy(),
        "user_bias": net.user_bias.weight.detach().numpy().ravel().astype(np.float32).copy(),
        "item_bias": net.item_bias.weight.detach().numpy().ravel().astype(np.float32).copy(),
        "mu": float(net.mu.detach()), "epochs": best_epochs, "val_rmse": best, "history": history,
    }
