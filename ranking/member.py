"""One member net of the ranker: its Lightning module (listwise + rating loss), its batches,
its training with early stopping, and the closed-form refit of its rating head.

The ranking loss is a listwise softmax over each list with the held-out items as targets
(ListNet top-one); the rating head regresses held-out rating values. Early stopping and
checkpointing watch the same ``val/ndcg@10`` (in-list, on validation users).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset, default_collate

from movierec.core.config import RankingConfig, TrainerConfig
from ranking.lists import Lists, used_width
from ranking.net import RankerNet


class RankerModule(L.LightningModule):
    """Wraps :class:`RankerNet` for the listwise + rating loss, optimiser and validation."""

    def __init__(
        self,
        n_dense: int,
        n_users: int,
        n_items: int,
        emb_dim: int = 16,
        hidden: list[int] | None = None,
        cross_layers: int = 2,
        dropout: float = 0.1,
        rating_center: float = 3.0,
        rating_scale: float = 1.0,
        lr: float = 2e-3,
        weight_decay: float = 1e-5,
        rating_weight: float = 0.5,
        id_dropout: float = 0.1,
        base_column: int = -1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = RankerNet(
            n_dense, n_users, n_items, emb_dim, list(hidden) if hidden is not None else [128, 64], cross_layers, dropout, rating_center, rating_scale, base_column
        )
        self._val: dict[str, list[float]] = {}

    def net_kwargs(self) -> dict[str, Any]:
        hp = self.hparams
        return {k: (list(hp[k]) if k == "hidden" else hp[k]) for k in (
            "n_dense", "n_users", "n_items", "emb_dim", "hidden", "cross_layers", "dropout", "rating_center", "rating_scale",
            "base_column")}

    def _losses(self, batch: list[torch.Tensor], train: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, users, cand, in_loss, label, rating = batch
        if train and self.hparams.id_dropout > 0:
            users = torch.where(torch.rand(users.shape) < self.hparams.id_dropout, torch.full_like(users, -1), users)
            cand = torch.where(torch.rand(cand.shape) < self.hparams.id_dropout, torch.full_like(cand, -1), cand)
        score, pred = self.net(x, users, cand)
        logits = score.masked_fill(~in_loss, -1e9)
        target = (label & in_loss).float()
        n_pos = target.sum(1)
        has = n_pos > 0
        rank_loss = -(target * F.log_softmax(logits, 1)).sum(1)[has] / n_pos[has]
        rank_loss = rank_loss.mean() if has.any() else score.sum() * 0
        rated = ~torch.isnan(rating)
        scale = self.net.rating_scale
        err = (pred - torch.nan_to_num(rating)) / scale
        mse = (err[rated] ** 2).mean() if rated.any() else score.sum() * 0
        loss = rank_loss + self.hparams.rating_weight * mse
        return loss, rank_loss, mse, score

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, rank_loss, mse, _ = self._losses(batch, train=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"ranker loss is {loss.item()} at step {self.global_step}; lower ranking.lr")
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        loss, rank_loss, mse, score = self._losses(batch, train=False)
        n = len(batch[0])
        _, _, cand, in_loss, label, rating = batch
        s = score.masked_fill(~in_loss, -float("inf"))
        top = torch.topk(s, min(10, s.shape[1]), dim=1).indices
        hits = torch.gather(label & in_loss, 1, top).float()
        disc = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2).float())
        n_rel = (label & in_loss).sum(1)
        ideal = torch.cumsum(disc, 0)[(n_rel.clamp(1, top.shape[1]) - 1)]
        ndcg = ((hits * disc).sum(1) / ideal)[n_rel > 0]
        # under DDP each rank validates its own shard: average over ranks, so early stopping and
        # the checkpoint see the same value everywhere
        sync = self._trainer is not None and self.trainer.world_size > 1
        self.log("val/loss", loss, batch_size=n, sync_dist=sync)
        self.log("val/rank_loss", rank_loss, batch_size=n, sync_dist=sync)
        self.log("val/rmse", mse.sqrt() * self.net.rating_scale, batch_size=n, sync_dist=sync)
        self.log("val/ndcg@10", ndcg.mean() if len(ndcg) else torch.tensor(0.0), prog_bar=True, batch_size=max(len(ndcg), 1), sync_dist=sync)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def _net_inputs(x: np.ndarray, lists: Lists, rows: np.ndarray) -> tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(width, (dense, users, cand)) of these lists, without the padding none of them uses."""
    w = used_width(lists.cand[rows])
    return w, (torch.from_numpy(x[rows, :w]), torch.from_numpy(lists.users[rows]), torch.from_numpy(lists.cand[rows, :w]))


