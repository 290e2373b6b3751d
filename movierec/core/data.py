"""Dataset schema, the one container every stage shares, and the loaders that build it.

The :class:`Dataset` is the only place outside ids (as given in the files) become internal
contiguous indices (``user_idx`` / ``item_idx``). Splits derive new datasets that keep the same
id maps, so indices agree between train and test.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pandas.api.types import (
    is_bool_dtype,
    is_float_dtype,
    is_integer_dtype,
    is_numeric_dtype,
)

log = logging.getLogger(__name__)

RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "year", "genres", "tags", "description"]


class DataError(ValueError):
    """Bad input data. The message names the file, line and column where known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.reason = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


def _normalise_items(items: pd.DataFrame) -> pd.DataFrame:
    """Give the item table every schema column with a consistent dtype."""
    items = items.copy()
    if "title" not in items:
        items["title"] = ""
    items["title"] = items["title"].fillna("").astype(str)
    if "year" not in items:
        items["year"] = pd.array([pd.NA] * len(items), dtype="Int64")
    items["year"] = pd.to_numeric(items["year"], errors="coerce").astype("Int64")
    if "genres" not in items:
        items["genres"] = [[] for _ in range(len(items))]
    items["genres"] = [
        list(g) if isinstance(g, (list, tuple, np.ndarray)) else [] for g in items["genres"]
    ]
    for col in ("tags", "description"):
        if col not in items:
            items[col] = ""
        items[col] = items[col].fillna("").astype(str)
    extra = [c for c in items.columns if c not in ITEM_COLUMNS]
    return items[ITEM_COLUMNS + extra].reset_index(drop=True)


