"""The artifact bundle: atomic write, sha256 manifest verified on load, no pickle, and every way a
bundle can be broken refused with a clear BundleError."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from movierec.core.artifacts import FORMAT_VERSION, MANIFEST, BundleError, BundleWriter, load_bundle


def make_bundle(target: Path, scale: float = 1.0) -> Path:
    with BundleWriter(target, model_version="v1") as w:
        w.meta.update({"config": {"seed": 42}, "metrics": {"recall@10": 0.25}, "dataset": "abc"})
        w.save_array("item_vectors.npy", np.arange(12, dtype=np.float32).reshape(4, 3) * scale)
        w.save_json("id_maps.json", {"items": [1, 2, 3, 4]})
        w.save_frame("items.parquet", pd.DataFrame({"item_id": [1, 2], "title": ["A", "B"]}))
        w.save_tensors("ranker.safetensors", {"w": torch.ones(2, 2) * scale})
        w.file("faiss/items.index").write_bytes(b"\x00index-bytes")
    return target


def residue(parent: Path, name: str) -> list[str]:
    """Hidden temp or backup folders a writer may leave beside the bundle."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def rewrite_manifest(path: Path, **changes: object) -> None:
    m = json.loads((path / MANIFEST).read_text())
    m.update(changes)
    (path / MANIFEST).write_text(json.dumps(m))


def test_round_trip(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "model")
    b = load_bundle(path)
    assert b.model_version == "v1" and b.manifest["format_version"] == FORMAT_VERSION
    assert b.manifest["metrics"] == {"recall@10": 0.25} and b.manifest["config"] == {"seed": 42}
    np.testing.assert_array_equal(b.array("item_vectors.npy"), np.arange(12, dtype=np.float32).reshape(4, 3))
    assert b.json("id_maps.json") == {"items": [1, 2, 3, 4]}
    assert b.frame("items.parquet")["title"].tolist() == ["A", "B"]
    assert torch.equal(b.tensors("ranker.safetensors")["w"], torch.ones(2, 2))
    assert b.file("faiss/items.index").read_bytes() == b"\x00index-bytes"
    assert set(b.manifest["files"]) == {
        "item_vectors.npy", "id_maps.json", "items.parquet", "ranker.safetensors", "faiss/items.index"
    }
    assert residue(tmp_path, "model") == []
    with pytest.raises(BundleError, match="no file 'nope.npy'"):
        b.file("nope.npy")


def test_tampered_file_refused(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "model")
    data = bytearray((path / "id_maps.json").read_bytes())
    data[-2] = ord("9") if data[-2] != ord("9") else ord("8")
    (path / "id_maps.json").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch for 'id_maps.json'"):
        load_bundle(path)
    assert load_bundle(path, verify=False).has("id_maps.json")  # explicit opt-out still opens


def test_truncated_file_refused(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "model")
    f = path / "item_vectors.npy"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(BundleError, match="checksum mismatch for 'item_vectors.npy'.*modified or truncated"):
        load_bundle(path)


def test_missing_listed_file_refused(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "model")
    (path / "faiss" / "items.index").unlink()
    with pytest.raises(BundleError, match="'faiss/items.index' listed in the manifest is missing"):
        load_bundle(path)


def test_missing_or_broken_manifest(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "model")
    (path / MANIFEST).unlink()
    with pytest.raises(BundleError, match="not a movierec bundle"):
        load_bundle(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(path)
    (path / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION}))
    with pytest.raises(BundleError, match="no file list"):
        load_bundle(path)
    with pytest.raises(BundleError, match="not a movierec bundle"):
        load_bundle(tmp_path / "nowhere")


