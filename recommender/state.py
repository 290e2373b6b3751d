"""Online state: what happened since a bundle was trained, in one database every worker shares.

Live ratings, movies added at run time (text, genres, their vectors) and the ids the service
generated live in one append-only table of *events* (:mod:`recommender.events`), numbered by a
sequence that only grows. A worker applies events in sequence order and remembers the last one it
applied; before each answer it reads the newest sequence number (one indexed lookup) and, when
another worker wrote since, applies just the events after its own
(:meth:`recommender.HybridRecommender.catch_up`). The bundle stays read-only; a training run that
folds the state in (:func:`recommender.state_fold.fold_state`) records the state's identity
(:meth:`StateStore.identity`), the sequence number it read up to and that event's time in the
bundle's manifest. Serving replays exactly the events after that point when it meets the same
state, and the whole state when it meets another one (:meth:`StateStore.start_for`).

Backends, chosen by URL (:func:`open_state`): SQLite or PostgreSQL (:mod:`recommender.state_db`),
with the tables of :mod:`recommender.state_schema`. Generated movie ids are allocated under the
write lock, so two workers never hand out the same id.

A write sent with a client's ``Idempotency-Key`` is remembered in the same transaction as its
events (:class:`Idempotency`): a retry with that key, through any worker or server and after a
restart, finds the record under the write lock and writes nothing (:class:`AlreadyDone`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from movierec.core.data import to_plain
from recommender.events import (
    EVENT_COLUMNS,
    Event,
    decode_id,
    encode_id,
    event_from_row,
    generated_id,
    pack_vector,
    unpack_vector,
)
from recommender.state_db import STATE_FILE, StateDB, StateLimits, safe_url, state_url
from recommender.state_schema import state_tables

log = logging.getLogger(__name__)

IDENTITY_KEY = "state_id"
"""movierec_meta key of the state's identity (a uuid, created once)."""
_PG_LOCK = 7_316_001  # advisory lock key that serialises writers on PostgreSQL


class StateError(RuntimeError):
    """The state database cannot be opened or written (HTTP 503 for a write)."""


class IdConflict(ValueError):
    """An item id that is already taken (HTTP 409)."""


@dataclass(frozen=True)
class Idempotency:
    """A client's ``Idempotency-Key`` for one write, remembered with the write's events.

    ``scope`` is the route (with the user for rating posts): the same key on another route or for
    another user is another key. ``fingerprint`` identifies the request body, so the key reused
    for a different request is told apart from a retry. ``draft`` is what the answer needs that
    only the write knew (whether the user was new, the generated id); the answer itself is stored
    by :meth:`StateStore.finish_idempotent` once it is built.
    """

    scope: str
    key: str
    fingerprint: str
    status: int
    ttl: float
    draft: dict[str, Any] | None = None


@dataclass
class Remembered:
    """The record of a write done under an ``Idempotency-Key``."""

    fingerprint: str
    status: int
    seq: int
    draft: dict[str, Any]
    body: str | None  # the answer as sent; None while the first request builds it (or if it died first)


class AlreadyDone(Exception):
    """The ``Idempotency-Key`` was used before: nothing was written; ``remembered`` is the first write's record."""

    def __init__(self, remembered: Remembered) -> None:
        super().__init__("idempotency key already used")
        self.remembered = remembered