@dataclass(eq=False)
class Dataset:
    """Ratings, the item catalogue, optional user features, and the id maps between them.

    Args:
        ratings: columns ``user_id, item_id, rating, timestamp`` (outside ids as given).
        items: the catalogue: ``item_id, title, year, genres (list[str]), tags, description``.
            Every item in ``ratings`` must be in ``items``; items may have no ratings (cold).
        users: optional ``user_id`` plus feature columns.
        name: a short label for logs and the manifest.
        user_ids: the user id map (row ``i`` is user_idx ``i``); derived from ratings and users
            when not given. Splits pass the parent's map so indices stay aligned.

    After construction ``ratings`` also carries ``user_idx`` and ``item_idx`` (int64).
    """

    ratings: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    name: str = "dataset"
    user_ids: np.ndarray | None = None
    _user_index: pd.Index = field(init=False, repr=False)
    _item_index: pd.Index = field(init=False, repr=False)

    def __post_init__(self) -> None:
        missing = [c for c in ("user_id", "item_id", "rating") if c not in self.ratings.columns]
        if missing:
            raise DataError(f"ratings lack column(s) {missing}", column=missing[0])
        ratings = self.ratings.copy()
        if "timestamp" not in ratings:
            ratings["timestamp"] = 0
        ratings["rating"] = ratings["rating"].astype("float32")
        ratings["timestamp"] = ratings["timestamp"].fillna(0).astype("int64")
        if ratings["rating"].isna().any():
            raise DataError("ratings contain missing values", column="rating")
        self.items = _normalise_items(self.items)
        if self.items["item_id"].duplicated().any():
            dup = self.items.loc[self.items["item_id"].duplicated(), "item_id"].iloc[0]
            raise DataError(f"item table has duplicate item_id {dup!r}", column="item_id")
        self._item_index = pd.Index(self.items["item_id"].to_numpy())
        item_idx = self._item_index.get_indexer(ratings["item_id"].to_numpy())
        if (item_idx < 0).any():
            unknown = ratings.loc[item_idx < 0, "item_id"].iloc[0]
            raise DataError(
                f"rating refers to item_id {unknown!r} that is not in the item table",
                column="item_id",
            )
        if self.user_ids is None:
            ids = pd.unique(ratings["user_id"].to_numpy())
            if self.users is not None and "user_id" in self.users:
                ids = pd.unique(np.concatenate([ids, self.users["user_id"].to_numpy()]))
            self.user_ids = np.sort(ids) if _sortable(ids) else ids
        self._user_index = pd.Index(self.user_ids)
        user_idx = self._user_index.get_indexer(ratings["user_id"].to_numpy())
        if (user_idx < 0).any():
            unknown = ratings.loc[user_idx < 0, "user_id"].iloc[0]
            raise DataError(f"user_id {unknown!r} is not in the user id map", column="user_id")
        ratings["user_idx"] = user_idx.astype("int64")
        ratings["item_idx"] = item_idx.astype("int64")
        self.ratings = ratings.reset_index(drop=True)

    # ---- sizes and maps -------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self._user_index)

    @property
    def n_items(self) -> int:
        return len(self._item_index)

    @property
    def item_ids(self) -> np.ndarray:
        return self._item_index.to_numpy()

    @property
    def rating_scale(self) -> tuple[float, float]:
        """(min, max) rating seen in the data: the scale is read, never assumed."""
        if len(self.ratings) == 0:
            return (0.0, 1.0)
        r = self.ratings["rating"]
        return (float(r.min()), float(r.max()))

    def user_index(self, user_ids: object) -> np.ndarray:
        """Internal indices of outside user ids; -1 where unknown."""
        return self._user_index.get_indexer(np.atleast_1d(np.asarray(user_ids)))

    def item_index(self, item_ids: object) -> np.ndarray:
        """Internal indices of outside item ids; -1 where unknown."""
        return self._item_index.get_indexer(np.atleast_1d(np.asarray(item_ids)))

    # ---- derived views ----------------------------------------------------------------
    def with_ratings(self, ratings: pd.DataFrame, name: str | None = None) -> "Dataset":
        """A dataset over a subset of the ratings that keeps this one's id maps."""
        cols = [c for c in RATING_COLUMNS if c in ratings.columns]
        return Dataset(
            ratings[cols],
            self.items,
            self.users,
            name=name or self.name,
            user_ids=self.user_ids,
        )

    def to_csr(self, values: str | None = None) -> sp.csr_matrix:
        """User x item sparse matrix (1.0 per rating, or the given column's values)."""
        data = (
            np.ones(len(self.ratings), dtype=np.float32)
            if values is None
            else self.ratings[values].to_numpy(np.float32)
        )
        return sp.csr_matrix(
            (data, (self.ratings["user_idx"].to_numpy(), self.ratings["item_idx"].to_numpy())),
            shape=(self.n_users, self.n_items),
        )

    def genre_vocabulary(self) -> list[str]:
        """Sorted distinct genres of the catalogue."""
        return sorted({g for gs in self.items["genres"] for g in gs})

    def fingerprint(self) -> str:
        """sha256 over ratings and item ids: identifies the data a model was trained on."""
        h = hashlib.sha256()
        h.update(pd.util.hash_pandas_object(self.ratings[RATING_COLUMNS], index=False).to_numpy().tobytes())
        h.update(pd.util.hash_pandas_object(self.items["item_id"], index=False).to_numpy().tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        lo, hi = self.rating_scale
        return (
            f"Dataset({self.name!r}: {len(self.ratings):,} ratings, {self.n_users:,} users, "
            f"{self.n_items:,} items, ratings {lo:g}..{hi:g})"
        )


def _sortable(values: np.ndarray) -> bool:
    try:
        np.sort(values)
        return True
    except TypeError:
        return False

# ---- loaders -------------------------------------------------------------------------------
# Every loader parses with pandas' C engine (vectorised: a 25M-row ratings.csv is read without a
# Python loop per row). Only after a problem has been found does :class:`_Table` walk the file
# line by line, to turn a data row into the 1-based file line (header and blank lines counted)
# and the column that a :class:`DataError` names.

_YEAR_RE = r"\((\d{4})\)\s*$"
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]
NO_GENRES = "(no genres listed)"
# MovieLens spells the id columns userId / movieId; plain CSVs use user_id / item_id.
_ALIASES = {"userid": "user_id", "movieid": "item_id", "itemid": "item_id"}
_FIELDS_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_UNIT_SEP = "\x1f"  # stands in for multi-character separators ('::') so the C parser can run
# Files the loaders read; a zip is unpacked only as far as these.
_KNOWN_FILES = {
    "u.data", "u.item", "u.user",
    "ratings.dat", "movies.dat", "users.dat", "tags.dat",
    "ratings.csv", "movies.csv", "tags.csv", "users.csv",
}


