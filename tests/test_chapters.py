"""Structure every chapter must have; nbval (run by pytest on notebooks/) checks their outputs."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = (ROOT / "_toc.yml").read_text()


def test_every_chapter_is_in_the_table_of_contents_and_back():
    listed = set(re.findall(r"file:\s*(notebooks/[\w.-]+)", TOC))
    assert {f"notebooks/{path.stem}" for path in CHAPTERS} == {name.removesuffix(".ipynb") for name in listed}


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_structure(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    install = code[0].source
    assert f'"going_modular @ git+{CONFIG["repository"]["url"]}"' in install  # the repository named in _config.yml
    assert install.count("%pip install") == 1 and "except ImportError" in install
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert any(cell.source.startswith("## Exercises") for cell in nb.cells if cell.cell_type == "markdown")
    for cell in code:  # committed with the outputs of one complete run, without errors
        assert cell.execution_count is not None, f"cell not executed: {cell.source[:60]!r}"
        assert not [out for out in cell.outputs if out.output_type == "error"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), "cells were not executed once, top to bottom"
