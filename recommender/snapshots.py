"""Snapshots of the online state: what one bundle serves after the events up to a point.

A worker that loads a bundle replays every event recorded after the bundle's point
(:meth:`recommender.HybridRecommender.catch_up`), so without snapshots its start-up time and
memory grow with the state's whole history. A snapshot is that replay's result for one bundle
(:meth:`~recommender.HybridRecommender.overlay`: users added since training, each changed user's
history, ratings and query vector, and the added movies' events), stored as one row of
``movierec_snapshots`` in the state database itself, so every worker and every machine sharing the
state finds it. A worker loading the bundle restores the newest snapshot and replays only the
events after it.

A snapshot is derived data: the events are never deleted, so a missing, stale or unusable
snapshot costs a longer replay, never a write. A row is inserted in one transaction (a crash
mid-way leaves the previous snapshots and no part of the new one), carries the sha256 of its
data (checked before use) and is keyed by the bundle's fingerprint, the state's identity and the
point the bundle started replaying from, so it is only ever restored onto the model it was taken
from. One writer at a time: a worker claims the job in ``movierec_meta`` (a claim expires, so a
worker killed while writing does not block the next one).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from recommender.events import Event

from recommender.state import StateStore

log = logging.getLogger(__name__)

FORMAT = 1
CLAIM_KEY = "snapshot_claim"
CLAIM_SECONDS = 120.0
"""A claim older than this is taken over (its writer died, or is stuck)."""
KEEP = 2
"""Snapshots kept per (bundle, state, start point): the newest and one before it."""
_ARRAYS = ("users", "indptr", "items", "ratings", "has_ratings", "vectors")


@dataclass
class SnapshotInfo:
    """One stored snapshot (without its data)."""

    id: int
    seq: int
    base_seq: int
    created: float
    size: int


def state_identity(store: StateStore) -> str:
    """The state's identity (:meth:`StateStore.identity`: a uuid in ``movierec_meta``)."""
    return store.identity()


def bundle_key(model: Any) -> str:
    """A bundle's fingerprint: its model version and the checksums of its files (two bundles
    relabelled alike, or one retrained in place, never share snapshots)."""
    manifest = model.bundle.manifest
    files = json.dumps(manifest.get("files") or {}, sort_keys=True).encode()
    return f"{model.model_version}:{hashlib.sha256(files).hexdigest()[:32]}"


def listing(store: StateStore, model: Any | None = None) -> list[SnapshotInfo]:
    """Stored snapshots (of ``model``'s bundle and start point when given), newest first."""
    sa = store.db.sa
    t = store.snapshots
    q = sa.select(t.c.id, t.c.seq, t.c.base_seq, t.c.created, sa.func.length(t.c.data))
    if model is not None:
        q = q.where((t.c.bundle == bundle_key(model)) & (t.c.state_id == state_identity(store)))
        if model._base_seq is not None:
            q = q.where(t.c.base_seq == model._base_seq)
    with store.db.read() as conn:
        rows = conn.execute(q.order_by(t.c.seq.desc(), t.c.id.desc())).all()
    return [SnapshotInfo(int(r[0]), int(r[1]), int(r[2]), float(r[3]), int(r[4] or 0)) for r in rows]


# ---- encoding ------------------------------------------------------------------------------------
def encode(header: dict[str, Any], arrays: dict[str, np.ndarray], items: list[Event]) -> bytes:
    """One ``.npz`` (no pickles): the arrays plus a JSON header with the added movies' events."""
    head = {
        "format": FORMAT, **header,
        "item_events": [
            {"seq": e.seq, "at": e.at, "item_id": e.item_id, "title": e.title, "payload": e.payload} for e in items
        ],
    }
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(json.dumps(head).encode(), np.uint8), **arrays)
    return buf.getvalue()


