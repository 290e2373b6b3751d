"""The online side of the recommender: applying the online state's events (ratings, added
movies) to the live histories and query vectors, and snapshots of what they changed.

:class:`OnlineUpdates` (a :class:`~recommender.catalogue.Catalogue` that changes) is a part of
:class:`recommender.model.HybridRecommender`, which sets the attributes declared here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from movierec.core.data import to_plain
from recommender.catalogue import Catalogue
from recommender.ids import IdTypeError
from recommender.live import LiveHistories

if TYPE_CHECKING:
    from recommender.state import Event, StateStore

log = logging.getLogger(__name__)


class OnlineUpdates(Catalogue):
    """Live feedback and added movies, applied in the order the online state recorded them."""

    histories: LiveHistories
    user_vectors: np.ndarray
    applied_seq: int
    snapshot_every: int
    snapshot_seq: int | None
    _vectors: np.ndarray
    _base_seq: int | None
    _start_decided: bool
    _snapshot_thread: threading.Thread | None
    _snapshot_tried: float
    _lock: threading.RLock
    _catch_up_lock: threading.Lock

    def catch_up(self, state: StateStore) -> int:
        """Apply the online-state events this model has not seen yet; returns how many.

        One indexed lookup when nothing is new (the per-request check); otherwise only the
        events after :attr:`applied_seq` are read, and all their ratings applied in one batch.
        The first call decides where to start: after the bundle's recorded point on the state
        it was folded from, from the start on any other (``StateStore.start_for``), since that
        point means nothing in another state's numbering. From there, the first catch-up of a
        freshly loaded model starts from the newest snapshot of this
        bundle's overlay (:mod:`recommender.snapshots`) when there is one, so it replays only
        the events after the snapshot; once more than :attr:`snapshot_every` events were
        applied since the newest snapshot, a new one is written in the background.
        """
        if not self._start_decided:
            with self._catch_up_lock:
                if not self._start_decided:
                    self.applied_seq = state.start_for(self.bundle.manifest.get("state"))
                    self._start_decided = True
        last = state.last_seq()
        if last <= self.applied_seq:
            return 0
        with self._catch_up_lock:  # one catch-up at a time; readers go on with the current state
            if last <= self.applied_seq:
                return 0
            if self._base_seq is None:  # a fresh model: nothing applied yet
                self._base_seq = self.applied_seq
                from recommender import snapshots

                restored = snapshots.restore(self, state, last)
                self.snapshot_seq = restored if restored is not None else self.applied_seq
                if last <= self.applied_seq:
                    return 0
            items, ratings = state.changes_after(self.applied_seq, last)
            self.apply_events(items)  # movies first: a rating always comes after its movie
            if ratings["rating"]:
                self.apply_ratings(ratings["user_id"], ratings["item_id"], ratings["rating"], ratings["title"])
            self.applied_seq = last
            if self.applied_seq - (self.snapshot_seq or 0) > self.snapshot_every:
                self._snapshot_in_background(state)
            return len(items) + len(ratings["rating"])

    SNAPSHOT_RETRY_S = 10.0
    """Seconds between snapshot attempts of one model (another worker may hold the claim)."""

    def _snapshot_in_background(self, state: StateStore) -> None:
        """Write a snapshot from a daemon thread (one at a time per model): requests never wait
        for it, and a worker killed while writing leaves the previous snapshot in place."""
        running = self._snapshot_thread
        now = time.monotonic()
        if (running is not None and running.is_alive()) or now - self._snapshot_tried < self.SNAPSHOT_RETRY_S:
            return
        self._snapshot_tried = now
        from recommender import snapshots

        def run() -> None:
            try:
                if snapshots.write(self, state) is not None:
                    self._snapshot_tried = -np.inf  # written: the next one is due after snapshot_every events
            except Exception as e:  # derived data: the events stay, the next catch-up tries again
                log.warning("snapshot of %s not written: %s: %s", self.model_version, e.__class__.__name__, e)

        self._snapshot_thread = threading.Thread(target=run, name="movierec-snapshot", daemon=True)
        self._snapshot_thread.start()

    # ---- snapshots of the overlay ------------------------------------------------------------------
    def overlay(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What the online state changed in this model, as of :attr:`applied_seq`: the ids of
        users added since training, every changed user's history, ratings and query vector.
        Taken under the catch-up lock, so it is exactly the events up to ``seq`` applied.

        Returns:
            (header, arrays): plain JSON-able fields and NumPy arrays (no objects).
        """
        with self._catch_up_lock, self._lock:
            rows = self.histories._rows
            users = np.fromiter(sorted(rows), np.int64, len(rows))
            hists = [rows[int(u)] for u in users]
            rats = [self.histories._ratings.get(int(u)) for u in users]
            lengths = np.fromiter((len(h) for h in hists), np.int64, len(hists))
            arrays = {
                "users": users,
                "indptr": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                "items": np.concatenate(hists).astype(np.int64) if hists else np.zeros(0, np.int64),
                "ratings": np.concatenate(
                    [r if r is not None else np.full(len(h), np.nan, np.float32) for r, h in zip(rats, hists)]
                ).astype(np.float32) if hists else np.zeros(0, np.float32),
                "has_ratings": np.fromiter((r is not None for r in rats), bool, len(rats)),
                "vectors": np.asarray(self.user_vectors[users], np.float32),
            }
            header = {
                "seq": int(self.applied_seq),
                "base_seq": int(self._base_seq if self._base_seq is not None else self.applied_seq),
                "trained_users": len(self.users.trained),
                "new_users": [to_plain(v) for v in self.users._added_ids],
                "n_items": int(self.n_items),
            }
        return header, arrays

    def restore_overlay(self, header: dict[str, Any], arrays: dict[str, np.ndarray], items: list[Event]) -> bool:
        """Put a snapshot's overlay (:meth:`overlay`) onto this freshly loaded model.

        ``items`` are the added movies' events up to the snapshot, applied as a catch-up
        applies them. Everything else is checked before anything changes; when the movies do not
        come out as recorded, nothing but them is applied and False is returned, so the caller
        replays every event instead (re-adding a movie the model holds is skipped).
        """
        users, indptr, hist, rats = arrays["users"], arrays["indptr"], arrays["items"], arrays["ratings"]
        has_r, vectors = arrays["has_ratings"], arrays["vectors"]
        trained = len(self.users.trained)
        new_ids = [self.users.parse(v) for v in header["new_users"]]
        n_users = trained + len(new_ids)
        n_items_after = int(header["n_items"])
        d = self.user_vectors.shape[1]
        problems = [
            name for name, bad in (
                ("trained_users", int(header["trained_users"]) != trained or len(self.users) != trained),
                ("indptr", len(indptr) != len(users) + 1 or (len(indptr) and (indptr[0] != 0 or indptr[-1] != len(hist)))
                 or bool((np.diff(indptr) < 0).any())),
                ("users", len(users) and (users.min() < 0 or users.max() >= n_users or bool((np.diff(users) <= 0).any()))),
                ("items", len(hist) and (hist.min() < 0 or hist.max() >= n_items_after)),
                ("ratings", len(rats) != len(hist) or len(has_r) != len(users)),
                ("vectors", vectors.shape != (len(users), d)),
                ("new_users", any(self.users.get(v) >= 0 for v in new_ids) or len(set(new_ids)) != len(new_ids)),
            ) if bad
        ]
        if problems:
            log.error("snapshot at event %s does not fit %s (%s); replaying the events instead",
                      header.get("seq"), self.model_version, ", ".join(problems))
            return False
        with self._lock:
            self.apply_events(items)
            if self.n_items != n_items_after:
                log.error("snapshot at event %s: added movies came out as %d items, not %d; replaying the events instead",
                          header.get("seq"), self.n_items, n_items_after)
                return False
            self._grow_vectors(n_users)
            self.user_vectors[users] = vectors
            cuts = indptr[1:-1]
            for u, row, r, h in zip(users.tolist(), np.split(hist, cuts), np.split(rats, cuts), has_r.tolist()):
                self.histories.set(u, row, r if h else None)
            for key in new_ids:
                self.users.add(key, checked=True)
            self.applied_seq = int(header["seq"])
            self.forget()
        return True

    def apply_events(self, events: list[Event]) -> None:
        """Apply online-state events (:class:`recommender.state.Event`) in sequence order.

        Movies first, then every rating in one batch: a rating always comes after the movie it
        rates, and the ratings' own order is kept per user.
        """
        ratings = []
        for e in events:
            if e.kind == "item":
                rec = e.payload or {}
                try:
                    self.add_item(rec.get("title") or "", list(rec.get("genres") or []), rec.get("description") or "",
                                  item_id=e.item_id, year=rec.get("year"))
                except (ValueError, KeyError) as err:
                    pos = self.item_ids.get(e.item_id)
                    if pos >= 0 and self.title_of(pos) == rec.get("title"):
                        continue  # the bundle was trained with this movie folded in
                    log.warning("added movie %r (event %d) not applied to %s: %s", e.item_id, e.seq, self.model_version, err)
            elif e.kind == "rating":
                ratings.append(e)
        if ratings:
            self.apply_ratings(
                [e.user_id for e in ratings], [e.item_id for e in ratings], [e.rating for e in ratings], [e.title for e in ratings]
            )

    def apply_ratings(
        self, user_ids: list[Any], item_ids: list[Any], ratings: list[float], titles: list[str | None] | None = None
    ) -> dict[str, int]:
        """Fold ratings into users' histories and query vectors, in one batch.

        The user tower pools a user's history, so re-encoding the updated histories (one
        ``encode_histories`` call for every changed user) moves their query vectors without
        retraining. Re-rated movies move to the most recent end of the history; a movie rated
        several times keeps its last rating. Unknown users are created (the id must have this
        model's user-id type). A rating whose recorded title differs from the movie this
        catalogue holds under that id is skipped: feedback never lands on another movie.
        Only the changed users' rows are written (no copy of every user's history).

        Returns:
            ``{"applied", "skipped", "created"}`` counts.
        """
        with self._lock:
            item_rows = self.item_ids.rows(list(item_ids))
            ok = item_rows >= 0
            if titles is not None:  # never onto another movie: the recorded title must match
                recorded = np.asarray(titles, dtype=object)
                held = self.items["title"].to_numpy()[np.where(ok, item_rows, 0)]
                ok &= (recorded == None) | (held == recorded)  # noqa: E711 (elementwise)
            user_rows = self.users.rows(list(user_ids))
            # unknown users get the next rows, in order of first rating; they join the id map
            # only once their history and vector are in place, so a concurrent reader never
            # finds a user without them
            new_users: dict[Any, int] = {}
            for n in np.flatnonzero(ok & (user_rows < 0)):
                try:
                    key = self.users.parse(user_ids[n])
                except IdTypeError:
                    ok[n] = False
                    continue
                u = new_users.get(key, -1)
                if u < 0:
                    u = new_users[key] = len(self.users) + len(new_users)
                user_rows[n] = u
            skipped = int((~ok).sum())
            if skipped:
                log.warning("%d live ratings not applied to %s (unknown movie, another movie under that id, or a mistyped user id)",
                            skipped, self.model_version)
            if not ok.any():
                return {"applied": 0, "skipped": skipped, "created": 0}
            users, rows, row_ratings = self._merged_rows(
                user_rows[ok], item_rows[ok], np.asarray(ratings, dtype=np.float32)[ok]
            )
            known = np.where(users < self.retrieval.user_features.shape[0], users, -1)
            queries = self.retrieval.encode_histories(rows, known).astype(np.float32)
            self._grow_vectors(len(self.users) + len(new_users))
            self.user_vectors[users] = queries
            for u, row, r in zip(users.tolist(), rows, row_ratings):
                self.histories.set(u, row, r)
                self.cache.forget(u)
            for key, u in new_users.items():  # now visible, with history and vector in place
                if self.users.add(key, checked=True) != u:
                    raise RuntimeError(f"user row {u} of {key!r} was taken meanwhile")
            created = len(new_users)
        applied = int(ok.sum())
        log.info("applied %d live ratings of %d users (%d new) to %s", applied, len(users), created, self.model_version)
        return {"applied": applied, "skipped": skipped, "created": created}

    def _merged_rows(
        self, u: np.ndarray, i: np.ndarray, r: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray | None]]:
        """Each changed user's new history: the old entries not rated again, in their order, then
        the new ones in the order of their last rating (a movie rated twice keeps its last
        rating). Vectorised over all users at once.

        Args:
            u, i, r: user row, item row and rating of each new rating, in sequence order.
        Returns:
            (users, rows, ratings): the changed users and, for each, the item row of its history
            and the ratings (None when the bundle carries no ratings for that user's old row).
        """
        n_items = np.int64(max(self.n_items, 1))
        keys = u.astype(np.int64) * n_items + i
        last = len(keys) - 1 - np.unique(keys[::-1], return_index=True)[1]  # last rating of each (user, item)
        last.sort()
        nu, ni, nr = u[last], i[last], r[last]
        users = np.unique(nu)
        olds = [self.histories.of(int(x)) for x in users]
        old_rs = [self.histories.ratings_of(int(x)) for x in users]
        has_r = np.fromiter((x is not None for x in old_rs), bool, len(users))
        lengths = np.fromiter((len(x) for x in olds), np.int64, len(users))
        ou = np.repeat(users, lengths)
        oi = np.concatenate(olds) if len(olds) else np.zeros(0, np.int64)
        orr = np.concatenate([x if x is not None else np.full(len(o), np.nan, np.float32) for x, o in zip(old_rs, olds)]).astype(np.float32) \
            if len(olds) else np.zeros(0, np.float32)
        kept = ~np.isin(ou * n_items + oi, nu.astype(np.int64) * n_items + ni)
        all_u = np.concatenate([ou[kept], nu])
        all_i = np.concatenate([oi[kept], ni])
        all_r = np.concatenate([orr[kept], nr])
        phase = np.concatenate([np.zeros(int(kept.sum()), np.int8), np.ones(len(nu), np.int8)])
        pos = np.arange(len(all_u))
        order = np.lexsort((pos, phase, all_u))
        all_i, all_r = all_i[order], all_r[order]
        counts = np.bincount(np.searchsorted(users, all_u[order]), minlength=len(users))
        cuts = np.cumsum(counts)[:-1]
        rows = np.split(all_i, cuts)
        ratings = [x if h else None for x, h in zip(np.split(all_r, cuts), has_r)]
        return users, rows, ratings

    def _grow_vectors(self, n_users: int) -> None:
        """Room for ``n_users`` writable query vectors: the trained ones are copied on the first
        write (the retrieval model keeps its own); capacity doubles, so adding users costs O(1)
        amortised."""
        view = self.user_vectors
        buf = self._vectors
        if len(view) >= n_users and buf is not self.retrieval.user_vectors:
            return
        if len(buf) < n_users or buf is self.retrieval.user_vectors:
            size = max(2 * len(buf), n_users, 16) if n_users > len(view) else len(view)
            grown = np.zeros((size, buf.shape[1]), np.float32)
            grown[: len(view)] = view
            self._vectors = buf = grown
        self.user_vectors = buf[: max(n_users, len(view))]
        self.histories.n_users = max(n_users, self.histories.n_users)

    def record_ratings(self, user_id: Any, item_ids: list[Any], ratings: list[float]) -> dict[str, Any]:
        """Apply one user's ratings to memory only (no online state; offline tools and tests).

        Raises:
            UnknownIdError: an item id the model does not know.
            IdTypeError: a user or item id of the wrong type.
            ValueError: lengths differ or nothing to record.
        """
        if len(item_ids) != len(ratings):
            raise ValueError(f"{len(item_ids)} item ids but {len(ratings)} ratings")
        if not item_ids:
            raise ValueError("no ratings to record")
        for i in item_ids:
            self.item_idx(i)
        self.users.parse(user_id)
        created = self.users.get(user_id) < 0
        self.apply_ratings([user_id] * len(item_ids), list(item_ids), list(ratings))
        u = self.user_idx(user_id)
        return {"user_idx": u, "created": created, "history": self.histories.of(u)}