class StateStore:
    """The online state behind one interface; SQLite or PostgreSQL chosen by ``url``.

    Thread-safe; each call is one short transaction. Use :func:`open_state`.
    """

    def __init__(self, url: str, limits: StateLimits | None = None) -> None:
        self.url = url
        self.limits = limits = limits or StateLimits()
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        if self.dialect not in ("sqlite", "postgresql"):
            raise StateError(f"state database {safe_url(url)}: only sqlite:/// and postgresql:// URLs are supported")
        self.db = StateDB(url, self.dialect, limits)
        self.engine = self.db.engine
        tables = state_tables()
        self.events, self.items, self.meta = tables.events, tables.items, tables.meta
        # what each worker process serves, written by its watcher (serving/watcher.py): pruning
        # keeps every bundle a live worker serves, and an admin action waits for them to follow
        self.worker_rows = tables.workers
        self.idempotency, self.snapshots = tables.idempotency, tables.snapshots
        sa = self.db.sa
        try:
            with self.db.write() as conn:
                tables.metadata.create_all(conn)
            self.identity()  # created with the schema, so every copy of the state carries it
        except sa.exc.SQLAlchemyError as e:
            raise StateError(f"state database {safe_url(url)} cannot be opened: {e.__class__.__name__}: {str(e).splitlines()[0]}") from e

    # ---- reads ---------------------------------------------------------------------------------------
    def last_seq(self) -> int:
        """The newest acknowledged event (0 when none): the cheap per-request check (one
        lookup at the end of the primary-key index)."""
        value = self.db.query("SELECT max(seq) FROM movierec_events")[0][0]
        return int(value or 0)

    def events_after(self, after: int, upto: int | None = None) -> list[Event]:
        """Events with ``after < seq <= upto``, in sequence order."""
        return list(self._iter_events(after, upto))

    def _iter_events(self, after: int, upto: int | None) -> Iterator[Event]:
        sa = self.db.sa
        e = self.events
        q = sa.select(*(e.c[name] for name in EVENT_COLUMNS)).where(e.c.seq > after)
        if upto is not None:
            q = q.where(e.c.seq <= upto)
        with self.db.read() as conn:
            for row in conn.execute(q.order_by(e.c.seq)):
                yield event_from_row(row)

    def changes_after(self, after: int, upto: int) -> tuple[list[Event], dict[str, list[Any]]]:
        """What a worker applies to catch up: the added movies (events, in order) and every
        rating, as columns ``user_id, item_id, rating, title`` in sequence order."""
        rows = self.db.query(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM movierec_events WHERE seq > ? AND seq <= ? ORDER BY seq", (int(after), int(upto)),
        )
        memo: dict[str, Any] = {}

        def ident(text: str) -> Any:
            value = memo.get(text)
            if value is None:
                value = memo[text] = decode_id(text)
            return value

        items = [event_from_row(r, ident) for r in rows if r[1] == "item"]
        rated = [r for r in rows if r[1] == "rating"]
        ratings = {
            "user_id": [ident(r[3]) for r in rated],
            "item_id": [ident(r[4]) for r in rated],
            "rating": [float(r[5]) for r in rated],
            "title": [r[6] for r in rated],
        }
        return items, ratings

    def ratings_frame(self, after: int = 0, upto: int | None = None) -> pd.DataFrame:
        """Rating events as ``seq, user_id, item_id, rating, timestamp, title`` (typed ids)."""
        sa = self.db.sa
        e = self.events
        q = sa.select(e.c.seq, e.c.user_id, e.c.item_id, e.c.rating, e.c.at, e.c.title).where((e.c.seq > after) & (e.c.kind == "rating"))
        if upto is not None:
            q = q.where(e.c.seq <= upto)
        with self.db.read() as conn:
            rows = conn.execute(q.order_by(e.c.seq)).all()
        frame = pd.DataFrame(rows, columns=["seq", "user_id", "item_id", "rating", "at", "title"])
        frame["user_id"] = [decode_id(v) for v in frame["user_id"]]
        frame["item_id"] = [decode_id(v) for v in frame["item_id"]]
        frame["timestamp"] = frame["at"].astype(np.float64).astype(np.int64) if len(frame) else pd.Series([], dtype=np.int64)
        return frame.drop(columns="at")

    def remembered(self, scope: str, key: str, ttl: float) -> Remembered | None:
        """The write done under ``key`` on ``scope`` within the last ``ttl`` seconds, if any."""
        sa = self.db.sa
        t = self.idempotency
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(t.c.fingerprint, t.c.status, t.c.seq, t.c.draft, t.c.body)
                .where((t.c.scope == scope) & (t.c.key == key) & (t.c.at >= time.time() - ttl))
            ).first()
        return None if row is None else Remembered(row[0], int(row[1]), int(row[2]), json.loads(row[3]), row[4])

    def get_meta(self, key: str) -> str | None:
        sa = self.db.sa
        with self.db.read() as conn:
            return conn.execute(sa.select(self.meta.c.value).where(self.meta.c.key == key)).scalar()

    def event_time(self, seq: int) -> float | None:
        """The recorded time of event ``seq`` (None when there is no such event)."""
        rows = self.db.query("SELECT at FROM movierec_events WHERE seq = ?", (int(seq),))
        return float(rows[0][0]) if rows else None

    def identity(self) -> str:
        """This state's identity: a uuid created once, when the schema is (under the write lock,
        so two workers opening a fresh state agree on it), and kept for the state's life. A copy
        of the database (a backup) carries it too; :meth:`start_for` tells a copy that diverged
        by the recorded time of the event at the bundle's point."""
        cached = getattr(self, "_identity", None)
        if cached is not None:
            return cached
        value = self.get_meta(IDENTITY_KEY)
        if value is None:
            sa = self.db.sa
            with self.db.write() as conn:
                value = conn.execute(sa.select(self.meta.c.value).where(self.meta.c.key == IDENTITY_KEY)).scalar()
                if value is None:
                    value = uuid.uuid4().hex
                    conn.execute(sa.insert(self.meta).values(key=IDENTITY_KEY, value=value))
        self._identity = str(value)
        return self._identity

    def point(self, seq: int) -> dict[str, Any]:
        """What a bundle folded up to ``seq`` records of this state (manifest ``"state"``); the
        location (without a password) is for the operator's eyes only, never trusted."""
        return {"id": self.identity(), "seq": int(seq), "at": self.event_time(seq) if seq else None, "location": safe_url(self.url)}

    def start_for(self, record: dict[str, Any] | None) -> int:
        """The sequence number after which a bundle with this manifest ``"state"`` record must
        replay this state's events.

        The bundle's own point only when this is the state it was folded from: the same
        identity, and the event at that point still there with the recorded time (a backup
        restored from before the point, then written to, reuses those sequence numbers for
        other events). Anything else -- another state, a new default folder, another
        PostgreSQL database, a diverged copy, a bundle that records no identity -- replays
        this state from its start. Replay is always right here, so serving never refuses: a
        rating re-applied is idempotent (the latest rating of a user and movie wins, and the
        bundle trained on it already), an added movie the bundle already holds under the same
        id and title is kept as is, and ratings are applied only onto the movie they were given
        for. Skipping instead would drop acknowledged writes from every worker for good.
        """
        record = record or {}
        seq = int(record.get("seq") or 0)
        if seq <= 0:
            return 0
        if record.get("id") != self.identity():
            # said loudly: writes acknowledged in the state the bundle was folded from after its
            # point are served only where that state is
            log.warning("%s is not the online state this bundle was folded from (%s, up to event %d): replaying it "
                        "from its start; serve with MOVIEREC_STATE_DIR/MOVIEREC_STATE_URL naming that state to continue it",
                        safe_url(self.url), record.get("location") or "an unrecorded state", seq)
            return 0
        at = record.get("at")
        if at is None or self.event_time(seq) != float(at):
            log.warning("%s diverged from the state this bundle was folded from at event %d (a restored copy?): "
                        "replaying it from its start", safe_url(self.url), seq)
            return 0
        return seq

    # ---- the bundle the whole service serves ------------------------------------------------------
    CHOICE = "chosen_bundle"
    """Meta key of the chosen bundle: JSON ``{generation, bundle, version, action, at, previous}``."""

    def chosen_bundle(self) -> dict[str, Any] | None:
        """The bundle every worker should serve, as the last admin action (or the first worker
        to start) recorded it; None when none was recorded."""
        text = self.get_meta(self.CHOICE)
        return json.loads(text) if text else None

    def choose_bundle(self, bundle: str, version: str, action: str, only_if_none: bool = False) -> dict[str, Any]:
        """Record ``bundle`` (its folder name) and ``version`` as what every worker serves, with
        the next generation number; returns the record now in force (with ``only_if_none``, the
        one already recorded if there is one)."""
        sa = self.db.sa
        m = self.meta
        with self.db.write() as conn:
            text = conn.execute(sa.select(m.c.value).where(m.c.key == self.CHOICE)).scalar()
            current = json.loads(text) if text else None
            if current is not None and only_if_none:
                return current
            record = {
                "generation": int((current or {}).get("generation", 0)) + 1, "bundle": bundle, "version": version,
                "action": action, "at": time.time(), "previous": (current or {}).get("bundle"),
            }
            conn.execute(sa.delete(m).where(m.c.key == self.CHOICE))
            conn.execute(sa.insert(m).values(key=self.CHOICE, value=json.dumps(record)))
            return record

    def heartbeat(self, worker: str, bundle: str | None, path: str | None, version: str | None, generation: int) -> None:
        """Record what ``worker`` serves now (its own row; rows unseen for a day are removed)."""
        sa = self.db.sa
        t = self.worker_rows
        now = time.time()
        # only this worker writes its row: PostgreSQL needs no writers' lock for it
        with (self.db.write() if self.dialect == "sqlite" else self.engine.begin()) as conn:
            conn.execute(sa.delete(t).where((t.c.worker == worker) | (t.c.seen < now - 86_400)))
            conn.execute(sa.insert(t).values(worker=worker, bundle=bundle, path=path, version=version, generation=int(generation), seen=now))

    def forget_worker(self, worker: str) -> None:
        sa = self.db.sa
        with (self.db.write() if self.dialect == "sqlite" else self.engine.begin()) as conn:
            conn.execute(sa.delete(self.worker_rows).where(self.worker_rows.c.worker == worker))

    def live_workers(self, within: float) -> list[dict[str, Any]]:
        """Workers whose last heartbeat is at most ``within`` seconds old (clocks of several
        machines are assumed to agree to well under that)."""
        sa = self.db.sa
        t = self.worker_rows
        with self.db.read() as conn:
            rows = conn.execute(sa.select(t).where(t.c.seen >= time.time() - within).order_by(t.c.worker)).mappings().all()
        return [dict(r) for r in rows]

    # ---- writes --------------------------------------------------------------------------------------
    def append_ratings(self, user_id: Any, items: list[tuple[Any, float, str]], idempotency: Idempotency | None = None) -> int:
        """Durably record one user's ratings ``[(item_id, rating, title), ...]``; returns the
        sequence number of the last one. Committed before it returns.

        Raises:
            AlreadyDone: ``idempotency``'s key was used before; nothing was written.
        """
        sa = self.db.sa
        now = time.time()
        user = encode_id(user_id)
        rows = [
            {"at": now, "kind": "rating", "user_id": user, "item_id": encode_id(i), "rating": float(r), "title": t, "payload": None}
            for i, r, t in items
        ]
        with self.db.write() as conn:
            if idempotency is not None:
                self._check_unused(conn, idempotency)
            conn.execute(sa.insert(self.events), rows)
            seq = int(conn.execute(sa.select(sa.func.max(self.events.c.seq))).scalar())
            if idempotency is not None:
                self._remember(conn, idempotency, seq, {})
            return seq

    def add_item(
        self, record: dict[str, Any], item_id: Any | None, integer_ids: bool, taken: Callable[[Any], bool],
        idempotency: Idempotency | None = None,
    ) -> tuple[Any, int]:
        """Durably record an added movie; returns ``(item_id, seq)``.

        Args:
            record: title, genres, description, year and vectors (JSON-able).
            item_id: the id the client chose, or None to generate one.
            integer_ids: whether the catalogue's ids are integers (the generated id's type).
            taken: whether an id is already in the served catalogue (the bundle's part).
        Raises:
            IdConflict: the chosen id is taken (in the catalogue or by another added movie).
            AlreadyDone: ``idempotency``'s key was used before; nothing was written.
        """
        sa = self.db.sa
        with self.db.write() as conn:
            if idempotency is not None:
                self._check_unused(conn, idempotency)  # before the id checks: a retry is not a conflict
            if item_id is None:
                key = "next_generated_item"
                n = int(conn.execute(sa.select(self.meta.c.value).where(self.meta.c.key == key)).scalar() or 0)
                while True:
                    n += 1
                    item_id = generated_id(n, integer_ids)
                    if not taken(item_id) and not self._has_item(conn, item_id):
                        break
                conn.execute(sa.delete(self.meta).where(self.meta.c.key == key))
                conn.execute(sa.insert(self.meta).values(key=key, value=str(n)))
            elif taken(item_id) or self._has_item(conn, item_id):
                raise IdConflict(f"item_id {item_id!r} already exists")
            conn.execute(
                sa.insert(self.events).values(
                    at=time.time(), kind="item", user_id=None, item_id=encode_id(item_id), rating=None,
                    title=record.get("title"), payload=json.dumps({**record, "item_id": to_plain(item_id)}),
                )
            )
            seq = int(conn.execute(sa.select(sa.func.max(self.events.c.seq))).scalar())
            conn.execute(sa.insert(self.items).values(item_id=encode_id(item_id), seq=seq))
            if idempotency is not None:
                self._remember(conn, idempotency, seq, {"item_id": to_plain(item_id)})
        return item_id, seq

    def finish_idempotent(self, scope: str, key: str, body: str) -> str:
        """Store the answer of a write done under ``key``, unless one is stored already; returns
        the stored one. The first answer stored wins, so every retry gets the same bytes."""
        sa = self.db.sa
        t = self.idempotency
        where = (t.c.scope == scope) & (t.c.key == key)
        with self.db.write() as conn:
            conn.execute(sa.update(t).where(where & t.c.body.is_(None)).values(body=body))
            stored = conn.execute(sa.select(t.c.body).where(where)).scalar()
        return body if stored is None else str(stored)  # None: purged meanwhile; the answer stands

    def _check_unused(self, conn: Any, idem: Idempotency) -> None:
        """Under the write lock: purge keys older than their time to live, then refuse a key in use."""
        sa = self.db.sa
        t = self.idempotency
        conn.execute(sa.delete(t).where(t.c.at < time.time() - idem.ttl))
        row = conn.execute(
            sa.select(t.c.fingerprint, t.c.status, t.c.seq, t.c.draft, t.c.body).where((t.c.scope == idem.scope) & (t.c.key == idem.key))
        ).first()
        if row is not None:
            raise AlreadyDone(Remembered(row[0], int(row[1]), int(row[2]), json.loads(row[3]), row[4]))

    def _remember(self, conn: Any, idem: Idempotency, seq: int, extra: dict[str, Any]) -> None:
        """The key's record, in the transaction of the events it acknowledges."""
        conn.execute(
            self.db.sa.insert(self.idempotency).values(
                scope=idem.scope, key=idem.key, fingerprint=idem.fingerprint, status=idem.status, seq=seq,
                draft=json.dumps({**(idem.draft or {}), **extra}), body=None, at=time.time(),
            )
        )

    def save_vectors(self, item_id: Any, model_version: str, content: np.ndarray, item: np.ndarray) -> None:
        """Record an added movie's vectors (once: the first model to compute them keeps them)."""
        sa = self.db.sa
        t = self.items
        with self.db.write() as conn:
            conn.execute(
                sa.update(t).where((t.c.item_id == encode_id(item_id)) & t.c.model_version.is_(None))
                .values(model_version=model_version, content_vector=pack_vector(content), item_vector=pack_vector(item))
            )

    def vectors(self, item_id: Any) -> tuple[str, np.ndarray, np.ndarray] | None:
        """``(model_version, content vector, item vector)`` of an added movie, if recorded."""
        sa = self.db.sa
        t = self.items
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(t.c.model_version, t.c.content_vector, t.c.item_vector).where(t.c.item_id == encode_id(item_id))
            ).first()
        if row is None or row[0] is None:
            return None
        return str(row[0]), unpack_vector(row[1]), unpack_vector(row[2])

    def _has_item(self, conn: Any, item_id: Any) -> bool:
        sa = self.db.sa
        return conn.execute(sa.select(self.items.c.seq).where(self.items.c.item_id == encode_id(item_id))).first() is not None

    def close(self) -> None:
        self.db.close()


