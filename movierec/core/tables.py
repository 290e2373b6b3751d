"""One delimited file parsed into a frame, with errors that name the file, line and column.

Every loader parses with pandas' C engine (vectorised: a 25M-row ratings.csv is read without a
Python loop per row). Only after a problem has been found does :class:`Table` walk the file line
by line, to turn a data row into the 1-based file line (header and blank lines counted) and the
column that a :class:`~movierec.core.data.DataError` names.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_float_dtype, is_integer_dtype, is_numeric_dtype

from movierec.core.data import DataError, to_plain

# MovieLens spells the id columns userId / movieId; plain CSVs use user_id / item_id.
_ALIASES = {"userid": "user_id", "movieid": "item_id", "itemid": "item_id"}
_FIELDS_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_UNIT_SEP = "\x1f"  # stands in for multi-character separators ('::') so the C parser can run


def _canonical(name: object) -> str:
    key = str(name).strip()
    return _ALIASES.get(key.lower().replace("_", ""), key)


def plural(n: int, word: str) -> str:
    """'1 field', '2 fields': counts in messages."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _parses_as_float(text: object) -> bool:
    try:
        float(str(text))
        return True
    except ValueError:
        return False


class Table:
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
        message = f"row has {plural(saw, 'field')}, expected {want}"
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


def read_table(
    path: str | Path,
    sep: str,
    *,
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    required: Sequence[str] = (),
    text: Sequence[str] = (),
) -> Table:
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
    table = Table(path, sep, encoding, names)
    table.parse(required, text)
    return table