@torch.no_grad()
def _head_inputs(net: RankerNet, x: np.ndarray, lists: Lists, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of the rating head (frozen trunk, eval mode) and targets of the rated pairs."""
    net.eval()
    hs, ys = [], []
    for s in range(0, len(rows), 128):
        r = rows[s : s + 128]
        w, inputs = _net_inputs(x, lists, r)
        h = net.head_input(*inputs).numpy()
        rated = ~np.isnan(lists.rating[r, :w])
        hs.append(h[rated])
        ys.append(lists.rating[r, :w][rated])
    return np.concatenate(hs).astype(np.float64), np.concatenate(ys).astype(np.float64)


def refit_rating_head(net: RankerNet, x: np.ndarray, lists: Lists, fit_rows: np.ndarray, val_rows: np.ndarray) -> float:
    """Refit the linear rating head in closed form (ridge) on the frozen trunk; returns val RMSE.

    Early stopping picks the epoch where the *order* is best, which comes well before the rating
    regression converges (it has fewer, noisier targets). A linear head on fixed inputs has an
    exact least-squares solution, so no extra epochs are needed; the ridge weight is chosen on
    the validation users.
    """
    h, y = _head_inputs(net, x, lists, fit_rows)
    hv, yv = _head_inputs(net, x, lists, val_rows)
    center, scale = float(net.rating_center), float(net.rating_scale)
    hb, hvb = np.c_[h, np.ones(len(h))], np.c_[hv, np.ones(len(hv))]
    gram, rhs = hb.T @ hb, hb.T @ ((y - center) / scale)
    best: tuple[float, np.ndarray] | None = None
    for lam in (0.1, 1.0, 10.0, 100.0, 1000.0):
        w = np.linalg.solve(gram + lam * np.diag(np.r_[np.ones(h.shape[1]), 0.0]), rhs)
        rmse = float(np.sqrt(np.mean((center + scale * (hvb @ w) - yv) ** 2)))
        if best is None or rmse < best[0]:
            best = (rmse, w)
    assert best is not None
    with torch.no_grad():
        net.rating_head.weight.copy_(torch.from_numpy(best[1][:-1]).float()[None, :])
        net.rating_head.bias.fill_(float(best[1][-1]))
    return best[0]


@torch.no_grad()
def net_scores(net: RankerNet, x: np.ndarray, lists: Lists, rows: np.ndarray) -> np.ndarray:
    net.eval()
    out = np.zeros((len(rows), x.shape[1]), np.float32)
    for s in range(0, len(rows), 256):
        r = rows[s : s + 256]
        w, inputs = _net_inputs(x, lists, r)
        out[s : s + 256, :w] = net.score(*inputs).numpy()
    return out


def fit_member(
    x: np.ndarray,
    lists: Lists,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    hparams: dict[str, Any],
    config: RankingConfig,
    trainer_config: TrainerConfig,
    seed: int,
    log_dir: str | Path | None,
) -> tuple[RankerModule, dict[str, float]]:
    """Train one member net on ``fit_rows``, early stopping on ``val_rows`` (in-list NDCG@10)."""
    from retrieval.distributed import resolve_strategy
    from retrieval.two_tower import show_progress

    L.seed_everything(seed, workers=True, verbose=False)
    module = RankerModule(**hparams)
    gen = torch.Generator().manual_seed(seed)
    train_dl = DataLoader(
        _tensors(x, lists, fit_rows), batch_size=config.batch_size, shuffle=True, generator=gen, collate_fn=_trimmed_batch
    )
    val_dl = DataLoader(_tensors(x, lists, val_rows), batch_size=256, collate_fn=_trimmed_batch)
    monitor = "val/ndcg@10"
    with tempfile.TemporaryDirectory(prefix="movierec-ranker-") as ckpt_dir:
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, monitor=monitor, mode="max", save_top_k=1, save_weights_only=True)
        trainer = L.Trainer(
            max_epochs=config.epochs,
            accelerator=trainer_config.accelerator,
            devices=trainer_config.devices,
            num_nodes=trainer_config.num_nodes,
            strategy=resolve_strategy(trainer_config),  # ddp: workers forked from this process (retrieval.distributed)
            callbacks=[EarlyStopping(monitor=monitor, mode="max", patience=config.patience), checkpoint],
            logger=CSVLogger(str(log_dir), name="ranker", version="") if log_dir else False,
            enable_progress_bar=show_progress(trainer_config),
            enable_model_summary=False,
            deterministic=True,
            num_sanity_val_steps=0,
            log_every_n_steps=5,
        )
        before = trainer.validate(module, val_dl, verbose=False)[0] if len(val_rows) else {}
        trainer.fit(module, train_dl, val_dl)
        best = checkpoint.best_model_score
        if checkpoint.best_model_path:
            module.load_state_dict(torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
        after = trainer.validate(module, val_dl, verbose=False)[0] if len(val_rows) else {}
    val_rmse = float("nan")
    if config.refit_rating_head and len(val_rows):
        val_rmse = refit_rating_head(module.net, x, lists, fit_rows, val_rows)
    module.eval()
    return module, {
        "epochs": int(trainer.current_epoch),
        "val_ndcg@10": float(best) if best is not None else float("nan"),
        "val_loss_untrained": float(before.get("val/loss", float("nan"))),
        "val_loss": float(after.get("val/loss", float("nan"))),
        "val_rmse": val_rmse,
    }


def _trimmed_batch(rows: list[torch.Tensor] | list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """A batch of :func:`_tensors` rows without the padding columns none of its lists uses.

    ``rows`` is either the batch's tensors as :class:`_ListRows` reads them or one tuple per row.
    Lists are as wide as the longest one, and a user with hundreds of held-out ratings makes
    that several times the typical list. Padding never enters the losses, and every layer works
    on each candidate on its own, so a trimmed batch trains as the full one did.
    """
    x, users, cand, in_loss, label, rating = rows if isinstance(rows[0], torch.Tensor) else default_collate(rows)
    w = used_width(cand)
    return [x[:, :w], users, cand[:, :w], in_loss[:, :w], label[:, :w], rating[:, :w]]


class _ListRows(TensorDataset):
    """The lists' tensors; a batch is read with one gather per tensor (the data loader calls
    ``__getitems__`` with the batch's indices, in the sampler's order) instead of row by row
    and stacked: the same batch, without a Python call and a copy per list."""

    def __getitems__(self, idx: list[int]) -> list[torch.Tensor]:
        i = torch.as_tensor(idx, dtype=torch.int64)
        return [t[i] for t in self.tensors]


def _tensors(x: np.ndarray, lists: Lists, rows: np.ndarray) -> TensorDataset:
    return _ListRows(
        torch.from_numpy(x[rows]),
        torch.from_numpy(lists.users[rows]),
        torch.from_numpy(lists.cand[rows]),
        torch.from_numpy(lists.in_loss[rows]),
        torch.from_numpy(lists.label[rows]),
        torch.from_numpy(lists.rating[rows]),
    )
