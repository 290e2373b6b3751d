"""Training the two towers with Lightning: in-batch sampled softmax with log-q correction.

:class:`~retrieval.two_tower_data.TwoTowerData` owns the positives, histories and loaders;
:class:`TwoTowerModule` owns the towers, the loss (:mod:`retrieval.loss`) and optimiser and logs ``train/loss`` and ``val/recall@50`` (early stopping and
checkpointing watch the latter). :func:`fit_two_tower` runs the Trainer and returns the trained
plain modules plus the vectors the index and serving need.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from movierec.core.config import RetrievalConfig, TrainerConfig
from movierec.core.data import Dataset
from retrieval.inputs import Histories, UserFeatureEncoder, user_batch
from retrieval.loss import duplicate_pairs, in_batch_softmax_loss
from retrieval.svd_init import svd_init
from retrieval.towers import ItemTower, UserTower, encode_all_users, encode_items
from retrieval.two_tower_data import ItemFeatures, TwoTowerData, genre_matrix, rank_world

log = logging.getLogger(__name__)


class TwoTowerModule(L.LightningModule):
    """Wraps the plain towers for loss, optimiser and validation recall."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_genres: int,
        content_dim: int,
        n_user_features: int,
        dim: int = 64,
        hidden: int = 128,
        id_dropout: float = 0.3,
        dropout: float = 0.1,
        temperature: float = 0.05,
        logq_weight: float = 1.0,
        lr: float = 3e-3,
        lr_decay: str = "none",
        weight_decay: float = 1e-6,
        val_k: int = 50,
        recent_len: int = 0,
        recent_decay: float = 0.8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.user_tower = UserTower(
            n_users, n_items, content_dim, n_user_features, dim, hidden, id_dropout, dropout, recent_len=recent_len, recent_decay=recent_decay
        )
        self.item_tower = ItemTower(n_items, n_genres, content_dim, dim, hidden, id_dropout, dropout)
        self.data: TwoTowerData | None = None
        self.items: ItemFeatures | None = None
        self._val_hits = 0.0
        self._val_users = 0
        self._item_vecs: torch.Tensor | None = None

    def bind(self, data: TwoTowerData, items: ItemFeatures) -> None:
        """Attach the non-parameter inputs (kept out of the checkpoint's state)."""
        self.data, self.items = data, items
        self._genres = torch.from_numpy(items.genres)
        self._content = torch.from_numpy(items.content)
        self._has_id = torch.from_numpy(items.has_id.astype(np.float32))
        self._log_q = torch.from_numpy(data.log_q)
        self._seen = data.histories.to_csr(data.fit_ds.n_items)
        self._val = data.val_ds.to_csr().tocsr() if data.val_ds is not None else None

    def _user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.user_tower(
            batch["user_idx"], batch["has_id"], batch["hist_items"], batch["hist_weights"], batch["hist_content"], batch.get("user_features")
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """In-batch softmax over the global batch.

        Under DDP each rank holds a slice of the global batch; the candidate (item) vectors of all
        ranks are gathered with gradients (``all_gather(sync_grads=True)``), so every query scores
        against the same candidates as in single-process training and, after DDP averages the
        gradients, a step equals the single-process step on the whole batch.
        """
        items = batch["item_idx"]
        n = len(items)
        u = self._user_vectors(batch)
        v = self.item_tower(items, self._has_id[items], self._genres[items], self._content[items])
        _, world = rank_world(self._trainer)
        if world > 1:
            v_all = self.all_gather(v, sync_grads=True).reshape(-1, v.shape[1])
            items_all = self.all_gather(items).reshape(-1)
            offset = self.global_rank * n
        else:
            v_all, items_all, offset = v, items, 0
        target = torch.arange(n) + offset
        # the same item elsewhere in the batch is not a negative for this query
        rows, cols = duplicate_pairs(items_all.numpy(), offset, n)
        loss = in_batch_softmax_loss(
            u * (1.0 / self.hparams.temperature),  # scales the (n, dim) queries, not the (n, n * world) logits
            v_all,
            self.hparams.logq_weight * self._log_q[items_all],
            torch.from_numpy(rows),
            torch.from_numpy(cols),
            target,
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"two-tower loss became {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=n, sync_dist=world > 1)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._item_vecs = encode_items(self.item_tower, self._genres, self._content, self._has_id)
        self._val_hits, self._val_users = 0.0, 0

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        users = batch[0].numpy()
        self._val_hits += self.recall_sum(users)
        self._val_users += len(users)

    @torch.no_grad()
    def recall_sum(self, users: np.ndarray) -> float:
        """Sum over ``users`` of recall@val_k against their validation items (seen items
        excluded); needs the item vectors from :meth:`on_validation_epoch_start`."""
        hist = self.data.histories.padded(users, self.hparams_history_len)
        inputs = user_batch(users, hist, self.items.content, self.data.user_features[users], np.ones(len(users)), self.hparams.n_items)
        u = self._user_vectors(inputs)
        scores = (u @ self._item_vecs.T).detach().numpy()
        seen = self._seen[users]
        scores[np.repeat(np.arange(len(users)), np.diff(seen.indptr)), seen.indices] = -np.inf
        k = min(self.hparams.val_k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        truth = self._val[users]
        hits = np.asarray(truth[np.repeat(np.arange(len(users)), k), top.ravel()]).reshape(len(users), k).sum(1)
        n_rel = np.diff(truth.indptr)
        return float((hits / np.maximum(n_rel, 1)).sum())

    def on_validation_epoch_end(self) -> None:
        # mean over all validation users: sum hits and user counts over the ranks first (a mean
        # of per-rank means would weight ranks, and rank 0's shard alone would be a sample)
        totals = torch.tensor([self._val_hits, float(self._val_users)], dtype=torch.float64)
        if self._trainer is not None:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        recall = float(totals[0] / max(float(totals[1]), 1.0))
        # the value is already global and identical on every rank; sync_dist (a mean of equal
        # values) only tells Lightning it is a cross-rank value
        self.log(f"val/recall@{self.hparams.val_k}", recall, prog_bar=True, sync_dist=rank_world(self._trainer)[1] > 1)

    @property
    def hparams_history_len(self) -> int:
        return self.data.config.history_len

    def configure_optimizers(self) -> Any:
        # fused: one kernel over all parameters instead of a loop of small ops per tensor; with
        # large id tables (users + items x dim, dense gradients) the unfused step costs more than
        # the forward and backward together
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=True)
        if self.hparams.lr_decay == "none" or self._trainer is None:
            return opt
        # cosine decay over the epoch budget: the last epochs refine instead of circling at the
        # full rate, so training needs fewer epochs (and early stopping fewer idle ones) to settle
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        # warmup: the first epoch climbs linearly to the full rate (large early steps from a
        # random or closed-form start scramble what later steps build on), the rest decays
        warm = total // max(int(self.trainer.max_epochs or 1), 1) if self.hparams.lr_decay == "warmup_cosine" else 0

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            done = min((step - warm) / max(total - warm, 1), 1.0)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@dataclass
class TwoTowerResult:
    """What the pipeline keeps from training."""

    user_tower: UserTower
    item_tower: ItemTower
    item_vectors: np.ndarray  # (n_items, dim)
    user_vectors: np.ndarray  # (n_users, dim) from full-train histories
    items: ItemFeatures
    user_features: np.ndarray
    feature_encoder: UserFeatureEncoder
    hparams: dict
    metrics: dict = field(default_factory=dict)
    log_dir: str | None = None


def show_progress(config: TrainerConfig) -> bool:
    return config.progress and os.environ.get("MOVIEREC_PROGRESS", "1") != "0"


class _KeepBest(L.Callback):
    """At the end of fitting, every rank loads the best checkpoint's weights.

    Only global rank 0 writes and reads the checkpoint file (on a multi-node run the other
    nodes cannot see its disk), then broadcasts the weights, so every process ends with the same
    best model. Under ``ddp_spawn`` the launcher then copies rank 0's weights into the launching
    process, and the best score and epoch count travel in ``callback_metrics`` (the launcher
    forwards those, but not the checkpoint callback's score).
    """

    def __init__(self, checkpoint: ModelCheckpoint) -> None:
        self.checkpoint = checkpoint

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = None
        if trainer.is_global_zero and self.checkpoint.best_model_path:
            state = torch.load(self.checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        state = trainer.strategy.broadcast(state, src=0)
        if state is not None:
            pl_module.load_state_dict(state)
        best = self.checkpoint.best_model_score
        trainer.callback_metrics[BEST_KEY] = torch.tensor(float(best) if best is not None else float("nan"))
        trainer.callback_metrics[EPOCHS_KEY] = torch.tensor(float(trainer.current_epoch))


BEST_KEY = "best/val_recall@50"
EPOCHS_KEY = "best/epochs"


def resolve_sequential(config: RetrievalConfig, ratings) -> RetrievalConfig:
    """``config`` with ``sequential`` True or False; False zeroes ``causal_share`` and
    ``recent_len`` (the model trains as without them). ``auto`` is True when the ratings have
    real timestamps (more than one value): without them "the movies rated before" is row order.
    The pipeline resolves ``auto`` by the ranker's hold-out before it gets here."""
    on = config.sequential
    if on == "auto":
        ts = ratings["timestamp"].to_numpy()
        on = bool(len(ts) and ts.min() != ts.max())
    if not on:
        return config.model_copy(update={"sequential": False, "causal_share": 0.0, "recent_len": 0})
    return config.model_copy(update={"sequential": True})


@dataclass
class _Setup:
    """Everything :func:`fit_two_tower` builds before the Trainer runs."""

    module: TwoTowerModule
    data: TwoTowerData
    items: ItemFeatures
    encoder: UserFeatureEncoder
    user_features: np.ndarray


def build_two_tower(
    train: Dataset, content: np.ndarray, config: RetrievalConfig, seed: int = 42, val_fraction: float | None = None
) -> _Setup:
    """The seeded validation split, item/user inputs, data module and (untrained) module.

    Shared by :func:`fit_two_tower` and by :func:`validation_recall`, which recomputes the
    validation metric in one process for any trained weights.
    """
    from movierec.core.splits import temporal_per_user, validation_split

    config = resolve_sequential(config, train.ratings)
    if config.sequential:  # early stopping on each user's latest ratings: the next movies
        fit_ds, val_ds = temporal_per_user(train, fraction=val_fraction or config.val_fraction)
    else:
        fit_ds, val_ds = validation_split(train, val_fraction or config.val_fraction, seed=seed)
    vocab = train.genre_vocabulary()
    counts = np.bincount(train.ratings["item_idx"].to_numpy(), minlength=train.n_items)
    items = ItemFeatures(genre_matrix(train, vocab), np.ascontiguousarray(content, dtype=np.float32), (counts > 0).astype(np.float32))
    encoder = UserFeatureEncoder.fit(train.users)
    user_features = encoder.encode_dataset_users(train.user_ids, train.users)
    data = TwoTowerData(fit_ds, val_ds, config, seed=seed)
    data.attach(items.content, user_features)
    module = TwoTowerModule(
        n_users=train.n_users,
        n_items=train.n_items,
        n_genres=items.genres.shape[1],
        content_dim=items.content.shape[1],
        n_user_features=encoder.dim,
        dim=config.dim,
        hidden=config.hidden,
        id_dropout=config.id_dropout,
        dropout=config.dropout,
        temperature=config.temperature,
        logq_weight=config.logq_weight,
        lr=config.lr,
        lr_decay=config.lr_decay,
        weight_decay=config.weight_decay,
        recent_len=config.recent_len,
        recent_decay=config.recent_decay,
    )
    if config.init == "svd":
        svd_init(module.user_tower, module.item_tower, fit_ds.to_csr(), seed)
    module.bind(data, items)
    return _Setup(module, data, items, encoder, user_features)


def _trainer(config: RetrievalConfig, trainer_config: TrainerConfig, epochs: int, **extra: Any) -> L.Trainer:
    """The Trainer of both fits (:func:`fit_two_tower`, :func:`refit_two_tower`)."""
    from retrieval.distributed import resolve_strategy

    return L.Trainer(
        max_epochs=epochs,
        # the batches are a fresh permutation each epoch, so a capped epoch sees a random subset
        limit_train_batches=config.max_steps_per_epoch,  # None: a full pass
        accelerator=trainer_config.accelerator,
        devices=trainer_config.devices,
        num_nodes=trainer_config.num_nodes,
        strategy=resolve_strategy(trainer_config),
        enable_progress_bar=show_progress(trainer_config),
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
        # the data module shards batches and validation users itself (ShardedBatches)
        use_distributed_sampler=False,
        **extra,
    )


def refit_two_tower(
    tt: TwoTowerResult,
    train: Dataset,
    content: np.ndarray,
    config: RetrievalConfig,
    trainer_config: TrainerConfig | None = None,
    seed: int = 42,
) -> TwoTowerResult:
    """``tt``'s towers trained ``config.refit_epochs`` more epochs on all of ``train``.

    Early stopping needs ratings the model does not learn from (its validation part) and the
    ranker needs ratings the two-tower model did not see (its held-out part); once both have
    been used, the served vectors can learn from them too. The epochs are a fixed number (there is
    nothing left to stop on), with the fit's learning rate and schedule run over them.
    """
    trainer_config = trainer_config or TrainerConfig()
    t0 = time.perf_counter()
    torch.set_num_threads(config.threads)
    L.seed_everything(seed + 1, workers=True, verbose=False)
    counts = np.bincount(train.ratings["item_idx"].to_numpy(), minlength=train.n_items)
    items = ItemFeatures(tt.items.genres, tt.items.content, (counts > 0).astype(np.float32))
    data = TwoTowerData(train, None, resolve_sequential(config, train.ratings), seed=seed + 1)
    data.attach(items.content, tt.user_features)
    module = TwoTowerModule(**tt.hparams)
    module.user_tower.load_state_dict(tt.user_tower.state_dict())
    module.item_tower.load_state_dict(tt.item_tower.state_dict())
    module.bind(data, items)
    trainer = _trainer(config, trainer_config, config.refit_epochs, limit_val_batches=0, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=data)
    torch.set_num_threads(config.threads)
    module.eval()
    item_vecs = encode_items(module.item_tower, module._genres, module._content, module._has_id).numpy()
    user_vecs = encode_all_users(module.user_tower, data.histories, items.content, tt.user_features, train.n_items, config.history_len)
    seconds = round(time.perf_counter() - t0, 2)
    log.info("two-tower: %d more epochs on all %s training ratings in %.1fs", config.refit_epochs, f"{len(train.ratings):,}", seconds)
    return replace(
        tt, user_tower=module.user_tower, item_tower=module.item_tower, item_vectors=item_vecs, user_vectors=user_vecs, items=items,
        metrics={**tt.metrics, "refit_epochs": config.refit_epochs, "refit_seconds": seconds},
    )


@torch.no_grad()
def validation_recall(setup: _Setup, batch_size: int = 512) -> float:
    """Validation recall@50 of ``setup.module``'s current weights, computed in this process over
    every validation user: the single-process definition the distributed metric must equal."""
    module = setup.module
    module.eval()
    module.on_validation_epoch_start()
    users = setup.data.val_users()
    hits = sum(module.recall_sum(users[s : s + batch_size]) for s in range(0, len(users), batch_size))
    return hits / max(len(users), 1)


def fit_two_tower(
    train: Dataset,
    content: np.ndarray,
    config: RetrievalConfig,
    trainer_config: TrainerConfig | None = None,
    seed: int = 42,
    val_fraction: float | None = None,
    log_dir: str | Path | None = None,
) -> TwoTowerResult:
    """Train on ``train`` (a validation split is carved from it) and encode every user and item.

    With ``trainer_config.strategy == "ddp"`` training runs data-parallel (see
    :func:`retrieval.distributed.resolve_strategy`): started from one process, the workers are
    spawned and this process receives the best weights; started by torchrun or SLURM, every
    rank returns the same trained model. ``retrieval.batch_size`` stays the global batch.

    Args:
        train: training ratings; every catalogue item gets a vector, cold ones from content.
        content: (n_items, C) content vectors in item_idx order.
        config: model and optimiser settings.
        trainer_config: accelerator, devices, nodes and strategy.
        log_dir: where Lightning's CSV logs go (training curves for the report; rank 0 writes).
    """
    trainer_config = trainer_config or TrainerConfig()
    torch.set_num_threads(config.threads)
    L.seed_everything(seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    setup = build_two_tower(train, content, config, seed, val_fraction)
    module, data, items = setup.module, setup.data, setup.items
    monitor = "val/recall@50"
    with tempfile.TemporaryDirectory(prefix="movierec-ckpt-") as ckpt_dir:
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, monitor=monitor, mode="max", save_top_k=1, save_weights_only=True)
        callbacks = [EarlyStopping(monitor=monitor, mode="max", patience=config.patience), checkpoint, _KeepBest(checkpoint)]
        logger = CSVLogger(str(log_dir), name="two_tower", version="") if log_dir else False
        trainer = _trainer(config, trainer_config, config.epochs, callbacks=callbacks, logger=logger, log_every_n_steps=10)
        trainer.fit(module, datamodule=data)
        best = float(trainer.callback_metrics.get(BEST_KEY, torch.tensor(float("nan"))))
        epochs = int(trainer.callback_metrics.get(EPOCHS_KEY, torch.tensor(float(trainer.current_epoch))))
    torch.set_num_threads(config.threads)
    module.eval()
    item_vecs = encode_items(module.item_tower, module._genres, module._content, module._has_id).numpy()
    full_hist = Histories.from_ratings(train.ratings, train.n_users)
    user_vecs = encode_all_users(module.user_tower, full_hist, items.content, setup.user_features, train.n_items, config.history_len)
    metrics = {
        "val_recall@50": best,
        "epochs": epochs,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "world_size": int(trainer.world_size),
    }
    log.info(
        "two-tower: val recall@50 %.4f after %d epochs in %.1fs (%d processes)",
        metrics["val_recall@50"], metrics["epochs"], metrics["train_seconds"], metrics["world_size"],
    )
    return TwoTowerResult(
        user_tower=module.user_tower,
        item_tower=module.item_tower,
        item_vectors=item_vecs,
        user_vectors=user_vecs,
        items=items,
        user_features=setup.user_features,
        feature_encoder=setup.encoder,
        hparams=dict(module.hparams),
        metrics=metrics,
        log_dir=str(log_dir) if log_dir else None,
    )
