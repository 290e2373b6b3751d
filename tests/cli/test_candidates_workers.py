"""``movierec candidates`` on several cores: one file equal to one process's, parts on request,
the old file kept on failure, and the rule that picks the worker count."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import movierec.candidates as parallel
from movierec.candidates import PARALLEL_MIN_USERS, choose_workers, write_candidates_parallel

CHUNK = "16"  # 200 users: 13 chunks, so several workers each take a few


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str] | None, *args: str) -> tuple[int, dict | str]:
    """``movierec candidates ARGS --json`` in this process; (exit code, summary or stderr).
    Without ``capsys`` the summary is read from the ``--json`` output through a redirect."""
    import contextlib
    import io

    from movierec.cli import main

    monkeypatch.setenv("MOVIEREC_PROGRESS", "0")
    monkeypatch.setattr(sys, "argv", ["movierec", "candidates", *args, "--json"])
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    if capsys is not None:
        captured = capsys.readouterr()
        out, err = stdout.getvalue() + captured.out, stderr.getvalue() + captured.err
    else:
        out, err = stdout.getvalue(), stderr.getvalue()
    return code, json.loads(out[out.index("{"):]) if code == 0 else err


@pytest.fixture(scope="module")
def one_process(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: ``--workers 1`` (the plain one-process writer)."""
    out = tmp_path_factory.mktemp("one") / "c.parquet"
    mp = pytest.MonkeyPatch()
    try:
        code, summary = _run(mp, None, "--model", str(bundle_path), "--out", str(out), "--k", "7", "--chunk-size", CHUNK, "--workers", "1")
    finally:
        mp.undo()
    assert code == 0 and summary["workers"] == 1, summary
    return out


def _assert_same_file(got: Path, expected: Path) -> None:
    """Same schema, rows, order and values (scores to the bit) and the same row groups."""
    a, b = pq.ParquetFile(got), pq.ParquetFile(expected)
    assert a.schema_arrow.equals(b.schema_arrow)
    assert a.read().equals(b.read())
    assert a.num_row_groups == b.num_row_groups


