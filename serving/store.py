"""The loaded bundle behind the HTTP service, and hot swapping it.

Each request takes one reference to the :class:`ServedModel` that is current when it starts
(:meth:`ModelStore.get`) and uses only that object until it answers. A reload builds the new
model completely (checksums verified, shapes checked) *before* the single attribute assignment
that publishes it, so requests already running finish on the old model, new requests see the
new one, and a broken bundle never replaces a working one. The old model is freed when the last
request holding it returns.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from movierec.artifacts import MANIFEST, BundleError
from ranking.blend import HybridRecommender

log = logging.getLogger(__name__)


class NotReadyError(RuntimeError):
    """No bundle is loaded yet (HTTP 503)."""


class ReloadError(RuntimeError):
    """A reload was refused (no bundle found, or the newest one failed verification); the
    model that was serving keeps serving."""


@dataclass
class ServedModel:
    """One loaded bundle plus the per-bundle extras serving needs beside the recommender.

    Attributes:
        recommender: the runtime model (retrieval, content, ranker, catalogue).
        path: bundle directory it was loaded from.
        hist_ratings: rating of each entry of the training histories, aligned with
            ``recommender.retrieval.histories.items`` (for "you rated 5" explanations); None when
            the bundle does not carry it.
        loaded_at: unix time of the load.
    """

    recommender: HybridRecommender
    path: Path
    hist_ratings: np.ndarray | None = None
    loaded_at: float = field(default_factory=time.time)
    _records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _records_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model_version(self) -> str:
        return self.recommender.model_version

    def records(self, idx: np.ndarray, scores: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Like ``HybridRecommender.item_records`` but from plain dicts built once per item.

        ``item_records`` reads rows through pandas (~0.15 ms each), which dominated a request's
        time; the catalogue only ever grows (``add_item`` appends), so new rows are appended
        to the cache the first time they are asked for.
        """
        rec = self.recommender
        if len(self._records) < rec.n_items:
            with self._records_lock:
                start = len(self._records)
                if start < rec.n_items:
                    self._records.extend(rec.item_records(np.arange(start, rec.n_items)))
        out = []
        for j, i in enumerate(np.asarray(idx).tolist()):
            if i < 0:
                continue
            base = self._records[i]
            item = {**base, "genres": list(base["genres"])}
            if scores is not None:
                item["score"] = float(scores[j])
            out.append(item)
        return out

    @classmethod
    def load(cls, path: Path) -> "ServedModel":
        """Load and verify one bundle; raises :class:`BundleError` for a bad one."""
        t0 = time.perf_counter()
        rec = HybridRecommender.load(path)
        ratings = None
        if rec.bundle.has("hist_ratings.npy"):
            ratings = rec.bundle.array("hist_ratings.npy").astype(np.float32)
            if len(ratings) != len(rec.retrieval.histories.items):
                log.warning("%s: hist_ratings.npy does not match the histories; explanations omit ratings", path)
                ratings = None
        log.info("loaded bundle %s (version %s) in %.2fs", path, rec.model_version, time.perf_counter() - t0)
        return cls(rec, Path(path), ratings)


def _manifest_version(path: Path) -> str | None:
    try:
        return str(json.loads((path / MANIFEST).read_text()).get("model_version"))
    except (OSError, ValueError, AttributeError):
        return None


def newest_bundle(source: Path) -> Path:
    """The bundle to serve from ``source``.

    ``source`` is either a bundle itself (it has a manifest; ``movierec train --out`` replaces it
    in place, so "newest" is whatever is there now) or a directory of bundles, of which the one
    with the most recently written manifest wins. Hidden entries are skipped: they are the
    temporary directories of a bundle still being written.

    Raises:
        ReloadError: nothing that looks like a bundle is there.
    """
    source = Path(source)
    if (source / MANIFEST).is_file():
        return source
    if not source.is_dir():
        raise ReloadError(f"{source}: no such bundle or directory")
    found = [
        p for p in source.iterdir() if not p.name.startswith(".") and p.is_dir() and (p / MANIFEST).is_file()
    ]
    if not found:
        raise ReloadError(f"{source}: no bundle (a directory with {MANIFEST}) found")
    return max(found, key=lambda p: ((p / MANIFEST).stat().st_mtime_ns, p.name))


@dataclass
class ReloadResult:
    """What a reload did."""

    status: str  # "reloaded" or "unchanged"
    model_version: str
    previous_version: str | None
    path: Path


class ModelStore:
    """Holds the current :class:`ServedModel`; swaps it atomically on reload.

    Args:
        source: a bundle directory or a directory of bundles (see :func:`newest_bundle`).
    """

    def __init__(self, source: Path | None) -> None:
        self.source = Path(source) if source is not None else None
        self._current: ServedModel | None = None
        self._reload_lock = threading.Lock()  # one reload at a time; reads never wait on it
        self.reloads = 0

    @property
    def ready(self) -> bool:
        return self._current is not None

    def get(self) -> ServedModel:
        """The model for one request: keep this reference until the request is answered."""
        current = self._current
        if current is None:
            raise NotReadyError("no model bundle is loaded yet")
        return current

    def swap(self, model: ServedModel) -> ServedModel | None:
        """Publish ``model``; returns the one it replaced (still usable by its holders)."""
        previous, self._current = self._current, model
        return previous

    def reload(self, force: bool = False) -> ReloadResult:
        """Load the newest bundle under :attr:`source` and swap it in.

        The current model is left in place when the newest bundle is the one already served
        (same path and model version) unless ``force``, and whenever loading fails.

        Raises:
            ReloadError: no source configured, no bundle found, or the bundle was refused.
        """
        if self.source is None:
            raise ReloadError("no model directory configured (set MOVIEREC_MODEL or --model)")
        with self._reload_lock:
            path = newest_bundle(self.source)
            current = self._current
            previous_version = current.model_version if current is not None else None
            if (
                not force
                and current is not None
                and current.path.resolve() == path.resolve()
                and _manifest_version(path) == previous_version
            ):
                return ReloadResult("unchanged", previous_version, previous_version, path)
            try:
                model = ServedModel.load(path)
            except (BundleError, ValueError, KeyError, OSError, RuntimeError) as e:
                log.error("reload refused, still serving %s: %s", previous_version, e)
                raise ReloadError(f"bundle {path} refused: {e}") from e
            self.swap(model)
            self.reloads += 1
            log.info("now serving %s (was %s)", model.model_version, previous_version)
            return ReloadResult("reloaded", model.model_version, previous_version, path)
