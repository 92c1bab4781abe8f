"""The real download code against an HTTP server on 127.0.0.1: good, missing, corrupt, truncated, slow."""

import hashlib
import io
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import QuietHandler, http_server
from going_modular.data import load_cifar10, load_image_folder
from going_modular.files import DownloadError, download_and_extract, download_file


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def zipped_image_folder() -> bytes:
    """A zip holding one top-level folder, food/, with train/ and test/ splits of two classes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for split in ("train", "test"):
            for value, name in ((0, "pizza"), (255, "sushi")):
                zf.writestr(f"food/{split}/{name}/1.png", png_bytes(value))
    return buffer.getvalue()


def tarred_folder() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        data = b"hello"
        info = tarfile.TarInfo("batches/readme.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


GOOD = zipped_image_folder()
CORRUPT = (
    GOOD[: len(GOOD) // 3] + bytes(b ^ 0xFF for b in GOOD[len(GOOD) // 3 : len(GOOD) // 2]) + GOOD[len(GOOD) // 2 :]
)


class Handler(QuietHandler):
    """Routes: /good.zip, /corrupt.zip, /garbage.zip, /truncated.zip, /slow.zip, /data.tar.gz; else 404."""

    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (the name http.server expects)
        Handler.hits.append(self.path)
        bodies = {
            "/good.zip": GOOD,
            "/corrupt.zip": CORRUPT,
            "/garbage.zip": b"this is not an archive",
            "/data.tar.gz": tarred_folder(),
        }
        if self.path in bodies:
            self.send_response(200)
            self.send_header("Content-Length", str(len(bodies[self.path])))
            self.end_headers()
            self.wfile.write(bodies[self.path])
        elif self.path == "/truncated.zip":  # promises the whole file, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[: len(GOOD) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/slow.zip":  # answers after the client has given up
            time.sleep(3)
            self.send_response(200)
            self.end_headers()
        else:
            self.send_error(404, "Not Found")


@pytest.fixture(scope="module")
def server():
    with http_server(Handler) as url:
        yield url


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_good_zip_is_extracted_unwrapped_and_loadable(server, tmp_path):
    dest = download_and_extract(f"{server}/good.zip", tmp_path / "food")
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train"]
    assert [p.name for p in tmp_path.iterdir()] == ["food"]  # no temporary leftovers
    data = load_image_folder(dest, image_size=6)
    assert data.class_names == ["pizza", "sushi"] and len(data.train) == 2


def test_existing_destination_is_not_downloaded_again(server, tmp_path):
    download_and_extract(f"{server}/good.zip", tmp_path / "food")
    before = len(Handler.hits)
    download_and_extract(f"{server}/good.zip", tmp_path / "food")
    assert len(Handler.hits) == before


def test_tar_archives_are_extracted_too(server, tmp_path):
    dest = download_and_extract(f"{server}/data.tar.gz", tmp_path / "batches")
    assert (dest / "readme.txt").read_bytes() == b"hello"


@pytest.mark.parametrize(
    "route, message",
    [
        ("missing.zip", "404"),
        ("corrupt.zip", "corrupt"),
        ("garbage.zip", "neither a zip nor a tar"),
        ("truncated.zip", "truncated: got"),
    ],
)
def test_failed_downloads_raise_and_leave_nothing(server, tmp_path, route, message):
    with pytest.raises(DownloadError, match=message):
        download_and_extract(f"{server}/{route}", tmp_path / "food", timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_timeout_bounds_a_silent_server(server, tmp_path):
    with pytest.raises(DownloadError, match="timed out"):
        download_file(f"{server}/slow.zip", tmp_path / "slow.zip", timeout=0.5)
    assert list(tmp_path.iterdir()) == []


def test_md5_mismatch_is_an_error(server, tmp_path):
    with pytest.raises(DownloadError, match="MD5"):
        download_file(f"{server}/good.zip", tmp_path / "good.zip", md5="0" * 32)
    assert list(tmp_path.iterdir()) == []
    path = download_file(f"{server}/good.zip", tmp_path / "good.zip", md5=hashlib.md5(GOOD).hexdigest())
    assert path.read_bytes() == GOOD


def test_refused_connection_fails_clearly(tmp_path, closed_port):
    with pytest.raises(DownloadError, match=f"127.0.0.1:{closed_port}"):
        download_file(f"http://127.0.0.1:{closed_port}/x.zip", tmp_path / "x.zip", timeout=2)


def test_bad_arguments_are_rejected_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="http"):
        download_file("ftp://example.org/x.zip", tmp_path / "x.zip")
    with pytest.raises(ValueError, match="timeout"):
        download_file("http://127.0.0.1/x.zip", tmp_path / "x.zip", timeout=0)
    assert list(tmp_path.iterdir()) == []


def test_cifar10_offline_fails_fast_and_clean(tmp_path, closed_port):
    url = f"http://127.0.0.1:{closed_port}/cifar-10-python.tar.gz"
    with pytest.raises(DownloadError, match="could not download"):
        load_cifar10(tmp_path, url=url, timeout=2)
    assert not (tmp_path / "cifar-10-batches-py").exists()
    assert [p.name for p in Path(tmp_path).iterdir()] == []
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_cifar10(tmp_path, download=False)