def split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); titles without a year keep year <NA>."""
    titles = titles.fillna("").astype(str).str.strip()
    year = pd.to_numeric(titles.str.extract(_YEAR_RE)[0], errors="coerce").astype("Int64")
    clean = titles.str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True).str.strip()
    return clean, year


def _canonical(name: object) -> str:
    key = str(name).strip()
    return _ALIASES.get(key.lower().replace("_", ""), key)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def to_plain(value: Any) -> Any:
    """numpy scalars as plain Python values (JSON, messages that read 'duplicate item_id 1')."""
    return value.item() if isinstance(value, np.generic) else value


def _parses_as_float(text: object) -> bool:
    try:
        float(str(text))
        return True
    except ValueError:
        return False


class _Table:
    """One delimited file parsed into a frame, plus what error messages need to point into it.

    Args:
        path: the file.
        sep: field separator as written in the file (``'::'`` is allowed).
        encoding: text encoding (MovieLens 100K/1M are latin-1, the CSV releases utf-8).
        names: column names of a headerless file; ``None`` means the first line is a header.
    """

    def __init__(self, path: Path, sep: str, encoding: str, names: Sequence[str] | None) -> None:
        self.path = path
        self.sep = sep
        self.encoding = encoding
        self.names = list(names) if names is not None else None
        self.header = names is None
        self.file_columns: list[str] = list(names or [])  # names as written (for messages)
        self.original: dict[str, str] = {}  # canonical name -> name in the file
        self.df = pd.DataFrame()

    # -- parsing ----------------------------------------------------------------------------
    def parse(self, required: Sequence[str], text: Sequence[str]) -> None:
        """Parse with the C engine; map every pandas failure to a :class:`DataError`."""
        single = self.sep if len(self.sep) == 1 else _UNIT_SEP
        kwargs: dict[str, Any] = dict(
            sep=single,
            encoding=self.encoding,
            quoting=csv.QUOTE_MINIMAL if self.sep == "," else csv.QUOTE_NONE,
            keep_default_na=False,  # "NA" or "null" may be a title or a string id
            na_values=[""],
            engine="c",
            header=0 if self.header else None,
        )
        try:
            if self.header:
                columns = [str(c) for c in pd.read_csv(self._source(), nrows=0, **kwargs).columns]
                self.file_columns = [c.strip() for c in columns]
                canonical = [_canonical(c) for c in columns]
                self.original = dict(zip(canonical, self.file_columns))
                missing = [c for c in required if c not in canonical]
                if missing:
                    raise self._missing_columns(missing)
                dtype: dict[Any, str] = {c: "string" for c, k in zip(columns, canonical) if k in text}
            else:
                assert self.names is not None
                dtype = {i: "string" for i, n in enumerate(self.names) if n in text}
            with warnings.catch_warnings():
                # mixed chunks come back as object columns; ids and numbers are checked below
                warnings.simplefilter("ignore", pd.errors.DtypeWarning)
                df = pd.read_csv(self._source(), dtype=dtype, **kwargs)
        except UnicodeDecodeError:
            raise self._decode_error() from None
        except pd.errors.EmptyDataError:
            raise DataError("file has no data", path=self.path, line=1) from None
        except pd.errors.ParserError as e:
            raise self._parser_error(e) from None
        if self.header:
            df.columns = [_canonical(c) for c in df.columns]
        else:
            assert self.names is not None
            if df.shape[1] != len(self.names):  # the first row set the width and it is wrong
                first = next(self._records(), (1, []))[0]
                raise self._ragged(first, df.shape[1], len(self.names))
            df.columns = self.names
        if df.empty:
            raise DataError("file has no data rows", path=self.path, line=2 if self.header else 1)
        self.df = df
        self._check_complete(required)

    def _source(self) -> Path | io.BytesIO:
        if len(self.sep) == 1:
            return self.path
        # '::' files are small enough (ML-1M/10M) to substitute in memory
        data = self.path.read_bytes().replace(self.sep.encode(self.encoding), _UNIT_SEP.encode())
        return io.BytesIO(data)

    def _check_complete(self, required: Sequence[str]) -> None:
        """Short (ragged) rows and empty required cells both show up as NA after parsing; only
        rows with an NA are looked up in the file to tell which it is."""
        df = self.df
        na_cols = [c for c in df.columns if df[c].hasnans]
        if not na_cols:
            return
        mask = df[na_cols].isna().to_numpy()
        rows = np.flatnonzero(mask.any(axis=1))
        width = df.shape[1]
        for row, line, fields in self._rows(rows):
            if len(fields) != width:
                raise self._ragged(line, len(fields), width)
            for j, col in enumerate(na_cols):
                if col in required and mask[row, j]:
                    raise self.error("value is missing", line=line, column=col)

    # -- typed columns ----------------------------------------------------------------------
    def numeric(self, column: str, what: str = "value") -> np.ndarray:
        """Column as float64 (NA where empty); a non-number names its line and column."""
        s = self.df[column]
        if is_numeric_dtype(s) and not is_bool_dtype(s):
            return s.to_numpy(dtype="float64", na_value=np.nan)
        stripped = s.astype("string").str.strip()
        values = pd.to_numeric(stripped, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        bad = np.isnan(values) & s.notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raw = to_plain(s.iat[row])
            kind = "is not a finite number" if _parses_as_float(raw) else "is not a number"
            raise self.error(f"{what} {raw!r} {kind}", row=row, column=column)
        return values

    def ids(self, column: str) -> pd.Series:
        """Outside ids as given: integer ids stay int64, anything else becomes str."""
        s = self.df[column]
        if is_integer_dtype(s) and not is_bool_dtype(s):
            try:
                return s.astype("int64")
            except (OverflowError, ValueError):  # beyond int64: keep the digits as text
                return pd.Series(s.astype(str).to_numpy(dtype=object), index=s.index)
        if is_float_dtype(s):
            arr = s.to_numpy(dtype="float64")
            if np.all(arr == np.floor(arr)) and np.all(np.abs(arr) < 2**53):
                return pd.Series(arr.astype(np.int64), index=s.index)
        out = pd.Series(s.astype(str).str.strip().to_numpy(dtype=object), index=s.index)
        empty = (out == "").to_numpy()
        if empty.any():
            raise self.error("id is blank", row=int(np.flatnonzero(empty)[0]), column=column)
        return out

    def text(self, column: str) -> pd.Series:
        """A text column with empty cells as ''."""
        if column not in self.df:
            return pd.Series([""] * len(self.df), dtype=object)
        return pd.Series(self.df[column].astype("string").fillna("").to_numpy(dtype=object))

    def check_unique(self, ids: pd.Series, column: str) -> None:
        dup = ids.duplicated().to_numpy()
        if dup.any():
            row = int(np.flatnonzero(dup)[0])
            value = to_plain(ids.iat[row])
            raise self.error(f"duplicate {column} {value!r}", row=row, column=column)

    # -- errors -----------------------------------------------------------------------------
    def error(
        self, message: str, *, row: int | None = None, line: int | None = None, column: str | None = None
    ) -> DataError:
        """A DataError naming this file, the line of data row ``row`` (or ``line``) and column."""
        if row is not None:
            line = next((ln for _, ln, _ in self._rows(np.array([row]))), None)
        name = self.original.get(column, column) if column is not None else None
        return DataError(message, path=self.path, line=line, column=name)

    def _column_at(self, index: int) -> str:
        if 0 <= index < len(self.file_columns):
            return self.file_columns[index]
        return f"#{index + 1}"

    def _ragged(self, line: int, saw: int, want: int) -> DataError:
        message = f"row has {_plural(saw, 'field')}, expected {want}"
        if saw == 1 and want > 1:
            message += f"; is the separator {self.sep!r} right?"
        return DataError(message, path=self.path, line=line, column=self._column_at(min(saw, want)))

    def _missing_columns(self, missing: list[str]) -> DataError:
        cols = self.file_columns
        if len(cols) == 1 and any(ch in cols[0] for ch in ",;\t|:") and self.sep not in cols[0]:
            message = (
                f"header has a single column {cols[0]!r}; the file must be separated by {self.sep!r}"
            )
        else:
            message = f"required column is missing (header has: {', '.join(cols)})"
        return DataError(message, path=self.path, line=1, column=missing[0])

    def _parser_error(self, e: Exception) -> DataError:
        m = _FIELDS_RE.search(str(e))
        if not m:
            return DataError(f"cannot parse ({str(e).strip()})", path=self.path)
        expected, line, saw = (int(g) for g in m.groups())
        want = len(self.names) if self.names is not None else expected
        if expected != want:  # headerless file whose first row is the odd one
            line = next(self._records(), (1, []))[0]
            saw = expected
        return self._ragged(line, saw, want)

    def _decode_error(self) -> DataError:
        data = self.path.read_bytes()
        try:
            data.decode(self.encoding)
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            line_start = data.rfind(b"\n", 0, e.start) + 1
            field_index = data.count(self.sep.encode(), line_start, e.start)
            return DataError(
                f"byte 0x{data[e.start]:02x} cannot be decoded as {self.encoding} ({e.reason}); "
                f"save the file as {self.encoding.upper()}",
                path=self.path,
                line=line,
                column=self._column_at(field_index),
            )
        return DataError(f"cannot be decoded as {self.encoding}", path=self.path)

    # -- the slow path: walk the file -------------------------------------------------------
    def _records(self) -> Iterator[tuple[int, list[str]]]:
        """(first line number, fields) of every non-blank record, the header included."""
        with open(self.path, encoding=self.encoding, errors="replace", newline="") as f:
            if self.sep == ",":
                csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))  # long descriptions
                reader = csv.reader(f)
                start = 1
                for fields in reader:
                    if fields and not (len(fields) == 1 and not fields[0].strip()):
                        yield start, fields
                    start = reader.line_num + 1
            else:
                for number, raw in enumerate(f, start=1):
                    text = raw.rstrip("\r\n")
                    if text.strip(" "):
                        yield number, text.split(self.sep)

    def _rows(self, rows: np.ndarray) -> Iterator[tuple[int, int, list[str]]]:
        """(row, line, fields) for the given ascending data rows, in one pass over the file."""
        if len(rows) == 0:
            return
        offset = 1 if self.header else 0
        wanted = iter(int(r) for r in rows)
        target = next(wanted)
        for index, (line, fields) in enumerate(self._records()):
            row = index - offset
            if row == target:
                yield row, line, fields
                target = next(wanted, None)
                if target is None:
                    return


def _read_table(
    path: str | Path,
    sep: str,
    *,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    required: Sequence[str] = (),
    text: Sequence[str] = (),
) -> _Table:
    """Read one delimited file (header line when ``names`` is None) and check its shape.

    Raises:
        DataError: missing or empty file, missing column, ragged row, empty required cell or
            undecodable bytes, naming the file, line and column.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=path)
    if not path.is_file():
        raise DataError("is not a file", path=path)
    if path.stat().st_size == 0:
        raise DataError("file is empty", path=path, line=1)
    table = _Table(path, sep, encoding, names)
    table.parse(required, text)
    return table


