"""Admin actions reach the whole service: real ``movierec serve`` processes, ``--workers 2`` and a
second server on the same online state (and the same serving directory), on SQLite and on
PostgreSQL. After a rollback or a reload through any one worker, fresh connections to ``/ready``
on every worker of every server report the chosen version; a restart serves the last choice;
pruning never deletes a bundle that a worker serves. Servers listen on 127.0.0.1 only; every
loop is bounded in count and time."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import KEY, server
from tests.serving.conftest import copy_bundle, three_bundles  # noqa: F401  (fixture)

ADMIN = {"X-API-Key": KEY}
FRESH = 30
BOUND_S = 2.0
"""Seconds after an admin answer within which every fresh connection reports the chosen version
(docs/reliability.md: the answer waits for the live workers, so this is slack, not a wait)."""


def _state_env(backend: str) -> dict[str, str]:
    if backend == "sqlite":
        return {}
    from tests.reliability.test_state_store import _postgres_url

    return {"MOVIEREC_STATE_URL": _postgres_url()}  # skips with the reason when there is none


def _fresh_versions(base: str, n: int = FRESH) -> list[str | None]:
    """``model_version`` from ``/ready`` over ``n`` new connections (the kernel picks the worker)."""
    out: list[str | None] = []
    for _ in range(n):
        with httpx.Client(timeout=10) as c:
            r = c.get(f"{base}/ready")
            out.append(r.json().get("model_version") if r.status_code == 200 else None)
    return out


def _converges(bases: list[str], version: str, bound: float = BOUND_S) -> tuple[bool, float, dict[str, list[str | None]]]:
    """Whether ``FRESH`` of ``FRESH`` fresh connections to each server report ``version`` within
    ``bound`` seconds; with the time it took and the last round seen."""
    t0 = time.monotonic()
    seen: dict[str, list[str | None]] = {}
    while True:
        seen = {b: _fresh_versions(b) for b in bases}
        if all(v == [version] * FRESH for v in seen.values()):
            return True, time.monotonic() - t0, seen
        if time.monotonic() - t0 > bound:
            return False, time.monotonic() - t0, seen


def _summary(seen: dict[str, list[str | None]]) -> dict[str, dict[str | None, int]]:
    return {b: {v: vs.count(v) for v in set(vs)} for b, vs in seen.items()}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_rollback_and_reload_reach_every_worker_of_every_server_and_a_restart_keeps_the_choice(
    three_bundles: Path, bundle_path: Path, tmp_path: Path, backend: str
) -> None:
    env = _state_env(backend)
    state = tmp_path / "state"
    with server(three_bundles, state, workers=2, **env) as (a, _), server(three_bundles, state, **env) as (b, _):
        ok, took, seen = _converges([a, b], "v3")
        assert ok, f"before any admin action: {_summary(seen)}"
        r = httpx.post(f"{a}/admin/rollback", headers=ADMIN, timeout=60)
        assert r.status_code == 200 and r.json()["model_version"] == "v2", r.text
        ok, took, seen = _converges([a, b], "v2")
        assert ok, f"rollback through one worker: {_summary(seen)} after {took:.1f}s"
        assert r.json()["pending"] == [] and len(r.json()["workers"]) == 3, r.text  # the answer names who serves it

        copy_bundle(bundle_path, three_bundles / "b4", version="v4")  # a newer bundle dropped in
        r = httpx.post(f"{b}/admin/reload", headers=ADMIN, timeout=60)  # through the other server this time
        assert r.status_code == 200 and r.json()["model_version"] == "v4", r.text
        ok, took, seen = _converges([a, b], "v4")
        assert ok, f"reload through the second server: {_summary(seen)} after {took:.1f}s"
        assert r.json()["pending"] == [], r.text
        versions = httpx.get(f"{a}/admin/versions", headers=ADMIN, timeout=30).json()["versions"]
        assert [(v["version"], v["chosen"], len(v["workers"])) for v in versions][0] == ("v4", True, 3)

    time.sleep(0.01)
    copy_bundle(bundle_path, three_bundles / "b5", version="v5")  # newer, but nobody chose it
    with server(three_bundles, state, workers=2, **env) as (a, _):
        ok, took, seen = _converges([a], "v4")
        assert ok, f"a restart serves the last choice: {_summary(seen)}"
        r = httpx.post(f"{a}/admin/rollback", headers=ADMIN, timeout=60)
        assert r.status_code == 200 and r.json()["model_version"] == "v3", r.text
    with server(three_bundles, state, workers=2, **env) as (a, _):
        ok, took, seen = _converges([a], "v3")
        assert ok, f"a restart after a rollback: {_summary(seen)}"


def test_prune_never_deletes_a_bundle_another_worker_serves(three_bundles: Path, bundle_path: Path, tmp_path: Path) -> None:
    """Server B is frozen (SIGSTOP) while it serves v1; a reload through server A with
    ``MOVIEREC_KEEP_BUNDLES=2`` prunes, but not B's bundle; thawed, B follows to the new one."""
    state = tmp_path / "state"
    env = {"MOVIEREC_KEEP_BUNDLES": "2", "MOVIEREC_CONVERGE_TIMEOUT": "2"}
    with server(three_bundles, state, **env) as (a, _), server(three_bundles, state, **env) as (b, proc_b):
        for expected in ("v2", "v1"):
            r = httpx.post(f"{b}/admin/rollback", headers=ADMIN, timeout=60)
            assert r.status_code == 200 and r.json()["model_version"] == expected, r.text
        copy_bundle(bundle_path, three_bundles / "b4", version="v4")
        os.killpg(proc_b.pid, signal.SIGSTOP)
        try:
            r = httpx.post(f"{a}/admin/reload", headers=ADMIN, timeout=60)
            assert r.status_code == 200 and r.json()["model_version"] == "v4", r.text
            on_disk = sorted(p.name for p in three_bundles.iterdir())
        finally:
            os.killpg(proc_b.pid, signal.SIGCONT)
        assert "b1" in on_disk, f"the bundle server B serves was pruned: {on_disk}"
        assert "b2" not in on_disk and {"b3", "b4"} <= set(on_disk), on_disk  # the rest pruned as usual
        ok, took, seen = _converges([a, b], "v4", bound=BOUND_S + 3)  # B's watcher runs again once thawed
        assert ok, f"after SIGCONT: {_summary(seen)} after {took:.1f}s"
        assert [w["bundle"] for w in r.json()["pending"]] == ["b1"], r.text  # the answer said who had not followed
