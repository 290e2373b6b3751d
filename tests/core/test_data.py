"""Loaders: every supported format written as small files by the tests themselves, every kind of
bad input (with the file, line and column the error must name), duplicates, id types, rating
scales, zips, the ``inspect`` command, and the real MovieLens counts when the data is present."""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from movierec.core.data import DataError, Dataset, describe

from movierec.core.loaders import load_csv, load_data, load_dataset, load_ml100k
from cli_helpers import run_cli


def write(path: Path, text: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path


def ml100k(folder: Path) -> Path:
    """A 3-user, 3-movie MovieLens 100K folder; movie 3 has a latin-1 title and no release date."""
    write(folder / "u.data", "1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250951\n3\t3\t1\t881250952\n")
    flags = lambda on: "|".join("1" if i in on else "0" for i in range(19))  # noqa: E731
    write(
        folder / "u.item",
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags({3, 4, 5})}\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://y|{flags({1, 2, 16})}\n"
        f"3|Café Society|01-Jan-1997|||{flags({0})}\n",
        encoding="latin-1",
    )
    write(folder / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n4|33|F|artist|1\n")
    return folder


def latest(folder: Path) -> Path:
    """latest-small layout: quoted title with a comma, a movie without genres, an unrated movie."""
    write(
        folder / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,0.5,964981247\n2,1,5.0,964982224\n",
    )
    write(
        folder / "movies.csv",
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"American President, The (1995)",Comedy|Drama\n'
        "3,Unrated Film (2001),(no genres listed)\n",
    )
    write(folder / "tags.csv", "userId,movieId,tag,timestamp\n2,1,pixar,1445714994\n2,1,fun,1445714996\n3,1,Pixar,1445715000\n")
    return folder


# ---- formats -------------------------------------------------------------------------------------
def test_ml100k_folder(tmp_path: Path) -> None:
    ds = load_ml100k(ml100k(tmp_path / "ml-100k"))
    assert (len(ds.ratings), ds.n_users, ds.n_items) == (4, 4, 3)  # user 4 has features, no ratings
    items = ds.items.set_index("item_id")
    assert items.loc[1, "title"] == "Toy Story" and items.loc[1, "year"] == 1995
    assert items.loc[1, "genres"] == ["Animation", "Children's", "Comedy"]
    assert items.loc[3, "title"] == "Café Society" and items.loc[3, "year"] == 1997  # from release date
    assert items.loc[3, "genres"] == []  # only the "unknown" flag
    assert ds.users is not None and list(ds.users.columns) == ["user_id", "age", "gender", "occupation"]
    assert ds.ratings["user_id"].dtype == np.int64 and ds.rating_scale == (1.0, 5.0)


def test_ml1m_style_files_with_users_and_tags(tmp_path: Path) -> None:
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4.5::978298413\n")
    write(
        folder / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n",
        encoding="latin-1",
    )
    write(folder / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    write(folder / "tags.dat", "1::661::giant peach::978300000\n")
    ds = load_dataset(folder)
    assert (len(ds.ratings), ds.n_users, ds.n_items) == (3, 2, 2)
    items = ds.items.set_index("item_id")
    assert items.loc[661, "genres"] == ["Animation", "Children's", "Musical"]
    assert items.loc[661, "tags"] == "giant peach" and items.loc[1193, "year"] == 1975
    assert ds.rating_scale == (3.0, 5.0)
    assert ds.users is not None and ds.users.set_index("user_id").loc[2, "age"] == 56


def test_latest_csv_layout_with_tags_and_cold_item(tmp_path: Path) -> None:
    ds = load_dataset(latest(tmp_path / "ml-latest-small"))
    assert (len(ds.ratings), ds.n_users, ds.n_items) == (3, 2, 3)
    items = ds.items.set_index("item_id")
    assert items.loc[2, "title"] == "American President, The"
    assert items.loc[3, "genres"] == [] and items.loc[3, "year"] == 2001
    assert items.loc[1, "tags"] == "pixar fun"  # "Pixar" repeated by another user is kept once
    assert ds.rating_scale == (0.5, 5.0) and ds.name == "ml-latest-small"


def test_synth_layout_with_users_description_and_quoted_header(tmp_path: Path) -> None:
    folder = tmp_path / "synth"
    write(folder / "ratings.csv", '"userId","movieId","rating","timestamp"\n1,10,3,5\n2,11,4,6\n')
    write(folder / "movies.csv", "movieId,title,year,genres,description\n10,Alpha,1990,Drama,a quiet drama\n11,Beta,,Comedy,\n")
    write(folder / "users.csv", "userId,age,gender\n1,30,F\n2,40,M\n")
    ds = load_dataset(folder)
    items = ds.items.set_index("item_id")
    assert items.loc[10, "year"] == 1990 and items.loc[10, "description"] == "a quiet drama"
    assert items.loc[11, "description"] == ""
    assert ds.users is not None and ds.users["age"].tolist() == [30, 40]


def test_plain_csv_with_and_without_items(tmp_path: Path) -> None:
    r = write(tmp_path / "r.csv", "user_id,item_id,rating\n1,7,2\n2,8,9.5\n")
    it = write(tmp_path / "i.csv", "item_id,title,genres,description\n7,Seven (1995),Crime|Thriller,detectives\n8,Eight,,\n9,Nine,Drama,\n")
    ds = load_csv(r, it)
    assert ds.n_items == 3 and ds.items.set_index("item_id").loc[7, "genres"] == ["Crime", "Thriller"]
    assert ds.ratings["timestamp"].tolist() == [0, 0]  # unknown time is 0
    bare = load_data(ratings=r)
    assert bare.n_items == 2 and bare.items["title"].tolist() == ["", ""]


def test_string_ids_stay_strings_and_int_ids_stay_ints(tmp_path: Path) -> None:
    r = write(tmp_path / "r.csv", "user_id,item_id,rating,timestamp\nalice,tt0114709,4,1\nbob,tt0113189,3,2\n")
    it = write(tmp_path / "i.csv", "item_id,title\ntt0114709,Toy Story\ntt0113189,GoldenEye\n")
    ds = load_csv(r, it)
    assert list(ds.user_ids) == ["alice", "bob"] and ds.item_index("tt0113189")[0] == 1
    assert all(isinstance(x, str) for x in ds.item_ids)
    ints = load_csv(write(tmp_path / "n.csv", "user_id,item_id,rating\n10,20,1\n"))
    assert ints.ratings["user_id"].dtype == np.int64 and ints.ratings["item_id"].dtype == np.int64


def test_mixed_id_types_between_files_compare_as_text(tmp_path: Path) -> None:
    r = write(tmp_path / "r.csv", "user_id,item_id,rating\n1,1,3\n1,2,4\n")
    it = write(tmp_path / "i.csv", "item_id,title\n1,One\n2,Two\nx3,Three\n")
    ds = load_csv(r, it)
    assert ds.n_items == 3 and set(ds.ratings["item_id"]) == {"1", "2"}


def test_zero_to_ten_scale_is_read_from_data(tmp_path: Path) -> None:
    r = write(tmp_path / "r.csv", "user_id,item_id,rating\n1,1,0\n1,2,10\n2,1,7.5\n")
    ds = load_csv(r)
    assert ds.rating_scale == (0.0, 10.0)


def test_negative_scale_is_read_from_data(tmp_path: Path) -> None:
    # like/dislike (-1/+1) and joke-style -10..10 sources are rating scales too
    r = write(tmp_path / "r.csv", "user_id,item_id,rating\n1,1,-10\n1,2,9.5\n2,1,-0.25\n")
    ds = load_csv(r)
    assert ds.rating_scale == (-10.0, 9.5) and ds.ratings["rating"].tolist() == [-10.0, 9.5, -0.25]


def test_duplicates_keep_latest_and_say_how_many(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = write(
        tmp_path / "r.csv",
        "user_id,item_id,rating,timestamp\n1,1,1,300\n1,1,2,100\n2,1,3,5\n1,1,4,200\n2,1,5,5\n3,3,1,1\n",
    )
    with caplog.at_level(logging.WARNING, logger="movierec.core.loaders"):
        ds = load_csv(r)
    got = {(u, i): x for u, i, x in ds.ratings[["user_id", "item_id", "rating"]].itertuples(index=False)}
    # (1,1): latest timestamp wins; (2,1): equal timestamps, the later line wins
    assert got == {(1, 1): 1.0, (2, 1): 5.0, (3, 3): 1.0}
    assert "3 duplicate ratings dropped" in caplog.text


def test_zip_is_detected_and_loaded(tmp_path: Path) -> None:
    src = latest(tmp_path / "src" / "ml-latest-small")
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"ml-latest-small/{f.name}")
        zf.writestr("ml-latest-small/links.csv", "not,read\n")
    ds = load_dataset(archive)
    assert (len(ds.ratings), ds.n_items, ds.name) == (3, 3, "ml-latest-small")


def test_zip_errors_name_the_member(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("d/ratings.csv", "userId,movieId,rating\n1,1,x\n")
        zf.writestr("d/movies.csv", "movieId,title\n1,A\n")
    with pytest.raises(DataError, match=r"data\.zip/d/ratings\.csv, line 2, column 'rating'"):
        load_dataset(archive)
    bogus = write(tmp_path / "bogus.zip", b"PK not really")
    with pytest.raises(DataError, match="not a valid zip"):
        load_dataset(bogus)


def test_folder_detection_subfolder_and_ambiguity(tmp_path: Path) -> None:
    latest(tmp_path / "one" / "ml-latest-small")
    assert load_dataset(tmp_path / "one").name == "ml-latest-small"
    ml100k(tmp_path / "one" / "ml-100k")
    with pytest.raises(DataError, match="several data sets"):
        load_dataset(tmp_path / "one")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MovieLens files"):
        load_dataset(tmp_path / "empty")


def test_blank_lines_and_crlf_are_tolerated_and_counted(tmp_path: Path) -> None:
    ok = write(tmp_path / "ok.csv", "user_id,item_id,rating\r\n1,1,3\r\n\r\n2,2,4\r\n\r\n")
    assert len(load_csv(ok).ratings) == 2
    bad = write(tmp_path / "bad.csv", "user_id,item_id,rating\n1,1,3\n\n\n2,2,oops\n")
    with pytest.raises(DataError, match=r"line 5, column 'rating'"):
        load_csv(bad)


# ---- bad input -----------------------------------------------------------------------------------
HEADER = "user_id,item_id,rating,timestamp\n"
BAD_RATINGS = [
    # (name, file bytes, expected line, expected column, message fragment)
    ("empty", b"", 1, None, "file is empty"),
    ("header only", HEADER.encode(), 2, None, "no data rows"),
    ("missing column", b"user_id,item_id,timestamp\n1,1,5\n", 1, "rating", "required column is missing"),
    ("non-numeric", (HEADER + "1,1,4,1\n2,1,four,2\n").encode(), 3, "rating", "'four' is not a number"),
    ("nan", (HEADER + "1,1,nan,1\n").encode(), 2, "rating", "not a finite number"),
    ("inf", (HEADER + "1,1,2,1\n1,2,inf,1\n").encode(), 3, "rating", "rating inf is not a finite number"),
    ("empty rating", (HEADER + "1,1,2,1\n1,2,,1\n").encode(), 3, "rating", "value is missing"),
    ("semicolons", b"user_id;item_id;rating\n1;1;4\n", 1, "user_id", "must be separated by ','"),
    ("undecodable", (HEADER + "1,1,4,1\n").encode() + b"2,caf\xe9,3,1\n", 3, "item_id", "cannot be decoded as utf-8"),
    ("too many fields", (HEADER + "1,1,4,1\n1,2,3,4,5\n").encode(), 3, "#5", "row has 5 fields, expected 4"),
    ("too few fields", (HEADER + "1,1,4,1\n\n1,2,3\n").encode(), 4, "timestamp", "row has 3 fields, expected 4"),
    ("blank id", (HEADER + "1,1,4,1\n ,2,3,1\n").encode(), 3, "user_id", "id is blank"),
    ("bad timestamp", (HEADER + "1,1,4,yesterday\n").encode(), 2, "timestamp", "not a number"),
]


@pytest.mark.parametrize("case", BAD_RATINGS, ids=[c[0] for c in BAD_RATINGS])
def test_bad_ratings_file_names_file_line_and_column(tmp_path: Path, case: tuple) -> None:
    _, content, line, column, fragment = case
    path = write(tmp_path / "ratings.csv", content)
    with pytest.raises(DataError) as err:
        load_csv(path)
    e = err.value
    assert e.path == str(path) and e.line == line and e.column == column, str(e)
    assert fragment in str(e) and str(path) in str(e) and f"line {line}" in str(e)
    if column:
        assert f"column '{column}'" in str(e)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_csv(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "nowhere")


def test_headerless_formats_wrong_separator_and_ragged(tmp_path: Path) -> None:
    folder = ml100k(tmp_path / "commas")
    write(folder / "u.data", "1,1,5,881250949\n1,2,3,881250950\n")
    with pytest.raises(DataError, match=r"u\.data, line 1, column 'item_id': row has 1 field, expected 4; is the separator"):
        load_dataset(folder)
    write(folder / "u.data", "1\t1\t5\t881250949\n1\t2\t3\t881250950\t9\n")
    with pytest.raises(DataError, match=r"u\.data, line 2, .*row has 5 fields, expected 4"):
        load_dataset(folder)
    write(folder / "u.data", "1\t1\t5\n1\t2\t3\t881250950\n")  # the first row is the short one
    with pytest.raises(DataError, match=r"u\.data, line 1, column 'timestamp': row has 3 fields"):
        load_dataset(folder)
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", "1::1::5::1\n1::2::x::2\n")
    write(folder / "movies.dat", "1::A::Drama\n2::B::Drama\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 2, column 'rating'"):
        load_dataset(folder)


def test_bad_item_and_tag_files(tmp_path: Path) -> None:
    folder = latest(tmp_path / "d")
    write(folder / "movies.csv", "movieId,title,genres\n1,A,Drama\n2,B,Drama\n1,C,Drama\n")
    with pytest.raises(DataError, match=r"movies\.csv, line 4, column 'movieId': duplicate item_id 1"):
        load_dataset(folder)
    folder = latest(tmp_path / "e")
    write(folder / "movies.csv", b"movieId,title,genres\n1,Caf\xe9,Drama\n")
    with pytest.raises(DataError, match=r"movies\.csv, line 2, column 'title': byte 0xe9"):
        load_dataset(folder)
    folder = latest(tmp_path / "f")
    write(folder / "tags.csv", "userId,movieId,tags\n1,1,x\n")
    with pytest.raises(DataError, match=r"tags\.csv, line 1, column 'tag'"):
        load_dataset(folder)


def test_load_data_argument_rules(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="either --data"):
        load_data()
    with pytest.raises(DataError, match="--items goes with --ratings"):
        load_data(tmp_path, items=tmp_path / "i.csv")


# ---- CLI -----------------------------------------------------------------------------------------


def test_inspect_prints_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    folder = latest(tmp_path / "ml-latest-small")
    code, out, _ = run_cli(monkeypatch, capsys, "inspect", "--data", str(folder))
    assert code == 0
    assert "3 ratings, 2 users, 3 movies (2 rated, 1 without ratings)" in out
    assert "ratings 0.5..5" in out and "Animation 1" in out
    code, out, _ = run_cli(monkeypatch, capsys, "inspect", "--ratings", str(folder / "ratings.csv"), "--json")
    assert code == 0 and '"ratings": 3' in out


@pytest.mark.parametrize(
    "content, where",
    [
        (b"user_id,item_id\n1,2\n", "line 1, column 'rating'"),
        (b"user_id,item_id,rating\n1,2,3\n1,2\n", "line 3, column 'rating'"),
        (b"user_id,item_id,rating\n1,2,\xff\n", "line 2, column 'rating'"),
    ],
)
def test_inspect_bad_input_exit_2_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], content: bytes, where: str
) -> None:
    path = write(tmp_path / "r.csv", content)
    code, out, err = run_cli(monkeypatch, capsys, "inspect", "--ratings", str(path))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0] and where in lines[0]


