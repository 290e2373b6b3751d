"""The answer cache: finished recommendation lists, bounded in entries and in bytes.

Ranking a user's candidates costs milliseconds; returning users ask again and again (paging,
refreshes), so finished lists are kept until the user's history, the catalogue or the model
changes. Least recently used entries go first once either bound is reached; a key whose text
is long (a request excluding hundreds of movies) is not cached at all, so no client can make
one entry large.

An entry may also carry the finished HTTP body of its answer (:meth:`AnswerCache.put_blob`), so
a repeated request is answered without re-serialising; the body goes with its entry (dropped
when the user's history or the catalogue changes) and counts towards the byte bound.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

_ENTRY_OVERHEAD = 240  # bytes of dict slots, tuples and array headers per entry (order of magnitude)


class AnswerCache:
    """LRU of ``(user row, request key) -> (item_idx, scores)``.

    Args:
        max_entries: entries kept at most.
        max_bytes: bytes of arrays and keys kept at most.
        max_key_chars: longer request keys are not cached.
    """

    def __init__(self, max_entries: int = 50_000, max_bytes: int = 64 << 20, max_key_chars: int = 512) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_key_chars = max_key_chars
        self.bytes = 0
        # (user, key) -> [item_idx, scores, bytes counted, serialised answer or None]
        self._data: OrderedDict[tuple[int, tuple], list[Any]] = OrderedDict()
        self._by_user: dict[int, set[tuple]] = {}
        self._aliases: dict[tuple[str, bytes], tuple[int, tuple]] = {}
        self._user_gen: dict[int, int] = {}
        self._gen = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def stamp(self, user: int) -> tuple[int, int]:
        """Taken before computing an answer: :meth:`put` drops the answer if the user or the
        catalogue changed meanwhile (it would be stale)."""
        return self._gen, self._user_gen.get(user, 0)

    def get(self, user: int, key: tuple) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            hit = self._data.get((user, key))
            if hit is None:
                return None
            self._data.move_to_end((user, key))
            return hit[0], hit[1]

    def get_blob(self, user: int, key: tuple) -> bytes | None:
        """The serialised answer attached to ``(user, key)``, if any (counts as a use)."""
        with self._lock:
            hit = self._data.get((user, key))
            if hit is None or hit[3] is None:
                return None
            self._data.move_to_end((user, key))
            return hit[3]

    def put_blob(
        self, user: int, key: tuple, blob: bytes, stamp: tuple[int, int], alias: tuple[str, bytes] | None = None
    ) -> bool:
        """Attach ``blob`` (the answer serialised) to the entry ``(user, key)``.

        ``stamp`` is :meth:`stamp` taken before the answer was read or computed: when the user
        or the catalogue changed since, the entry may hold a newer answer than ``blob`` and
        nothing is attached. ``alias`` (the request's path and query string, which always
        parse to this user and key) lets :meth:`blob_for` find the body without parsing the
        request. Returns whether the body is attached.
        """
        with self._lock:
            hit = self._data.get((user, key))
            if hit is None or stamp != self.stamp(user):
                return False
            if hit[3] is None:
                if self.bytes + len(blob) > self.max_bytes:
                    return False
                hit[3] = blob
                hit[2] += len(blob)
                self.bytes += len(blob)
            if alias is not None and len(alias[0]) + len(alias[1]) <= self.max_key_chars:
                if len(self._aliases) >= self.max_entries:
                    self._aliases.clear()  # a bound, not an LRU: they are rebuilt on the next answers
                self._aliases[alias] = (user, key)
            return True

    def blob_for(self, alias: tuple[str, bytes]) -> bytes | None:
        """The body attached under ``alias`` by :meth:`put_blob`, while its entry holds it."""
        target = self._aliases.get(alias)
        return None if target is None else self.get_blob(*target)

    def put(self, user: int, key: tuple, ids: np.ndarray, scores: np.ndarray, stamp: tuple[int, int] | None = None) -> None:
        if self.max_entries <= 0 or user < 0:
            return
        key_chars = len(repr(key))
        if key_chars > self.max_key_chars:
            return
        size = int(ids.nbytes + scores.nbytes) + key_chars + _ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        with self._lock:
            if stamp is not None and stamp != self.stamp(user):
                return
            self._drop((user, key))
            self._data[(user, key)] = [ids.copy(), scores.copy(), size, None]
            self._by_user.setdefault(user, set()).add(key)
            self.bytes += size
            while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
                self._drop(next(iter(self._data)))

    def _drop(self, full_key: tuple[int, Any]) -> None:
        hit = self._data.pop(full_key, None)
        if hit is None:
            return
        self.bytes -= hit[2]
        keys = self._by_user.get(full_key[0])
        if keys is not None:
            keys.discard(full_key[1])
            if not keys:
                del self._by_user[full_key[0]]

    def forget(self, user: int | None = None) -> None:
        """Drop one user's answers (new ratings) or everyone's (catalogue change)."""
        with self._lock:
            if user is None:
                self._gen += 1
                self._data.clear()
                self._by_user.clear()
                self.bytes = 0
                return
            self._user_gen[user] = self._user_gen.get(user, 0) + 1
            for key in list(self._by_user.get(user, ())):
                self._drop((user, key))
