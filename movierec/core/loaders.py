"""Loaders that build a :class:`~movierec.core.data.Dataset` from MovieLens folders, zips and
plain CSV files, with the checks and repairs (duplicate ratings, items missing from the catalogue)
that every layout shares."""

from __future__ import annotations

import logging
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_integer_dtype, is_numeric_dtype

from movierec.core.data import RATING_COLUMNS, DataError, Dataset
from movierec.core.tables import Table, plural, read_table

log = logging.getLogger(__name__)

_YEAR_RE = r"\((\d{4})\)\s*$"
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]
NO_GENRES = "(no genres listed)"
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


def _ratings_frame(t: Table) -> pd.DataFrame:
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


def _items_frame(t: Table) -> pd.DataFrame:
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


def _users_frame(t: Table, keep: Sequence[str] | None = None) -> pd.DataFrame:
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


def _tags_text(t: Table) -> pd.Series:
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
        plural(len(drop), "duplicate rating"),
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
            plural(len(missing), "item"),
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
    ratings = _ratings_frame(read_table(path, "\t", names=RATING_COLUMNS, required=RATING_COLUMNS))
    flags = [f"g{i}" for i in range(len(ML100K_GENRES))]
    it = read_table(
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
    users = _movielens_users(folder / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"], ["gender", "occupation", "zip"])
    return _build(ratings, items, users, "ml-100k", path)


def load_ml1m(folder: str | Path) -> Dataset:
    """MovieLens 1M-style '::' files: ``ratings.dat``, ``movies.dat``, optional ``users.dat``
    (1M) and ``tags.dat`` (10M)."""
    folder = Path(folder)
    path = folder / "ratings.dat"
    ratings = _ratings_frame(
        read_table(path, "::", names=RATING_COLUMNS, encoding="latin-1", required=RATING_COLUMNS)
    )
    m = read_table(
        folder / "movies.dat",
        "::",
        names=["item_id", "title", "genres"],
        encoding="latin-1",
        required=["item_id"],
        text=["title", "genres"],
    )
    items = _items_frame(m)
    if (folder / "tags.dat").is_file() and (folder / "tags.dat").stat().st_size:
        t = read_table(
            folder / "tags.dat",
            "::",
            names=["user_id", "item_id", "tag", "timestamp"],
            encoding="latin-1",
            required=["item_id"],
            text=["tag"],
        )
        items["tags"] = _map_tags(items["item_id"], _tags_text(t))
    users = _movielens_users(folder / "users.dat", "::", ["user_id", "gender", "age", "occupation", "zip"], ["gender", "zip"])
    return _build(ratings, items, users, folder.name or "ml-1m", path)


def _movielens_users(path: Path, sep: str, names: list[str], text: list[str]) -> pd.DataFrame | None:
    """Age, gender and occupation from a headerless latin-1 MovieLens users file; None without one."""
    if not path.is_file():
        return None
    u = read_table(path, sep, names=names, encoding="latin-1", required=["user_id"], text=text)
    return _users_frame(u, keep=["age", "gender", "occupation"])


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
        read_table(path, ",", required=["user_id", "item_id", "rating"])
    )
    m = read_table(
        folder / "movies.csv",
        ",",
        required=["item_id", "title"],
        text=["title", "genres", "tags", "description"],
    )
    items = _items_frame(m)
    tpath = folder / "tags.csv"
    if tpath.is_file() and tpath.stat().st_size:
        t = read_table(tpath, ",", required=["item_id", "tag"], text=["tag"])
        tags = _map_tags(items["item_id"], _tags_text(t))
        if "tags" in items:  # tags column in movies.csv plus tags.csv: keep both
            tags = (items["tags"].astype(str) + " " + pd.Series(tags)).str.strip().to_numpy(dtype=object)
        items["tags"] = tags
    users = None
    upath = folder / "users.csv"
    if upath.is_file() and upath.stat().st_size:
        users = _users_frame(read_table(upath, ",", required=["user_id"]))
    return _build(ratings, items, users, name or folder.name or "movielens", path)


def load_csv(ratings: str | Path, items: str | Path | None = None) -> Dataset:
    """Plain CSV with a header: ``user_id,item_id,rating[,timestamp]`` and optionally an item file
    ``item_id,title[,genres][,year][,description][,tags]`` with '|'-separated genres. Without an
    item file every rated item gets an empty title."""
    path = Path(ratings)
    frame = _ratings_frame(read_table(path, ",", required=["user_id", "item_id", "rating"]))
    if items is not None:
        it = _items_frame(
            read_table(
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
