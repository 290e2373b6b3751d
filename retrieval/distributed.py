"""Running past one process: the DDP strategy for training and sharded batch candidates.

Two jobs, both on Lightning rather than a home-made cluster:

* :func:`resolve_strategy` turns ``trainer.strategy: ddp`` into the DDP flavour that fits how the
  process was started. Started by hand (``movierec train``) it starts the workers from the
  launching process (fork on CPU, spawn on GPUs): only ``trainer.fit`` runs in them, and the
  launching process gets the trained weights back and carries on with the pipeline alone, so
  nothing before or after training runs twice. Started by torchrun, SLURM or another cluster
  launcher (the usual multi-node case), every process already is a rank and plain ``ddp`` joins
  them.
* :func:`shard_bounds` and :func:`chunk_shard_bounds` split users into contiguous shards, one
  per rank; the sharded batch candidates jobs that use them (``movierec/candidates.py``, and
  ``movierec/candidates_ddp.py`` across nodes) sit above the serve-time layer, since they ask the
  loaded recommender, and so do not live in this stage.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from typing import TYPE_CHECKING

from movierec.core.config import TrainerConfig

if TYPE_CHECKING:
    from lightning.pytorch.strategies import Strategy

log = logging.getLogger(__name__)


# ---- strategy ------------------------------------------------------------------------------------
def launched_externally() -> bool:
    """True when torchrun, SLURM (``srun``) or LSF started this process as one rank of many."""
    # Lightning imported here, not at the top: the pipeline asks for the rank (``is_global_zero``)
    # and starts its second process before it imports Lightning, so both import at once
    from lightning.fabric.plugins.environments import LSFEnvironment, SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        return True
    if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    return LSFEnvironment.detect()


def worker_start_method(accelerator: str) -> str:
    """``fork`` for CPU workers, ``spawn`` for GPUs.

    A forked worker inherits the imported libraries and the loaded data (copy-on-write): no
    pickling of the data set, and no re-import of torch and Lightning, which costs each spawned
    worker seconds before its first step (more on a loaded machine). CUDA cannot be used in a
    child forked after the parent touched it, so GPUs spawn. Forked workers run one torch thread
    each (:func:`worker_threads`).
    """
    if accelerator == "cpu" and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "spawn"


def worker_threads(configured: int, world_size: int) -> int:
    """Torch threads for one training process.

    Under DDP one thread per process: CPU DDP runs one process per core, and libgomp (which the
    Linux torch wheels use) hangs in a forked child that opens a parallel region after the parent
    used one, so a single thread is also the only safe count there.
    """
    return configured if world_size <= 1 else 1


def resolve_strategy(config: TrainerConfig) -> str | Strategy:
    """The Lightning strategy for ``config.strategy``.

    ``ddp`` started by hand becomes DDP with workers started from this process (see
    :func:`worker_start_method`): Lightning's own ``ddp`` launcher would re-run the whole command
    line (data loading, content fitting, and the bundle writing after training) in every worker,
    while these workers run only ``fit`` and hand rank 0's weights back to this process. Under an
    external launcher the ranks already exist, so plain ``ddp`` joins them. Any other value
    (``auto``, ``ddp_spawn``, ``fsdp``, ...) passes through unchanged.
    """
    from lightning.pytorch.strategies import DDPStrategy

    if config.strategy != "ddp":
        return config.strategy
    if launched_externally():
        return DDPStrategy()
    return DDPStrategy(start_method=worker_start_method(config.accelerator))


def global_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def is_global_zero() -> bool:
    """Whether this process should write shared outputs (the bundle, reports).

    Under spawned DDP the launching process is the only one that returns from training, so it
    is rank zero; under torchrun/SLURM every rank runs the pipeline and only rank 0 may write.
    """
    return global_rank() == 0


# ---- distributed batch candidates ----------------------------------------------------------------
def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of ``n`` rows for ``rank``; sizes differ by at most one."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of {world}")
    return rank * n // world, (rank + 1) * n // world


def chunk_shard_bounds(n: int, chunk: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of ``n`` rows for ``rank``, cut at multiples of ``chunk``.

    Each rank takes whole chunks of the one-process job (``ceil(n / chunk)`` chunks dealt out
    as :func:`shard_bounds` deals rows), so every batch a rank scores holds the same users as the
    one-process job's batch: the same answers, not merely close ones, whatever the batch size
    does to the arithmetic. Ranks beyond the number of chunks get nothing.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    start, stop = shard_bounds(-(-n // chunk), rank, world)
    return min(start * chunk, n), min(stop * chunk, n)
