"""A second training process on the machine's second core.

``movierec train`` runs its stages one after another in one process with one torch thread each
(two threads per process collapse when another process holds a core). The second core takes the
rating model first (it needs nothing from the other stages), then whatever the ranker shares
with it (:meth:`BackgroundWorker.map`: its cross-fitted member nets) once it is free.

Sharing is work-claiming, so the second process can only help: every task is claimed from one
shared counter by whichever process is free first; the job is sent to the worker only when it
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
and Lightning, ~5 s of CPU) would cost more than it saves."""

_POLL_SECONDS = 1.0


def _call(fn: Callable[..., Any], args: tuple) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent, not die here
        return "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"


def _claim(claims: Any, job: int, n: int) -> int | None:
    """The next unclaimed task of ``job`` (``claims`` = shared [job, next task]), or None."""
    with claims.get_lock():
        if claims[0] != job or claims[1] >= n:
            return None
        i = int(claims[1])
        claims[1] = i + 1
        return i


def _worker_main(inbox: Any, outbox: Any, claims: Any, first: tuple[Callable[..., Any], tuple] | None) -> None:
    """Child process: the first job, then shared jobs until the parent closes the pipe."""
    import torch

    torch.set_num_threads(1)
    os.environ["MOVIEREC_PROGRESS"] = "0"  # one progress display: the parent's
    from movierec.logs import setup_logging

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
        self._claims = ctx.Array("q", [0, 0])
        self._proc = ctx.Process(target=_worker_main, args=(child_in, child_out, self._claims, first), name=name, daemon=True)
        self._proc.start()
        child_out.close()  # the parent keeps only its own ends, so a dead child reads as EOF
        child_in.close()
        self._has_first = first is not None
        self._first: tuple[str, Any] | None = None
        self._idle = False
        self._dead = False
        self._job = 0
        self._done: dict[tuple[int, int], tuple[str, Any]] = {}
        self.last_shared: list[int] = []
        """Tasks of the last :meth:`map` that the worker ran."""

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

    def map(self, fn: Callable[[Any, int], Any], payload: Any, n: int) -> list[Any]:
        """``[fn(payload, i) for i in range(n)]``, the tasks shared with the worker when it is free.

        ``fn`` must be a module-level function and ``payload`` picklable. The job goes to the
        worker only while it is idle and at least two tasks are unclaimed; the main process
        claims tasks meanwhile, then waits for the ones the worker took.
        """
        self._job += 1
        job = self._job
        with self._claims.get_lock():
            self._claims[0], self._claims[1] = job, 0
        results: dict[int, Any] = {}
        self.last_shared = []
        sent = False
        while True:
            while not sent and self._pump(0):
                pass
            if not sent and self._idle and not self._dead and n - int(self._claims[1]) >= 2:
                try:
                    self._to_child.send((job, fn, payload, n))
                    sent, self._idle = True, False
                except (BrokenPipeError, OSError):
                    self._dead = True
            i = _claim(self._claims, job, n)
            if i is None:
                break
            results[i] = fn(payload, i)
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
        return [results[i] for i in range(n)]

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