def test_the_default_uses_the_cores_and_writes_one_file_equal_to_one_process(
    bundle_path: Path, one_process: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(parallel, "PARALLEL_MIN_USERS", {"ranked": 0, "retrieval": 0})  # 200 users count as a big job
    monkeypatch.setattr(parallel, "usable_cores", lambda: 3)
    out = tmp_path / "c.parquet"
    code, summary = _run(monkeypatch, capsys, "--model", str(bundle_path), "--out", str(out), "--k", "7", "--chunk-size", CHUNK)
    assert code == 0, summary
    assert summary["workers"] == 3 and summary["users"] == 200 and "parts" not in summary
    assert out.is_file()
    _assert_same_file(out, one_process)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.parquet"]  # no part folder or temp file left


@pytest.mark.parametrize("workers", ["2", "5"])
def test_explicit_workers_write_one_file_equal_to_one_process(
    workers: str, bundle_path: Path, one_process: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.parquet"
    out.write_bytes(one_process.read_bytes())  # an earlier output of ours is replaced
    code, summary = _run(monkeypatch, capsys, "--model", str(bundle_path), "--out", str(out), "--k", "7", "--chunk-size", CHUNK,
                         "--workers", workers)
    assert code == 0, summary
    assert summary["workers"] == int(workers)
    _assert_same_file(out, one_process)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.parquet"]


def test_parts_write_a_directory_that_reads_back_as_the_one_file(
    bundle_path: Path, one_process: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.dataset as ds

    out = tmp_path / "cands"
    code, summary = _run(monkeypatch, capsys, "--model", str(bundle_path), "--out", str(out), "--k", "7", "--chunk-size", CHUNK,
                         "--workers", "2", "--parts")
    assert code == 0, summary
    assert summary["parts"] == 2 and out.is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert ds.dataset(out).to_table().equals(pq.read_table(one_process))
    # a second run replaces the parts; a file target refuses a directory and the reverse
    code, _ = _run(monkeypatch, capsys, "--model", str(bundle_path), "--out", str(out), "--workers", "2", "--parts")
    assert code == 0
    code, err = _run(monkeypatch, capsys, "--model", str(bundle_path), "--out", str(out), "--workers", "2")
    assert code == 2 and "is a folder" in err
    code, err = _run(monkeypatch, capsys, "--model", str(bundle_path), "--out", str(one_process), "--parts")
    assert code == 2 and "not a directory" in err


def test_a_worker_failing_mid_way_leaves_the_old_file_and_no_leftovers(bundle_path: Path, one_process: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from recommender import HybridRecommender

    model = HybridRecommender.load(bundle_path)
    out = tmp_path / "c.parquet"
    out.write_bytes(one_process.read_bytes())
    old = out.read_bytes()
    real = HybridRecommender.recommend_batch
    last = {"user": None}

    def failing(self, users, k, rank=True, **kw):  # the last worker fails on its second chunk
        if last["user"] in users:
            raise RuntimeError("disk on fire")
        return real(self, users, k, rank=rank, **kw)

    users = list(range(200))
    last["user"] = users[-20]
    monkeypatch.setattr(HybridRecommender, "recommend_batch", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_candidates_parallel(model, users, out, 7, workers=3, chunk_size=16, show_progress=False)
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.parquet"]

    import retrieval.candidates as files  # the merge itself failing

    def broken_merge(parts, target):
        with files.atomic_candidates_file(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise OSError("no space left")

    monkeypatch.setattr(files, "merge_candidate_parts", broken_merge)
    monkeypatch.setattr(HybridRecommender, "recommend_batch", real)
    with pytest.raises(OSError, match="no space"):
        write_candidates_parallel(model, users, out, 7, workers=2, chunk_size=16, show_progress=False)
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.parquet"]


def test_auto_runs_one_process_for_small_jobs_and_one_per_core_for_large_ones() -> None:
    ranked, retrieval = PARALLEL_MIN_USERS["ranked"], PARALLEL_MIN_USERS["retrieval"]
    assert choose_workers(943, 2048, cores=8, fork=True) == 1  # ML-100K's users: one chunk
    assert choose_workers(ranked - 1, 16, cores=8, fork=True) == 1
    assert choose_workers(ranked, 16, cores=8, fork=True) == 8
    assert choose_workers(20_000, 2048, cores=2, fork=True) == 2
    assert choose_workers(20_000, 2048, cores=32, fork=True) == 10  # no more workers than chunks
    assert choose_workers(20_000, 2048, cores=1, fork=True) == 1
    assert choose_workers(20_000, 2048, cores=8, fork=False) == 1  # nowhere to fork from
    # retrieval order alone costs a fraction of a ranked user: it takes many more users
    assert choose_workers(20_000, 2048, rank=False, cores=2, fork=True) == 1
    assert choose_workers(retrieval, 2048, rank=False, cores=2, fork=True) == 2


def test_workers_option_is_auto_or_a_count(bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "many", "300"):
        code, err = _run(monkeypatch, capsys, "--model", str(bundle_path), "--out", str(tmp_path / "c.parquet"), "--workers", bad)
        assert code == 2 and "--workers" in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def _group(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid`` (zombies excluded)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_sigkill_during_a_parallel_run_leaves_the_old_file_and_no_workers(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL of ``movierec candidates --workers 2`` while its workers write: the old file stays
    byte for byte (or the whole new one is in place) and the workers end with it."""
    import time

    from tests.reliability.conftest import MOVIEREC, sigkill, start, wait_for

    whole = tmp_path / "whole.parquet"  # what a run that got to its end writes
    code, summary = _run(monkeypatch, None, "--model", str(bundle_path), "--out", str(whole), "--k", "20", "--chunk-size", "2",
                         "--workers", "1")
    assert code == 0, summary
    out = tmp_path / "c.parquet"
    pq.write_table(_tiny_candidates(), out)  # an earlier output of ours
    old = out.read_bytes()
    proc = start([str(MOVIEREC), "candidates", "--model", str(bundle_path), "--out", str(out), "--k", "20", "--chunk-size", "2",
                  "--workers", "2"])
    assert wait_for(lambda: any(p.is_dir() for p in tmp_path.glob(".c.parquet.*")) and len(_group(proc.pid)) >= 3, proc, 120)
    time.sleep(0.2)
    assert sigkill(proc), "the run ended before the kill"
    deadline = time.monotonic() + 10
    while _group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group(proc.pid) == []
    assert out.read_bytes() == old or pq.read_table(out).equals(pq.read_table(whole))


def _tiny_candidates():
    import pyarrow as pa

    return pa.table({"user_id": pa.array([0], pa.int64()), "item_id": pa.array([0], pa.int64()), "rank": pa.array([1], pa.int32()),
                     "score": pa.array([0.0], pa.float32())})
