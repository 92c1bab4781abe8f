"""The supported Pythons, the declared floors and the published book, as the Makefile, the workflows and the
docs state them; make's choice of interpreter and its refusal of an unsupported one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import floors  # noqa: E402 (tools/ is not a package)

WORKFLOWS = ROOT / ".github" / "workflows"


def makefile_pythons() -> list[str]:
    [line] = [
        line
        for line in (ROOT / "Makefile").read_text().splitlines()
        if line.startswith("PYTHONS :=")
    ]
    return line.split(":=")[1].split()


def test_one_list_of_supported_pythons_everywhere():
    pythons = makefile_pythons()
    assert pythons == sorted(
        pythons, key=lambda v: tuple(map(int, v.split("."))), reverse=True
    )  # newest first
    test = yaml.safe_load((WORKFLOWS / "test.yml").read_text())
    assert sorted(test["jobs"]["unit"]["strategy"]["matrix"]["python"]) == sorted(
        pythons
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    classified = [
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r".* :: 3\.\d+", c)
    ]
    assert sorted(classified) == sorted(pythons)
    assert (
        floors.floors(ROOT / "pyproject.toml")["python"] == pythons[-1]
    )  # the floors job runs the oldest
    readme = (ROOT / "README.md").read_text()
    assert (
        f"Python {', '.join(sorted(pythons)[:-1])} or {sorted(pythons)[-1]}" in readme
    )


def test_the_book_is_published_where_config_and_readme_say():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    owner, name = (
        config["repository"]["url"].removeprefix("https://github.com/").split("/")
    )
    pages = f"https://{owner}.github.io/{name}/"
    assert config["html"]["baseurl"] == pages
    assert pages in (ROOT / "README.md").read_text()
    book = yaml.safe_load((WORKFLOWS / "book.yml").read_text())
    steps = book["jobs"]["build"]["steps"]
    assert any("make book" in step.get("run", "") for step in steps)
    [upload] = [
        step
        for step in steps
        if step.get("uses", "").startswith("actions/upload-pages-artifact@")
    ]
    assert upload["with"]["path"] == "_build/html"
    assert book["jobs"]["deploy"]["steps"][0]["uses"].startswith(
        "actions/deploy-pages@"
    )


def write_pyproject(tmp_path: Path, requires: str, dependencies: list[str]) -> Path:
    path = tmp_path / "pyproject.toml"
    deps = ", ".join(f'"{d}"' for d in dependencies)
    path.write_text(
        f'[project]\nrequires-python = "{requires}"\ndependencies = [{deps}]\n'
    )
    return path


def test_floors_pins_the_lower_bounds(tmp_path, capsys):
    path = write_pyproject(
        tmp_path, ">=3.12", ["numpy>=1.24", "torchvision >= 0.20.1", "torch>=2.5"]
    )
    assert floors.main([str(path)]) == 0
    assert (
        capsys.readouterr().out
        == "python=3.12\nrequirements=torch==2.5 torchvision==0.20.1\n"
    )


@pytest.mark.parametrize(
    "requires, dependencies, message",
    [
        (
            ">=3.11",
            ["torch>=2.3,<3", "torchvision>=0.18"],
            "expected a requirement of the form 'torch>=X.Y', got 'torch>=2.3,<3'",
        ),
        (
            "~=3.11",
            ["torch>=2.3", "torchvision>=0.18"],
            "expected a requirement of the form '>=X.Y', got '~=3.11'",
        ),
        (
            ">=3.11",
            ["torch>=2.3"],
            r"expected \['torch', 'torchvision'\] among the dependencies of .*, missing \['torchvision'\]",
        ),
    ],
)
def test_floors_refuses_an_unclear_floor(
    tmp_path, capsys, requires, dependencies, message
):
    path = write_pyproject(tmp_path, requires, dependencies)
    with pytest.raises(ValueError, match=message):
        floors.floors(path)
    assert (
        floors.main([str(path)]) == 2
        and "floors: error: expected" in capsys.readouterr().err
    )


def fake_python(folder: Path, name: str, works: bool) -> Path:
    """A stand-in on PATH: ``works`` passes make's probe (exit 0, prints no version), else exits 1."""
    path = folder / name
    path.write_text(f"#!/bin/sh\nexit {0 if works else 1}\n")
    path.chmod(0o755)
    return path


def make(args: list[str], path: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path}
    env.pop("PYTHON", None)
    return subprocess.run(
        [shutil.which("make"), "-s", "-f", str(ROOT / "Makefile"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_make_picks_the_newest_supported_python_that_runs(tmp_path):
    show = ["--eval", "show: ; @echo $(PYTHON)", "show"]
    fake_python(
        tmp_path, "python3.13", works=False
    )  # like a pyenv shim of a version that is not active
    twelve = fake_python(tmp_path, "python3.12", works=True)
    fake_python(tmp_path, "python3.11", works=True)
    assert make(show, f"{tmp_path}:/usr/bin:/bin", tmp_path).stdout.strip() == str(
        twelve
    )
    thirteen = fake_python(tmp_path, "python3.13", works=True)
    assert make(show, f"{tmp_path}:/usr/bin:/bin", tmp_path).stdout.strip() == str(
        thirteen
    )


@pytest.mark.slow
@pytest.mark.parametrize("python", ["fake", "/no/such/python", ""])
def test_make_with_an_unsupported_python_stops_before_creating_anything(
    tmp_path, python
):
    if python == "fake":  # answers the version question with 3.10
        python = str(tmp_path / "python3.10")
        Path(python).write_text("#!/bin/sh\necho 3.10\n")
        Path(python).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    # An empty PATH (but for make's own tools) finds no Python, so PYTHON="" stands for "none found".
    run = make(
        ["install", f"PYTHON={python}", f"VENV={work / 'venv'}"], "/nonexistent", ROOT
    )
    assert run.returncode != 0
    assert "error: the supported Python versions are 3.13 3.12 3.11" in run.stderr
    expected = {
        "": "no supported python3.X or python3 was found",
        "/no/such/python": "is not a Python that runs",
    }
    assert expected.get(python, f"PYTHON={python} is 3.10") in run.stderr
    assert list(work.iterdir()) == []
