"""One typed id space: outside ids (as in the data) <-> internal rows, for users or for items.

The type comes from the data: integer ids stay integers, text ids stay text. An id of the other
type is refused (:class:`IdTypeError`, HTTP 422) rather than coerced into a second id column or a
silent miss. Ids added at run time (new users, added movies) go to an overlay dictionary, so
adding one never copies the map of every id.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from movierec.core.data import to_plain


class UnknownIdError(KeyError):
    """An outside user or item id the model does not know (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown id"


class IdTypeError(ValueError):
    """An id of the wrong type for this id space, e.g. text where ids are integers (HTTP 422)."""


ID_BOUND = 2**53
"""Integer ids must satisfy |id| <= 2**53: exact in JSON numbers, and they fit int64."""


class IdSpace:
    """Outside ids of one kind (``user_id`` or ``item_id``) and their rows, oldest row first.

    Args:
        ids: the trained ids, row order.
        name: ``"user_id"`` or ``"item_id"``, for messages.
    """

    def __init__(self, ids: np.ndarray, name: str) -> None:
        self.trained = np.asarray(ids)
        self.name = name
        self.integer = bool(pd.api.types.is_integer_dtype(self.trained.dtype))
        self._index = pd.Index(self.trained)
        self._added: dict[Any, int] = {}
        self._added_ids: list[Any] = []

    def __len__(self) -> int:
        return len(self.trained) + len(self._added_ids)

    def parse(self, value: Any) -> Any:
        """``value`` (from a URL, JSON or a database) as an id of this space's type.

        Raises:
            IdTypeError: text that is not an integer where ids are integers, an integer out of
                range, or a boolean.
        """
        kind = type(value)
        if kind is int and self.integer and -ID_BOUND <= value <= ID_BOUND:
            return value  # the common case, first: ids read back from the online state
        if kind is str and not self.integer:
            return value
        if isinstance(value, (bool, np.bool_)):
            raise IdTypeError(f"{self.name} {value!r} is not an id")
        value = to_plain(value)
        if self.integer:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, str):
                text = value.strip()
                if not (text.lstrip("-").isdigit() and text == value):
                    raise IdTypeError(f"{self.name} {value!r}: this model's {self.name}s are integers")
                value = int(text)
            if not isinstance(value, int):
                raise IdTypeError(f"{self.name} {value!r}: this model's {self.name}s are integers")
            if abs(value) > ID_BOUND:
                raise IdTypeError(f"{self.name} {value!r} is out of range (|id| <= 2**53)")
            return value
        if isinstance(value, (int, float)):
            return str(value)
        if not isinstance(value, str):
            raise IdTypeError(f"{self.name} {value!r} is not an id")
        return value

    def get(self, value: Any) -> int:
        """The row of ``value``, or -1 when unknown (including ids of the wrong type)."""
        try:
            key = self.parse(value)
        except IdTypeError:
            return -1
        # one hash lookup; get_indexer([key]) builds an Index per call, a large share of a
        # cached answer's time
        try:
            pos = self._index.get_loc(key)
        except (KeyError, TypeError):
            return self._added.get(key, -1)
        if isinstance(pos, (int, np.integer)):
            return int(pos)
        return int(np.flatnonzero(self._index == key)[0])  # duplicated ids (never built so): the first

    def rows(self, values: list[Any]) -> np.ndarray:
        """Rows of many ids at once (-1 for unknown ones and ids of the wrong type): one index
        lookup for the trained ids, a dictionary for the ones added since."""
        keys: list[Any] = []
        bad = np.zeros(len(values), bool)
        placeholder = 0 if self.integer else ""
        for n, v in enumerate(values):
            try:
                keys.append(self.parse(v))
            except IdTypeError:
                keys.append(placeholder)
                bad[n] = True
        if not keys:
            return np.zeros(0, np.int64)
        arr = np.asarray(keys, dtype=np.int64 if self.integer else object)
        out = self._index.get_indexer(arr).astype(np.int64) if len(self._index) else np.full(len(arr), -1, np.int64)
        if self._added:
            for n in np.flatnonzero(out < 0):
                out[n] = self._added.get(keys[n], -1)
        out[bad] = -1
        return out

    def row(self, value: Any) -> int:
        """The row of ``value``.

        Raises:
            IdTypeError: the wrong type (422 before 404: the id could never exist).
            UnknownIdError: a well-typed id this space does not hold.
        """
        key = self.parse(value)
        pos = self.get(key)
        if pos < 0:
            raise UnknownIdError(f"unknown {self.name} {value!r}")
        return pos

    def add(self, value: Any, checked: bool = False) -> int:
        """Give a new id the next row; returns it. ``checked``: the caller already found it unknown."""
        key = self.parse(value)
        if not checked and self.get(key) >= 0:
            raise ValueError(f"{self.name} {key!r} already exists")
        self._added[key] = len(self)
        self._added_ids.append(key)
        return self._added[key]

    def id_of(self, row: int) -> Any:
        """The outside id of ``row`` as a plain Python value."""
        n = len(self.trained)
        return to_plain(self.trained[row]) if row < n else self._added_ids[row - n]

    def all(self) -> np.ndarray:
        """Every id, row order (a new array: for offline jobs, not per request)."""
        if not self._added_ids:
            return self.trained
        same = self.trained.dtype if self.trained.dtype.kind in "iuO" else object
        return np.concatenate([self.trained, np.asarray(self._added_ids, dtype=same)])
