"""Tests for going_modular.files: atomic writes of files and folders, and archive extraction.

The downloads themselves are tested against a local HTTP server in test_downloads.py.
"""

import io
import subprocess
import sys
import tarfile
import zipfile

import pytest

from going_modular.files import DownloadError, atomic_write, extract_archive


class Crash(Exception):
    pass


def test_a_file_appears_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "sub" / "metrics.json"  # the parent is created
    with atomic_write(target) as tmp:
        assert (
            tmp.parent == target.parent
            and tmp.name.startswith(".metrics.json.")
            and tmp.name.endswith(".part")
        )
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("folder", [False, True])
def test_a_failure_keeps_the_old_content_and_leaves_nothing(tmp_path, folder):
    target = tmp_path / "out"
    with atomic_write(target, folder=folder) as tmp:
        (tmp / "a.txt").write_text("old") if folder else tmp.write_text("old")
    with pytest.raises(Crash):
        with atomic_write(target, folder=folder) as tmp:
            (tmp / "a.txt").write_text("half") if folder else tmp.write_text("half")
            raise Crash
    assert ((target / "a.txt") if folder else target).read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_replaces_an_existing_folder(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_write(target, folder=True) as tmp:
        (tmp / "old-only.txt").write_text("1")
    with atomic_write(target, folder=True) as tmp:
        assert tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "new.txt").write_text("2")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == [
        "ckpt"
    ]  # the old folder moved aside was deleted


@pytest.mark.slow
def test_permissions_follow_the_umask_like_open_and_mkdir(tmp_path):
    probe = (
        "import os, sys, stat\nfrom pathlib import Path\nfrom going_modular.files import atomic_write\n"
        "os.umask(0o027)\nroot = Path(sys.argv[1])\n"
        "with atomic_write(root / 'f') as tmp: tmp.write_text('x')\n"
        "with atomic_write(root / 'd', folder=True) as tmp: pass\n"
        "print(oct(stat.S_IMODE((root / 'f').stat().st_mode)), oct(stat.S_IMODE((root / 'd').stat().st_mode)))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.split() == [oct(0o640), oct(0o750)]


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_a_single_top_level_folder_is_unwrapped_even_when_a_child_shares_its_name(
    tmp_path,
):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"data/data": b"inner", "data/train/x.txt": b"x"}))
    dest = extract_archive(archive, tmp_path / "out")
    assert sorted(p.name for p in dest.iterdir()) == ["data", "train"]
    assert (dest / "data").read_bytes() == b"inner"


def test_several_top_level_entries_are_kept_as_they_are(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"train/x.txt": b"x", "test/y.txt": b"y"}))
    assert sorted(
        p.name for p in extract_archive(archive, tmp_path / "out").iterdir()
    ) == ["test", "train"]


def test_a_tar_member_outside_the_destination_is_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"boom"))
    with pytest.raises(DownloadError, match="corrupt archive"):
        extract_archive(archive, tmp_path / "jail" / "out")
    assert (
        not (tmp_path / "jail" / "escaped.txt").exists()
        and not (tmp_path / "escaped.txt").exists()
    )
    assert list((tmp_path / "jail").iterdir()) == []


@pytest.mark.slow
def test_the_module_imports_only_the_standard_library():
    probe = (
        "import sys\nbefore = set(sys.modules)\nimport going_modular.files\n"
        "extra = {m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)\n"
        "print(sorted(extra))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "['going_modular']"