def _ratings_frame(t: _Table) -> pd.DataFrame:
    """Schema ratings from a parsed table with user_id, item_id, rating[, timestamp]."""
    rating = t.numeric("rating", what="rating")
    bad = ~np.isfinite(rating)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise t.error(
            f"rating {rating[row]:g} is not a finite number",
            row=row,
            column="rating",
        )
    if "timestamp" in t.df:
        ts = t.numeric("timestamp", what="timestamp")
        inf = np.isinf(ts)
        if inf.any():
            raise t.error("timestamp is not finite", row=int(np.flatnonzero(inf)[0]), column="timestamp")
        ts = np.nan_to_num(ts, nan=0.0).astype(np.int64)  # unknown time -> 0, as the schema says
    else:
        ts = np.zeros(len(t.df), dtype=np.int64)
    return pd.DataFrame(
        {
            "user_id": t.ids("user_id").to_numpy(),
            "item_id": t.ids("item_id").to_numpy(),
            "rating": rating,
            "timestamp": ts,
        }
    )


def _split_genres(values: pd.Series) -> list[list[str]]:
    parts = values.astype("string").fillna("").str.split("|").to_numpy(dtype=object)
    return [[g.strip() for g in gs if g.strip() and g.strip() != NO_GENRES] for gs in parts]


