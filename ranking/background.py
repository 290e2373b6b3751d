"""A second training process on the machine's second core.

``movierec train`` runs its stages one after another in one process with one torch thread each
(two threads per process collapse when another process holds a core). The second core takes the
rating model first (it needs nothing from the other stages), then whatever the other stages
share with it once it is free: the two-tower refit (:meth:`BackgroundWorker.submit`, collected
with :meth:`BackgroundWorker.gather` after the ranker) and the ranker's member nets
(:meth:`BackgroundWorker.map`).

Sharing is work-claiming, so the second process can only help: every task is claimed from its
job's shared counter by whichever process is free first; the job is sent to the worker only when it
has said it is idle (so the main process never waits on a busy worker's pipe), and a task the
worker claimed but could not finish (it died) runs in the main process. Tasks are seeded by
their index, so who runs one does not change its result.

Spawned, not forked: a fork of a process whose torch/OpenMP thread pools are running can
deadlock. A plain process and pipes rather than a pool: a pool's terminate can hang while its
worker starts, and a pool waits forever for a worker that died.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MIN_RATINGS = 20_000
"""Below this many ratings training takes seconds: a second process's start-up (importing torch
and Lightning) would cost more than it saves."""

_POLL_SECONDS = 1.0


def _call(fn: Callable[..., Any], args: tuple) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent, not die here
        return "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"


_SLOTS = 8
"""Jobs open at once (submitted and not yet gathered); ``claims`` holds [job, next task] per slot."""


def _slot(job: int) -> int:
    """Index of ``job``'s [job, next task] pair in ``claims``."""
    return 2 * (job % _SLOTS)


def _claim(claims: Any, job: int, n: int) -> int | None:
    """The next unclaimed task of ``job`` (its slot of ``claims``), or None."""
    s = _slot(job)
    with claims.get_lock():
        if claims[s] != job or claims[s + 1] >= n:
            return None
        i = int(claims[s + 1])
        claims[s + 1] = i + 1
        return i


def _worker_main(inbox: Any, outbox: Any, claims: Any, first: tuple[Callable[..., Any], tuple] | None) -> None:
    """Child process: the first job, then shared jobs until the parent closes the pipe."""
    import torch

    torch.set_num_threads(1)
    os.environ["MOVIEREC_PROGRESS"] = "0"  # one progress display: the parent's
    from movierec.core.logs import setup_logging

    setup_logging(child=True)  # the parent's console rules: Lightning and warnings only with -v, as DEBUG
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if first is not None:
        outbox.send(("first", *_call(*first)))
    outbox.send(("idle",))
    while True:
        try:
            msg = inbox.recv()
        except EOFError:
            return
        if msg is None:
            return
        job, fn, payload, n = msg
        while (i := _claim(claims, job, n)) is not None:
            outbox.send(("task", job, i, *_call(fn, (payload, i))))
        outbox.send(("idle",))


