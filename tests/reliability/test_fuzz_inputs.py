"""Property-based fuzzing of everything that reads user files: the CSV loaders (plain CSV,
MovieLens 100K / 1M / latest layouts through ``load_dataset``) and the config loader.

The property: any bytes give either a loaded data set (or config) or a clean ``DataError``
(``ConfigError``) that the CLI turns into one line and exit code 2; never another exception,
which the CLI would show as a traceback. Inputs mix raw random bytes with near-valid tables
built from tokens that tend to break parsers (quotes, separators, NaN, huge numbers, NULs,
invalid UTF-8), so most examples get past the first line of the parser.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from movierec.core.config import Config, ConfigError, load_config
from movierec.core.data import DataError, Dataset
from movierec.core.loaders import load_csv, load_dataset

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

_TOKENS = [
    "1", "2", "3", "42", "-1", "0", "2.5", "5", "1e309", "-0", "nan", "NaN", "inf", "", " ", "abc", "Toy Story (1995)",
    "Comedy|Drama", "Comedy", "(no genres listed)", '"', '""', '"a,b"', ",", "|", "::", "\t", "\x00", "\r", "é", "\xff",
    "9" * 25, "1995", "01-Jan-1995", "user_id", "item_id", "rating", "timestamp", "title", "genres", "movieId", "userId",
]


def _table(sep: str, header: list[str] | None) -> st.SearchStrategy[bytes]:
    """Rows of tokens joined by ``sep``; mostly the right width, sometimes ragged."""
    cell = st.sampled_from(_TOKENS)
    width = len(header) if header else 4
    row = st.one_of(st.lists(cell, min_size=width, max_size=width), st.lists(cell, min_size=0, max_size=width + 2))
    encoding = st.sampled_from(["utf-8", "latin-1"])

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        rows = draw(st.lists(row, min_size=0, max_size=12))
        lines = ([sep.join(header)] if header and draw(st.booleans()) | True else []) + [sep.join(r) for r in rows]
        text = "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))
        return text.encode(draw(encoding), errors="replace")

    return build()


def _any_bytes(structured: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(structured, structured, st.binary(max_size=300))


RATINGS_CSV = _any_bytes(_table(",", ["user_id", "item_id", "rating", "timestamp"]))
ITEMS_CSV = _any_bytes(_table(",", ["item_id", "title", "genres"]))


def _loaded_or_data_error(load: object) -> None:
    """Run ``load()``; only a Dataset or a DataError with a message is acceptable."""
    try:
        ds = load()  # type: ignore[operator]
    except DataError as e:
        assert str(e).strip(), "a DataError must carry a message"
        return
    assert isinstance(ds, Dataset) and ds.n_users >= 1 and ds.n_items >= 1


@FUZZ
@given(ratings=RATINGS_CSV, items=st.one_of(st.none(), ITEMS_CSV))
def test_plain_csv_loader_gives_a_dataset_or_a_data_error(ratings: bytes, items: bytes | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        r = Path(tmp) / "ratings.csv"
        r.write_bytes(ratings)
        i = None
        if items is not None:
            i = Path(tmp) / "items.csv"
            i.write_bytes(items)
        _loaded_or_data_error(lambda: load_csv(r, i))


LAYOUTS = {
    "ml-100k": {
        "u.data": _any_bytes(_table("\t", None)),
        "u.item": _any_bytes(_table("|", ["1", "Toy Story (1995)", "01-Jan-1995", "", "http://x", "0", "1"])),
    },
    "ml-1m": {
        "ratings.dat": _any_bytes(_table("::", None)),
        "movies.dat": _any_bytes(_table("::", ["1", "Toy Story (1995)", "Comedy|Drama"])),
    },
    "latest": {
        "ratings.csv": _any_bytes(_table(",", ["userId", "movieId", "rating", "timestamp"])),
        "movies.csv": _any_bytes(_table(",", ["movieId", "title", "genres"])),
        "tags.csv": _any_bytes(_table(",", ["userId", "movieId", "tag", "timestamp"])),
    },
}


@FUZZ
@given(data=st.data(), layout=st.sampled_from(sorted(LAYOUTS)))
def test_movielens_folder_loaders_give_a_dataset_or_a_data_error(data: st.DataObject, layout: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, strategy in LAYOUTS[layout].items():
            if name == "tags.csv" and not data.draw(st.booleans(), label="with tags"):
                continue
            (Path(tmp) / name).write_bytes(data.draw(strategy, label=name))
        _loaded_or_data_error(lambda: load_dataset(tmp))


_YAML_TOKENS = st.sampled_from(
    [
        "retrieval:", "  epochs: 3", "  epochs: -1", "  epochs: three", "  dim: 1e400", "ranking:", "  lr: .nan",
        "content:", "  dim: [1, 2]", "index:", "  kind: hnsw", "  kind: {a: 1}", "seed: 42", "seed: !!python/object:os.system x",
        "trainer:", "  progress: maybe", "unknown: 1", "- 1", "? a", "&a [*a]", "*b", "{", "]", "'", '"', "\t", "\x00",
        "retrieval: 3", "retrieval: null", "  nested:", "    deeper: 1", "%YAML 1.1", "---", "...",
    ]
)
CONFIG_BYTES = st.one_of(
    # PyYAML raises RecursionError / ValueError (not YAMLError) on these: the loader must catch them
    st.sampled_from([b"[" * 1200, b"retrieval: " + b"{a: " * 1200, b"seed: " + b"9" * 5000, b"\x80\x81"]),
    st.lists(_YAML_TOKENS, max_size=10).map(lambda lines: "\n".join(lines).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
OVERRIDES = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "retrieval.epochs=2", "retrieval.epochs=x", "retrieval.epochs.deeper=1", "retrieval=3", "seed=",
                "=1", "nokey", "a.b.c.d=[1,", "content.dim={x: 1}", "ranking.lr=1e-3", "..=1", "seed=!!binary aGk=",
                "seed=" + "[" * 1200, "seed=" + "9" * 5000,
            ]
        ),
        st.text(max_size=40),
    ),
    max_size=4,
)


@FUZZ
@given(content=CONFIG_BYTES, overrides=st.one_of(st.none(), OVERRIDES))
def test_config_loader_gives_a_config_or_a_config_error(content: bytes, overrides: list[str] | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(content)
        try:
            config = load_config(path, overrides)
        except ConfigError as e:
            assert str(e).strip()
            return
        assert isinstance(config, Config)