_OPEN: dict[str, StateStore] = {}
_OPEN_LOCK = threading.Lock()


def open_state(location: str | Path, limits: StateLimits | None = None) -> StateStore:
    """The state store at a URL, a state folder or a database file (one per process and URL:
    one bounded pool per process). ``limits`` count when this call opens it."""
    url = state_url(location)
    with _OPEN_LOCK:
        store = _OPEN.get(url)
        if store is None:
            store = _OPEN[url] = StateStore(url, limits)
        return store


def open_existing(location: str | Path) -> StateStore:
    """The online state at ``location``, which must already be one: nothing is created.

    For ``movierec train --feedback``: a bundle folder, a stray file, an empty folder or a
    database without the state's tables is refused instead of becoming a new, empty state.

    Raises:
        StateError: ``location`` is not an online state (one line naming it and why).
    """
    url = state_url(location)
    shown = safe_url(str(location))
    if url.startswith("sqlite:"):
        db = Path(url.split(":///", 1)[1])
        if not db.exists():
            where = Path(str(location))
            why = (f"no {STATE_FILE} in this folder" if where.is_dir()
                   else f"a file; give the state folder, its {STATE_FILE} or a postgresql:// URL" if where.exists()
                   else "no such state folder or database")
            raise StateError(f"{shown} is not an online state ({why})")
        if not db.is_file():
            raise StateError(f"{shown} is not an online state ({db} is not a file)")
        import sqlite3

        try:  # read-only: a file that is not ours is never written
            conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
            try:
                found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'movierec_events'").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise StateError(f"{shown} is not an online state ({db.name}: {e})") from None
    else:
        import sqlalchemy as sa

        try:
            engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url)
            try:
                found = sa.inspect(engine).has_table("movierec_events")
            finally:
                engine.dispose()
        except (sa.exc.SQLAlchemyError, ImportError) as e:
            raise StateError(f"state database {shown} cannot be opened: {e.__class__.__name__}: {str(e).splitlines()[0]}") from None
    if not found:
        raise StateError(f"{shown} is not an online state (no movierec_events table)")
    return open_state(location)
