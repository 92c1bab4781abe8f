"""The download code (torch.hub's downloader, torchvision's CIFAR-10) against an HTTP server on 127.0.0.1:
good, missing, corrupt, truncated, slow, refused."""

import hashlib
import io
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from conftest import Reply
from going_modular.data import load_cifar10, load_image_folder
from going_modular.files import (
    DownloadError,
    download_and_extract,
    download_file,
    network_timeout,
)


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(
        buffer, format="PNG"
    )
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
GOOD_SHA256 = hashlib.sha256(GOOD).hexdigest()
CORRUPT = (
    GOOD[: len(GOOD) // 3]
    + bytes(b ^ 0xFF for b in GOOD[len(GOOD) // 3 : len(GOOD) // 2])
    + GOOD[len(GOOD) // 2 :]
)
TARRED = tarred_folder()


ROUTES = {  # served by conftest's ``server`` fixture; any other path is a 404
    "/good.zip": GOOD,
    "/corrupt.zip": CORRUPT,
    "/garbage.zip": b"this is not an archive",
    "/data.tar.gz": TARRED,
    "/cifar-10-python.tar.gz": TARRED,  # not the real archive
    "/truncated.zip": Reply(
        GOOD[: len(GOOD) // 2], length=len(GOOD)
    ),  # promises the whole file, sends half, hangs up
    "/slow.zip": Reply(b"", delay=3),  # answers after the client has given up
}


def test_good_zip_is_extracted_unwrapped_and_loadable_with_a_progress_bar(
    server, tmp_path, capsys
):
    dest = download_and_extract(f"{server.url}/good.zip", tmp_path / "food")
    assert (
        f"{len(GOOD)}/{len(GOOD)}" in capsys.readouterr().err
    )  # torch.hub's progress bar, at 100%
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train"]
    assert [p.name for p in tmp_path.iterdir()] == ["food"]  # no temporary leftovers
    data = load_image_folder(dest, img_size=6)
    assert data.class_names == ["pizza", "sushi"] and len(data.train) == 2


def test_progress_false_prints_nothing(server, tmp_path, capsys):
    download_file(f"{server.url}/good.zip", tmp_path / "good.zip", progress=False)
    assert capsys.readouterr().err == ""


def test_existing_destination_is_not_downloaded_again(server, tmp_path):
    download_and_extract(f"{server.url}/good.zip", tmp_path / "food")
    before = len(server.hits)
    download_and_extract(f"{server.url}/good.zip", tmp_path / "food")
    assert len(server.hits) == before


def test_tar_archives_are_extracted_too(server, tmp_path):
    dest = download_and_extract(f"{server.url}/data.tar.gz", tmp_path / "batches")
    assert (dest / "readme.txt").read_bytes() == b"hello"


@pytest.mark.parametrize(
    "route, message",
    [
        ("missing.zip", "HTTP 404 Not Found"),
        ("corrupt.zip", "corrupt"),
        ("garbage.zip", "neither a zip nor a tar"),
        (
            "truncated.zip",
            r"corrupt or truncated\?",
        ),  # no length check without a hash: the archive check sees it
    ],
)
def test_failed_downloads_raise_and_leave_nothing(server, tmp_path, route, message):
    with pytest.raises(DownloadError, match=message):
        download_and_extract(f"{server.url}/{route}", tmp_path / "food", timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_timeout_bounds_a_silent_server_and_is_restored(server, tmp_path):
    start = time.perf_counter()
    with pytest.raises(DownloadError, match="timed out"):
        download_file(f"{server.url}/slow.zip", tmp_path / "slow.zip", timeout=0.5)
    assert time.perf_counter() - start < 2.5
    assert list(tmp_path.iterdir()) == []
    assert socket.getdefaulttimeout() is None  # the process-wide default is put back


def test_sha256_mismatch_deletes_the_file_and_names_it(server, tmp_path):
    target = tmp_path / "weights" / "good-0123abcd.zip"
    with pytest.raises(
        DownloadError,
        match=f"{server.url}/good.zip is corrupt and was deleted, {target} not written",
    ):
        download_file(f"{server.url}/good.zip", target, sha256_prefix="0123abcd")
    assert (
        list((tmp_path / "weights").iterdir()) == []
    )  # neither the file nor torch.hub's .partial
    path = download_file(
        f"{server.url}/good.zip", target, sha256_prefix=GOOD_SHA256[:8]
    )
    assert path.read_bytes() == GOOD


def test_refused_connection_fails_clearly_and_fast(tmp_path, closed_port):
    start = time.perf_counter()
    url = f"http://127.0.0.1:{closed_port}/x.zip"
    with pytest.raises(
        DownloadError,
        match=f"could not download {url} into {tmp_path / 'x.zip'}: .*refused",
    ):
        download_file(url, tmp_path / "x.zip", timeout=2)
    assert time.perf_counter() - start < 2
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_rejected_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="http"):
        download_file("ftp://example.org/x.zip", tmp_path / "new" / "x.zip")
    with pytest.raises(
        ValueError, match="timeout must be a positive number of seconds, got 0"
    ):
        download_file("http://127.0.0.1/x.zip", tmp_path / "new" / "x.zip", timeout=0)
    with pytest.raises(ValueError, match="timeout"), network_timeout(-1):
        pass
    assert list(tmp_path.iterdir()) == []


def test_cifar10_offline_fails_fast_naming_url_and_folder(
    tmp_path, closed_port, monkeypatch
):
    url = f"http://127.0.0.1:{closed_port}/cifar-10-python.tar.gz"
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", url)
    start = time.perf_counter()
    with pytest.raises(
        DownloadError,
        match=f"CIFAR-10 needs a download from {url} into {tmp_path / 'cifar-10-batches-py'}",
    ):
        load_cifar10(tmp_path, timeout=2)
    assert time.perf_counter() - start < 5
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_cifar10(tmp_path, download=False)


def test_cifar10_archive_failing_the_md5_check_is_deleted(
    server, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        torchvision.datasets.CIFAR10, "url", f"{server.url}/cifar-10-python.tar.gz"
    )
    with pytest.raises(
        DownloadError, match="CIFAR-10 needs a download .* which failed .*corrupted"
    ):
        load_cifar10(tmp_path, timeout=5)
    assert "GET /cifar-10-python.tar.gz" in server.hits
    assert [
        p for p in Path(tmp_path).rglob("*")
    ] == []  # neither the archive nor a half-extracted folder
