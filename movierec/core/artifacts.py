"""The artifact bundle: one directory per trained model, written atomically, verified on load.

Layout: ``manifest.json`` plus plain files (``.npy`` without pickle, ``.json``, ``.parquet``,
``.safetensors``, FAISS index files). The manifest records the format version, model version,
creation time, dataset fingerprint, config, metrics and the sha256 of every file. Loading checks
every hash before anything is used and never executes code from the bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete, tampered with or of another format version."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _safe_name(name: str) -> str:
    """Reject names that could escape the bundle directory."""
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or name in ("", ".", MANIFEST) or "\\" in name:
        raise BundleError(f"illegal file name in bundle: {name!r}")
    return name


def _new_file(directory: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new file under a unique name, created with the mode every other file gets (the user's
    umask; ``mkstemp`` would make it private, unlike the files written beside it)."""
    while True:
        path = directory / f"{prefix}{uuid.uuid4().hex[:12]}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue


def _new_dir(directory: Path, prefix: str) -> Path:
    """A new folder under a unique name, with the user's umask (not ``mkdtemp``'s 0700)."""
    while True:
        path = directory / f"{prefix}{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir(mode=0o777)
            return path
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file through a temp file in the same directory, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a directory that claims to be a movierec bundle (a manifest of ours)."""
    mpath = Path(path) / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(manifest, dict) and "format_version" in manifest and isinstance(manifest.get("files"), dict)


def bundle_target(target: str | Path) -> Path:
    """Where a bundle written to ``target`` goes: through a symbolic link, the bundle it points
    to (the deployment pattern of a ``current`` link: ``train --out current`` replaces that
    bundle atomically and the link keeps pointing at it). Swapping the link itself for a folder
    would instead delete the old bundle's files through it and leave the link behind.

    Raises:
        BundleError: ``target`` is a link to nothing (or a loop).
    """
    target = Path(target)
    if not target.is_symlink():
        return target
    try:
        return target.resolve(strict=True)
    except (OSError, RuntimeError):
        raise BundleError(f"{target} is a symbolic link to nothing ({os.readlink(target)}); refusing to write a bundle through it") from None


def check_replaceable(target: str | Path) -> None:
    """Refuse to write a bundle over anything that is not one: a bundle writer replaces its
    target whole, and a folder of someone's own files must never be deleted by a training run.

    Raises:
        BundleError: ``target`` exists and is a file, or a non-empty folder that is not a bundle.
    """
    target = bundle_target(target)
    if not target.exists():
        return
    if not target.is_dir():
        raise BundleError(f"{target} exists and is not a movierec bundle (a file); refusing to replace it")
    if is_bundle(target) or not any(target.iterdir()):
        return
    raise BundleError(
        f"{target} exists and is not a movierec bundle (no {MANIFEST} of ours); refusing to replace it, choose another --out"
    )


def replace_directory(new: Path, target: Path) -> None:
    """Put the directory ``new`` at ``target``, atomically when the kernel allows it.

    With ``renameat2(RENAME_EXCHANGE)`` the target is the old content or the new one at every
    instant, even under SIGKILL; the old content then sits at ``new`` and is removed. Without
    it, two renames: a kill between them leaves the old content under a hidden ``.old-*`` name
    beside the target. Through a symbolic link, the folder it points to is replaced and the
    link stays (:func:`bundle_target`).
    """
    target = bundle_target(target)
    if target.exists() and _exchange(new, target):
        _fsync_dir(target.parent)
        _discard_bundle(new)
        return
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    _fsync_dir(target.parent)
    if old is not None:
        _discard_bundle(old)


class BundleWriter:
    """Collects a bundle's files in a hidden temp directory beside the target.

    Use as a context manager; on a clean exit the manifest is written and the directory is
    renamed into place (an existing bundle at the target is replaced only then). On an error
    the temp directory is removed and any previous bundle is untouched.
    """

    def __init__(self, target: str | Path, model_version: str | None = None) -> None:
        self.target = bundle_target(target)
        check_replaceable(self.target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        # every file of the bundle, this folder and the manifest included, gets the user's umask
        self.path = _new_dir(self.target.parent, f".{self.target.name}.tmp-")
        self.model_version = model_version or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.meta: dict[str, Any] = {}

    def file(self, name: str) -> Path:
        """Path for a file the caller writes itself (e.g. a FAISS index)."""
        p = self.path / _safe_name(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def save_array(self, name: str, array: np.ndarray) -> None:
        arr = np.asarray(array)
        if arr.dtype == object:
            raise BundleError(f"{name}: object arrays cannot be stored without pickle")
        np.save(self.file(name), arr, allow_pickle=False)

    def save_json(self, name: str, obj: Any) -> None:
        self.file(name).write_text(json.dumps(obj, indent=1, default=_json_default))

    def save_frame(self, name: str, frame: pd.DataFrame) -> None:
        frame.to_parquet(self.file(name), index=False)

    def save_tensors(self, name: str, tensors: Mapping[str, Any]) -> None:
        from safetensors.torch import save

        # written by us: safetensors' own save_file creates the file private, unlike the others
        self.file(name).write_bytes(save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))

    def commit(self) -> Path:
        files = sorted(
            str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file()
        )
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_version": self.model_version,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.meta,
            "files": {name: _sha256(self.path / name) for name in files},
        }
        atomic_write_bytes(self.path / MANIFEST, json.dumps(manifest, indent=1, default=_json_default).encode())
        _fsync_dir(self.path)
        check_replaceable(self.target)  # again: something may have appeared there while training
        if self.target.exists() and _exchange(self.path, self.target):
            # one atomic syscall: the target is the old bundle or the new one at every instant,
            # even if the process is SIGKILLed; the old bundle now sits in our hidden temp dir
            _fsync_dir(self.target.parent)
            _discard_bundle(self.path)
            return self.target
        old = None
        if self.target.exists():
            # fallback without renameat2: a kill between these two renames leaves the previous
            # bundle under the hidden ".<name>.old-*" name (recoverable by hand, never served)
            old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.target, old)
        try:
            os.replace(self.path, self.target)
        except BaseException:
            if old is not None:  # put the previous bundle back rather than leave no bundle
                os.replace(old, self.target)
            raise
        _fsync_dir(self.target.parent)
        if old is not None:
            _discard_bundle(old)
        return self.target

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()  # a failed commit must not leave the temp directory behind
            raise


class Bundle:
    """A verified, read-only bundle. Construct with :func:`load_bundle`."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest

    @property
    def model_version(self) -> str:
        return str(self.manifest.get("model_version", "unknown"))

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: bundle has no file {name!r}")
        return self.path / name

    def array(self, name: str) -> np.ndarray:
        try:
            return np.load(self.file(name), allow_pickle=False)
        except ValueError as e:  # pickled object arrays are refused by allow_pickle=False
            raise BundleError(f"{self.path / name}: not a plain array ({e})") from e

    def json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    def frame(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.file(name))

    def tensors(self, name: str) -> dict[str, Any]:
        """Tensors from a safetensors file (a plain header plus raw bytes: nothing is unpickled)."""
        from safetensors.torch import load_file

        path = self.file(name)
        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError derives from Exception only; callers expect BundleError
            raise BundleError(f"{path}: not a valid safetensors file ({e})") from e

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, version={self.model_version})"


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Open a bundle after checking its manifest, format version and every file's sha256."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{path}: not a movierec bundle (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath}: manifest is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{mpath}: manifest has no file list")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: bundle format version {version!r} is not supported (expected {FORMAT_VERSION})"
        )
    root = path.resolve()
    for name, digest in manifest["files"].items():
        _safe_name(name)
        fpath = (path / name).resolve()
        if root not in fpath.parents:
            raise BundleError(f"illegal file name in bundle: {name!r}")
        if not fpath.is_file():
            raise BundleError(f"{path}: file {name!r} listed in the manifest is missing")
        if verify and _sha256(fpath) != digest:
            raise BundleError(f"{path}: checksum mismatch for {name!r}; the bundle was modified or truncated")
    return Bundle(path, manifest)


def _discard_bundle(path: Path) -> None:
    """Remove a replaced bundle, manifest first: a kill halfway through the removal then leaves
    a directory that does not claim to be a bundle, never a manifest over missing files."""
    (path / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``.

    Replacing a non-empty directory with ``os.replace`` is impossible, so without this a bundle
    swap takes two renames and a SIGKILL between them leaves *no* bundle at the target. Returns
    False when the call is unavailable (not Linux, old libc, a filesystem without support) so
    the caller falls back to the two-rename swap; any other failure raises ``OSError``.
    """
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