def test_inspect_usage_errors_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "inspect")
    assert code == 2 and "either --data" in err
    code, _, err = run_cli(monkeypatch, capsys, "inspect", "--data", str(tmp_path / "missing"))
    assert code == 2 and "no such file or folder" in err


def test_inspect_error_in_subprocess_has_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user_id,item_id,rating\n1,2,-inf\n")
    proc = subprocess.run(
        [sys.executable, "-c", "from movierec.cli import main; main()", "inspect", "--ratings", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {path}, line 2, column 'rating': rating -inf is not a finite number"]


# ---- real MovieLens ------------------------------------------------------------------------------
@pytest.mark.mldata
def test_real_ml100k_counts(ml100k_path: Path) -> None:
    ds = load_dataset(ml100k_path)
    assert (len(ds.ratings), ds.n_users, ds.n_items) == (100_000, 943, 1_682)
    assert ds.rating_scale == (1.0, 5.0) and len(ds.genre_vocabulary()) == 18
    assert ds.users is not None and len(ds.users) == 943
    assert ds.items["title"].str.contains("é").any()  # latin-1 titles decoded


@pytest.mark.mldata
def test_real_latest_small_counts(ml_latest_small_path: Path) -> None:
    ds = load_dataset(ml_latest_small_path)
    assert (len(ds.ratings), ds.n_users, ds.n_items) == (100_836, 610, 9_742)
    assert ds.rating_scale == (0.5, 5.0)
    info = describe(ds)
    assert info["rated_items"] == 9_724 and info["items_with_tags"] == 1_572
    assert isinstance(ds, Dataset)
