"""Tampered bundles, on a real trained bundle, through every door a bundle comes in by:
``load_bundle``, ``HybridRecommender.load`` and the server's ``POST /admin/reload``.

``tests/core/test_artifacts.py`` covers the manifest checks on a toy bundle. Here the attacker
is stronger: besides editing files, they may rewrite the manifest's checksums to match (the
manifest is not signed; checksums catch corruption and careless edits). Against that attacker
the guarantee is that loading never *executes* anything from the bundle: a planted pickle whose
``__reduce__`` would create a marker file is refused and the marker never appears.
"""

from __future__ import annotations

import hashlib
import os
import json
import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from movierec.core.artifacts import FORMAT_VERSION, MANIFEST, BundleError
from recommender import HybridRecommender
from serving.app import create_app
from serving.settings import Settings
from tests.reliability.conftest import API_KEY, copy_bundle

MARKER_NAME = "pwned-marker"


class _Planted:
    """Unpickling this creates a file: proof that code from the bundle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def rehash(bundle: Path, name: str) -> None:
    """What a deliberate attacker does: make the manifest agree with the edited file."""
    m = json.loads((bundle / MANIFEST).read_text())
    m["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / MANIFEST).write_text(json.dumps(m))


def _flip_byte(bundle: Path, name: str) -> None:
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / name).write_bytes(bytes(data))


def _truncate(bundle: Path, name: str) -> None:
    data = (bundle / name).read_bytes()
    (bundle / name).write_bytes(data[: len(data) // 2])


def _manifest(bundle: Path, **changes: object) -> None:
    m = json.loads((bundle / MANIFEST).read_text())
    for key, value in changes.items():
        if key == "extra_file":
            m["files"][str(value)] = "0" * 64
        else:
            m[key] = value
    (bundle / MANIFEST).write_text(json.dumps(m))


def _plant_npy_pickle(bundle: Path, name: str, marker: Path) -> None:
    np.save(bundle / name, np.array([_Planted(marker)], dtype=object), allow_pickle=True)


def _plant_raw_pickle(bundle: Path, name: str, marker: Path) -> None:
    (bundle / name).write_bytes(pickle.dumps(_Planted(marker)))


def _plant_torch_pickle(bundle: Path, name: str, marker: Path) -> None:
    torch.save({"weight": _Planted(marker)}, bundle / name)  # a pickle-based .pt where safetensors belongs


# (id, how to break the bundle, rehash the manifest afterwards?, expected message fragment)
CASES: list[tuple[str, Callable[[Path, Path], None], str | None, str]] = [
    ("changed-weights", lambda b, m: _flip_byte(b, "ranking/net.safetensors"), None, "checksum mismatch for 'ranking/net.safetensors'"),
    ("truncated-faiss", lambda b, m: _truncate(b, "retrieval/index.faiss"), None, "checksum mismatch for 'retrieval/index.faiss'"),
    ("truncated-faiss-rehashed", lambda b, m: _truncate(b, "retrieval/index.faiss"), "retrieval/index.faiss", "index.faiss"),
    ("other-format-version", lambda b, m: _manifest(b, format_version=FORMAT_VERSION + 1), None, "format version"),
    ("format-version-as-text", lambda b, m: _manifest(b, format_version=str(FORMAT_VERSION)), None, "format version"),
    ("path-traversal", lambda b, m: _manifest(b, extra_file="../../etc/passwd"), None, "illegal file name"),
    ("npy-pickle", lambda b, m: _plant_npy_pickle(b, "retrieval/item_vectors.npy", m), "retrieval/item_vectors.npy", "not a plain array"),
    ("raw-pickle-as-npy", lambda b, m: _plant_raw_pickle(b, "item_counts.npy", m), "item_counts.npy", "item_counts.npy"),
    ("torch-pickle-as-safetensors", lambda b, m: _plant_torch_pickle(b, "retrieval/item_tower.safetensors", m), "retrieval/item_tower.safetensors", "item_tower.safetensors"),
]


def _break(bundle_path: Path, dst: Path, case: tuple[str, Callable[[Path, Path], None], str | None, str], marker: Path) -> Path:
    _, breaker, rehash_name, _ = case
    copy_bundle(bundle_path, dst)
    breaker(dst, marker)
    if rehash_name is not None:
        rehash(dst, rehash_name)
    return dst


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_tampered_bundle_is_refused_by_the_recommender(tmp_path: Path, bundle_path: Path, case) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / MARKER_NAME
    bad = _break(bundle_path, tmp_path / "bad", case, marker)
    with pytest.raises((BundleError, ValueError)) as info:
        HybridRecommender.load(bad)
    assert case[3] in str(info.value), f"unclear message: {info.value}"
    assert str(bad) in str(info.value) or "illegal file name" in str(info.value), f"message must name the bundle: {info.value}"
    assert not marker.exists(), "loading the bundle executed code planted in it"


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory: pytest.TempPathFactory, bundle_path: Path) -> Iterator[tuple[TestClient, Path]]:
    """A server over a directory of bundles (newest is served), starting on a good one."""
    root = tmp_path_factory.mktemp("served")
    copy_bundle(bundle_path, root / "good", version="good-v1")
    with TestClient(create_app(Settings(model=root, api_key=API_KEY))) as c:
        yield c, root


RELOAD_CASES = [c for c in CASES if c[0] in ("changed-weights", "truncated-faiss-rehashed", "path-traversal", "npy-pickle", "torch-pickle-as-safetensors")]


@pytest.mark.parametrize("case", RELOAD_CASES, ids=[c[0] for c in RELOAD_CASES])
def test_tampered_bundle_is_refused_by_reload_and_the_old_model_keeps_serving(
    served_dir: tuple[TestClient, Path], bundle_path: Path, case  # type: ignore[no-untyped-def]
) -> None:
    client, root = served_dir
    marker = root.parent / f"{MARKER_NAME}-{case[0]}"
    time.sleep(0.01)  # a strictly newer manifest mtime: the tampered bundle is the one picked
    bad = _break(bundle_path, root / f"bad-{case[0]}", case, marker)
    os.utime(bad / MANIFEST)  # copytree keeps the old mtime; the tampered bundle must be the newest
    try:
        r = client.post("/admin/reload", headers={"X-API-Key": API_KEY})
        assert r.status_code == 409, r.text
        assert "refused" in r.json()["detail"] and case[3] in r.json()["detail"]
        assert client.get("/ready").json()["model_version"] == "good-v1"
        recs = client.get("/users/1/recommendations", params={"k": 5})
        assert recs.status_code == 200 and recs.json()["model_version"] == "good-v1" and len(recs.json()["items"]) == 5
        assert not marker.exists(), "reloading executed code planted in the bundle"
    finally:
        import shutil

        shutil.rmtree(bad)
