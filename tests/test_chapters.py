"""Structure every chapter must have; nbval (run by pytest on notebooks/) checks their outputs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
# The learner's path: every notebook outside the parts whose caption starts with "Appendix".
MAIN_PATH = {
    chapter["file"]
    for part in TOC["parts"]
    if not part["caption"].startswith("Appendix")
    for chapter in part["chapters"]
    if chapter["file"].startswith("notebooks/")
}
# The main path's length budget, in statements (ast.stmt nodes, nested ones included): unlike lines, they do not
# change when the code is formatted at another width. Before the model API of issue 20 the longest chapter had
# 337; ViTConfig (chapter 5) and the minimal training loop (chapter 8) brought the longest to 374.
MAX_STATEMENTS = 400
EXERCISE = re.compile(r"^### Exercise (\d+)\b", re.MULTILINE)
# A hint or a solution: an HTML <details> block, folded in the book, in Jupyter and in Colab alike (a MyST
# dropdown is folded in the book only, and shows as raw text in Jupyter and Colab). The blank lines around
# the content let Markdown render inside it.
FOLDED = re.compile(
    r"^<details>\n<summary>(Hint|Solution)</summary>\n\n(?:.*\n)*?\n</details>$",
    re.MULTILINE,
)


def code_statements(nb: nbformat.NotebookNode) -> int:
    """Statements of all code cells, nested ones included; an IPython magic line counts as one."""
    total = 0
    for cell in (cell for cell in nb.cells if cell.cell_type == "code"):
        lines = cell.source.splitlines()
        python = [
            line[: len(line) - len(line.lstrip())] + "pass"
            if line.lstrip().startswith(("%", "!"))
            else line
            for line in lines
        ]
        total += sum(
            isinstance(node, ast.stmt)
            for node in ast.walk(ast.parse("\n".join(python)))
        )
    return total


def test_every_chapter_is_in_the_table_of_contents_and_back():
    listed = {
        chapter["file"]
        for part in TOC["parts"]
        for chapter in part["chapters"]
        if chapter["file"].startswith("notebooks/")
    }
    assert {f"notebooks/{path.stem}" for path in CHAPTERS} == listed


def test_the_plumbing_lives_in_an_appendix_part():
    appendix = [part for part in TOC["parts"] if part["caption"].startswith("Appendix")]
    assert appendix, "_toc.yml needs a part whose caption starts with 'Appendix'"
    names = {
        chapter["file"].split("/")[-1]
        for part in appendix
        for chapter in part["chapters"]
    }
    assert all(name.startswith("A") for name in names), names


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_structure(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    install = code[0].source
    assert (
        f'"going_modular @ git+{CONFIG["repository"]["url"]}"' in install
    )  # the repository named in _config.yml
    assert install.count("%pip install") == 1 and "except ImportError" in install
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert any(
        cell.source.startswith("## Exercises")
        for cell in nb.cells
        if cell.cell_type == "markdown"
    )
    for cell in code:  # committed with the outputs of one complete run, without errors
        assert cell.execution_count is not None, (
            f"cell not executed: {cell.source[:60]!r}"
        )
        assert not [out for out in cell.outputs if out.output_type == "error"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), (
        "cells were not executed once, top to bottom"
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_main_path_chapters_stay_short(path):
    if f"notebooks/{path.stem}" not in MAIN_PATH:
        pytest.skip("an appendix chapter: no length budget")
    statements = code_statements(nbformat.read(path, as_version=4))
    assert statements <= MAX_STATEMENTS, (
        f"{path.name} has {statements} statements; the main path allows {MAX_STATEMENTS}"
    )


def test_the_length_budget_counts_statements_not_lines():
    one_line = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x = f(a, b)\n%time y = 1")]
    )
    split = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("x = f(\n    a,\n    b,\n)\n%time y = 1")]
    )
    loop = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("for i in range(3):\n    x = i")]
    )
    assert (
        code_statements(one_line) == code_statements(split) == 2
        and code_statements(loop) == 2
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_exercise_has_a_folded_hint_and_a_folded_solution(path):
    """Each exercise cell holds a Hint and a Solution <details> block; code solutions are folded cells that assert.

    A solution cell is folded in the book (the ``hide-cell`` tag), in JupyterLab and Notebook 7
    (``jupyter.source_hidden``, ``outputs_hidden``) and in Colab (a form: ``cellView``, ``# @title``).
    """
    cells = nbformat.read(path, as_version=4).cells
    dropdowns = [
        i
        for i, cell in enumerate(cells)
        if cell.cell_type == "markdown" and ":::{dropdown}" in cell.source
    ]
    assert not dropdowns, (
        f"{path.name}: MyST dropdowns show as raw text in Jupyter and Colab (cells {dropdowns})"
    )
    start = next(
        i
        for i, cell in enumerate(cells)
        if cell.cell_type == "markdown" and cell.source.startswith("## Exercises")
    )
    numbers = []
    for i, cell in enumerate(cells[start:], start):
        found = EXERCISE.findall(cell.source) if cell.cell_type == "markdown" else []
        if not found:
            continue
        assert len(found) == 1, (
            f"{path.name}: one exercise per markdown cell, cell {i} has {found}"
        )
        numbers.append(int(found[0]))
        assert FOLDED.findall(cell.source) == ["Hint", "Solution"], (
            f"{path.name} exercise {found[0]}: needs a Hint then a Solution <details> block (see CONTRIBUTING.md)"
        )
        assert (
            cell.source.count("<details>") == 2 and cell.source.count("</details>") == 2
        )
        after = cells[i + 1] if i + 1 < len(cells) else None
        if after is not None and after.cell_type == "code":
            metadata = after.metadata
            folded = (
                "hide-cell" in metadata.get("tags", []),
                metadata.get("jupyter", {}).get("source_hidden") is True,
                metadata.get("jupyter", {}).get("outputs_hidden") is True,
                metadata.get("cellView") == "form",
            )
            assert all(folded), (
                f"{path.name} exercise {found[0]}: fold the solution cell, got metadata {metadata}"
            )
            assert after.source.startswith(
                f"# @title Solution to exercise {found[0]}\n"
            ), after.source[:60]
            assert re.search(
                r"^\s*(assert |torch\.testing\.assert_close|np\.testing\.assert)",
                after.source,
                re.MULTILINE,
            ), (
                f"{path.name} exercise {found[0]}: a code solution ends in an assertion that checks it"
            )
    assert numbers and numbers == list(range(1, len(numbers) + 1)), (
        f"{path.name}: exercises numbered {numbers}"
    )
