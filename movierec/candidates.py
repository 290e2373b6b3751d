"""The batch candidates job on one machine: top-k for every user (or a list), on every core.

It sits above the serve-time layer (:mod:`recommender`), whose loaded model it asks, and below
the CLI. :func:`write_candidates_parallel` forks worker processes from the process that loaded
the bundle (they share its arrays copy-on-write and start in milliseconds: no re-import, no
process group), gives each a contiguous shard of whole chunks of users, lets each stream its rows
into its own parquet part in a hidden folder beside the output, and then merges the parts in
order into the one file asked for (or, with ``parts``, swaps the folder of parts into place).
:func:`choose_workers` is the rule behind ``--workers auto``. Across several machines the parts
are written by Lightning's predict loop instead (:mod:`movierec.candidates_ddp`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from recommender import HybridRecommender

log = logging.getLogger(__name__)

PART_PATTERN = "part-{rank:05d}.parquet"

PARALLEL_MIN_USERS = {"ranked": 1_000, "retrieval": 65_536}
"""``--workers auto`` runs one process below this many users, ranked or in retrieval order
(``--no-rank``): below it, forking, the per-worker set-up and the serial merge of the parts cost
about what the second core saves. A ranked user costs milliseconds, so a few hundred pay for
the workers; a retrieval-only user costs a fraction of that, about what merging its rows costs.
``benchmarks/candidates_workers.py break-even`` measures both sides (benchmarks/RESULTS.md,
"Batch candidates")."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or taskset's
    share), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this platform
        return os.cpu_count() or 1


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def choose_workers(n_users: int, chunk_size: int, rank: bool = True, cores: int | None = None, fork: bool | None = None) -> int:
    """Worker processes for ``--workers auto``: one per usable core, at most one per chunk of
    users (a worker takes whole chunks), and one process below :data:`PARALLEL_MIN_USERS` users
    or where processes cannot be forked."""
    cores = usable_cores() if cores is None else cores
    fork = can_fork() if fork is None else fork
    if not fork or n_users < PARALLEL_MIN_USERS["ranked" if rank else "retrieval"]:
        return 1
    return max(1, min(cores, -(-n_users // chunk_size)))


# What the forked workers read: set in the parent just before the fork, inherited, never pickled.
_JOB: dict[str, Any] = {}


def _die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the launching process dies, however it dies.

    A worker left behind by a SIGKILLed parent would wait for tasks for ever (it holds its own
    copy of the task queue's write end, so it never sees end-of-file) and keep the bundle's
    memory. Linux's ``PR_SET_PDEATHSIG`` has the kernel send it SIGKILL; elsewhere it is left as is.
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call above
        os._exit(1)


def _write_shard(rank: int) -> int:
    """One worker: its shard of users into ``part-<rank>.parquet``; returns the row count."""
    import faiss
    import torch

    from retrieval.candidates import stream_candidates
    from retrieval.distributed import chunk_shard_bounds

    # one thread per worker: a worker per core already fills the machine, and an OpenMP pool
    # opened in a forked child after the parent used one can hang (retrieval.distributed.worker_threads)
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    job = _JOB
    model, users, chunk = job["model"], job["users"], job["chunk_size"]
    start, stop = chunk_shard_bounds(len(users), chunk, rank, job["workers"])
    done = job["done"]

    def tick(n: int) -> None:
        with done.get_lock():
            done.value += n

    return stream_candidates(
        lambda u: model.recommend_batch(u, job["k"], rank=job["rank"]),
        users[start:stop],
        model.user_ids,
        model.items["item_id"].to_numpy(),
        Path(job["tmp"]) / PART_PATTERN.format(rank=rank),
        chunk,
        on_chunk=tick,
    )


def write_candidates_parallel(
    model: HybridRecommender,
    users: np.ndarray,
    out: str | Path,
    k: int,
    rank: bool = True,
    workers: int = 2,
    chunk_size: int = 2048,
    parts: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Top-k candidates for ``users`` written by ``workers`` forked processes.

    Args:
        model: the loaded bundle; the workers share it copy-on-write.
        users: user_idx to write, in output order.
        out: the parquet file to write (``parts=False``): the parts are merged into it in order,
            one row group at a time, and it is renamed into place, so it equals the one-process
            output and a failed or killed run leaves the previous file (or nothing) under
            ``out``. With ``parts``: a directory of ``part-00000.parquet`` ..., one per worker,
            swapped into place whole.
        k: candidates per user.
        rank: re-score with the ranker (False: two-tower retrieval order).
        workers: processes (each takes a contiguous shard of whole ``chunk_size`` chunks).

    Returns:
        Counts and throughput for the log (``parts``: the number of parts written).
    """
    import numpy as np
    from tqdm.auto import tqdm

    from movierec.core.artifacts import replace_directory
    from retrieval.candidates import check_candidates_target, check_parts_target, merge_candidate_parts

    if not can_fork():
        raise RuntimeError("parallel candidates fork their workers, which this platform cannot; use one worker")
    out = Path(out)
    check_parts_target(out) if parts else check_candidates_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    users = np.asarray(users, dtype=np.int64)
    t0 = time.perf_counter()
    # built once here, before the fork: the workers share the batch index and the ranker's item
    # tables copy-on-write instead of each building its own
    model.retrieval.batch_index()
    if rank and model.ranker is not None:
        model.ranker.prepare(model.rank_inputs())
    context = multiprocessing.get_context("fork")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    done = context.Value("q", 0)
    _JOB.update(model=model, users=users, k=k, rank=rank, chunk_size=chunk_size, workers=workers, tmp=str(tmp), done=done)
    try:
        bar = tqdm(total=len(users), disable=not show_progress, desc="candidates", unit="user")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_write_shard, r) for r in range(workers)]
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                bar.update(done.value - bar.n)
                for f in finished:
                    f.result()  # a worker's error, raised here (the others are cancelled or finish)
        bar.close()
        names = [tmp / PART_PATTERN.format(rank=r) for r in range(workers)]
        if parts:
            rows = sum(f.result() for f in futures)
            check_parts_target(out)  # again: something may have appeared there meanwhile
            replace_directory(tmp, out)  # the old parts or the new ones under ``out``, never neither
        else:
            rows = merge_candidate_parts(names, out)
    finally:
        _JOB.clear()
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    summary = {
        "users": len(users),
        "rows": rows,
        "workers": workers,
        "seconds": round(seconds, 2),
        "users_per_second": round(len(users) / max(seconds, 1e-9), 1),
    }
    if parts:
        summary["parts"] = workers
    log.info("candidates: %d users, %d rows by %d workers in %.1fs (%.0f users/s) -> %s", len(users), rows, workers, seconds, summary["users_per_second"], out)
    return summary
