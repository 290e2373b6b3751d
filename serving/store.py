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
import os
import secrets
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from movierec.core.artifacts import MANIFEST, BundleError
from recommender import HybridRecommender
from recommender.state import StateError

log = logging.getLogger(__name__)


LOAD_ERRORS = (BundleError, ValueError, KeyError, OSError, RuntimeError)
"""What loading a bundle raises for a bundle that cannot be served (damaged, incomplete, refused)."""


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

        ``item_records`` reads rows through pandas, which dominated a request's time; the
        catalogue only ever grows (``add_item`` appends), so new rows are appended to the cache
        the first time they are asked for.
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


def _manifest(path: Path) -> dict[str, Any] | None:
    """A bundle's manifest, or None when it cannot be read (being written, removed, damaged)."""
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _manifest_version(path: Path) -> str | None:
    manifest = _manifest(path)
    return str(manifest.get("model_version")) if manifest is not None else None


def _manifest_created(path: Path) -> str | None:
    value = (_manifest(path) or {}).get("created")
    return str(value) if value is not None else None


def bundles_newest_first(source: Path) -> list[Path]:
    """Every bundle under ``source``, newest first (see :func:`newest_bundle`)."""
    source = Path(source)
    if (source / MANIFEST).is_file():
        return [source]
    if not source.is_dir():
        return []
    found = [p for p in source.iterdir() if not p.name.startswith(".") and p.is_dir() and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: ((p / MANIFEST).stat().st_mtime_ns, p.name), reverse=True)


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
    found = bundles_newest_first(source)
    if found:
        return found[0]
    if not source.is_dir():
        raise ReloadError(f"{source}: no such bundle or directory")
    raise ReloadError(f"{source}: no bundle (a directory with {MANIFEST}) found")


@dataclass
class ReloadResult:
    """What a reload did."""

    status: str  # "reloaded", "unchanged" or "rolled_back"
    model_version: str
    previous_version: str | None
    path: Path
    generation: int | None = None  # of the choice recorded in the online state
    workers: list[dict[str, Any]] = field(default_factory=list)  # live workers serving it when answered
    pending: list[dict[str, Any]] = field(default_factory=list)  # live workers not serving it yet


def find_chosen(source: Path, choice: dict[str, Any]) -> Path | None:
    """The bundle under ``source`` that a recorded choice names: same folder name and version,
    else the same folder name (replaced in place since), else the same version under another
    name (another machine's layout); a single-bundle source is that bundle whatever it holds."""
    source = Path(source)
    if (source / MANIFEST).is_file():
        return source
    found = bundles_newest_first(source)
    name, version = choice.get("bundle"), choice.get("version")
    for match in (
        lambda p: p.name == name and _manifest_version(p) == version,
        lambda p: p.name == name,
        lambda p: _manifest_version(p) == version,
    ):
        hits = [p for p in found if match(p)]
        if hits:
            return hits[0]
    return None


_WORKER_TOKEN = secrets.token_hex(3)


