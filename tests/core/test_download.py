"""``download_dataset`` against a zip served by a local HTTP server on 127.0.0.1 (never the
internet): the good case, and corrupted, truncated and missing downloads that must be refused
and leave nothing behind."""

from __future__ import annotations

import hashlib
import http.server
import io
import sys
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from movierec.core.loaders import load_dataset
from movierec.core.download import RELEASES, DownloadError, download_dataset


def tiny_zip(top: str) -> bytes:
    """A latest-small-shaped zip with one top folder, as GroupLens packs them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,1\n2,1,3.5,2\n")
        zf.writestr(f"{top}/movies.csv", "movieId,title,genres\n1,Toy Story (1995),Animation\n")
    return buf.getvalue()


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        if self.path.endswith("/cut/ml-100k.zip"):  # promises the whole file, sends half
            body = (Path(self.directory) / "ml-100k.zip").read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_download_unpacks_atomically(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    data = tiny_zip("ml-100k")
    (root / "ml-100k.zip").write_bytes(data)
    to = tmp_path / "data"
    path = download_dataset("ml-100k", to, base_url=url, md5=hashlib.md5(data).hexdigest(), show_progress=False)
    assert path == to / "ml-100k"
    assert leftovers(to) == ["ml-100k"]  # no temp file, no unpack folder
    assert sorted(p.name for p in path.iterdir()) == ["movies.csv", "ratings.csv"]
    assert len(load_dataset(path).ratings) == 2
    # a second call finds it and does not download again
    (root / "ml-100k.zip").unlink()
    assert download_dataset("ml-100k", to, base_url=url, show_progress=False) == path


def test_corrupted_download_is_refused_and_leaves_nothing(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    data = tiny_zip("ml-100k")
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    (root / "ml-100k.zip").write_bytes(bytes(bad))
    to = tmp_path / "data"
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download_dataset("ml-100k", to, base_url=url, md5=hashlib.md5(data).hexdigest(), show_progress=False)
    assert leftovers(to) == []


def test_published_md5_is_checked_by_default(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    (root / "ml-1m.zip").write_bytes(tiny_zip("ml-1m"))  # not the real zip: its MD5 differs
    with pytest.raises(DownloadError, match=f"expected {RELEASES['ml-1m'].md5}"):
        download_dataset("ml-1m", tmp_path / "d", base_url=url, show_progress=False)
    assert leftovers(tmp_path / "d") == []


def test_truncated_transfer_is_refused(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    data = tiny_zip("ml-100k")
    (root / "ml-100k.zip").write_bytes(data)
    to = tmp_path / "d"
    with pytest.raises(DownloadError, match="cut off|truncated"):
        download_dataset("ml-100k", to, base_url=url + "cut/", md5=hashlib.md5(data).hexdigest(), show_progress=False)
    assert leftovers(to) == []


def test_truncated_file_with_its_own_length_fails_the_md5(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    data = tiny_zip("ml-100k")
    (root / "ml-100k.zip").write_bytes(data[:-40])
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download_dataset("ml-100k", tmp_path / "d", base_url=url, md5=hashlib.md5(data).hexdigest(), show_progress=False)
    assert leftovers(tmp_path / "d") == []


def test_md5_file_is_fetched_for_latest_small(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    data = tiny_zip("ml-latest-small")
    (root / "ml-latest-small.zip").write_bytes(data)
    (root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {hashlib.md5(data).hexdigest()}\n")
    path = download_dataset("ml-latest-small", tmp_path / "d", base_url=url, show_progress=False)
    assert (path / "ratings.csv").is_file() and leftovers(tmp_path / "d") == ["ml-latest-small"]
    (root / "ml-latest-small.zip.md5").write_text("0" * 32 + "  ml-latest-small.zip\n")
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download_dataset("ml-latest-small", tmp_path / "e", base_url=url, show_progress=False)
    assert leftovers(tmp_path / "e") == []


def test_not_a_zip_and_http_errors(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    junk = b"<html>not a zip</html>"
    (root / "ml-25m.zip").write_bytes(junk)
    with pytest.raises(DownloadError, match="not a valid zip"):
        download_dataset("ml-25m", tmp_path / "d", base_url=url, md5=hashlib.md5(junk).hexdigest(), show_progress=False)
    assert leftovers(tmp_path / "d") == []
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_dataset("ml-32m", tmp_path / "e", base_url=url, md5="0" * 32, show_progress=False)
    assert leftovers(tmp_path / "e") == []
    with pytest.raises(DownloadError, match="unknown data set 'ml-2m'"):
        download_dataset("ml-2m", tmp_path / "f")


def test_cli_download_mismatch_exits_2_with_one_line(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from movierec.cli import main

    url, root = server
    (root / "ml-100k.zip").write_bytes(tiny_zip("ml-100k"))
    monkeypatch.setattr(sys, "argv", ["movierec", "download", "ml-100k", "--to", str(tmp_path / "d"), "--base-url", url])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert exit_.value.code == 2 and len(errors) == 1 and "MD5 mismatch" in errors[0]
    assert "Traceback" not in err and leftovers(tmp_path / "d") == []
