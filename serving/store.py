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
import pandas as pd

from movierec.artifacts import MANIFEST, BundleError
from movierec.data import to_plain
from recommender import HybridRecommender
from recommender.state import read_feedback

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
    # ratings of histories changed by live feedback, aligned with the user's current history row
    # (the bundle's hist_ratings stays as trained; its rows no longer line up for those users)
    _feedback_ratings: dict[int, np.ndarray | None] = field(default_factory=dict, repr=False)
    _feedback_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _trained_indptr: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._trained_indptr = self.recommender.retrieval.histories.indptr.copy()

    @property
    def model_version(self) -> str:
        return self.recommender.model_version

    def user_history(self, u: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(item_idx, ratings or None) of user row ``u``, read consistently with live feedback.

        The bundle's ``hist_ratings`` is laid out by the histories *as trained*
        (``_trained_indptr``); feedback rewrites the live histories, so rows are looked up by
        the trained layout and users changed since then by their own aligned copy.
        """
        with self._feedback_lock:
            hist = self.recommender.retrieval.histories
            items = hist.of(u) if 0 <= u < hist.n_users else np.zeros(0, np.int64)
            if u in self._feedback_ratings:
                return items, self._feedback_ratings[u]
            indptr = self._trained_indptr
            if self.hist_ratings is None or indptr is None or not 0 <= u < len(indptr) - 1:
                return items, None
            ratings = self.hist_ratings[indptr[u] : indptr[u + 1]]
            return items, ratings if len(ratings) == len(items) else None

    def replay(self, feedback: pd.DataFrame, since: float = 0.0) -> int:
        """Apply logged ratings newer than ``since`` (unix seconds), user by user in log order.

        Lines this bundle cannot apply (a movie it lacks, a user id of the wrong type) are
        skipped with a warning: the log outlives bundles. Returns the ratings applied.
        """
        rows = feedback[feedback["timestamp"] >= int(since)] if len(feedback) else feedback
        applied = 0
        for user_id, group in rows.groupby("user_id", sort=False):
            keep = []
            for item_id in group["item_id"]:
                try:
                    self.recommender.item_idx(item_id)
                    keep.append(True)
                except KeyError:
                    keep.append(False)
            group = group[keep]
            if group.empty:
                continue
            try:
                self.record_feedback(to_plain(user_id), [to_plain(i) for i in group["item_id"]], group["rating"].tolist())
            except (ValueError, KeyError) as e:
                log.warning("feedback for user %r not replayed on %s: %s", user_id, self.path, e)
                continue
            applied += len(group)
        if applied:
            log.info("replayed %d logged ratings newer than the bundle onto %s", applied, self.path)
        return applied

    def record_feedback(self, user_id: Any, item_ids: list[Any], ratings: list[float]) -> dict[str, Any]:
        """Apply ratings to the in-memory model (``HybridRecommender.record_ratings``) and keep
        the per-entry ratings of that user's history aligned, for "you rated 5" explanations."""
        with self._feedback_lock:
            u_before = None
            try:
                u_before = self.recommender.user_idx(user_id)
            except KeyError:
                pass
            old_ratings = self.user_history(u_before)[1] if u_before is not None else np.zeros(0, np.float32)
            out = self.recommender.record_ratings(user_id, item_ids, ratings)
            kept = out["kept"]
            if old_ratings is not None and len(old_ratings) == len(kept):
                self._feedback_ratings[out["user_idx"]] = np.concatenate([old_ratings[kept], out["ratings"]])
            else:
                self._feedback_ratings[out["user_idx"]] = None
            return out

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

    def __init__(self, source: Path | None, feedback_log: Path | None = None) -> None:
        self.source = Path(source) if source is not None else None
        self.feedback_log = Path(feedback_log) if feedback_log is not None else None
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
                model = self._load(path)
            except (BundleError, ValueError, KeyError, OSError, RuntimeError) as e:
                log.error("reload refused, still serving %s: %s", previous_version, e)
                raise ReloadError(f"bundle {path} refused: {e}") from e
            self.swap(model)
            self.reloads += 1
            log.info("now serving %s (was %s)", model.model_version, previous_version)
            return ReloadResult("reloaded", model.model_version, previous_version, path)

    def _load(self, path: Path) -> ServedModel:
        """Load a bundle and re-apply the live feedback logged after it was trained.

        Without this, ratings acknowledged by ``POST /users/{id}/ratings`` would stop counting
        at the next restart, reload or rollback until a retraining folded them in; a bundle
        trained with ``--feedback`` already contains the older lines, so only lines newer than
        its ``created`` time are replayed.
        """
        model = ServedModel.load(path)
        if self.feedback_log is not None and self.feedback_log.is_file():
            model.replay(read_feedback(self.feedback_log), since=_created_ts(path))
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


def _created_ts(path: Path) -> float:
    """Unix time of a bundle's manifest ``created`` (its manifest mtime when unparseable)."""
    import datetime as dt

    created = _manifest_created(path)
    try:
        return dt.datetime.strptime(created or "", "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return (path / MANIFEST).stat().st_mtime


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