def _items_frame(t: _Table) -> pd.DataFrame:
    """Schema items from a table with item_id, title and optional genres/year/tags/description."""
    ids = t.ids("item_id")
    t.check_unique(ids, "item_id")
    title, year = split_title_year(t.text("title"))
    items = pd.DataFrame({"item_id": ids.to_numpy(), "title": title.to_numpy(), "year": year.to_numpy()})
    if "year" in t.df:
        explicit = pd.array(t.numeric("year", what="year"), dtype="Float64").round().astype("Int64")
        items["year"] = pd.Series(explicit).fillna(items["year"]).to_numpy()
    items["genres"] = _split_genres(t.df["genres"]) if "genres" in t.df else [[] for _ in range(len(ids))]
    for col in ("tags", "description"):
        if col in t.df:
            items[col] = t.text(col).to_numpy()
    return items


def _users_frame(t: _Table, keep: Sequence[str] | None = None) -> pd.DataFrame:
    """User features: numeric columns stay numeric, the rest become text."""
    ids = t.ids("user_id")
    t.check_unique(ids, "user_id")
    users = pd.DataFrame({"user_id": ids.to_numpy()})
    for col in keep if keep is not None else [c for c in t.df.columns if c != "user_id"]:
        s = t.df[col]
        if is_numeric_dtype(s) and not is_bool_dtype(s):
            users[col] = s.to_numpy()
        else:
            users[col] = t.text(col).to_numpy()
    return users