def decode(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray], list[Event]]:
    """The inverse of :func:`encode`.

    Raises:
        ValueError: not a snapshot of this format.
    """
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        header = json.loads(z["header"].tobytes().decode())
        if header.get("format") != FORMAT:
            raise ValueError(f"snapshot format {header.get('format')!r}, expected {FORMAT}")
        arrays = {name: z[name] for name in _ARRAYS}
    items = [
        Event(int(e["seq"]), "item", float(e["at"]), None, e["item_id"], None, e.get("title"), e.get("payload"))
        for e in header.pop("item_events")
    ]
    return header, arrays, items


# ---- writing -------------------------------------------------------------------------------------
def _claimed(store: StateStore) -> bool:
    """Whether a live claim of another writer is there (a plain read)."""
    held = store.get_meta(CLAIM_KEY)
    try:
        return bool(held) and float(json.loads(held).get("until", 0)) > time.time()
    except (ValueError, AttributeError):
        return False


def _claim(store: StateStore, owner: str, force: bool) -> bool:
    """Take the single snapshot-writer claim; False when another writer holds a live one."""
    sa = store.db.sa
    meta = store.meta
    now = time.time()
    with store.db.write() as conn:
        held = conn.execute(sa.select(meta.c.value).where(meta.c.key == CLAIM_KEY)).scalar()
        if held and not force:
            try:
                if float(json.loads(held).get("until", 0)) > now:
                    return False
            except (ValueError, AttributeError):
                pass  # an unreadable claim is no claim
        conn.execute(sa.delete(meta).where(meta.c.key == CLAIM_KEY))
        conn.execute(sa.insert(meta).values(key=CLAIM_KEY, value=json.dumps({"owner": owner, "until": now + CLAIM_SECONDS, "pid": os.getpid()})))
    return True


def _release(store: StateStore, owner: str) -> None:
    sa = store.db.sa
    meta = store.meta
    try:
        with store.db.write() as conn:
            _release_in(conn, sa, meta, owner)
    except Exception as e:  # the claim expires anyway
        log.debug("snapshot claim not released: %s", e)


def _release_in(conn: Any, sa: Any, meta: Any, owner: str) -> None:
    held = conn.execute(sa.select(meta.c.value).where(meta.c.key == CLAIM_KEY)).scalar()
    try:
        mine = held is not None and json.loads(held).get("owner") == owner
    except (ValueError, AttributeError):
        mine = False
    if mine:
        conn.execute(sa.delete(meta).where(meta.c.key == CLAIM_KEY))


def write(model: Any, store: StateStore, force: bool = False) -> SnapshotInfo | None:
    """Write a snapshot of ``model``'s overlay, if one is due; returns it (None: not written).

    Due when more than ``model.snapshot_every`` events were applied since the newest stored
    snapshot of this bundle (``force``: whenever the model is ahead of it, and another writer's
    claim is overridden). The overlay is taken as of the model's own point; the row, the
    pruning of older ones and the release of the claim commit together.
    """
    key = bundle_key(model)
    state_id = state_identity(store)
    known = listing(store, model)
    newest = known[0].seq if known else model._base_seq if model._base_seq is not None else model.applied_seq
    model.snapshot_seq = max(model.snapshot_seq or 0, newest)
    ahead = model.applied_seq - newest
    if ahead <= 0 or (not force and ahead <= model.snapshot_every):
        return None
    if not force and _claimed(store):  # read first: no write lock taken while another worker writes one
        return None
    owner = uuid.uuid4().hex
    if not _claim(store, owner, force):
        return None
    try:
        t0 = time.perf_counter()
        header, arrays = model.overlay()
        if header["seq"] <= newest:
            return None
        items = store_item_events(store, header["base_seq"], header["seq"])
        data = encode(header, arrays, items)
        digest = hashlib.sha256(data).hexdigest()
        sa = store.db.sa
        t = store.snapshots
        with store.db.write() as conn:  # one transaction: the new row, the pruning, the claim
            exists = conn.execute(
                sa.select(t.c.id).where((t.c.bundle == key) & (t.c.state_id == state_id) & (t.c.base_seq == header["base_seq"])
                                        & (t.c.seq >= header["seq"]))
            ).first()
            if exists is not None:
                _release_in(conn, sa, store.meta, owner)
                return None
            new_id = conn.execute(
                sa.insert(t).values(bundle=key, state_id=state_id, base_seq=header["base_seq"], seq=header["seq"],
                                    created=time.time(), sha256=digest, data=data)
            ).inserted_primary_key[0]
            older = conn.execute(
                sa.select(t.c.id).where((t.c.bundle == key) & (t.c.state_id == state_id) & (t.c.base_seq == header["base_seq"]))
                .order_by(t.c.seq.desc(), t.c.id.desc()).offset(KEEP)
            ).scalars().all()
            if older:
                conn.execute(sa.delete(t).where(t.c.id.in_(older)))
            _release_in(conn, sa, store.meta, owner)
    except BaseException:
        _release(store, owner)
        raise
    model.snapshot_seq = header["seq"]
    log.info("snapshot of %s at event %d written (%d changed users, %.1f MB) in %.2fs", model.model_version, header["seq"],
             len(arrays["users"]), len(data) / 1e6, time.perf_counter() - t0)
    return SnapshotInfo(int(new_id), header["seq"], header["base_seq"], time.time(), len(data))