class ModelStore:
    """Holds the current :class:`ServedModel`; swaps it atomically on reload.

    Every worker process, and every server sharing the online state, serves one bundle: the one
    recorded in the state as *chosen* (:meth:`recommender.state.StateStore.choose_bundle`).
    An admin action loads and verifies its bundle, records it with the next generation number,
    then swaps it in; the other workers' watchers (:mod:`serving.watcher`) see the generation
    change and follow (:meth:`follow`). Each worker records what it serves (:meth:`heartbeat`),
    so an admin action can wait for the others and pruning keeps what any of them serves.

    Args:
        source: a bundle directory or a directory of bundles (see :func:`newest_bundle`).
        state: the online state (None: this process alone, nothing shared).
        worker_expiry: seconds after its last heartbeat a worker counts as gone.
    """

    PIN = "served_bundle"
    """State key of a rollback's bundle as older versions recorded it (read at start-up when
    no choice is recorded)."""

    def __init__(self, source: Path | None, state: Any | None = None, worker_expiry: float = 10.0) -> None:
        self.source = Path(source) if source is not None else None
        self.state = state  # recommender.state.StateStore: live ratings and movies to replay
        self._current: ServedModel | None = None
        self._reload_lock = threading.Lock()  # one reload at a time; reads never wait on it
        self.reloads = 0
        self.generation = 0  # of the recorded choice this worker serves (0: none followed yet)
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{_WORKER_TOKEN}:{id(self):x}"
        self.worker_expiry = worker_expiry
        self._failed: tuple[int, float] | None = None  # (generation, when) of a choice that did not load

    @property
    def current(self) -> ServedModel | None:
        """The model served now, or None before the first load (requests use :meth:`get`)."""
        return self._current

    def get(self) -> ServedModel:
        """The model for one request: keep this reference until the request is answered."""
        current = self._current
        if current is None:
            raise NotReadyError("no model bundle is loaded yet")
        return current

    def swap(self, model: ServedModel) -> ServedModel | None:
        """Publish ``model``; returns the one it replaced (still usable by its holders)."""
        previous, self._current = self._current, model
        self.reloads += 1
        return previous

    def _source(self) -> Path:
        if self.source is None:
            raise ReloadError("no model directory configured (set MOVIEREC_MODEL or --model)")
        return self.source

    def _load_or_refuse(self, path: Path, what: str, still: str | None) -> ServedModel:
        """:meth:`_load` for an admin action: a bundle that does not load is refused, and the
        model serving keeps serving."""
        try:
            return self._load(path)
        except LOAD_ERRORS as e:
            log.error("%s refused, still serving %s: %s", what, still, e)
            raise ReloadError(f"bundle {path} refused: {e}") from e

    def _choice(self) -> dict[str, Any] | None:
        if self.state is None:
            return None
        try:
            choice = self.state.chosen_bundle()
            pinned = self.state.get_meta(self.PIN) if choice is None else None
        except StateError:
            raise
        except Exception as e:
            raise StateError(f"online state unreadable ({e.__class__.__name__}); retry later") from e
        if choice is None:
            # a rollback recorded before choices were
            if pinned:
                choice = {"generation": 0, "bundle": pinned, "version": None, "action": "rollback"}
        return choice

    def start(self) -> ReloadResult:
        """Serve at start-up what the service serves: the bundle last chosen (by a reload or a
        rollback, through any worker or server), else the newest bundle that loads, which
        then becomes the choice. Every bundle skipped on the way is logged with the reason.

        Raises:
            ReloadError: no bundle under :attr:`source` loads.
        """
        source = self._source()
        with self._reload_lock:
            found = bundles_newest_first(source)
            if not found:
                raise ReloadError(f"{source}: no bundle (a directory with {MANIFEST}) found")
            choice = self._choice()
            if choice is not None:
                chosen = find_chosen(self.source, choice)
                if chosen is not None:
                    if chosen != found[0]:
                        log.warning("serving %s, the bundle last chosen (by %s); POST /admin/reload serves the newest",
                                    chosen, choice.get("action"))
                    found = [chosen] + [p for p in found if p != chosen]
                else:
                    log.warning("the chosen bundle %s (%s) is not under %s; serving the newest that loads",
                                choice.get("bundle"), choice.get("version"), self.source)
            errors = []
            for path in found:
                try:
                    model = self._load(path)
                except LOAD_ERRORS as e:
                    log.error("skipped bundle %s at start-up: %s", path, e)
                    errors.append(f"{path}: {e}")
                    continue
                if self.state is not None:
                    if choice is None or choice.get("generation", 0) == 0:
                        # the first worker to start fixes what the service serves
                        choice = self.state.choose_bundle(path.name, model.model_version, "start", only_if_none=True)
                    same = find_chosen(self.source, choice)
                    # serving something else (the choice does not load here): the watcher retries it
                    self.generation = int(choice["generation"]) if same is not None and same == path else 0
                self.swap(model)
                log.info("now serving %s from %s", model.model_version, path)
                return ReloadResult("reloaded", model.model_version, None, path, self.generation or None)
            raise ReloadError("no bundle loads; " + "; ".join(errors))

    def _publish(self, model: ServedModel, action: str) -> int | None:
        """Record ``model``'s bundle as the service's choice, then swap it in here; returns the
        generation. Recording comes first: if the state cannot be written nothing changes."""
        generation = None
        if self.state is not None:
            try:
                choice = self.state.choose_bundle(model.path.name, model.model_version, action)
            except Exception as e:
                raise StateError(f"the choice of {model.path.name} could not be recorded in the online state ({e.__class__.__name__}); nothing changed") from e
            generation = self.generation = int(choice["generation"])
            self._failed = None
        self.swap(model)
        self.heartbeat()
        return generation

    def reload(self, force: bool = False) -> ReloadResult:
        """Load the newest bundle under :attr:`source`, record it as the service's choice, and
        swap it in; the other workers follow.

        Nothing changes when the newest bundle is the one already chosen and served (same path
        and model version) unless ``force``, and whenever loading fails.

        Raises:
            ReloadError: no source configured, no bundle found, or the bundle was refused.
            StateError: the choice could not be recorded (nothing changed).
        """
        source = self._source()
        with self._reload_lock:
            path = newest_bundle(source)
            current = self._current
            previous_version = current.model_version if current is not None else None
            choice = self._choice()
            chosen_here = choice is None or (
                choice.get("generation") == self.generation and choice.get("bundle") == path.name
            )
            if (
                not force
                and chosen_here
                and current is not None
                and current.path.resolve() == path.resolve()
                and _manifest_version(path) == previous_version
            ):
                return ReloadResult("unchanged", previous_version, previous_version, path, self.generation or None)
            model = self._load_or_refuse(path, "reload", previous_version)
            generation = self._publish(model, "reload_forced" if force else "reload")
            log.info("now serving %s (was %s)", model.model_version, previous_version)
            return ReloadResult("reloaded", model.model_version, previous_version, path, generation)

    def follow(self) -> bool:
        """Serve the bundle recorded as chosen when this worker does not yet (the watcher's
        step); True when it swapped. A choice that does not load here is logged and retried
        every :attr:`RETRY_S` seconds, the current model serving meanwhile."""
        choice = self._choice()
        if choice is None or int(choice.get("generation", 0)) == self.generation or self.source is None:
            return False
        generation = int(choice["generation"])
        if self._failed is not None and self._failed[0] == generation and time.monotonic() - self._failed[1] < self.RETRY_S:
            return False
        with self._reload_lock:
            choice = self._choice()  # again: an admin action here may have recorded a newer one meanwhile
            if choice is None or int(choice.get("generation", 0)) == self.generation:
                return False
            generation = int(choice["generation"])
            path = find_chosen(self.source, choice)
            current = self._current
            try:
                if path is None:
                    raise ReloadError(f"no bundle {choice.get('bundle')} ({choice.get('version')}) under {self.source}")
                if (
                    current is not None and choice.get("action") != "reload_forced"
                    and current.path.resolve() == path.resolve() and current.model_version == _manifest_version(path)
                ):
                    model = None  # already serving it
                else:
                    model = self._load(path)
            except LOAD_ERRORS as e:  # ReloadError included
                if self._failed is None or self._failed[0] != generation:
                    log.error("cannot serve the chosen bundle %s (%s), still serving %s: %s", choice.get("bundle"),
                              choice.get("version"), current.model_version if current else None, e)
                self._failed = (generation, time.monotonic())
                return False
            self._failed = None
            self.generation = generation
            if model is not None:
                self.swap(model)
                log.info("now serving %s from %s, chosen by a %s elsewhere in the service", model.model_version, path,
                         choice.get("action"))
        self.heartbeat()
        return model is not None

    RETRY_S = 5.0

    def heartbeat(self) -> None:
        """Record in the state what this worker serves (best effort: a failed heartbeat only
        makes this worker look gone to the others after :attr:`worker_expiry`)."""
        if self.state is None:
            return
        current = self._current
        try:
            self.state.heartbeat(
                self.worker, current.path.name if current else None, str(current.path.resolve()) if current else None,
                current.model_version if current else None, self.generation,
            )
        except Exception as e:
            log.warning("heartbeat to the online state failed: %s", e)

    def forget(self) -> None:
        """Remove this worker's record (on shutdown)."""
        if self.state is not None:
            try:
                self.state.forget_worker(self.worker)
            except Exception as e:
                log.warning("could not remove this worker's record from the online state: %s", e)

    def live_workers(self) -> list[dict[str, Any]]:
        return self.state.live_workers(self.worker_expiry) if self.state is not None else []

    def wait_for_workers(self, result: ReloadResult, timeout: float, poll: float = 0.05) -> ReloadResult:
        """Wait up to ``timeout`` seconds until every live worker serves ``result``'s choice;
        fills in ``result.workers`` and ``result.pending``."""
        if self.state is None or result.generation is None:
            return result
        deadline = time.monotonic() + timeout
        while True:
            try:
                rows = self.live_workers()
            except Exception as e:
                log.warning("cannot read the workers' records: %s", e)
                rows = []
            done = [r for r in rows if int(r["generation"]) >= result.generation]
            pending = [r for r in rows if int(r["generation"]) < result.generation]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(poll)
        def brief(r: dict[str, Any]) -> dict[str, Any]:
            return {"worker": r["worker"], "model_version": r["version"], "bundle": r["bundle"]}

        result.workers = [brief(r) for r in done]
        result.pending = [brief(r) for r in pending]
        if pending:
            log.warning("%d worker(s) not yet serving %s after %.1fs: %s", len(pending), result.model_version, timeout,
                        ", ".join(r["worker"] for r in pending))
        return result

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
        """Bundles available under :attr:`source`, newest first, the served one marked active,
        the chosen one marked chosen, with the live workers serving each.

        A single-bundle source lists just that bundle (``movierec train --out`` replaces it in
        place, so there is nothing older on disk to go back to).
        """
        if self.source is None:
            return []
        current = self._current
        active = current.path.resolve() if current is not None else None
        try:
            choice = self._choice()
            rows = self.live_workers()
        except Exception as e:  # the list of bundles on disk is still worth answering
            log.warning("versions without the online state's records: %s", e)
            choice, rows = None, []
        chosen = find_chosen(self.source, choice) if choice is not None else None
        return [
            BundleVersion(
                _manifest_version(p) or "?", p, _manifest_created(p), active is not None and p.resolve() == active,
                chosen is not None and p == chosen,
                sorted(r["worker"] for r in rows if r["bundle"] == p.name and r["version"] == _manifest_version(p)),
            )
            for p in bundles_newest_first(self.source)
        ]

    def rollback(self) -> ReloadResult:
        """Serve the bundle just older than the chosen one, recorded as the service's choice
        and swapped in as one object; the other workers follow.

        The previous bundle is loaded and verified completely before the single swap, so the
        two-tower model, its index, the content index and the ranker change together; if it
        fails verification nothing changes. ``POST /admin/reload`` later returns to the newest.

        Raises:
            ReloadError: no model served, no older bundle, or the older bundle was refused.
            StateError: the choice could not be recorded (nothing changed).
        """
        source = self._source()
        with self._reload_lock:
            current = self._current
            if current is None:
                raise ReloadError("no bundle is being served, nothing to roll back from")
            found = bundles_newest_first(source)
            # relative to what the service serves (this worker may not have followed yet)
            choice = self._choice()
            reference = find_chosen(source, choice) if choice is not None else None
            reference = (reference or current.path).resolve()
            served = [i for i, p in enumerate(found) if p.resolve() == reference]
            if not served or served[0] + 1 >= len(found):
                raise ReloadError(f"no bundle older than {_manifest_version(reference) or current.model_version} under {source}")
            path = found[served[0] + 1]
            model = self._load_or_refuse(path, "rollback", current.model_version)
            generation = self._publish(model, "rollback")
            log.warning("rolled back from %s to %s (%s)", current.model_version, model.model_version, path)
            return ReloadResult("rolled_back", model.model_version, current.model_version, path, generation)

    def prune(self, keep: int) -> list[Path]:
        """Delete bundles beyond the newest ``keep`` under a directory of bundles.

        Never deleted: the bundle this worker serves, the chosen one, and every bundle a live worker of any server sharing the state records serving
        (after a rollback they may be older than the cut). If those records cannot be read,
        nothing is deleted. Only directories with a manifest are touched; a single-bundle
        source is left alone.

        Returns:
            The deleted paths.
        """
        if self.source is None or (self.source / MANIFEST).is_file() or keep < 1:
            return []
        current = self._current
        kept_paths = {current.path.resolve()} if current is not None else set()
        kept_names: set[str] = set()
        if self.state is not None:
            try:
                choice = self._choice()
                rows = self.live_workers()
            except Exception as e:
                log.warning("not pruning: the workers' records cannot be read (%s)", e)
                return []
            if choice is not None:
                kept_names |= {choice["bundle"]} if choice.get("bundle") else set()
            # by name too: another machine's copy of a bundle has the same folder name
            kept_names |= {r["bundle"] for r in rows if r["bundle"]}
            kept_paths |= {Path(r["path"]) for r in rows if r["path"]}
        removed = []
        for p in bundles_newest_first(self.source)[keep:]:
            if p.resolve() in kept_paths or p.name in kept_names:
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            log.info("pruned old bundle %s (keeping the newest %d and every bundle a worker serves)", p, keep)
        return removed


@dataclass
class BundleVersion:
    """One bundle under the serving directory (``GET /admin/versions``)."""

    version: str
    path: Path
    created: str | None
    active: bool  # served by this worker
    chosen: bool = False  # recorded in the online state as what every worker serves
    workers: list[str] = field(default_factory=list)  # live workers serving it