def _tags_text(t: _Table) -> pd.Series:
    """item_id -> space-joined distinct tags; a tag repeated by many users is kept once so that
    popular tags do not swamp the item text."""
    tags = pd.DataFrame({"item_id": t.ids("item_id").to_numpy(), "tag": t.text("tag").str.strip().to_numpy()})
    tags = tags[tags["tag"] != ""]
    tags = tags.loc[~tags.assign(key=tags["tag"].str.lower()).duplicated(["item_id", "key"])]
    return tags.groupby("item_id", sort=False)["tag"].agg(" ".join)


def _same_id_type(a: pd.Series, b: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Ids compare only within one type; when one file has text ids, compare everything as text."""
    a_int, b_int = is_integer_dtype(a), is_integer_dtype(b)
    if a_int == b_int:
        return a, b
    return pd.Series(a.astype(str).to_numpy(dtype=object)), pd.Series(b.astype(str).to_numpy(dtype=object))


def _dedupe(ratings: pd.DataFrame, source: str) -> pd.DataFrame:
    """Keep the latest rating of each (user, item) (the later line on equal timestamps) and log
    how many were dropped. The common case, no duplicates, costs one hash pass."""
    # one int64 key per (user, item) pair hashes much faster than two columns
    users, _ = pd.factorize(ratings["user_id"])
    items, item_uniques = pd.factorize(ratings["item_id"])
    key = pd.Series(users.astype(np.int64) * max(1, len(item_uniques)) + items)
    dup = key.duplicated(keep=False).to_numpy()
    if not dup.any():
        return ratings
    pos = np.flatnonzero(dup)
    sub = pd.DataFrame({"key": key.to_numpy()[pos], "timestamp": ratings["timestamp"].to_numpy()[pos], "pos": pos})
    sub = sub.sort_values(["timestamp", "pos"], kind="stable")
    drop = sub.loc[sub.duplicated("key", keep="last"), "pos"].to_numpy()
    keep = np.ones(len(ratings), dtype=bool)
    keep[drop] = False
    log.warning(
        "%s: %s dropped; kept the latest rating of each (user, item)",
        source,
        _plural(len(drop), "duplicate rating"),
    )
    return ratings.loc[keep].reset_index(drop=True)


def _add_missing_items(items: pd.DataFrame, ratings: pd.DataFrame, source: str) -> pd.DataFrame:
    """Rated items absent from the item table join it with an empty title (and a warning), so a
    partial catalogue still loads."""
    missing = pd.Index(pd.unique(ratings["item_id"])).difference(pd.Index(items["item_id"]))
    if len(missing):
        log.warning(
            "%s: %s rated but missing from the item table; added with empty titles",
            source,
            _plural(len(missing), "item"),
        )
        extra = pd.DataFrame({"item_id": missing.to_numpy(), "title": ""})
        items = pd.concat([items, extra], ignore_index=True)
    return items


def _build(
    ratings: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    name: str,
    source: Path,
) -> Dataset:
    ratings = ratings.copy()
    ratings["item_id"], items["item_id"] = _same_id_type(ratings["item_id"], items["item_id"])
    if users is not None:
        ratings["user_id"], users["user_id"] = _same_id_type(ratings["user_id"], users["user_id"])
    ratings = _dedupe(ratings, str(source))
    items = _add_missing_items(items, ratings, str(source))
    ds = Dataset(ratings, items, users, name=name)
    log.info("loaded %r", ds)
    return ds


def load_ml100k(folder: str | Path) -> Dataset:
    """MovieLens 100K: ``u.data`` (tab), ``u.item`` (latin-1, '|', 19 genre flags), ``u.user``."""
    folder = Path(folder)
    path = folder / "u.data"
    ratings = _ratings_frame(_read_table(path, "\t", names=RATING_COLUMNS, required=RATING_COLUMNS))
    flags = [f"g{i}" for i in range(len(ML100K_GENRES))]
    it = _read_table(
        folder / "u.item",
        "|",
        names=["item_id", "title", "release", "video", "url", *flags],
        encoding="latin-1",
        required=["item_id", *flags],
        text=["title", "release", "video", "url"],
    )
    items = _items_frame(it)
    release_year = pd.to_numeric(it.text("release").str[-4:], errors="coerce").astype("Int64")
    items["year"] = pd.Series(items["year"]).fillna(release_year).to_numpy()
    on = np.column_stack([it.numeric(f, what="genre flag") for f in flags]) == 1
    items["genres"] = [[g for g, f in zip(ML100K_GENRES, row) if f and g != "unknown"] for row in on]
    users = None
    if (folder / "u.user").is_file():
        u = _read_table(
            folder / "u.user",
            "|",
            names=["user_id", "age", "gender", "occupation", "zip"],
            encoding="latin-1",
            required=["user_id"],
            text=["gender", "occupation", "zip"],
        )
        users = _users_frame(u, keep=["age", "gender", "occupation"])
    return _build(ratings, items, users, "ml-100k", path)


def load_ml1m(folder: str | Path) -> Dataset:
    """MovieLens 1M-style '::' files: ``ratings.dat``, ``movies.dat``, optional ``users.dat``
    (1M) and ``tags.dat`` (10M)."""
    folder = Path(folder)
    path = folder / "ratings.dat"
    ratings = _ratings_frame(
        _read_table(path, "::", names=RATING_COLUMNS, encoding="latin-1", required=RATING_COLUMNS)
    )
    m = _read_table(
        folder / "movies.dat",
        "::",
        names=["item_id", "title", "genres"],
        encoding="latin-1",
        required=["item_id"],
        text=["title", "genres"],
    )
    items = _items_frame(m)
    if (folder / "tags.dat").is_file() and (folder / "tags.dat").stat().st_size:
        t = _read_table(
            folder / "tags.dat",
            "::",
            names=["user_id", "item_id", "tag", "timestamp"],
            encoding="latin-1",
            required=["item_id"],
            text=["tag"],
        )
        items["tags"] = _map_tags(items["item_id"], _tags_text(t))
    users = None
    if (folder / "users.dat").is_file():
        u = _read_table(
            folder / "users.dat",
            "::",
            names=["user_id", "gender", "age", "occupation", "zip"],
            encoding="latin-1",
            required=["user_id"],
            text=["gender", "zip"],
        )
        users = _users_frame(u, keep=["age", "gender", "occupation"])
    return _build(ratings, items, users, folder.name or "ml-1m", path)


def _map_tags(item_ids: pd.Series, tags: pd.Series) -> np.ndarray:
    item_ids, tag_ids = _same_id_type(pd.Series(item_ids), pd.Series(tags.index))
    lookup = pd.Series(tags.to_numpy(), index=tag_ids.to_numpy())
    return item_ids.map(lookup).fillna("").to_numpy(dtype=object)


def load_movielens_csv(folder: str | Path, name: str | None = None) -> Dataset:
    """latest-small / 25M / 32M layout (and ours from ``movierec synth``): ``ratings.csv``,
    ``movies.csv``, optional ``tags.csv`` and ``users.csv``; ``movies.csv`` may carry
    ``description`` and ``year`` columns."""
    folder = Path(folder)
    path = folder / "ratings.csv"
    ratings = _ratings_frame(
        _read_table(path, ",", required=["user_id", "item_id", "rating"])
    )
    m = _read_table(
        folder / "movies.csv",
        ",",
        required=["item_id", "title"],
        text=["title", "genres", "tags", "description"],
    )
    items = _items_frame(m)
    tpath = folder / "tags.csv"
    if tpath.is_file() and tpath.stat().st_size:
        t = _read_table(tpath, ",", required=["item_id", "tag"], text=["tag"])
        tags = _map_tags(items["item_id"], _tags_text(t))
        if "tags" in items:  # tags column in movies.csv plus tags.csv: keep both
            tags = (items["tags"].astype(str) + " " + pd.Series(tags)).str.strip().to_numpy(dtype=object)
        items["tags"] = tags
    users = None
    upath = folder / "users.csv"
    if upath.is_file() and upath.stat().st_size:
        users = _users_frame(_read_table(upath, ",", required=["user_id"]))
    return _build(ratings, items, users, name or folder.name or "movielens", path)


def load_csv(ratings: str | Path, items: str | Path | None = None) -> Dataset:
    """Plain CSV with a header: ``user_id,item_id,rating[,timestamp]`` and optionally an item file
    ``item_id,title[,genres][,year][,description][,tags]`` with '|'-separated genres. Without an
    item file every rated item gets an empty title."""
    path = Path(ratings)
    frame = _ratings_frame(_read_table(path, ",", required=["user_id", "item_id", "rating"]))
    if items is not None:
        it = _items_frame(
            _read_table(
                items,
                ",",
                required=["item_id", "title"],
                text=["title", "genres", "tags", "description"],
            )
        )
    else:
        it = pd.DataFrame({"item_id": pd.unique(frame["item_id"]), "title": ""})
    return _build(frame, it, None, path.stem, path)


def _detect(folder: Path) -> Callable[[Path], Dataset] | None:
    if (folder / "u.data").is_file():
        return load_ml100k
    if (folder / "ratings.dat").is_file():
        return load_ml1m
    if (folder / "ratings.csv").is_file() and (folder / "movies.csv").is_file():
        return load_movielens_csv
    return None


def load_dataset(path: str | Path) -> Dataset:
    """Auto-detect and load a MovieLens-style folder or ``.zip``: 100K (``u.data``), 1M-style
    (``ratings.dat``) or latest-small/25M/32M/synth (``ratings.csv`` + ``movies.csv``). The data
    may sit in the folder itself or in one subfolder (as the GroupLens zips unpack).

    Raises:
        DataError: nothing loadable, several data sets to choose from, or bad files.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder", path=path)
    if path.is_file():
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        if path.suffix.lower() == ".zip":
            raise DataError("not a valid zip file", path=path)
        raise DataError("expected a data folder or a .zip; for single CSV files use --ratings/--items", path=path)
    folder = _find_data_folder(path)
    loader = _detect(folder)
    assert loader is not None
    return loader(folder)


def _find_data_folder(path: Path) -> Path:
    if _detect(path) is not None:
        return path
    found = [p for p in sorted(path.iterdir()) if p.is_dir() and _detect(p) is not None]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(f"holds several data sets ({names}); pass one of them", path=path)
    if not found:
        raise DataError(
            "no MovieLens files found (u.data, ratings.dat, or ratings.csv + movies.csv)", path=path
        )
    return found[0]


def _load_zip(path: Path) -> Dataset:
    """Unpack only the files the loaders read into a temp folder and load from there; errors
    name the file as ``archive.zip/member``."""
    with tempfile.TemporaryDirectory(prefix="movierec-zip-") as tmp:
        root = Path(tmp)
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    member = PurePosixPath(info.filename)
                    if member.is_absolute() or ".." in member.parts:
                        raise DataError(f"zip member {info.filename!r} escapes the archive", path=path)
                    if not info.is_dir() and member.name in _KNOWN_FILES:
                        zf.extract(info, root)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
            raise DataError(f"not a valid zip file ({e})", path=path) from None
        try:
            folder = _find_data_folder(root)
            loader = _detect(folder)
            assert loader is not None
            if loader is load_movielens_csv:
                return load_movielens_csv(folder, name=folder.name if folder != root else path.stem)
            return loader(folder)
        except DataError as e:
            where = path
            if e.path is not None and Path(e.path).is_relative_to(root):
                rel = Path(e.path).relative_to(root).as_posix()
                where = Path(f"{path}/{rel}") if rel != "." else path
            raise DataError(e.reason, path=where, line=e.line, column=e.column) from None


def load_data(
    data: str | Path | None = None,
    *,
    ratings: str | Path | None = None,
    items: str | Path | None = None,
) -> Dataset:
    """What the CLI's ``--data PATH | --ratings CSV [--items CSV]`` means, in one place."""
    if (data is None) == (ratings is None):
        raise DataError("give either --data PATH or --ratings CSV [--items CSV]")
    if data is not None:
        if items is not None:
            raise DataError("--items goes with --ratings, not with --data")
        return load_dataset(data)
    assert ratings is not None
    return load_csv(ratings, items)


def describe(ds: Dataset) -> dict[str, Any]:
    """A JSON-friendly summary: sizes, rating scale, sparsity, time span and genres."""
    n_r = len(ds.ratings)
    lo, hi = ds.rating_scale
    rated_items = int(ds.ratings["item_idx"].nunique())
    ts = ds.ratings["timestamp"]
    known = ts[ts > 0]
    genres = pd.Series([g for gs in ds.items["genres"] for g in gs], dtype=object).value_counts()
    return {
        "name": ds.name,
        "ratings": n_r,
        "users": ds.n_users,
        "items": ds.n_items,
        "rated_items": rated_items,
        "cold_items": ds.n_items - rated_items,
        "rating_min": lo,
        "rating_max": hi,
        "rating_mean": float(ds.ratings["rating"].mean()) if n_r else None,
        "density": n_r / max(1, ds.n_users * ds.n_items),
        "sparsity": 1.0 - n_r / max(1, ds.n_users * ds.n_items),
        "first_rating": int(known.min()) if len(known) else None,
        "last_rating": int(known.max()) if len(known) else None,
        "items_with_tags": int((ds.items["tags"].str.len() > 0).sum()),
        "items_with_description": int((ds.items["description"].str.len() > 0).sum()),
        "user_features": [c for c in (ds.users.columns if ds.users is not None else []) if c != "user_id"],
        "genres": {str(g): int(n) for g, n in genres.items()},
    }
