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
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from movierec.artifacts import MANIFEST, BundleError
from recommender import HybridRecommender

log = logging.getLogger(__name__)


class NotReadyError(RuntimeError):
    """No bundle is loaded yet (HTTP 503)."""


class ReloadError(RuntimeError):
    """A reload was refused (no bundle found, or the newest one failed verification); the
    model that was serving keeps serving."""


@dataclass
class ServedModel:
    """One loaded bundle plus what serving keeps beside the recommender.

    Attributes:
        recommender: the serve-time model (catalogue, query path, live state).
        path: bundle directory it was loaded from.
        loaded_at: unix time of the load.
    """

    recommender: HybridRecommender
    path: Path
    loaded_at: float = field(default_factory=time.time)
    _records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _records_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model_version(self) -> str:
        return self.recommender.model_version

    def user_history(self, u: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(item_idx, ratings or None) of user row ``u``, live feedback included."""
        return self.recommender.user_history(u)

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
        log.info("loaded bundle %s (version %s) in %.2fs", path, rec.model_version, time.perf_counter() - t0)
        return cls(rec, Path(path))


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

    PIN = "served_bundle"
    """State key of a rollback's bundle: start-up serves it again until a reload moves on."""

    def __init__(self, source: Path | None, state: Any | None = None) -> None:
        self.source = Path(source) if source is not None else None
        self.state = state  # recommender.state.StateStore: live ratings and movies to replay
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

    def start(self) -> ReloadResult:
        """Serve at start-up: the bundle a rollback chose (kept in the online state, so a
        rollback survives a restart), else the newest bundle that loads; every bundle skipped
        on the way is logged with the reason.

        Raises:
            ReloadError: no bundle under :attr:`source` loads.
        """
        if self.source is None:
            raise ReloadError("no model directory configured (set MOVIEREC_MODEL or --model)")
        with self._reload_lock:
            found = bundles_newest_first(self.source)
            if not found:
                raise ReloadError(f"{self.source}: no bundle (a directory with {MANIFEST}) found")
            pinned = self.state.get_meta(self.PIN) if self.state is not None else None
            if pinned:
                chosen = [p for p in found if p.name == pinned]
                if chosen:
                    found = chosen + [p for p in found if p not in chosen]
                    log.warning("serving %s, chosen by a rollback (POST /admin/reload returns to the newest)", chosen[0])
                else:
                    log.warning("the rolled-back-to bundle %s is gone; serving the newest", pinned)
            errors = []
            for path in found:
                try:
                    model = self._load(path)
                except (BundleError, ValueError, KeyError, OSError, RuntimeError) as e:
                    log.error("skipped bundle %s at start-up: %s", path, e)
                    errors.append(f"{path}: {e}")
                    continue
                self.swap(model)
                self.reloads += 1
                log.info("now serving %s from %s", model.model_version, path)
                return ReloadResult("reloaded", model.model_version, None, path)
            raise ReloadError("no bundle loads; " + "; ".join(errors))

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
                model = self._load(path)
            except (BundleError, ValueError, KeyError, OSError, RuntimeError) as e:
                log.error("reload refused, still serving %s: %s", previous_version, e)
                raise ReloadError(f"bundle {path} refused: {e}") from e
            self.swap(model)
            self.reloads += 1
            if self.state is not None:
                self.state.set_meta(self.PIN, None)  # a reload returns to the newest for good
            log.info("now serving %s (was %s)", model.model_version, previous_version)
            return ReloadResult("reloaded", model.model_version, previous_version, path)

    def _load(self, path: Path) -> ServedModel:
        """Load a bundle and apply the online state recorded after it was trained.

        Without this, ratings and movies acknowledged by the API would stop counting at the
        next restart, reload or rollback; a bundle trained with the state folded in records
        the sequence number it read up to, and only the events after it are applied.
        """
        model = ServedModel.load(path)
        if self.state is not None:
            t0 = time.perf_counter()
            n = model.recommender.catch_up(self.state)
            if n:
                log.info("applied %d online-state events to %s in %.2fs", n, path, time.perf_counter() - t0)
        return model

    # ---- versions and rollback -------------------------------------------------------------------
    def versions(self) -> list[BundleVersion]:
        """Bundles available under :attr:`source`, newest first, the served one marked active.

        A single-bundle source lists just that bundle (``movierec train --out`` replaces it in
        place, so there is nothing older on disk to go back to).
        """
        if self.source is None:
            return []
        current = self._current
        active = current.path.resolve() if current is not None else None
        return [
            BundleVersion(
                _manifest_version(p) or "?", p, _manifest_created(p), active is not None and p.resolve() == active
            )
            for p in bundles_newest_first(self.source)
        ]

    def rollback(self) -> ReloadResult:
        """Serve the bundle just older than the served one, swapped in as one object.

        The previous bundle is loaded and verified completely before the single swap, so the
        two-tower model, its index, the content index and the ranker change together; if it
        fails verification nothing changes. ``POST /admin/reload`` later returns to the newest.

        Raises:
            ReloadError: no model served, no older bundle, or the older bundle was refused.
        """
        if self.source is None:
            raise ReloadError("no model directory configured (set MOVIEREC_MODEL or --model)")
        with self._reload_lock:
            current = self._current
            if current is None:
                raise ReloadError("no bundle is being served, nothing to roll back from")
            found = bundles_newest_first(self.source)
            served = [i for i, p in enumerate(found) if p.resolve() == current.path.resolve()]
            if not served or served[0] + 1 >= len(found):
                raise ReloadError(f"no bundle older than {current.model_version} under {self.source}")
            path = found[served[0] + 1]
            try:
                model = self._load(path)
            except (BundleError, ValueError, KeyError, OSError, RuntimeError) as e:
                log.error("rollback refused, still serving %s: %s", current.model_version, e)
                raise ReloadError(f"bundle {path} refused: {e}") from e
            self.swap(model)
            self.reloads += 1
            if self.state is not None:
                self.state.set_meta(self.PIN, path.name)  # survives a restart
            log.warning("rolled back from %s to %s (%s)", current.model_version, model.model_version, path)
            return ReloadResult("rolled_back", model.model_version, current.model_version, path)

    def prune(self, keep: int) -> list[Path]:
        """Delete bundles beyond the newest ``keep`` under a directory of bundles.

        The served bundle is never deleted (after a rollback it may be older than the cut).
        Only directories with a manifest are touched; a single-bundle source is left alone.

        Returns:
            The deleted paths.
        """
        if self.source is None or (self.source / MANIFEST).is_file() or keep < 1:
            return []
        current = self._current
        active = current.path.resolve() if current is not None else None
        removed = []
        for p in bundles_newest_first(self.source)[keep:]:
            if p.resolve() == active:
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            log.info("pruned old bundle %s (keeping the newest %d)", p, keep)
        return removed


@dataclass
class BundleVersion:
    """One bundle under the serving directory (``GET /admin/versions``)."""

    version: str
    path: Path
    created: str | None
    active: bool


def _manifest_created(path: Path) -> str | None:
    try:
        value = json.loads((path / MANIFEST).read_text()).get("created")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value is not None else None


def bundles_newest_first(source: Path) -> list[Path]:
    """Every bundle under ``source``, newest first, in the order :func:`newest_bundle` uses."""
    source = Path(source)
    if (source / MANIFEST).is_file():
        return [source]
    if not source.is_dir():
        return []
    found = [p for p in source.iterdir() if not p.name.startswith(".") and p.is_dir() and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: ((p / MANIFEST).stat().st_mtime_ns, p.name), reverse=True)
