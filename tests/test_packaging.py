"""The wheel holds the package and only the package, and its dependencies leave torch alone.

The wheel is built from a copy of the repository (without the environment and build outputs), so
that setuptools' ``build/`` and ``*.egg-info`` never land in the working tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.slow  # pip and fresh interpreters (left out by `make unit`)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "going_modular"
# Environment, build outputs, and what chapters write when they run (see .gitignore).
NOT_COPIED = shutil.ignore_patterns(
    ".venv",
    ".git",
    "_build",
    "_deps",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".ipynb_checkpoints",
    "data",
    "models",
    "checkpoints",
    "runs",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """Build the wheel once, without dependencies or build isolation (offline)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    )
    wheels = list((tmp / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as archive:
        yield archive


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    """The text of one file in the wheel's .dist-info folder."""
    [path] = [
        n
        for n in wheel.namelist()
        if n.split("/")[0].endswith(".dist-info") and n.endswith(f"/{name}")
    ]
    return wheel.read(path).decode("utf-8")


def runtime_requirements(wheel: zipfile.ZipFile) -> list[Requirement]:
    """Requires-Dist entries that are not behind an extra."""
    metadata = Parser().parsestr(dist_info(wheel, "METADATA"))
    requirements = [
        Requirement(line) for line in metadata.get_all("Requires-Dist") or []
    ]
    return [r for r in requirements if r.marker is None or "extra" not in str(r.marker)]


def test_wheel_holds_every_module_of_the_package(wheel: zipfile.ZipFile) -> None:
    modules = {f"{PACKAGE}/{p.name}" for p in (ROOT / PACKAGE).glob("*.py")}
    assert f"{PACKAGE}/__init__.py" in modules
    assert modules <= set(wheel.namelist()), modules - set(wheel.namelist())


def test_wheel_holds_nothing_but_the_package(wheel: zipfile.ZipFile) -> None:
    top_level = {name.split("/")[0] for name in wheel.namelist()}
    assert top_level - {PACKAGE} == {f"{PACKAGE}-0.1.0.dist-info"}
    assert not [
        n for n in wheel.namelist() if n.endswith((".ipynb", ".cfg")) or "/tests/" in n
    ]


def test_metadata_names_the_distribution(wheel: zipfile.ZipFile) -> None:
    metadata = Parser().parsestr(dist_info(wheel, "METADATA"))
    assert (metadata["Name"], metadata["Version"]) == (PACKAGE, "0.1.0")
    declared = tomllib.loads(
        (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(
            encoding="utf-8"
        )
    )
    assert (
        metadata["Requires-Python"]
        == declared["project"]["requires-python"]
        == ">=3.11"
    )


def test_runtime_dependencies_have_lower_bounds_only(wheel: zipfile.ZipFile) -> None:
    requirements = runtime_requirements(wheel)
    names = {r.name.lower() for r in requirements}
    assert {"torch", "torchvision"} <= names
    pinned = [
        str(r) for r in requirements if any(s.operator != ">=" for s in r.specifier)
    ]
    assert not pinned, (
        f"runtime dependencies must not pin or cap versions (Colab ships its own torch): {pinned}"
    )


def test_console_script_points_into_the_wheel(wheel: zipfile.ZipFile) -> None:
    entry_points = dist_info(wheel, "entry_points.txt")
    assert "vit-train = going_modular.train:main" in entry_points
    assert f"{PACKAGE}/train.py" in wheel.namelist()
