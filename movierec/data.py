"""Dataset schema, the one container every stage shares, and the loaders that build it.

The :class:`Dataset` is the only place outside ids (as given in the files) become internal
contiguous indices (``user_idx`` / ``item_idx``). Splits derive new datasets that keep the same
id maps, so indices agree between train and test.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

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
_YEAR_RE = r"\((\d{4})\)\s*$"
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]


def split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); titles without a year keep year <NA>."""
    titles = titles.fillna("").astype(str).str.strip()
    year = pd.to_numeric(titles.str.extract(_YEAR_RE)[0], errors="coerce").astype("Int64")
    clean = titles.str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True).str.strip()
    return clean, year


def _read_table(
    path: Path,
    sep: str,
    names: list[str] | None,
    encoding: str = "utf-8",
    header: int | None = None,
    numeric: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Read a delimited file and check shape and numeric columns, naming file/line/column."""
    if not path.is_file():
        raise DataError("file not found", path=path)
    if path.stat().st_size == 0:
        raise DataError("file is empty", path=path)
    try:
        raw = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"cannot decode bytes as {encoding} ({e.reason})", path=path, line=line) from None
    lines = raw.splitlines()
    first_data = 1 if header is not None else 0
    if len(lines) <= first_data or not any(l.strip() for l in lines[first_data:]):
        raise DataError("file has no data rows", path=path)
    expected = len(names) if names is not None else len(_split_line(lines[0], sep))
    if expected > 1 and sep not in lines[first_data]:
        raise DataError(
            f"expected {expected} fields separated by {sep!r}; is the separator right?",
            path=path,
            line=first_data + 1,
        )
    for i, l in enumerate(lines[first_data:], start=first_data + 1):
        if not l.strip():
            continue
        n = len(_split_line(l, sep))
        if n != expected:
            raise DataError(f"row has {n} fields, expected {expected}", path=path, line=i)
    import csv
    import io

    try:
        df = pd.read_csv(
            io.StringIO(raw),
            sep=sep if len(sep) == 1 else sep.replace("|", r"\|").replace(":", ":"),
            header=header,
            names=names,
            engine="python" if len(sep) > 1 else "c",
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=True,
            quoting=csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE,
        )
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"cannot parse ({e})", path=path) from None
    df.columns = [str(c).strip() for c in df.columns]
    for col, kind in (numeric or {}).items():
        if col not in df.columns:
            raise DataError("required column is missing", path=path, column=col)
        values = pd.to_numeric(df[col].str.strip(), errors="coerce")
        bad = values.isna() & (df[col].str.strip() != "" if kind == "optional" else True)
        if kind != "optional" and bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"value {df[col].iloc[row]!r} is not a number",
                path=path,
                line=row + 1 + first_data,
                column=col,
            )
        df[col] = values
    return df


def _split_line(line: str, sep: str) -> list[str]:
    if sep == ",":
        import csv

        return next(csv.reader([line]))
    return line.split(sep)


def _check_ratings(df: pd.DataFrame, path: Path, first_line: int) -> None:
    r = df["rating"].to_numpy(float)
    bad = ~np.isfinite(r) | (r < 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"rating {df['rating'].iloc[row]!r} is out of range (must be a finite number >= 0)",
            path=path,
            line=row + first_line,
            column="rating",
        )


def _dedupe(ratings: pd.DataFrame, source: str) -> pd.DataFrame:
    """Keep the latest rating of each (user, item); say how many were dropped."""
    before = len(ratings)
    ratings = (
        ratings.reset_index(drop=True)
        .reset_index()
        .sort_values(["timestamp", "index"], kind="stable")
        .drop_duplicates(["user_id", "item_id"], keep="last")
        .sort_values("index")
        .drop(columns="index")
    )
    dropped = before - len(ratings)
    if dropped:
        log.warning("%s: %d duplicate (user, item) ratings dropped, kept the latest of each", source, dropped)
    return ratings.reset_index(drop=True)


def _as_int_ids(s: pd.Series) -> pd.Series:
    """Keep ints as ints; anything else stays a string id."""
    num = pd.to_numeric(s, errors="coerce")
    if num.notna().all() and (num == np.floor(num)).all():
        return num.astype("int64")
    return s.astype(str).str.strip()


def _add_missing_items(items: pd.DataFrame, ratings: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = pd.Index(pd.unique(ratings["item_id"])).difference(pd.Index(items["item_id"]))
    if len(missing):
        log.warning("%s: %d rated items are missing from the item table; added with empty titles", source, len(missing))
        items = pd.concat([items, pd.DataFrame({"item_id": missing.to_numpy(), "title": ""})], ignore_index=True)
    return items


def load_ml100k(folder: str | Path) -> Dataset:
    """MovieLens 100K: ``u.data`` (tab), ``u.item`` (latin-1, '|', 19 genre flags), ``u.user``."""
    folder = Path(folder)
    names = ["user_id", "item_id", "rating", "timestamp"]
    path = folder / "u.data"
    r = _read_table(path, "\t", names, numeric={c: "int" for c in names})
    _check_ratings(r, path, 1)
    ipath = folder / "u.item"
    inames = ["item_id", "title", "release", "video", "url"] + [f"g{i}" for i in range(19)]
    it = _read_table(ipath, "|", inames, encoding="latin-1", numeric={"item_id": "int"})
    flags = it[[f"g{i}" for i in range(19)]].to_numpy() == "1"
    title, year = split_title_year(it["title"])
    release_year = pd.to_numeric(it["release"].str[-4:], errors="coerce").astype("Int64")
    items = pd.DataFrame(
        {
            "item_id": it["item_id"].astype("int64"),
            "title": title,
            "year": year.fillna(release_year),
            "genres": [[g for g, f in zip(ML100K_GENRES, row) if f and g != "unknown"] for row in flags],
        }
    )
    users = None
    upath = folder / "u.user"
    if upath.is_file():
        u = _read_table(upath, "|", ["user_id", "age", "gender", "occupation", "zip"], numeric={"user_id": "int", "age": "int"})
        users = u[["user_id", "age", "gender", "occupation"]].astype({"user_id": "int64", "age": "int64"})
    r = r.astype({"user_id": "int64", "item_id": "int64", "timestamp": "int64"})
    return Dataset(_dedupe(r, str(path)), _add_missing_items(items, r, str(path)), users, name="ml-100k")


def load_ml1m(folder: str | Path) -> Dataset:
    """MovieLens 1M-style '::' files: ``ratings.dat``, ``movies.dat``, optional ``users.dat``."""
    folder = Path(folder)
    names = ["user_id", "item_id", "rating", "timestamp"]
    path = folder / "ratings.dat"
    r = _read_table(path, "::", names, encoding="latin-1", numeric={c: "float" for c in names})
    _check_ratings(r, path, 1)
    mpath = folder / "movies.dat"
    m = _read_table(mpath, "::", ["item_id", "title", "genres"], encoding="latin-1", numeric={"item_id": "int"})
    title, year = split_title_year(m["title"])
    items = pd.DataFrame(
        {"item_id": m["item_id"].astype("int64"), "title": title, "year": year, "genres": _split_genres(m["genres"])}
    )
    users = None
    upath = folder / "users.dat"
    if upath.is_file():
        u = _read_table(upath, "::", ["user_id", "gender", "age", "occupation", "zip"], encoding="latin-1", numeric={"user_id": "int", "age": "int"})
        users = u[["user_id", "age", "gender", "occupation"]].astype({"user_id": "int64", "age": "int64"})
    r = r.astype({"user_id": "int64", "item_id": "int64", "timestamp": "int64"})
    return Dataset(_dedupe(r, str(path)), _add_missing_items(items, r, str(path)), users, name="ml-1m")


def _split_genres(s: pd.Series) -> list[list[str]]:
    return [
        [g.strip() for g in str(v).split("|") if g.strip() and g.strip() != "(no genres listed)"]
        for v in s.fillna("")
    ]


def load_movielens_csv(folder: str | Path, name: str = "movielens") -> Dataset:
    """latest-small / 25M / 32M layout (and ours from ``movierec synth``): ``ratings.csv``,
    ``movies.csv``, optional ``tags.csv`` and ``users.csv``; optional ``description`` column."""
    folder = Path(folder)
    path = folder / "ratings.csv"
    r = _read_table(path, ",", None, header=0, numeric={"userId": "int", "movieId": "int", "rating": "float", "timestamp": "optional"} if _has_header(path, "userId") else None)
    r = r.rename(columns={"userId": "user_id", "movieId": "item_id"})
    for col in ("user_id", "item_id", "rating"):
        if col not in r.columns:
            raise DataError("required column is missing", path=path, column=col)
    if "timestamp" not in r:
        r["timestamp"] = 0
    r["rating"] = pd.to_numeric(r["rating"], errors="coerce")
    _check_ratings(r, path, 2)
    r = r[["user_id", "item_id", "rating", "timestamp"]].copy()
    r["user_id"] = _as_int_ids(r["user_id"])
    r["item_id"] = _as_int_ids(r["item_id"])
    r["timestamp"] = pd.to_numeric(r["timestamp"], errors="coerce").fillna(0).astype("int64")
    mpath = folder / "movies.csv"
    m = _read_table(mpath, ",", None, header=0)
    m = m.rename(columns={"movieId": "item_id"})
    for col in ("item_id", "title"):
        if col not in m.columns:
            raise DataError("required column is missing", path=mpath, column=col)
    m["item_id"] = _as_int_ids(m["item_id"])
    title, year = split_title_year(m["title"])
    items = pd.DataFrame({"item_id": m["item_id"], "title": title, "year": year})
    if "year" in m.columns:
        items["year"] = pd.to_numeric(m["year"], errors="coerce").astype("Int64").fillna(year)
    items["genres"] = _split_genres(m["genres"]) if "genres" in m else [[] for _ in range(len(m))]
    if "description" in m.columns:
        items["description"] = m["description"]
    tpath = folder / "tags.csv"
    if tpath.is_file() and tpath.stat().st_size > 0:
        t = _read_table(tpath, ",", None, header=0).rename(columns={"movieId": "item_id"})
        if {"item_id", "tag"} <= set(t.columns):
            t["item_id"] = _as_int_ids(t["item_id"])
            tags = t.groupby("item_id")["tag"].agg(lambda s: " ".join(str(x) for x in s))
            items["tags"] = items["item_id"].map(tags).fillna("")
    users = None
    upath = folder / "users.csv"
    if upath.is_file():
        users = _read_table(upath, ",", None, header=0).rename(columns={"userId": "user_id"})
        users["user_id"] = _as_int_ids(users["user_id"])
        for col in users.columns:
            if col != "user_id":
                num = pd.to_numeric(users[col], errors="coerce")
                if num.notna().all():
                    users[col] = num
    return Dataset(_dedupe(r, str(path)), _add_missing_items(items, r, str(path)), users, name=name)


def _has_header(path: Path, column: str) -> bool:
    with open(path, "rb") as f:
        return column.encode() in f.readline()


def load_csv(ratings: str | Path, items: str | Path | None = None) -> Dataset:
    """Plain CSV: ``user_id,item_id,rating[,timestamp]`` and optional
    ``item_id,title[,genres][,description]`` with '|'-separated genres."""
    path = Path(ratings)
    r = _read_table(path, ",", None, header=0, numeric={"user_id": "str", "item_id": "str", "rating": "float"})
    for col in ("user_id", "item_id"):
        r[col] = r[col]  # already parsed as numbers when numeric; ids must be integral
    r = r.rename(columns=str.strip)
    if "timestamp" not in r:
        r["timestamp"] = 0
    _check_ratings(r, path, 2)
    r = r[["user_id", "item_id", "rating", "timestamp"]].copy()
    r["user_id"] = _as_int_ids(r["user_id"])
    r["item_id"] = _as_int_ids(r["item_id"])
    r["timestamp"] = pd.to_numeric(r["timestamp"], errors="coerce").fillna(0).astype("int64")
    if items is not None:
        ipath = Path(items)
        m = _read_table(ipath, ",", None, header=0)
        for col in ("item_id", "title"):
            if col not in m.columns:
                raise DataError("required column is missing", path=ipath, column=col)
        m["item_id"] = _as_int_ids(m["item_id"])
        title, year = split_title_year(m["title"])
        it = pd.DataFrame({"item_id": m["item_id"], "title": title, "year": year})
        it["genres"] = _split_genres(m["genres"]) if "genres" in m else [[] for _ in range(len(m))]
        for col in ("description", "tags"):
            if col in m.columns:
                it[col] = m[col]
    else:
        it = pd.DataFrame({"item_id": pd.unique(r["item_id"]), "title": ""})
    return Dataset(_dedupe(r, str(path)), _add_missing_items(it, r, str(path)), None, name=path.stem)


def load_dataset(path: str | Path) -> Dataset:
    """Auto-detect a MovieLens-style folder or ``.zip`` (100K, 1M-style, latest/25M/32M/synth)."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder", path=path)
    if path.is_file() and path.suffix == ".zip":
        return _load_zip(path)
    if path.is_file():
        raise DataError("expected a data folder or a .zip (use --ratings/--items for plain CSV)", path=path)
    candidates = [path] + sorted(p for p in path.iterdir() if p.is_dir())
    for folder in candidates:
        if (folder / "u.data").is_file():
            return load_ml100k(folder)
        if (folder / "ratings.dat").is_file():
            return load_ml1m(folder)
        if (folder / "ratings.csv").is_file() and (folder / "movies.csv").is_file():
            return load_movielens_csv(folder, name=folder.name)
    raise DataError(
        "no MovieLens files found (u.data, ratings.dat, or ratings.csv + movies.csv)", path=path
    )


def _load_zip(path: Path) -> Dataset:
    import tempfile
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf, tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp).resolve()
            for member in zf.namelist():
                target = (root / member).resolve()
                if root not in target.parents and target != root:
                    raise DataError(f"zip member {member!r} escapes the archive", path=path)
            zf.extractall(tmp)
            return load_dataset(tmp)
    except zipfile.BadZipFile as e:
        raise DataError(f"not a valid zip file ({e})", path=path) from None