def test_other_format_version_refused(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "model")
    rewrite_manifest(path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(BundleError, match=f"format version {FORMAT_VERSION + 1} is not supported"):
        load_bundle(path)


@pytest.mark.parametrize("name", ["../outside.json", "/etc/passwd", "a/../../outside.json", "..\\x.json"])
def test_path_traversal_name_in_manifest_refused(tmp_path: Path, name: str) -> None:
    path = make_bundle(tmp_path / "model")
    (tmp_path / "outside.json").write_text("{}")
    m = json.loads((path / MANIFEST).read_text())
    m["files"][name] = "0" * 64
    (path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="illegal file name"):
        load_bundle(path)


def test_symlink_out_of_the_bundle_refused(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "model")
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (path / "id_maps.json").unlink()
    os.symlink(secret, path / "id_maps.json")
    with pytest.raises(BundleError, match="illegal file name"):
        load_bundle(path)


def test_pickled_object_array_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="object arrays cannot be stored"):
        with BundleWriter(tmp_path / "w") as w:
            w.save_array("obj.npy", np.array([{"a": 1}], dtype=object))
    # a hand-made bundle whose .npy holds a pickle, with a correct checksum, still never unpickles
    with BundleWriter(tmp_path / "model") as w:
        np.save(w.file("evil.npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    b = load_bundle(tmp_path / "model")
    with pytest.raises(BundleError, match="not a plain array"):
        b.array("evil.npy")


def test_writer_error_keeps_previous_bundle_and_no_temp_dir(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "model", scale=1.0)
    before = (path / MANIFEST).read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with BundleWriter(path, model_version="v2") as w:
            w.save_array("item_vectors.npy", np.zeros((4, 3), dtype=np.float32))
            raise RuntimeError("boom")
    assert (path / MANIFEST).read_bytes() == before and load_bundle(path).model_version == "v1"
    assert residue(tmp_path, "model") == []


@pytest.mark.parametrize("swap", ["exchange", "two-renames"])
def test_failed_commit_keeps_previous_bundle_and_no_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str
) -> None:
    import movierec.core.artifacts as artifacts

    path = make_bundle(tmp_path / "model", scale=1.0)
    real_replace = os.replace

    def flaky_replace(src: str | Path, dst: str | Path) -> None:
        if Path(src).name.startswith(".model.tmp-"):  # the final rename of the new bundle
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    def flaky_exchange(a: Path, b: Path) -> bool:
        raise OSError(28, "No space left on device")

    if swap == "exchange":  # renameat2(RENAME_EXCHANGE) fails
        monkeypatch.setattr(artifacts, "_exchange", flaky_exchange)
    else:  # no renameat2 here: the fallback's second rename fails
        monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
        monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="No space left"):
        with BundleWriter(path, model_version="v2") as w:
            w.save_json("id_maps.json", {"items": []})
    monkeypatch.undo()
    assert load_bundle(path).model_version == "v1"
    assert residue(tmp_path, "model") == []


def test_replacing_a_bundle_swaps_it_whole(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "model", scale=1.0)
    make_bundle(path, scale=2.0)
    b = load_bundle(path)
    assert b.array("item_vectors.npy")[1, 0] == 6.0 and residue(tmp_path, "model") == []


def test_writer_refuses_unsafe_names(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="illegal file name"):
        with BundleWriter(tmp_path / "model") as w:
            w.save_json("../escape.json", {})
    with pytest.raises(BundleError, match="illegal file name"):
        with BundleWriter(tmp_path / "model") as w:
            w.save_json(MANIFEST, {})
    assert not (tmp_path / "escape.json").exists() and residue(tmp_path, "model") == []


def test_out_through_a_link_replaces_the_bundle_it_points_to(tmp_path: Path) -> None:
    """The ``current`` link pattern: writing through the link replaces the bundle behind it
    atomically; the link stays a link to it and nothing temporary is left beside either."""
    m1 = make_bundle(tmp_path / "m1", scale=1.0)
    (tmp_path / "current").symlink_to("m1")
    with BundleWriter(tmp_path / "current", model_version="v2") as w:
        w.save_array("item_vectors.npy", np.full((2, 2), 7.0, dtype=np.float32))
    assert (tmp_path / "current").is_symlink() and os.readlink(tmp_path / "current") == "m1"
    b = load_bundle(m1)
    assert b.model_version == "v2" and b.array("item_vectors.npy")[0, 0] == 7.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "m1"]
    assert load_bundle(tmp_path / "current").model_version == "v2"


def test_a_folder_swap_through_a_link_replaces_what_it_points_to(tmp_path: Path) -> None:
    """``replace_directory`` (sharded candidates) through a link: the folder behind it gets the
    new content, the link stays, nothing else is left."""
    from movierec.core.artifacts import replace_directory

    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "part-0.parquet").write_text("old")
    (tmp_path / "current").symlink_to("parts")
    new = tmp_path / ".current.new"
    new.mkdir()
    (new / "part-0.parquet").write_text("new")
    replace_directory(new, tmp_path / "current")
    assert os.readlink(tmp_path / "current") == "parts" and (tmp_path / "parts" / "part-0.parquet").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "parts"]


def test_a_link_to_nothing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "current").symlink_to("gone")
    with pytest.raises(BundleError, match="link to nothing"):
        BundleWriter(tmp_path / "current")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_of_a_bundle_gets_the_umask_modes(tmp_path: Path, umask: int) -> None:
    """The manifest, the folder and every other file: the same modes, from the user's umask (a
    private manifest in a shared folder made the bundle unloadable for another serving user)."""
    old = os.umask(umask)
    try:
        path = make_bundle(tmp_path / "model")
    finally:
        os.umask(old)
    files = {p.stat().st_mode & 0o777 for p in [path / MANIFEST, *path.rglob("*")] if p.is_file()}
    dirs = {p.stat().st_mode & 0o777 for p in [path, *path.rglob("*")] if p.is_dir()}
    assert files == {0o666 & ~umask} and dirs == {0o777 & ~umask}
