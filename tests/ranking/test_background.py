"""The second training process: it runs its first job, then shares the ranker's tasks only when
it is free, and what it computes is what the main process would have computed."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from ranking.background import BackgroundWorker


def _slow_square(payload: tuple[float, int], i: int) -> tuple[int, int]:
    delay, _ = payload
    time.sleep(delay)
    return i * i, os.getpid()


def _sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "first done"


def _fail_in_child(parent: int, i: int) -> int:
    if os.getpid() != parent:
        raise ValueError(f"task {i} refused")
    time.sleep(0.3)
    return i


def _die_in_child(parent: int, i: int) -> int:
    if os.getpid() != parent:
        os._exit(3)
    time.sleep(0.3)
    return i


@pytest.fixture(scope="module")
def idle_worker():
    worker = BackgroundWorker((_sleep, (0.0,)))
    assert worker.first_result() == "first done"  # started and idle
    yield worker
    worker.close()


def test_an_idle_worker_shares_the_tasks_and_the_results_keep_their_order(idle_worker: BackgroundWorker) -> None:
    out = idle_worker.map(_slow_square, (0.4, os.getpid()), 6)
    assert [v for v, _ in out] == [i * i for i in range(6)]
    pids = {pid for _, pid in out}
    assert os.getpid() in pids and len(pids) == 2, "both processes should have run tasks"
    assert idle_worker.last_shared == [i for i, (_, pid) in enumerate(out) if pid != os.getpid()]
    again = idle_worker.map(_slow_square, (0.0, os.getpid()), 3)  # a second job on the same worker
    assert [v for v, _ in again] == [0, 1, 4]


def test_a_busy_worker_is_not_waited_for() -> None:
    worker = BackgroundWorker((_sleep, (30.0,)))
    try:
        t = time.perf_counter()
        out = worker.map(_slow_square, (0.05, os.getpid()), 4)
        assert time.perf_counter() - t < 10
        assert [v for v, _ in out] == [0, 1, 4, 9]
        assert {pid for _, pid in out} == {os.getpid()}
    finally:
        worker.close()
    assert not worker._proc.is_alive()


def test_a_submitted_job_runs_in_the_free_worker_while_the_main_process_shares_another(idle_worker: BackgroundWorker) -> None:
    job = idle_worker.submit(_slow_square, (3.0, os.getpid()))
    out = idle_worker.map(_slow_square, (0.2, os.getpid()), 4)  # the worker is busy with the first job meanwhile
    assert [v for v, _ in out] == [0, 1, 4, 9]
    assert {pid for _, pid in out} == {os.getpid()}, "the worker was busy with the submitted job"
    (value, pid), = idle_worker.gather(job)
    assert value == 0 and pid != os.getpid() and idle_worker.last_shared == [0]


def test_a_submitted_job_the_busy_worker_never_took_runs_in_the_main_process() -> None:
    worker = BackgroundWorker((_sleep, (30.0,)))
    try:
        job = worker.submit(_slow_square, (0.0, os.getpid()), 2)
        t = time.perf_counter()
        assert worker.gather(job) == [(0, os.getpid()), (1, os.getpid())]
        assert time.perf_counter() - t < 10 and worker.last_shared == []
    finally:
        worker.close()


def test_a_task_failing_in_the_worker_raises_its_error(idle_worker: BackgroundWorker) -> None:
    with pytest.raises(RuntimeError, match="refused"):
        idle_worker.map(_fail_in_child, os.getpid(), 6)


def test_tasks_of_a_worker_that_died_run_in_the_main_process() -> None:
    worker = BackgroundWorker((_sleep, (0.0,)))
    try:
        worker.first_result()
        out = worker.map(_die_in_child, os.getpid(), 6)
        assert not worker._proc.is_alive(), "the worker should have taken a task (and died)"
    finally:
        worker.close()
    assert out == list(range(6))


def test_the_first_jobs_error_and_a_dead_worker_are_reported() -> None:
    worker = BackgroundWorker((_fail_in_child, (os.getpid(), 7)))
    try:
        with pytest.raises(RuntimeError, match="task 7 refused"):
            worker.first_result("demo job")
    finally:
        worker.close()
    worker = BackgroundWorker((os._exit, (5,)))
    try:
        with pytest.raises(RuntimeError, match="died"):
            worker.first_result("demo job")
    finally:
        worker.close()


def test_ranker_members_trained_with_a_worker_equal_the_sequential_ones(idle_worker: BackgroundWorker) -> None:
    import torch

    from movierec.core.config import RankingConfig, TrainerConfig
    from ranking.ensemble import fit_guarded
    from tests.ranking.test_guard import _planted

    lists, x = _planted(300, 30, 5, signal_in_noise=1.0, seed=0)
    config = RankingConfig(hidden=[16], epochs=3, patience=2, batch_size=32, refit_rating_head=False, ensemble=3)
    hparams = dict(n_dense=x.shape[2], n_users=len(lists.users), n_items=x.shape[1], emb_dim=0, hidden=[16], cross_layers=0,
                   dropout=0.1, rating_center=3.0, rating_scale=2.0, lr=3e-3, weight_decay=0.0, rating_weight=0.0,
                   id_dropout=0.0, base_column=-1)
    alone, curve_alone, _ = fit_guarded(x, lists, hparams, 0, config, TrainerConfig(progress=False), seed=1)
    shared, curve_shared, _ = fit_guarded(x, lists, hparams, 0, config, TrainerConfig(progress=False), seed=1, worker=idle_worker)
    assert curve_alone == curve_shared and alone.alpha == shared.alpha
    args = (torch.from_numpy(x), torch.from_numpy(lists.users), torch.from_numpy(lists.cand))
    assert np.array_equal(alone.score(*args).numpy(), shared.score(*args).numpy())