def store_item_events(store: StateStore, after: int, upto: int) -> list[Event]:
    """The added movies' events with ``after < seq <= upto``, found through the (small) table of
    added movies rather than a scan of every event."""
    sa = store.db.sa
    with store.db.read() as conn:
        seqs = conn.execute(
            sa.select(store.items.c.seq).where((store.items.c.seq > after) & (store.items.c.seq <= upto)).order_by(store.items.c.seq)
        ).scalars().all()
    out: list[Event] = []
    for s in seqs:
        out.extend(e for e in store.events_after(int(s) - 1, int(s)) if e.kind == "item")
    return out


# ---- restoring -----------------------------------------------------------------------------------
def restore(model: Any, store: StateStore, upto: int) -> int | None:
    """Put the newest usable snapshot (``seq <= upto``) of this bundle onto a freshly loaded
    ``model``; returns its point, or None when there is none (the caller replays every event).

    A snapshot whose checksum or contents do not match is skipped with an error in the log (the
    next older one, or the events, are used instead).
    """
    try:
        state_id = state_identity(store)
        key = bundle_key(model)
        sa = store.db.sa
        t = store.snapshots
        with store.db.read() as conn:
            found = conn.execute(
                sa.select(t.c.id, t.c.seq, t.c.sha256).where(
                    (t.c.bundle == key) & (t.c.state_id == state_id) & (t.c.base_seq == model.applied_seq) & (t.c.seq <= upto)
                    & (t.c.seq > model.applied_seq)
                ).order_by(t.c.seq.desc(), t.c.id.desc()).limit(KEEP)
            ).all()
    except Exception as e:  # a state without the table yet, a read error: replay the events
        log.warning("snapshots not read (%s: %s); replaying the events", e.__class__.__name__, str(e).splitlines()[0])
        return None
    for snap_id, seq, digest in found:
        t0 = time.perf_counter()
        try:
            with store.db.read() as conn:
                data = conn.execute(sa.select(t.c.data).where(t.c.id == snap_id)).scalar()
            if data is None:
                continue  # pruned meanwhile
            data = bytes(data)
            if hashlib.sha256(data).hexdigest() != digest:
                log.error("snapshot %d (event %d) fails its checksum; not used", snap_id, seq)
                continue
            header, arrays, items = decode(data)
            if int(header.get("seq", -1)) != int(seq) or int(header.get("base_seq", -1)) != model.applied_seq:
                log.error("snapshot %d does not describe event %d from %d; not used", snap_id, seq, model.applied_seq)
                continue
            if not model.restore_overlay(header, arrays, items):
                return None
        except Exception as e:  # unreadable, or a read error: the events are all still there
            log.error("snapshot %d (event %d) not used (%s: %s); replaying the events", snap_id, seq, e.__class__.__name__, e)
            return None
        log.info("restored snapshot of %s at event %d (%d changed users) in %.2fs", model.model_version, seq,
                 len(arrays["users"]), time.perf_counter() - t0)
        return int(seq)
    return None
