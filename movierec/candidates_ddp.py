"""Batch candidates across machines: Lightning's predict loop on every node, parts on shared storage.

The Python API for a run over several nodes (docs/scaling.md); on one machine ``movierec
candidates`` forks its workers itself (:mod:`movierec.candidates`), without Lightning's import
and process-group start-up. :func:`write_candidates_distributed` shards users across ranks;
:class:`ParquetPartWriter` (a ``BasePredictionWriter``) streams each rank's rows into its own
parquet part. Shards of whole chunks in rank order make the parts, read back in file-name order,
the same table as the single-process ``movierec candidates`` output.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset

from movierec.candidates import PART_PATTERN
from retrieval.candidates import candidate_schema, candidate_table, check_parts_target
from retrieval.distributed import chunk_shard_bounds, worker_start_method

if TYPE_CHECKING:
    from recommender import HybridRecommender

log = logging.getLogger(__name__)

class CandidateTask(L.LightningModule):
    """Predict-loop wrapper around a loaded bundle: a batch of user_idx in, top-k out.

    The bundle is loaded in :meth:`setup`, inside each worker, unless a loaded ``model`` is given:
    forked workers then share its arrays copy-on-write (one copy of the index and vectors for
    all workers), while spawned ones pickle only a path and a user list. It has no parameters and
    is never wrapped in DDP (Lightning wraps only for fitting).

    Args:
        model_dir: bundle directory.
        users: user_idx to score, in output order; rank ``r`` takes its contiguous shard of whole chunks.
        k: candidates per user.
        rank_candidates: re-score with the ranker (False: two-tower order, like ``--no-rank``).
        chunk_size: users per predict batch.
        threads: torch threads per worker.
        model: the bundle already loaded in the launching process (forked workers only).
    """

    def __init__(
        self,
        model_dir: str | Path,
        users: np.ndarray,
        k: int,
        rank_candidates: bool = True,
        chunk_size: int = 2048,
        threads: int = 1,
        model: HybridRecommender | None = None,
    ) -> None:
        super().__init__()
        self.model_dir = str(model_dir)
        self.users = np.asarray(users, dtype=np.int64)
        self.k, self.rank_candidates, self.chunk_size, self.threads = k, rank_candidates, chunk_size, threads
        self.model: HybridRecommender | None = model
        self.user_ids: np.ndarray | None = None
        self.item_ids: np.ndarray | None = None

    def setup(self, stage: str) -> None:
        from recommender import HybridRecommender

        torch.set_num_threads(self.threads)
        if self.model is None:
            # the launching process verified the checksums; each worker only reads
            self.model = HybridRecommender.load(self.model_dir, verify=False)
        self.user_ids = np.asarray(self.model.user_ids)
        self.item_ids = self.model.items["item_id"].to_numpy()
        self.k = min(self.k, self.model.n_items)

    def predict_dataloader(self) -> DataLoader:
        start, stop = chunk_shard_bounds(len(self.users), self.chunk_size, self.global_rank, self.trainer.world_size)
        shard = torch.from_numpy(self.users[start:stop])
        return DataLoader(TensorDataset(shard), batch_size=self.chunk_size, shuffle=False)

    def predict_step(self, batch: list[torch.Tensor], batch_idx: int) -> dict[str, np.ndarray]:
        users = batch[0].numpy()
        ids, scores = self.model.recommend_batch(users, self.k, rank=self.rank_candidates)
        return {"users": users, "ids": ids, "scores": scores}


class ParquetPartWriter(BasePredictionWriter):
    """Streams each rank's predictions into ``part-<rank>.parquet`` as batches finish.

    Writing per batch keeps memory flat in the number of users (nothing is gathered to rank 0,
    and ``trainer.predict`` runs with ``return_predictions=False``). A rank with no users still
    writes an empty part with the schema, so a reader finds one part per rank.
    """

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self.rows = 0

    def _path(self, trainer: L.Trainer) -> Path:
        return self.out_dir / PART_PATTERN.format(rank=trainer.global_rank)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._schema = candidate_schema(pl_module.user_ids, pl_module.item_ids)
        self._writer = pq.ParquetWriter(self._path(trainer), self._schema)
        self.rows = 0

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, np.ndarray],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        table = candidate_table(prediction["users"], prediction["ids"], prediction["scores"], pl_module.user_ids, pl_module.item_ids, self._schema)
        self._writer.write_table(table)
        self.rows += len(table)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._writer.close()
        self._writer = None
        log.debug("rank %d wrote %d rows to %s", trainer.global_rank, self.rows, self._path(trainer))


def write_candidates_distributed(
    model_dir: str | Path,
    users: np.ndarray,
    out: str | Path,
    k: int,
    rank: bool = True,
    workers: int = 2,
    num_nodes: int = 1,
    chunk_size: int = 2048,
    threads: int = 1,
    show_progress: bool = True,
    model: HybridRecommender | None = None,
) -> dict[str, Any]:
    """Top-k candidates for ``users`` written by ``workers`` processes (per node) as parquet parts.

    Args:
        model_dir: bundle directory (every worker loads it, read-only).
        users: user_idx to write, in output order.
        out: a directory that ends up holding ``part-00000.parquet`` ... one per rank; read it
            with ``pandas.read_parquet(out)`` or ``pyarrow.dataset``. On one node it is built in
            a temp directory beside it and swapped into place, so a failed or killed run leaves
            the previous output (or nothing) under ``out``; across nodes (which cannot agree on one rename) every node writes its
            ranks' parts straight into ``out``, which should be shared storage.
        k: candidates per user.
        rank: re-score with the ranker (False: two-tower retrieval order).
        workers: processes per node; ``num_nodes``: nodes (each started with the same command
            and ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK`` set, see docs/scaling.md).
        threads: torch threads per worker (1 is safe in forked workers, see
            :func:`worker_threads`).
        model: ``model_dir`` already loaded here; forked workers share it instead of loading
            their own copies (ignored when workers are spawned).

    Returns:
        Counts and throughput for the log.
    """
    from movierec.core.artifacts import replace_directory

    out = Path(out)
    check_parts_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if num_nodes > 1:
        out.mkdir(exist_ok=True)
        tmp = out
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    users = np.asarray(users, dtype=np.int64)
    t0 = time.perf_counter()
    try:
        start = worker_start_method("cpu")
        if model is not None and start == "fork":
            # a large catalogue's batch index, built once here: forked workers share it
            # copy-on-write instead of each training its own
            model.retrieval.batch_index()
            if rank and model.ranker is not None:
                model.ranker.prepare(model.rank_inputs())  # the ranker's item tables, likewise
        task = CandidateTask(model_dir, users, k, rank, chunk_size, threads, model=model if start == "fork" else None)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=workers,
            num_nodes=num_nodes,
            strategy=DDPStrategy(start_method=start) if workers * num_nodes > 1 else "auto",
            callbacks=[ParquetPartWriter(tmp)],
            logger=False,
            enable_progress_bar=show_progress,
            enable_model_summary=False,
            enable_checkpointing=False,
            use_distributed_sampler=False,
        )
        trainer.predict(task, return_predictions=False)
        parts = sorted(tmp.glob("part-*.parquet"))
        expected = workers * num_nodes
        if num_nodes == 1 and len(parts) != expected:
            raise RuntimeError(f"expected {expected} candidate parts in {tmp}, found {len(parts)}")
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        if tmp != out:
            check_parts_target(out)  # again: something may have appeared there meanwhile
            # one atomic swap where the kernel allows it: a kill at any moment leaves the old
            # parts or the new ones under ``out``, never neither
            replace_directory(tmp, out)
    except BaseException:
        if tmp != out:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    summary = {
        "users": len(users),
        "rows": rows,
        "parts": len(parts),
        "seconds": round(seconds, 2),
        "users_per_second": round(len(users) / max(seconds, 1e-9), 1),
    }
    log.info("candidates: %d users, %d rows, %d parts in %.1fs (%.0f users/s) -> %s", len(users), rows, len(parts), seconds, summary["users_per_second"], out)
    return summary
