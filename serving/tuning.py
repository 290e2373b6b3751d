"""Process tuning for serving: how many threads a worker computes with, and how many malloc
arenas it keeps. Set in the launching process before the workers start; they inherit it through
the environment variables the libraries read when they are imported."""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX=2`` would): with one arena per worker
    thread, resident memory keeps growing under load with reloads, and capped it stays flat
    (``benchmarks/soak.py``). Worker processes inherit the environment variable."""
    os.environ.setdefault("MALLOC_ARENA_MAX", str(arenas))
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 = M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to cap
        pass


def limit_threads(threads: int) -> None:
    """``threads`` intra-op threads for torch, FAISS and BLAS in this process and the worker
    processes it starts (they read the environment when they import them). A request is a
    few small products; with one thread per worker the workers share the cores, where more
    threads spin while they wait for each other."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except Exception:  # no BLAS found to limit: nothing to do
        pass