class BackgroundWorker:
    """A spawned process that runs ``first`` (``(fn, args)``, picklable) and then helps with
    :meth:`map`. :meth:`close` stops it; the pipeline closes it when training ends or fails."""

    def __init__(self, first: tuple[Callable[..., Any], tuple] | None = None, name: str = "movierec-worker") -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._from_child, child_out = ctx.Pipe(duplex=False)
        child_in, self._to_child = ctx.Pipe(duplex=False)
        self._claims = ctx.Array("q", [0] * (2 * _SLOTS))
        self._proc = ctx.Process(target=_worker_main, args=(child_in, child_out, self._claims, first), name=name, daemon=True)
        self._proc.start()
        child_out.close()  # the parent keeps only its own ends, so a dead child reads as EOF
        child_in.close()
        self._has_first = first is not None
        self._first: tuple[str, Any] | None = None
        self._idle = False
        self._dead = False
        self._job = 0
        self._jobs: dict[int, tuple[Callable[[Any, int], Any], Any, int]] = {}  # submitted, not gathered
        self._unsent: list[int] = []  # jobs not yet sent to the worker, oldest first
        self._main_job: int | None = None  # the job the main process is claiming tasks of
        self._done: dict[tuple[int, int], tuple[str, Any]] = {}
        self.last_shared: list[int] = []
        """Tasks of the last :meth:`gather` (or :meth:`map`) that the worker ran."""

    @staticmethod
    def worthwhile(n_ratings: int, single_process: bool) -> bool:
        """Whether a second process pays: a spare core, one training process, enough data."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return single_process and cores >= 2 and n_ratings >= MIN_RATINGS

    # ---- messages from the child ----
    def _pump(self, timeout: float | None) -> bool:
        """Read one message if one comes within ``timeout`` seconds (None: wait); False if none."""
        if self._dead:
            return False
        try:
            if timeout is not None and not self._from_child.poll(timeout):
                if not self._proc.is_alive() and not self._from_child.poll(0):
                    self._dead = True
                return False
            msg = self._from_child.recv()
        except (EOFError, OSError):
            self._dead = True
            return False
        if msg[0] == "first":
            self._first = (msg[1], msg[2])
        elif msg[0] == "idle":
            self._idle = True
        else:
            _, job, i, status, value = msg
            self._done[(job, i)] = (status, value)
        return True

    def first_result(self, what: str = "background job") -> Any:
        """The first job's return value (waiting for it); its error is raised here."""
        if not self._has_first:
            raise RuntimeError("this worker was started without a first job")
        while self._first is None and not self._dead:
            self._pump(_POLL_SECONDS)
        if self._first is None:
            self._proc.join(timeout=10)
            raise RuntimeError(f"{what}: the background training process died (exit code {self._proc.exitcode})")
        status, value = self._first
        if status != "ok":
            raise RuntimeError(f"{what}: background training failed: {value}")
        return value

    def submit(self, fn: Callable[[Any, int], Any], payload: Any, n: int = 1) -> int:
        """Open a job of ``n`` tasks ``fn(payload, i)`` and return its number for :meth:`gather`.

        ``fn`` must be a module-level function and ``payload`` picklable. The worker takes the
        job's tasks once it is free (the main process notices that whenever it waits on or shares
        work with the worker); tasks nobody took by :meth:`gather` run in the main process there.
        """
        job = self._open(fn, payload, n)
        self._dispatch()
        return job

    def _open(self, fn: Callable[[Any, int], Any], payload: Any, n: int) -> int:
        if len(self._jobs) >= _SLOTS:
            raise RuntimeError(f"at most {_SLOTS} background jobs may be open at once")
        self._job += 1
        job = self._job
        s = _slot(job)
        with self._claims.get_lock():
            self._claims[s], self._claims[s + 1] = job, 0
        self._jobs[job] = (fn, payload, n)
        self._unsent.append(job)
        return job

    def claimed(self, job: int) -> int:
        """How many of open job ``job``'s tasks either process has claimed so far."""
        return int(self._claims[_slot(job) + 1])

    def _dispatch(self) -> None:
        """Read the worker's messages; if it is idle, send it the oldest job with tasks to spare
        (two unclaimed ones for the job the main process is claiming from, else one)."""
        while self._pump(0):
            pass
        if not self._idle or self._dead:
            return
        for job in self._unsent:
            _, _, n = self._jobs[job]
            if n - self.claimed(job) >= (2 if job == self._main_job else 1):
                try:
                    self._to_child.send((job, *self._jobs[job]))
                    self._idle = False
                except (BrokenPipeError, OSError):
                    self._dead = True
                self._unsent.remove(job)
                return

    def gather(self, job: int) -> list[Any]:
        """The results of :meth:`submit`'s job ``job`` in task order: the main process runs the
        tasks nobody has claimed yet (still handing the worker other jobs when it gets free),
        then waits for the ones the worker took; a task the worker claimed but could not finish
        (it died) runs here."""
        fn, payload, n = self._jobs[job]
        results: dict[int, Any] = {}
        self.last_shared = []
        self._main_job = job
        try:
            while True:
                self._dispatch()
                i = _claim(self._claims, job, n)
                if i is None:
                    break
                results[i] = fn(payload, i)
        finally:
            self._main_job = None
        if job in self._unsent:
            self._unsent.remove(job)
        for i in range(n):
            while i not in results and (job, i) not in self._done and not self._dead:
                self._pump(_POLL_SECONDS)
            if i in results:
                continue
            if (job, i) not in self._done:  # claimed by a worker that died: do it here
                log.warning("background worker died; task %d runs in the main process", i)
                results[i] = fn(payload, i)
                continue
            status, value = self._done.pop((job, i))
            if status != "ok":
                raise RuntimeError(f"background worker: task {i} failed: {value}")
            results[i] = value
            self.last_shared.append(i)
        del self._jobs[job]
        return [results[i] for i in range(n)]

    def map(self, fn: Callable[[Any, int], Any], payload: Any, n: int) -> list[Any]:
        """``[fn(payload, i) for i in range(n)]``, the tasks shared with the worker when it is free
        (:meth:`submit` then :meth:`gather`; the worker is sent this job only while at least two
        of its tasks are unclaimed, so the main process never waits for the last one)."""
        return self.gather(self._open(fn, payload, n))

    def close(self) -> None:
        try:
            self._to_child.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(timeout=0.5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc.join(timeout=10)
        self._to_child.close()
        self._from_child.close()
